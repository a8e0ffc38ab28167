"""The options of ``wav2vec2-ee evaluate`` (an ``HfArgumentParser`` dataclass: flags or one JSON file).

Torch-free (``--help`` builds the parser from it). The fields keep the names of the previous release
(Python keywords, result settings); a renamed flag is the field's alias, its old spelling deprecated
(:data:`~wav2vec2_ee.command_line.DEPRECATED_FLAGS`): ``--lm`` / ``--lm-order`` / ``--lm-weight`` are
``lexicon_lm`` / ``lexicon_lm_order`` / ``lexicon_lm_weight``, ``--kenlm-weight`` / ``--kenlm-word-score``
are ``lm_alpha`` / ``lm_beta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..ctc.decoder_spec import LexiconDecoderSpec
from ..errors import UserError
from ..options import check_runtime_options

EXIT_STATS = ("entropy", "posterior")
DECODERS = ("greedy", "beam")


@dataclass
class EvaluationArguments:
    """Options of ``wav2vec2-ee evaluate`` (the positional ``checkpoint`` comes first, ``--output-dir``
    beside these)."""

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
            "help": "utterances per length-grouped batch (default: 16 on CPU, 64 on GPU; results do not depend on it)"
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
        metadata={
            "help": "word n-gram model (ARPA file) fused into --decoder beam through flashlight's KenLM, over the "
            "model's words (the [lm] extra)"
        },
    )
    lm_alpha: float = field(
        default=0.5,
        metadata={
            "aliases": ["--kenlm-weight"],
            "metavar": "WEIGHT",
            "help": "weight of --kenlm's log-probabilities (natural log) in the beam search",
        },
    )
    lm_beta: float = field(
        default=1.5,
        metadata={
            "aliases": ["--kenlm-word-score"],
            "metavar": "SCORE",
            "help": "word insertion bonus with --kenlm",
        },
    )
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
            "aliases": ["--lm"],
            "metavar": "ARPA",
            "help": "word n-gram language model (ARPA file) for the lexicon decoder (default: none, as the seed)",
        },
    )
    lexicon_lm_order: int = field(
        default=0,
        metadata={
            "aliases": ["--lm-order"],
            "metavar": "N",
            "help": "estimate a Kneser-Ney word n-gram model of this order from the lexicon's transcripts "
            "(--train-splits / --lexicon-from) for the lexicon decoder; written to posterior_wer/<split>/lm.arpa",
        },
    )
    lexicon_lm_weight: float = field(
        default=1.0,
        metadata={
            "aliases": ["--lm-weight"],
            "metavar": "WEIGHT",
            "help": "weight of the language model's log-probabilities in the lexicon decoder (shallow fusion)",
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "re-evaluate splits that a previous run completed with the same settings"},
    )
    num_workers: int = field(default=0, metadata={"help": "worker processes decoding audio (DataLoader)"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    processes: int | None = field(
        default=None,
        metadata={
            "aliases": ["--num-processes"],
            "help": "processes that run and decode batches in parallel, sharing the torch threads (default on "
            "CPU: one per thread, each running one thread; 1 on GPU). Results do not depend on it",
        },
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar per split"})
    plot: bool = field(default=True, metadata={"help": "write wer_by_exit.png"})

    def __post_init__(self) -> None:
        check_runtime_options(self.num_threads, self.batch_size, self.max_batch_seconds)
        self.exit_stats = list(dict.fromkeys(self.exit_stats))
        bad = [s for s in self.exit_stats if s not in EXIT_STATS]
        if bad:
            raise UserError(f"unknown --exit-stats {bad}: choose from {list(EXIT_STATS)}")
        if self.decoder not in DECODERS:
            raise UserError(f"unknown --decoder {self.decoder!r}: choose from {list(DECODERS)}")
        if self.kenlm and self.decoder != "beam":
            raise UserError("--kenlm needs --decoder beam")
        if "posterior" not in self.exit_stats and (self.lexicon_lm or self.lexicon_lm_order):
            raise UserError("--lm / --lm-order apply to the lexicon decoder: add --exit-stats posterior")

    def lexicon_spec(self) -> LexiconDecoderSpec | None:
        """The lexicon decoder of ``--exit-stats posterior`` (``None`` without it)."""
        if "posterior" not in self.exit_stats:
            return None
        return LexiconDecoderSpec(
            lexicon=self.lexicon,
            lexicon_from=self.lexicon_from or self.train_splits,
            source_flag="--lexicon-from" if self.lexicon_from else "--train-splits",
            nbest=self.nbest,
            beam_size=self.lexicon_beam_size,
            word_score=self.word_score,
            lm=self.lexicon_lm,
            lm_order=self.lexicon_lm_order,
            lm_weight=self.lexicon_lm_weight,
        )
