"""``wav2vec2-ee evaluate <checkpoint> <output_dir> --data ... [options]``: layer-wise WER of a checkpoint.

Examples::

    wav2vec2-ee evaluate runs/ee runs/ee/eval --data /data/LibriSpeech --splits test-clean test-other
    wav2vec2-ee evaluate runs/ee runs/ee/eval --data /data/LibriSpeech --splits test-clean \\
        --exit-stats entropy posterior --nbest 10 --lexicon lexicon.txt
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from ..device import DeviceArguments
from .evaluate import evaluate_checkpoint


@dataclass
class EvaluationArguments:
    """Options of ``wav2vec2-ee evaluate`` (the positional ``checkpoint`` and ``output_dir`` come first)."""

    data: str = field(
        metadata={
            "help": "LibriSpeech root folder, JSONL/CSV manifest, or Hugging Face dataset folder (save_to_disk)"
        }
    )
    splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "splits to evaluate (default for LibriSpeech: test-clean test-other; a manifest is one split, "
            "named after the file unless one name is given)"
        },
    )
    exits: list[int] | None = field(
        default=None,
        metadata={
            "help": "evaluate only the exits at these layer numbers (default: every exit; a checkpoint without "
            "exits is evaluated at its final layer, or at these layers through its lm_head)"
        },
    )
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "utterances per length-grouped batch (default: 8 on CPU, 64 on GPU; results do not depend on it)"
        },
    )
    max_batch_seconds: float | None = field(
        default=None,
        metadata={
            "help": "at most this many seconds of padded audio per batch (bounds memory; default: 320 on CPU, "
            "1200 on GPU)"
        },
    )
    decoder: Literal["greedy", "beam"] = field(
        default="greedy",
        metadata={
            "help": "CTC decoding at every exit: greedy (best path) or beam (flashlight-text lexicon-free beam search)"
        },
    )
    beam_width: int = field(default=100, metadata={"help": "beam width of --decoder beam"})
    kenlm: str | None = field(
        default=None,
        metadata={"help": "KenLM model (.arpa/.bin) for --decoder beam (needs the kenlm package)"},
    )
    lm_alpha: float = field(default=0.5, metadata={"help": "language-model weight with --kenlm"})
    lm_beta: float = field(default=1.5, metadata={"help": "word insertion bonus with --kenlm"})
    exit_stats: list[str] = field(
        default_factory=list,
        metadata={
            "help": "per-utterance exit statistics: entropy (mean frame entropy, nats -> entropy_wer/<split>/) and/or "
            "posterior (n-best posterior of a lexicon beam search -> posterior_wer/<split>/)"
        },
    )
    nbest: int = field(default=10, metadata={"help": "hypotheses in the n-best list of the posterior"})
    lexicon: str | None = field(
        default=None,
        metadata={
            "help": "lexicon file for the posterior: 'WORD W O R D |' lines (flashlight) or one word per line"
        },
    )
    lexicon_from: list[str] | None = field(
        default=None,
        metadata={
            "help": "build the posterior's lexicon from the transcripts of these splits of --data (or manifests)"
        },
    )
    train_splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "the training splits of --data: the posterior's lexicon comes from their transcripts when no "
            "--lexicon / --lexicon-from is given (else from the evaluated split's references, an oracle)"
        },
    )
    lexicon_beam_size: int = field(
        default=500, metadata={"help": "beam size of the lexicon decoder (the seed used 1500; slower on CPU)"}
    )
    word_score: float = field(
        default=-0.26, metadata={"help": "word score of the lexicon decoder (seed: -0.26)"}
    )
    lexicon_lm: str | None = field(
        default=None,
        metadata={
            "help": "word n-gram language model (ARPA file) for the lexicon decoder (default: none, as the seed)"
        },
    )
    lexicon_lm_order: int = field(
        default=0,
        metadata={
            "help": "estimate a Kneser-Ney word n-gram model of this order from the lexicon's transcripts "
            "(--train-splits / --lexicon-from) for the lexicon decoder; written to posterior_wer/<split>/lm.arpa"
        },
    )
    lexicon_lm_weight: float = field(
        default=1.0, metadata={"help": "weight of the language model's log-probabilities (shallow fusion)"}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "re-evaluate splits that a previous run completed with the same settings"},
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes decoding audio"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    processes: int | None = field(
        default=None,
        metadata={
            "help": "processes that run and decode batches in parallel, sharing the torch threads (default on "
            "CPU: one per thread, each running one thread; 1 on GPU). Results do not depend on it"
        },
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar per split"})
    plot: bool = field(default=True, metadata={"help": "write wer_by_exit.png"})


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
    evaluate_checkpoint(positional.checkpoint, positional.output_dir, **asdict(args), **asdict(device))
    return 0
