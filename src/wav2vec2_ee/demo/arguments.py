"""The options of ``wav2vec2-ee demo`` and its parser, torch-free: ``wav2vec2-ee demo --help`` builds the
parser without importing the demo's steps (:mod:`.cli` re-exports both)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..command_line import HelpFormatter, finish_parser
from ..options import DeviceArguments


@dataclass
class DemoArguments:
    """Options of ``wav2vec2-ee demo``."""

    output_dir: str = field(
        default="demo_out",
        metadata={"help": "Folder for the corpus, the models, the result files and the plot."},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Smoke test (< 2 min): tiny corpus and model, a few steps; exercises every step, WER "
            "is not meaningful. Writes to <output-dir>/quick."
        },
    )
    reproduce: bool = field(
        default=False,
        metadata={
            "help": "Also run the seed's table on this corpus (KD, DKD, confidence, manual activation from "
            "the EE model; the base read through its final head; baselines of the base truncated to 2, 4, 6, 8 "
            "layers) and write reproduce.md (~45 min; resumable)."
        },
    )
    build_base: bool = field(
        default=False,
        metadata={
            "help": "Train the demo's pretrained CTC base (the packaged wav2vec2_ee/resources/demo_base was "
            "made so) into <output-dir>/base/model instead of running the demo: a larger eSpeak NG corpus "
            "and a CMU Flite split (needs the `flite` program; its check on unheard voices needs `festival` "
            "and its voices: Debian festvox-kdlpc16k festvox-kallpc16k festvox-us-slt-hts; checked first), "
            "CTC at the last layer only, augmentation; --base-minutes of training (~2.5 h in all on 2 CPU "
            "cores; resumes when interrupted). With --quick: a smoke test of it."
        },
    )
    continue_base: bool = field(
        default=False,
        metadata={
            "help": "With --build-base (spelled --continue): train one more stage of the base instead of "
            "building it from scratch: a warm restart from the packaged base's weights (or --base), one new "
            "learning-rate cycle of --base-minutes (default 150) with the stage recipe (bfloat16 where this "
            "CPU measures it faster, no dropout, the recording conditions of real audio), into "
            "<output-dir>/base/stage-<n> and <output-dir>/base/model, whose model card lists every stage. "
            "Copy that folder over wav2vec2_ee/resources/demo_base to package it."
        },
    )
    base: str | None = field(
        default=None,
        metadata={
            "help": "The CTC model the demo fine-tunes (default: the packaged base, wav2vec2_ee/resources/"
            "demo_base; e.g. <output-dir>/base/model after --build-base)."
        },
    )
    base_minutes: float | None = field(
        default=None,
        metadata={"help": "--build-base: minutes for its training loop (default: the base preset's)."},
    )
    corpus_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where to build (or find) the demo corpus (default: <output-dir>/corpus); with --build-base, "
            "the corpus whose held-out voices evaluate the base."
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Training steps of the EE run and the baselines (default: the preset's)."},
    )
    time_budget_minutes: float = field(
        default=10.0,
        metadata={
            "help": "Minutes for the whole demo (corpus, training, evaluation): when this machine's pace "
            "would overrun them, the training plans fewer steps than --max-steps and fits its learning-rate "
            "schedule to them (train --time-budget-minutes), so the demo ends on time; the steps it ran "
            "are reported. 0: no budget (the preset's steps, e.g. to compare machines). --reproduce's runs "
            "are not budgeted."
        },
    )
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads (default: torch's choice, the physical cores, lowered to the cores "
            "left idle by other processes when the machine is busy)."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Retrain and re-evaluate even when a previous run finished."}
    )
    no_lexicon: bool = field(
        default=False,
        metadata={"help": "Greedy decoding only (skip the lexicon-constrained beam search column)."},
    )
    progress: bool = field(
        default=True,
        metadata={
            "help": "Show progress bars: the corpus's (on a terminal) and the Trainer's (--no-progress: "
            "neither, for logs)."
        },
    )
    verbose: bool = field(default=False, metadata={"help": "Show the library's INFO logs."})


def build_parser() -> HfArgumentParser:
    """The parser of ``wav2vec2-ee demo``."""
    parser = HfArgumentParser(
        (DemoArguments, DeviceArguments),
        prog="wav2vec2-ee demo",
        description="The embedded default end to end on this machine: synthesise the eSpeak NG corpus, "
        "fine-tune the packaged pretrained CTC base into an early-exit model, evaluate every exit on held-out voices and print "
        "the WER-by-exit table (--quick: a < 2 min smoke test; --reproduce: the seed's table).",
        formatter_class=HelpFormatter,
    )
    parser = finish_parser(parser, "demo")
    parser.add_argument("--continue", dest="continue_base", action="store_true", help=argparse.SUPPRESS)
    return parser
