"""``wav2vec2-ee evaluate <checkpoint> <output_dir> --data ... [options]``: layer-wise WER of a checkpoint.

Examples::

    wav2vec2-ee evaluate runs/ee runs/ee/eval --data /data/LibriSpeech --splits test-clean test-other
    wav2vec2-ee evaluate runs/ee runs/ee/eval --data /data/LibriSpeech --splits test-clean \\
        --exit-stats entropy posterior --nbest 10 --lexicon lexicon.txt
"""

from __future__ import annotations

import logging

from transformers import HfArgumentParser

from ..device import DeviceArguments
from .arguments import EvaluationArguments


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (EvaluationArguments, DeviceArguments),
        prog="wav2vec2-ee evaluate",
        description="Layer-wise WER of a checkpoint at every exit, in the seed's result files.",
    )
    parser.add_argument(
        "checkpoint", help="checkpoint folder (early-exit, plain Wav2Vec2ForCTC, or original layout)"
    )
    parser.add_argument("output_dir", help="folder for wer_results.txt, <split>_results.txt, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, device, positional = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from .evaluate import evaluate_checkpoint

    evaluate_checkpoint(positional.checkpoint, positional.output_dir, args, device)
    return 0
