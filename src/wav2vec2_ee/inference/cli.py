"""``wav2vec2-ee transcribe | sweep | calibrate``: dynamic early-exit inference from the command line.

Examples::

    wav2vec2-ee transcribe runs/ee a.wav b.flac --policy entropy --threshold 0.4 [--json]
    wav2vec2-ee sweep runs/ee runs/ee/sweep --data corpus --split dev \\
        --policies entropy confidence patience posterior
    wav2vec2-ee calibrate runs/ee --data corpus --split dev --policy entropy --max-wer-increase 0.05 \\
        --test-split test
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from ..device import DeviceArguments
from .policies import POLICIES, POLICY_NAMES, ExitPolicy, policy_with_value

# --------------------------------------------------------------------------------------------------
# shared pieces


def _raise_value_error(message: str):
    """argparse's error hook: ``wav2vec2-ee`` prints a ``ValueError`` as one ``error:`` line (exit 2)."""
    raise ValueError(message)


def _parser(dataclass_types, prog: str, description: str) -> HfArgumentParser:
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description)
    parser.error = _raise_value_error
    return parser


def _logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


@dataclass
class LexiconArguments:
    """The lexicon beam search of the ``posterior`` policy."""

    lexicon: str | None = field(
        default=None,
        metadata={"help": "posterior policy: lexicon file ('WORD W O R D |' lines, or one word per line)"},
    )
    nbest: int = field(default=10, metadata={"help": "posterior policy: hypotheses in the n-best list"})
    lexicon_beam_size: int = field(default=500, metadata={"help": "posterior policy: lexicon beam size"})
    word_score: float = field(default=-0.26, metadata={"help": "posterior policy: word score (seed: -0.26)"})


@dataclass
class LexiconSourceArguments:
    """Where the posterior's lexicon comes from when there is no ``--lexicon`` file (sweep, calibrate)."""

    lexicon_from: list[str] | None = field(
        default=None,
        metadata={
            "help": "posterior policy: build the lexicon from the transcripts of these splits of --data "
            "(or manifests); unset: the split's own references (an oracle vocabulary, warned about)"
        },
    )


# --------------------------------------------------------------------------------------------------
# transcribe


@dataclass
class ScoringArguments:
    """Which transcripts the WERs of ``sweep`` / ``calibrate`` score."""

    score_lm_order: int = field(
        default=0,
        metadata={
            "help": "score WER on the transcripts of the lexicon beam search with a Kneser-Ney word n-gram model "
            "of this order from --lexicon-from's transcripts (default 0: greedy transcripts); policies still "
            "decide from the exit outputs"
        },
    )
    score_lm_weight: float = field(default=1.0, metadata={"help": "LM weight of --score-lm-order"})
    score_word_score: float = field(default=1.0, metadata={"help": "word score of --score-lm-order"})
    score_beam_size: int = field(default=500, metadata={"help": "beam size of --score-lm-order"})


@dataclass
class TranscribeArguments:
    """Options of ``wav2vec2-ee transcribe`` (the positional checkpoint and audio files come first)."""

    policy: str = field(
        default="fixed",
        metadata={
            "help": f"exit policy: {', '.join(POLICY_NAMES[:-1])} or budget (default fixed: the last exit)"
        },
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "entropy: stop at mean frame entropy <= this (nats); confidence: mean max-probability >= this; "
            "posterior: n-best posterior >= this"
        },
    )
    patience: int | None = field(
        default=None, metadata={"help": "patience policy: stop when this many consecutive exits agree"}
    )
    layer: int | None = field(
        default=None, metadata={"help": "fixed policy: the exit layer (unset: the last exit)"}
    )
    max_layer: int | None = field(
        default=None, metadata={"help": "layer budget: never compute beyond this layer (with any policy)"}
    )
    json: bool = field(default=False, metadata={"help": "print a JSON list of results instead of lines"})
    batch_size: int = field(default=16, metadata={"help": "utterances per length-sorted batch"})
    max_batch_seconds: float = field(default=160.0, metadata={"help": "seconds of padded audio per batch"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )


_VALUE_FLAGS = {"threshold": "--threshold", "patience": "--patience", "layer": "--layer"}


def policy_from_flags(
    policy: str,
    threshold: float | None = None,
    patience: int | None = None,
    layer: int | None = None,
    max_layer: int | None = None,
) -> ExitPolicy:
    """The policy named by ``--policy`` and its value flag (``--threshold``, ``--patience``, ``--layer``)."""
    if policy not in POLICY_NAMES:
        raise ValueError(f"unknown --policy {policy!r}: choose from {', '.join(POLICY_NAMES)}")
    if policy == "oracle":
        raise ValueError("--policy oracle needs the reference transcripts: it exists only in `sweep`")
    given = {"threshold": threshold, "patience": patience, "layer": layer}
    wanted = POLICIES[policy].parameter if policy in POLICIES else None
    stray = [_VALUE_FLAGS[k] for k, v in given.items() if v is not None and k != wanted]
    if stray:
        needs = f"takes {_VALUE_FLAGS[wanted]}" if wanted else "takes only --max-layer"
        raise ValueError(f"--policy {policy} {needs}, not {' '.join(stray)}")
    value = given.get(wanted) if wanted else None
    if wanted in ("threshold", "patience") and value is None:
        example = {"threshold": "--threshold 0.4", "patience": "--patience 2"}[wanted]
        raise ValueError(f"--policy {policy} needs {_VALUE_FLAGS[wanted]} (e.g. {example})")
    return policy_with_value(policy, value, max_layer)


def _transcribe_parser() -> HfArgumentParser:
    parser = _parser(
        (TranscribeArguments, LexiconArguments, DeviceArguments),
        "wav2vec2-ee transcribe",
        "Transcribe audio files with early exit: layers stop early.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    parser.add_argument(
        "audio", nargs="+", help="audio files (any format soundfile reads; resampled to 16 kHz)"
    )
    return parser


def transcribe_main(argv: list[str] | None = None) -> int:
    args, lex, device, positional = _transcribe_parser().parse_args_into_dataclasses(args=argv)
    _logging(quiet=True)
    import torch

    from ..evaluation.decoding import LexiconBeamDecoder
    from ..evaluation.lexicon import read_lexicon
    from .transcriber import Transcriber

    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    policy = policy_from_flags(args.policy, args.threshold, args.patience, args.layer, args.max_layer)
    transcriber = Transcriber.from_pretrained(
        positional.checkpoint,
        policy,
        device=device.device,
        dtype=device.dtype,
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
    )
    if args.policy == "posterior":
        if not lex.lexicon:
            raise ValueError("--policy posterior needs --lexicon FILE (the words the beam search may output)")
        tokenizer = transcriber.processor.tokenizer
        transcriber.decoders.lexicon_decoder = LexiconBeamDecoder(
            tokenizer,
            read_lexicon(lex.lexicon, tokenizer),
            nbest=lex.nbest,
            beam_size=lex.lexicon_beam_size,
            word_score=lex.word_score,
        )
    results = transcriber.transcribe(list(positional.audio))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r.source}\tlayer {r.exit_layer}/{r.num_layers}\t{r.seconds:.3f} s\t{r.text}")
    return 0


# --------------------------------------------------------------------------------------------------
# sweep


@dataclass
class SweepArguments:
    """Options of ``wav2vec2-ee sweep`` (the positional checkpoint and output folder come first)."""

    data: str = field(
        metadata={"help": "LibriSpeech-layout folder, JSONL/CSV manifest, or Hugging Face dataset folder"}
    )
    split: str | None = field(
        default=None, metadata={"help": "the split to sweep on (e.g. dev; a manifest is one)"}
    )
    policies: list[str] = field(
        default_factory=lambda: ["entropy", "confidence", "patience"],
        metadata={
            "help": "policies to sweep: entropy confidence posterior patience (every fixed exit and the oracle "
            "are always included)"
        },
    )
    thresholds: list[str] | None = field(
        default=None,
        metadata={
            "help": "override the grids: POLICY=V1,V2,... items (e.g. entropy=0.1,0.3 patience=2,3), or plain "
            "numbers when one policy is swept; default: quantiles of each statistic on the split"
        },
    )
    num_thresholds: int = field(
        default=12, metadata={"help": "grid size per threshold policy (quantile-spaced)"}
    )
    max_layer: int | None = field(
        default=None, metadata={"help": "layer budget applied to every policy: never beyond this layer"}
    )
    timing: Literal["all", "pareto", "none"] = field(
        default="all",
        metadata={
            "help": "wall time, measured by running the engine: all (every point), pareto (front + fixed exits + "
            "oracle), none"
        },
    )
    repeats: int = field(default=1, metadata={"help": "timed rounds per point (the fastest counts)"})
    batch_size: int | None = field(
        default=None, metadata={"help": "utterances per length-grouped batch (default: 16 on CPU, 64 on GPU)"}
    )
    max_batch_seconds: float | None = field(
        default=None,
        metadata={"help": "seconds of padded audio per batch (default: 320 on CPU, 1200 on GPU)"},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    plot: bool = field(default=True, metadata={"help": "write <split>_sweep.png"})


def sweep_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        (SweepArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        "wav2vec2-ee sweep",
        "WER / compute trade-off of exit policies over thresholds.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    parser.add_argument(
        "output_dir", help="folder for <split>_sweep.csv / .json / .png and per-utterance files"
    )
    args, lexicon, source, scoring, device, positional = parser.parse_args_into_dataclasses(args=argv)
    _logging()
    from .sweep import run_sweep

    run_sweep(
        positional.checkpoint,
        positional.output_dir,
        **asdict(args),
        **asdict(lexicon),
        **asdict(source),
        **asdict(scoring),
        **asdict(device),
    )
    return 0


# --------------------------------------------------------------------------------------------------
# calibrate


@dataclass
class CalibrateArguments:
    """Options of ``wav2vec2-ee calibrate`` (the positional checkpoint comes first)."""

    data: str = field(
        metadata={"help": "LibriSpeech-layout folder, JSONL/CSV manifest, or Hugging Face dataset folder"}
    )
    split: str | None = field(
        default=None, metadata={"help": "the development split to calibrate on (e.g. dev)"}
    )
    policy: str = field(
        default="entropy", metadata={"help": "entropy, confidence, posterior, patience or fixed"}
    )
    max_wer_increase: float = field(
        default=0.05,
        metadata={"help": "allowed relative WER increase over the final exit (0.05 = plus 5 percent)"},
    )
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "apply the chosen value to this split (or manifest) and report it; nothing is tuned on it"
        },
    )
    thresholds: list[float] | None = field(
        default=None, metadata={"help": "candidate values (default: every distinct decision on the split)"}
    )
    max_layer: int | None = field(default=None, metadata={"help": "layer budget: never beyond this layer"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of lines"})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "also write <split>_exit_table.jsonl per split and calibration_<policy>.json here"},
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "utterances per length-grouped batch (default: 16 on CPU, 64 on GPU)"}
    )
    max_batch_seconds: float | None = field(
        default=None,
        metadata={"help": "seconds of padded audio per batch (default: 320 on CPU, 1200 on GPU)"},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    progress: bool = field(default=False, metadata={"help": "show progress bars (on stderr)"})


def calibrate_main(argv: list[str] | None = None) -> int:
    parser = _parser(
        (CalibrateArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        "wav2vec2-ee calibrate",
        "Choose an exit policy's threshold on a dev split; prints it on the last line.",
    )
    parser.add_argument("checkpoint", help="early-exit checkpoint folder")
    args, lexicon, source, scoring, device, positional = parser.parse_args_into_dataclasses(args=argv)
    _logging(quiet=True)
    from .calibrate import run_calibration

    kwargs = {**asdict(args), **asdict(lexicon), **asdict(source), **asdict(scoring), **asdict(device)}
    kwargs["as_json"] = kwargs.pop("json")
    run_calibration(positional.checkpoint, **kwargs)
    sys.stdout.flush()
    return 0
