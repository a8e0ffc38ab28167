"""The options of ``wav2vec2-ee transcribe | sweep | calibrate`` (``HfArgumentParser`` dataclasses), and the
lexicon decoders they describe (:class:`~wav2vec2_ee.evaluation.LexiconDecoderSpec`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..batching import DEFAULT_MAX_BATCH_SECONDS
from ..ctc.decoder_spec import LexiconDecoderSpec
from ..errors import UserError
from ..options import check_runtime_options
from ..policy_core import POLICIES, POLICY_NAMES
from ..segmentation import VADS, SplitOptions
from ..transcripts import OUTPUT_FORMATS, SUBTITLE_FORMATS
from .chunking import check_chunking


def parse_thresholds(items: Sequence[str] | None, policies: Sequence[str]) -> dict[str, list[float]]:
    """``["entropy=0.1,0.2", "patience=2,3"]`` -> ``{"entropy": [0.1, 0.2], "patience": [2.0, 3.0]}``.

    Bare numbers (``["0.1", "0.2"]``) are accepted when exactly one policy is swept.
    """
    out: dict[str, list[float]] = {}
    bare: list[float] = []
    for item in items or []:
        name, sep, values = item.partition("=")
        try:
            if sep:
                if name not in POLICIES or POLICIES[name].parameter is None:
                    raise UserError(f"--thresholds {item!r}: {name!r} is not a policy with a parameter")
                out.setdefault(name, []).extend(float(v) for v in values.split(",") if v)
            else:
                bare.extend(float(v) for v in item.split(",") if v)
        except ValueError as err:
            if "policy" in str(err):
                raise
            raise UserError(f"--thresholds {item!r}: expected POLICY=V1,V2,... or numbers") from err
    if bare:
        if len(policies) != 1:
            raise UserError(
                f"--thresholds {' '.join(items or [])}: with several policies write POLICY=V1,V2 (e.g. entropy=0.2,0.4)"
            )
        out.setdefault(policies[0], []).extend(bare)
    return out


@dataclass
class LexiconArguments:
    """The lexicon beam search of the ``posterior`` policy (and of ``transcribe --decoder lexicon``)."""

    lexicon: str | None = field(
        default=None,
        metadata={
            "help": "lexicon beam search (posterior policy; transcribe --decoder lexicon): lexicon file "
            "('WORD W O R D |' lines, or one word per line)"
        },
    )
    nbest: int = field(default=10, metadata={"help": "posterior policy: hypotheses in the n-best list"})
    lexicon_beam_size: int = field(default=500, metadata={"help": "lexicon beam search: beam size"})
    word_score: float = field(
        default=-0.26, metadata={"help": "lexicon beam search: word score (seed: -0.26)"}
    )


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


@dataclass
class ScoringArguments:
    """Which transcripts the WERs of ``sweep`` / ``calibrate`` score."""

    # the flags are the fields' aliases (--lm-*, as evaluate's); --score-* is deprecated (command_line.py)
    score_lm_order: int = field(
        default=0,
        metadata={
            "aliases": ["--lm-order"],
            "metavar": "N",
            "help": "score WER on the transcripts of the lexicon beam search with a Kneser-Ney word n-gram model "
            "of this order from --lexicon-from's transcripts (default 0: greedy transcripts); policies still "
            "decide from the exit outputs",
        },
    )
    score_lm_weight: float = field(
        default=1.0,
        metadata={"aliases": ["--lm-weight"], "metavar": "WEIGHT", "help": "LM weight of --lm-order"},
    )
    score_word_score: float = field(
        default=1.0,
        metadata={"aliases": ["--lm-word-score"], "metavar": "SCORE", "help": "word score of --lm-order"},
    )
    score_beam_size: int = field(
        default=500,
        metadata={"aliases": ["--lm-beam-size"], "metavar": "N", "help": "beam size of --lm-order"},
    )


@dataclass
class TranscribeArguments:
    """Options of ``wav2vec2-ee transcribe`` (the positional checkpoint and audio files come first)."""

    policy: str | None = field(
        default=None,
        metadata={
            "help": f"exit policy: {', '.join(POLICY_NAMES[:-1])} or budget (default: the policy saved in the "
            "checkpoint folder by `calibrate --save-policy` (exit_policy.json; with --backend onnxruntime, the "
            "export's policy.json) when it has one, else fixed: the last exit); learned: the saved learned "
            "model, its saved threshold unless --threshold is given"
        },
    )
    backend: Literal["torch", "onnxruntime"] = field(
        default="torch",
        metadata={
            "help": "torch: a checkpoint folder; onnxruntime: a folder written by `wav2vec2-ee export`, each "
            "segment run by ONNX Runtime on the CPU (the same engine and policies)"
        },
    )
    precision: Literal["float", "int8"] | None = field(
        default=None,
        metadata={"help": "--backend onnxruntime: float or int8 segments (default: int8 where exported)"},
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "entropy: stop at mean frame entropy <= this (nats); confidence: mean max-probability >= this; "
            "posterior: n-best posterior >= this; learned: the learned model's score >= this"
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
    json: bool = field(
        default=False,
        metadata={
            "help": "deprecated (use --format jsonl, which prints each row as it is done): print one JSON "
            "list of results at the end"
        },
    )
    format: Literal["text", "tsv", "jsonl", "srt", "vtt", "ctm"] = field(
        default="text",
        metadata={
            "help": "what is printed, each file as soon as it and the files before it are done, in input order: "
            "text (a line per file: path, exit layer, seconds, transcript), tsv (a header line, then the "
            "--output columns but segments), jsonl (a JSON row per file, its segments included), srt / vtt "
            "(subtitles of the file's segments: printed for one input, one file per input in --output-dir), "
            "ctm (a NIST CTM line per word: id, channel, start, duration, word; turns --word-timestamps on)"
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "--format srt / vtt: write one subtitle file per input here (NAME.srt, NAME.vtt)"},
    )
    word_timestamps: bool = field(
        default=False,
        metadata={
            "help": "give each segment its words with their start and end (seconds, from the CTC alignment of "
            "the --decoder's text): in --format jsonl, --json and the --output rows"
        },
    )
    decoder: Literal["greedy", "lexicon", "lexicon-lm"] = field(
        default="greedy",
        metadata={
            "help": "what gives the text: greedy (the best path of the exit that answered), lexicon (a lexicon "
            "beam search over those logits: --lexicon or --lexicon-from), lexicon-lm (the same with a word "
            "n-gram model: --lm, or one estimated from --lexicon-from's transcripts)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "utterances per length-sorted batch"})
    max_batch_seconds: float = field(
        default=DEFAULT_MAX_BATCH_SECONDS, metadata={"help": "seconds of padded audio per batch"}
    )
    max_segment_seconds: float = field(
        default=20.0,
        metadata={
            "help": "a file longer than this is read block by block and split at its pauses (voice activity) "
            "into pieces of at most this many seconds, batched, each with its own exit (the silence between "
            "them is not run; its text is theirs joined; memory stays bounded for hour-long files); shorter "
            "files run whole; 0: off (every file in one forward pass, --max-seconds applies)"
        },
    )
    vad: Literal["auto", "silero", "energy"] = field(
        default="auto",
        metadata={
            "help": "what finds the pauses: silero (Silero VAD, the [vad] extra), energy (frame energy against "
            "the recording's noise floor, always there), auto (silero where installed, else energy)"
        },
    )
    vad_threshold: float | None = field(
        default=None,
        metadata={"help": "speech probability that starts speech (default: the detector's, 0.5 / 0.35)"},
    )
    max_seconds: float | None = field(
        default=60.0,
        metadata={
            "help": "with splitting off (--max-segment-seconds 0), refuse (report as failed) a file longer than "
            "this many seconds: it would run in one forward pass, for minutes and much memory"
        },
    )
    chunk_seconds: float | None = field(
        default=None,
        metadata={
            "help": "instead of splitting at pauses, transcribe files longer than this in fixed overlapping "
            "windows of this many seconds, as transformers' pipeline(chunk_length_s=...) does (windows cut "
            "words and glue the words at a pause together); 0: neither windows nor pauses, every file in one "
            "forward pass (--max-seconds applies)"
        },
    )
    stride_seconds: float | None = field(
        default=None,
        metadata={
            "help": "--chunk-seconds: context on each side of a window whose frames are dropped "
            "(default: a sixth of the window)"
        },
    )
    output: str | None = field(
        default=None,
        metadata={
            "help": "also write one row per file (text, exit layer, layers computed, seconds, error, resolved path, "
            "segments) to this .jsonl or .csv file, appended and synced in input order as files are done; one "
            "run at a time writes it (a lock file .NAME.lock beside it)"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "--output exists: skip the files it has transcribed (by resolved path) and retry those whose "
            "row is an error (a partial last line is redone); only a file that transcribe wrote is continued"
        },
    )
    progress: bool = field(
        default=True, metadata={"help": "a progress bar on stderr when there is more than one batch"}
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )

    def __post_init__(self) -> None:
        check_runtime_options(self.num_threads, self.batch_size, self.max_batch_seconds)
        if self.max_seconds is not None and not float(self.max_seconds) > 0:
            raise UserError(f"--max-seconds must be a number > 0, got {self.max_seconds}")
        _check_max_layer_flag(self.max_layer)  # the value flags: policy_from_flags (inference/cli.py)
        check_chunking(self.chunk_seconds, self.stride_seconds)
        self.split_options()  # --max-segment-seconds, --vad, --vad-threshold checked now
        if self.output is not None and not self.output.lower().endswith((".jsonl", ".csv")):
            raise UserError(f"--output {self.output}: must end in .jsonl or .csv")
        if self.resume and self.output is None:
            raise UserError("--resume needs --output FILE (the results to continue)")
        if self.format not in OUTPUT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if self.format == "ctm":
            self.word_timestamps = True
        if self.json and self.format != "text":
            raise UserError(f"--json prints a JSON list: it does not go with --format {self.format}")
        if self.output_dir is not None and self.format not in SUBTITLE_FORMATS:
            raise UserError("--output-dir is where --format srt / vtt writes a subtitle file per input")

    def split_options(self) -> SplitOptions | None:
        """How long files are split at their pauses (``None``: not: --max-segment-seconds 0)."""
        if not self.max_segment_seconds:
            return None
        if self.vad not in VADS:
            raise UserError(f"--vad must be one of {', '.join(VADS)}, got {self.vad!r}")
        return SplitOptions(
            max_seconds=float(self.max_segment_seconds), vad=self.vad, threshold=self.vad_threshold
        )


@dataclass
class TranscriptDecoderArguments:
    """Where ``transcribe --decoder lexicon / lexicon-lm`` gets its words and language model (the lexicon
    file, beam size and word score: :class:`LexiconArguments`)."""

    lexicon_from: list[str] | None = field(
        default=None,
        metadata={
            "help": "lexicon beam search (--decoder lexicon / lexicon-lm, the posterior policy): its words are "
            "those of the transcripts of these manifests or splits of --data (without --lexicon)"
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "the corpus whose splits --lexicon-from names (LibriSpeech-layout folder, manifest or "
            "Hugging Face dataset folder)"
        },
    )
    lm: str | None = field(
        default=None,
        metadata={
            "metavar": "ARPA",
            "help": "--decoder lexicon-lm: a word n-gram language model (ARPA file)",
        },
    )
    lm_order: int | None = field(
        default=None,
        metadata={
            "metavar": "N",
            "help": "--decoder lexicon-lm without --lm: estimate a Kneser-Ney word n-gram model of this order "
            "from --lexicon-from's transcripts (default 3)",
        },
    )
    lm_weight: float = field(
        default=1.0,
        metadata={
            "metavar": "WEIGHT",
            "help": "--decoder lexicon-lm: weight of the language model's log-probabilities (shallow fusion)",
        },
    )

    def __post_init__(self) -> None:
        if self.lm_order is not None and (isinstance(self.lm_order, bool) or int(self.lm_order) < 1):
            raise UserError(f"--lm-order must be an integer >= 1, got {self.lm_order}")


def transcript_spec(
    lexicon: LexiconArguments, decoder: str, source: TranscriptDecoderArguments
) -> LexiconDecoderSpec | None:
    """The lexicon beam search whose best hypothesis ``transcribe --decoder lexicon / lexicon-lm`` prints
    (``None`` for ``greedy``): the words of ``--lexicon`` or ``--lexicon-from``; with ``lexicon-lm`` an
    ARPA model (``--lm``) or one of order ``--lm-order`` (3) estimated from ``--lexicon-from``'s
    transcripts. Usage errors name the flags."""
    uses_lm = source.lm is not None or source.lm_order is not None
    if decoder == "greedy":
        if uses_lm or source.lexicon_from:
            flags = "--lm / --lm-order" if uses_lm else "--lexicon-from"
            raise UserError(f"{flags}: apply to the lexicon beam search: add --decoder lexicon or lexicon-lm")
        return None
    if not (lexicon.lexicon or source.lexicon_from):
        raise UserError(
            f"--decoder {decoder} needs --lexicon FILE or --lexicon-from MANIFESTS_OR_SPLITS: the words it may output"
        )
    if decoder == "lexicon" and uses_lm:
        raise UserError(
            "--lm / --lm-order need --decoder lexicon-lm (a lexicon beam search with a language model)"
        )
    lm_order = 0
    if decoder == "lexicon-lm" and source.lm is None:
        if not source.lexicon_from:
            raise UserError(
                "--decoder lexicon-lm needs --lm FILE.arpa, or --lexicon-from MANIFESTS_OR_SPLITS whose transcripts "
                "a word n-gram model is estimated from (--lm-order, default 3)"
            )
        lm_order = source.lm_order or 3
    return LexiconDecoderSpec(
        lexicon=lexicon.lexicon,
        lexicon_from=source.lexicon_from,
        nbest=1,
        beam_size=lexicon.lexicon_beam_size,
        word_score=lexicon.word_score,
        lm=source.lm if decoder == "lexicon-lm" else None,
        lm_order=lm_order,
        lm_weight=source.lm_weight,
        lm_order_flag="--lm-order",
    )


@dataclass
class ExitTableArguments:
    """What ``sweep`` and ``calibrate`` share: the one split whose exit table they compute, the layer
    budget, the learned policy's fit and the batching."""

    data: str = field(
        metadata={"help": "LibriSpeech-layout folder, JSONL/CSV manifest, or Hugging Face dataset folder"}
    )
    splits: list[str] | None = field(
        default=None,
        metadata={
            "help": "the one split to run on (e.g. dev: calibrate on it, or sweep it; a manifest is one)"
        },
    )
    split: str | None = field(  # the Python keyword of --splits' one split (the CLI spells it --splits)
        default=None, metadata={"help": argparse.SUPPRESS}
    )
    max_layer: int | None = field(
        default=None, metadata={"help": "layer budget applied to every policy: never beyond this layer"}
    )
    learned_hidden: int = field(
        default=0,
        metadata={
            "help": "learned policy fitted here: 0 = logistic regression (default), N = a tanh MLP of N units"
        },
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

    def __post_init__(self) -> None:
        self.split, self.splits = _one_split(self.split, self.splits)
        check_runtime_options(self.num_threads, self.batch_size, self.max_batch_seconds)
        _check_max_layer_flag(self.max_layer)
        _check_hidden(self.learned_hidden)


@dataclass
class SweepArguments(ExitTableArguments):
    """Options of ``wav2vec2-ee sweep`` (the positional checkpoint and output folder come first)."""

    policies: list[str] = field(
        default_factory=lambda: ["entropy", "confidence", "patience"],
        metadata={
            "help": "policies to sweep: entropy confidence posterior patience learned (every fixed exit and the "
            "oracle are always included; learned needs a fitted model: --learned-policy, or one fitted on "
            "--fit-split)"
        },
    )
    learned_policy: str | None = field(
        default=None,
        metadata={
            "help": "learned policy: a saved exit_policy.json (`calibrate --policy learned --save-policy`) whose "
            "fitted model is swept; its calibrated threshold is one of the points (the honest test figure when "
            "the model and threshold came from dev); default: fit a model on --fit-split"
        },
    )
    fit_split: str = field(
        default="dev",
        metadata={
            "help": "learned policy without --learned-policy: the split of --data (or a manifest) its model is "
            "fitted on (default dev). Never fit on the split you report: sweeping the test split fits on dev; "
            "fitting on the swept split itself is allowed only for a dev trade-off and flagged as in-sample"
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
    timing: Literal["all", "pareto", "none"] = field(
        default="all",
        metadata={
            "help": "wall time, measured by running the engine: all (every point), pareto (front + fixed exits + "
            "oracle), none"
        },
    )
    repeats: int = field(default=1, metadata={"help": "timed rounds per point (the fastest counts)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    plot: bool = field(default=True, metadata={"help": "write <split>_sweep.png"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.thresholds:  # out-of-range values fail now, not after the split's exits are computed
            tunable = [p for p in dict.fromkeys(self.policies) if p in POLICIES and POLICIES[p].parameter]
            for name, values in parse_thresholds(self.thresholds, tunable).items():
                for value in values:
                    _check_value(POLICIES[name], "--thresholds", value)


@dataclass
class CalibrateArguments(ExitTableArguments):
    """Options of ``wav2vec2-ee calibrate`` (the positional checkpoint comes first)."""

    policy: str = field(
        default="entropy",
        metadata={
            "help": "entropy, confidence, posterior, patience, fixed or learned (a model of several exit "
            "features, fitted on this split, then its threshold chosen here)"
        },
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
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of lines"})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "also write <split>_exit_table.jsonl per split and calibration_<policy>.json here"},
    )
    save_policy: bool = field(
        default=False,
        metadata={
            "help": "save the calibrated policy (value, dev figures; learned: features, standardisation, "
            "weights) as exit_policy.json in the checkpoint folder (or --policy-file), where transcribe and "
            "Transcriber use it when no policy is named and export copies it as policy.json"
        },
    )
    output: str | None = field(  # the flag is --policy-file (--output: deprecated, command_line.py)
        default=None,
        metadata={
            "aliases": ["--policy-file"],
            "metavar": "FILE_OR_DIR",
            "help": "--save-policy: write to this .json file, or exit_policy.json in this folder",
        },
    )
    learned_l2: float = field(
        default=1e-3, metadata={"help": "learned policy: L2 penalty on the weights (standardised features)"}
    )
    progress: bool = field(default=False, metadata={"help": "show progress bars (on stderr)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = POLICIES.get(self.policy)
        if cls is not None and cls.parameter is not None:
            for value in self.thresholds or []:
                _check_value(cls, "--thresholds", value)
        if not self.learned_l2 >= 0:
            raise UserError(f"--learned-l2 must be >= 0, got {self.learned_l2}")
        if self.output is not None and not self.save_policy:
            raise UserError("--policy-file is where --save-policy writes: pass --save-policy too")


def _one_split(split: str | None, splits: list[str] | None) -> tuple[str | None, list[str] | None]:
    """``(split, splits)`` of ``sweep`` / ``calibrate``, which run on one split: ``--splits`` takes one
    (``split=``, its Python keyword, wins: ``dataclasses.replace(args, split=...)``)."""
    if split is not None:
        return split, [split]
    if isinstance(splits, str):
        splits = [splits]
    if splits:
        if len(splits) != 1:
            raise UserError(f"--splits takes one split here, got {len(splits)}: {' '.join(splits)}")
        return splits[0], list(splits)
    return None, None


def _check_max_layer_flag(max_layer: int | None) -> None:
    """``--max-layer`` is a layer number; whether it is one of the model's exit layers is checked where
    the policy meets the model (:func:`~.policies.check_max_layer`)."""
    if max_layer is not None and (
        isinstance(max_layer, bool) or int(max_layer) != max_layer or max_layer < 1
    ):
        raise UserError(
            f"--max-layer must be one of the model's exit layers (an integer >= 1), got {max_layer}"
        )


def _check_hidden(hidden: int) -> None:
    if isinstance(hidden, bool) or int(hidden) != hidden or hidden < 0:
        raise UserError(f"--learned-hidden must be an integer >= 0 (0: logistic regression), got {hidden}")


def _check_value(cls, flag: str, value: float) -> None:
    """``cls.check_value(value)``, its ``ValueError`` prefixed with the flag that gave the value."""
    try:
        cls.check_value(value)
    except ValueError as err:
        raise UserError(f"{flag} {value}: {err}") from None


def posterior_spec(
    lexicon: LexiconArguments, source: LexiconSourceArguments | None = None
) -> LexiconDecoderSpec:
    """The lexicon beam search of the ``posterior`` policy (no language model, as the seed)."""
    return LexiconDecoderSpec(
        lexicon=lexicon.lexicon,
        lexicon_from=source.lexicon_from if source is not None else None,
        nbest=lexicon.nbest,
        beam_size=lexicon.lexicon_beam_size,
        word_score=lexicon.word_score,
    )


def scoring_spec(
    lexicon: LexiconArguments, source: LexiconSourceArguments, scoring: ScoringArguments
) -> LexiconDecoderSpec | None:
    """The lexicon beam search with a word n-gram model whose transcripts ``sweep`` / ``calibrate``
    score (``--lm-order``); ``None`` when greedy transcripts are scored."""
    if not scoring.score_lm_order:
        return None
    if not source.lexicon_from:
        raise UserError("--lm-order needs --lexicon-from: the language model's training transcripts")
    return LexiconDecoderSpec(
        lexicon=lexicon.lexicon,
        lexicon_from=source.lexicon_from,
        nbest=1,
        beam_size=scoring.score_beam_size,
        word_score=scoring.score_word_score,
        lm_order=scoring.score_lm_order,
        lm_weight=scoring.score_lm_weight,
        lm_order_flag="--lm-order",
    )
