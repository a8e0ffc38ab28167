"""``wav2vec2-ee evaluate <checkpoint> --output-dir DIR --data ... [options]``: layer-wise WER of a checkpoint.

Examples::

    wav2vec2-ee evaluate runs/ee --output-dir runs/ee/eval --data /data/LibriSpeech --splits test-clean test-other
    wav2vec2-ee evaluate runs/ee --output-dir runs/ee/eval --data /data/LibriSpeech --splits test-clean \\
        --exit-stats entropy posterior --nbest 10 --lexicon lexicon.txt
    wav2vec2-ee evaluate runs/ee --output-dir runs/ee/eval_lm --data corpus --splits test --exit-stats posterior \\
        --train-splits train --lm-order 3      # + the lexicon decoder with a word 3-gram LM

It prints a split x exit WER table per decoder that ran (greedy or ``--decoder beam`` first, then the
lexicon decoder of ``--exit-stats posterior``, with its LM when there is one), the tables that
``wer_results.txt`` holds. Importing this module does not import torch (``--help``).
"""

from __future__ import annotations

import logging

from transformers import HfArgumentParser

from ..command_line import HelpFormatter, add_output_dir, finish_parser, output_dir_of, parsing_flags
from ..options import DeviceArguments
from .arguments import EvaluationArguments


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (EvaluationArguments, DeviceArguments),
        prog="wav2vec2-ee evaluate",
        description="Layer-wise WER of a checkpoint at every exit, in the seed's result files.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="checkpoint folder (early-exit, plain Wav2Vec2ForCTC, or original layout)"
    )
    add_output_dir(parser, "folder for wer_results.txt, <split>_results.txt, ...")
    return finish_parser(parser, "evaluate")


def main(argv: list[str] | None = None) -> int:
    """Evaluate the checkpoint and print the split x exit WER table of each decoder; returns the exit status."""
    with parsing_flags():
        args, device, positional = build_parser().parse_args_into_dataclasses(args=argv)
        positional.output_dir = output_dir_of("evaluate", positional)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from ..results import format_overview_table
    from .evaluate import evaluate_checkpoint

    overview = evaluate_checkpoint(positional.checkpoint, positional.output_dir, args, device)
    print(format_overview_table(overview))
    return 0
