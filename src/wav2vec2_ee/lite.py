"""A torch-free runtime: transcribe with an exported folder (``wav2vec2-ee export``) and only ``onnxruntime``,
``numpy`` and ``soundfile`` installed (``soxr`` optional, for resampling; ``silero-vad`` optional, for
finding pauses).

    >>> from wav2vec2_ee.lite import LiteTranscriber
    >>> LiteTranscriber("exported/").transcribe(["a.wav", "b.flac"])
    >>> LiteTranscriber("exported/").transcribe("talk.wav").segments      # a long file: timed pieces
    >>> for r in LiteTranscriber("exported/").transcribe_stream(["recordings/"]): ...   # in input order

    $ python -m wav2vec2_ee.lite exported/ a.wav recordings/ [--policy entropy --threshold 0.4]
    $ python -m wav2vec2_ee.lite exported/ recordings/ --output results.jsonl --resume
    $ python -m wav2vec2_ee.lite exported/ talk.wav --format srt --word-timestamps

What :class:`~wav2vec2_ee.inference.Transcriber` does with PyTorch, in numpy: inputs are grouped into
batches of similar length bounded as ``transcribe``'s are (``batch_size`` utterances and
``max_batch_seconds`` of padded audio: :func:`~wav2vec2_ee.batching.length_grouped_batches`; durations
from the file headers; among a few batches' worth of consecutive inputs, so results come in input order
as they are done), a batch's audio is read when that batch runs (:func:`read_audio`; only regular
files), normalised as the exported feature extractor says (zero mean, unit variance per utterance when
``do_normalize``), padded into a batch with its attention mask, and run segment by segment
(:func:`~wav2vec2_ee.export.runtime.run_onnx_exits`); after each exit the exit policy decides which
utterances stop; those leave the batch and later blocks run on the rest only, and blocks beyond
the deepest allowed exit never run (the engine's loop, :func:`~wav2vec2_ee.policy_core.exit_loop`).
Answers are greedy CTC transcripts from ``vocab.json`` (repeats collapsed, blank dropped, the word
delimiter a space), normalised as the PyTorch engine's are.

Long recordings as ``transcribe`` splits them: an input longer than ``--max-segment-seconds`` (20 s) is
read block by block and split at its pauses (:mod:`wav2vec2_ee.segmentation`: Silero VAD where
installed, else an energy detector); its pieces run as utterances of their own, each with its own exit,
and its text is theirs joined; only each piece's segment is kept, so memory stays bounded however long
the file (a one-hour recording: about 330 MB). Folders are walked for audio files as ``transcribe``
walks them; a file that cannot be transcribed is a result with its ``error`` and the others go on. The
command prints and logs what ``transcribe`` does: the rows of :mod:`wav2vec2_ee.transcripts`
(``--output`` / ``--resume``, ``--format text|tsv|jsonl|srt|vtt``).

The policies are the PyTorch engine's own (:mod:`wav2vec2_ee.policy_core`: the same classes, checks,
flags and saved-policy reader), on numpy exit views (:class:`ExitView`, whose statistics are the numpy
twins of the torch kernels): fixed, entropy, confidence, patience and learned, each with an optional
layer budget (:data:`POLICY_NAMES`; the posterior policy needs a lexicon beam search, which needs
PyTorch). Default: the folder's ``policy.json``, else the last exit.

This module imports nothing heavier than numpy (``onnxruntime`` when segments are loaded,
``soundfile`` when a file is read): never torch or transformers.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import audio as audio_io
from . import policy_core
from .batching import DEFAULT_MAX_BATCH_SECONDS, check_batching, length_grouped_batches
from .errors import UserError
from .export.runtime import OnnxSegments, exported_policy_values, load_segments, run_onnx_exits
from .policy_core import (
    LOW_QUANTILE,
    ExitPolicy,
    LayerBudget,
    exit_loop,
    policy_with_value,
    wants_saved_policy,
)
from .segmentation import (
    VADS,
    EnergyVAD,
    Piece,
    SileroVAD,
    SplitOptions,
    build_vad,
    iter_audio_blocks,
    pieces_of,
)
from .timestamps import Segment, Word, frame_seconds, token_strings, words_from_frames
from .transcripts import (
    OUTPUT_FORMATS,
    SUBTITLE_FORMATS,
    FormatWriter,
    InputOrder,
    ResultRow,
    ResultStream,
    TranscriptionLog,
)

#: The files a feature extractor's settings may be in (transformers 5 nests them in the processor's).
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class LiteError(UserError):
    """An input, a policy or a folder the lite runtime cannot use (the message names it)."""


@contextmanager
def _refused() -> Iterator[None]:
    """The policy core's refusals (a :class:`~wav2vec2_ee.errors.UserError`) as :class:`LiteError`, with
    the same message: the lite runtime's one error type."""
    try:
        yield
    except LiteError:
        raise
    except UserError as err:
        raise LiteError(str(err)) from None


# --------------------------------------------------------------------------------------------------
# the folder's processor files


@dataclass(frozen=True)
class FeatureSettings:
    """The exported feature extractor's settings that inference needs."""

    sampling_rate: int = 16_000
    do_normalize: bool = True
    padding_value: float = 0.0

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> FeatureSettings:
        """From ``preprocessor_config.json`` or ``processor_config.json``'s ``feature_extractor`` (defaults:
        wav2vec2's 16 kHz, normalised)."""
        for name in _PROCESSOR_FILES:
            file = Path(folder) / name
            if not file.is_file():
                continue
            values = json.loads(file.read_text(encoding="utf-8"))
            values = values.get("feature_extractor", values) if isinstance(values, dict) else {}
            if "sampling_rate" in values or "do_normalize" in values:
                return cls(
                    int(values.get("sampling_rate", 16_000)),
                    bool(values.get("do_normalize", True)),
                    float(values.get("padding_value", 0.0)),
                )
        return cls()

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """``(samples,)`` float32 input values (``Wav2Vec2FeatureExtractor``'s zero-mean unit-variance norm)."""
        array = np.asarray(array, dtype=np.float32)
        if not self.do_normalize:
            return array
        return (array - array.mean()) / np.sqrt(array.var() + 1e-7)

    def batch(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(batch, samples)`` normalised, right-padded float32 input values and their int64 mask."""
        values = [self.normalize(a) for a in arrays]
        width = max(len(v) for v in values)
        batch = np.full((len(values), width), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(values), width), dtype=np.int64)
        for row, value in enumerate(values):
            batch[row, : len(value)] = value
            mask[row, : len(value)] = 1
        return batch, mask


class Vocabulary:
    """Greedy CTC decoding with the folder's ``vocab.json`` and ``tokenizer_config.json`` (what
    ``Wav2Vec2CTCTokenizer.decode`` does: repeats merged, the blank (pad) dropped, the word delimiter
    replaced, stripped), then normalised as the engine's transcripts (lower case, single spaces)."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        file = folder / "vocab.json"
        if not file.is_file():
            raise LiteError(f"{file}: no such file (the exported folder has no vocabulary)")
        vocab = json.loads(file.read_text(encoding="utf-8"))
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            language = settings.get("target_lang")
            if isinstance(vocab, dict) and language in vocab:
                vocab = vocab[language]
            else:
                raise LiteError(
                    f"{file}: not a flat token -> id vocabulary (set target_lang for a nested one)"
                )
        pad = settings.get("pad_token", "<pad>")
        delimiter = settings.get("word_delimiter_token", "|")
        replacement = settings.get("replace_word_delimiter_char", " ")
        self.lower_case = bool(settings.get("do_lower_case", False))
        self.pad_id = int(vocab.get(pad, 0))
        self.delimiter_id: int | None = int(vocab[delimiter]) if delimiter in vocab else None
        size = max(vocab.values()) + 1
        self.table = [""] * size
        tokens = [""] * size
        for token, index in vocab.items():
            self.table[index] = "" if token == pad else replacement if token == delimiter else token
            tokens[index] = token
        #: id -> lower-case text of the characters (the words' alphabet, as ``transcribe``'s)
        self.tokens = _Tokens(token_strings(tokens, pad, delimiter))

    def words(self, ids: np.ndarray, frame_seconds: float, offset: float = 0.0) -> list[Word]:
        """The words of ``(frames,)`` greedy ids with their times in seconds (frame ``f`` starts at
        ``offset + f * frame_seconds``): :func:`~wav2vec2_ee.timestamps.words_from_frames`, as
        ``transcribe --word-timestamps``."""
        return words_from_frames(ids, self.tokens, self.pad_id, self.delimiter_id, frame_seconds, offset)

    def decode(self, logits: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Normalised greedy transcripts of ``(batch, frames, vocab)`` logits on their valid frames."""
        ids = logits.argmax(-1)
        texts = []
        for row, length in enumerate(np.asarray(lengths).tolist()):
            seq = ids[row, : int(length)]
            keep = np.ones(len(seq), dtype=bool)
            keep[1:] = seq[1:] != seq[:-1]
            keep &= seq != self.pad_id
            text = "".join(self.table[i] if i < len(self.table) else "" for i in seq[keep].tolist()).strip()
            texts.append(" ".join(text.lower().split()))
        return texts


class _Tokens(dict):
    """id -> character; an id beyond the vocabulary is no character (as :meth:`Vocabulary.decode`)."""

    def __missing__(self, key: int) -> str:
        return ""


@dataclass(frozen=True)
class FrameGeometry:
    """What the exported CNN makes of audio (the folder's ``config.json``): ``frame_seconds`` per output
    frame (:func:`~wav2vec2_ee.timestamps.frame_seconds` of ``conv_stride``: 20 ms for wav2vec2) and
    ``min_samples``, the shortest input that gives one frame (400 samples for wav2vec2)."""

    frame_seconds: float = 0.02
    min_samples: int = 400

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> FrameGeometry:
        file = Path(folder) / "config.json"
        config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        kernels, strides = config.get("conv_kernel"), config.get("conv_stride")
        if not kernels or not strides or len(kernels) != len(strides):
            return cls()
        samples = 1
        for kernel, stride in reversed(list(zip(kernels, strides))):
            samples = (samples - 1) * int(stride) + int(kernel)
        return cls(frame_seconds(strides, audio_io.SAMPLING_RATE), samples)


# --------------------------------------------------------------------------------------------------
# exit statistics and policies (numpy twins of wav2vec2_ee.inference.policies)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float32)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _frame_mean(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    mask = np.arange(values.shape[-1])[None, :] < np.asarray(lengths)[:, None]
    count = np.maximum(mask.sum(-1), 1).astype(np.float32)
    return (values * mask).sum(-1, dtype=np.float32) / count


def mean_frame_entropy(logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(batch,)`` mean per-frame entropy (nats) over the valid frames."""
    lp = log_softmax(logits)
    return _frame_mean(-(np.exp(lp) * lp).sum(-1), lengths)


def mean_max_prob(logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(batch,)`` mean per-frame largest softmax probability over the valid frames."""
    return _frame_mean(np.exp(log_softmax(logits).max(-1)), lengths)


def low_quantile_max_prob(logits: np.ndarray, lengths: np.ndarray, q: float = LOW_QUANTILE) -> np.ndarray:
    """``(batch,)`` the ``q`` quantile (``numpy.quantile``) of the valid frames' largest probability."""
    top = np.exp(log_softmax(logits).max(-1))
    out = np.zeros(len(top), dtype=np.float32)
    for row, length in enumerate(np.asarray(lengths).tolist()):
        if length > 0:
            out[row] = np.quantile(top[row, : int(length)], q)
    return out


def mean_top_margin(logits: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(batch,)`` mean over valid frames of the largest minus the second largest probability."""
    top2 = -np.partition(-np.exp(log_softmax(logits)), 1, axis=-1)[..., :2]
    return _frame_mean(top2[..., 0] - top2[..., 1], lengths)


def non_blank_share(logits: np.ndarray, lengths: np.ndarray, blank_id: int) -> np.ndarray:
    """``(batch,)`` share of valid frames whose argmax is not the blank."""
    return _frame_mean((np.asarray(logits).argmax(-1) != blank_id).astype(np.float32), lengths)


def log_frames(lengths: np.ndarray) -> np.ndarray:
    """``(batch,)`` float32 ``log`` of the valid frames (at least 1)."""
    return np.log(np.maximum(np.asarray(lengths), 1).astype(np.float32))


class ExitView:
    """One exit's outputs for the utterances still running: the numpy
    :class:`~wav2vec2_ee.policy_core.View` the policies read (statistics computed once, on first use)."""

    def __init__(self, exit_index: int, layer: int, rows, logits, lengths, vocabulary: Vocabulary | None):
        self.exit_index, self.layer = exit_index, layer
        self.rows, self.logits, self.output_lengths = np.asarray(rows), logits, np.asarray(lengths)
        self.vocabulary = vocabulary
        self._stats: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def stat(self, name: str) -> np.ndarray | list[str]:
        """The per-utterance statistic ``name`` (:data:`STATISTICS`; computed once, then cached)."""
        if name not in self._stats:
            if name not in STATISTICS:
                raise LiteError(
                    f"the lite runtime does not compute the exit statistic {name!r}: it computes {sorted(STATISTICS)}"
                )
            self._stats[name] = STATISTICS[name](self)
        return self._stats[name]

    def derived(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A per-utterance value that needs more than this exit (the agreement with the previous exit's
        transcript, a learned score): ``compute()`` once, then cached like a statistic."""
        if name not in self._stats:
            self._stats[name] = compute()
        return self._stats[name]

    def host(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def native(self, values: np.ndarray) -> np.ndarray:
        return values

    def known_vocabulary(self, what: str) -> Vocabulary:
        """The folder's vocabulary (``what`` needs it)."""
        if self.vocabulary is None:
            raise LiteError(f"{what} needs the folder's vocabulary")
        return self.vocabulary

    def select(self, keep: np.ndarray) -> ExitView:
        """The view of the utterances ``keep`` (indices into this view)."""
        view = ExitView(
            self.exit_index,
            self.layer,
            self.rows[keep],
            self.logits[keep],
            self.output_lengths[keep],
            self.vocabulary,
        )
        view._stats = {
            name: (value[keep] if isinstance(value, np.ndarray) else [value[i] for i in keep.tolist()])
            for name, value in self._stats.items()
        }
        return view


#: Per-utterance statistics of one exit, from its view (the numpy twins of
#: :data:`wav2vec2_ee.inference.policies.STATISTICS`, without the posterior).
STATISTICS: dict[str, Callable[[ExitView], np.ndarray | list[str]]] = {
    "entropy": lambda v: mean_frame_entropy(v.logits, v.output_lengths),
    "max_prob": lambda v: mean_max_prob(v.logits, v.output_lengths),
    "max_prob_p10": lambda v: low_quantile_max_prob(v.logits, v.output_lengths),
    "margin": lambda v: mean_top_margin(v.logits, v.output_lengths),
    "non_blank": lambda v: non_blank_share(
        v.logits, v.output_lengths, v.known_vocabulary("the non_blank statistic (the blank id)").pad_id
    ),
    "log_frames": lambda v: log_frames(v.output_lengths),
    "transcripts": lambda v: v.known_vocabulary("transcripts").decode(v.logits, v.output_lengths),
}


# --------------------------------------------------------------------------------------------------
# policies (wav2vec2_ee.policy_core's, on the exit views above)


def _runnable(cls: type[ExitPolicy]) -> bool:
    """Whether the lite runtime computes what the policy reads (not a lexicon search, not references)."""
    return not (cls.needs_lexicon or cls.needs_references)


#: The policies of the lite runtime: those of :data:`wav2vec2_ee.policy_core.POLICY_NAMES` whose
#: statistics it computes.
POLICY_NAMES: tuple[str, ...] = tuple(
    name
    for name in policy_core.POLICY_NAMES
    if name not in policy_core.POLICIES or _runnable(policy_core.POLICIES[name])
)


def check_runnable(policy: ExitPolicy) -> ExitPolicy:
    """``policy``, unless it needs what the lite runtime does not have (a :class:`LiteError` then)."""
    base = policy.base_policy
    if not _runnable(type(base)):
        needs = "a lexicon beam search" if base.needs_lexicon else "the reference transcripts"
        raise LiteError(
            f"unknown exit policy {base.name!r} for the lite runtime: choose from {', '.join(POLICY_NAMES)} "
            f"(the {base.name} policy needs {needs}: use wav2vec2-ee transcribe)"
        )
    return policy


def build_policy(
    name: str, value: float | int | None = None, max_layer: int | None = None, **fitted
) -> ExitPolicy:
    """The policy ``name`` with its one parameter ``value`` (fixed: the layer, entropy / confidence /
    learned: the threshold, patience: the count), capped at ``max_layer`` when given (``budget``: the last
    exit, capped); the learned policy's ``model`` as a keyword (or from the folder's ``policy.json``).
    :func:`wav2vec2_ee.policy_core.policy_with_value`, its refusals as :class:`LiteError`."""
    with _refused():
        return check_runnable(policy_with_value(name, value, max_layer, **fitted))


def policy_from_flags(
    policy: str | None,
    threshold: float | None = None,
    patience: int | None = None,
    layer: int | None = None,
    max_layer: int | None = None,
    saved: dict | None = None,
) -> ExitPolicy:
    """The policy of ``--policy``, ``--threshold``, ``--patience``, ``--layer`` and ``--max-layer`` and the
    folder's saved policy ``saved``: the rules of ``wav2vec2-ee transcribe``
    (:func:`wav2vec2_ee.policy_core.policy_from_flags`), its refusals as :class:`LiteError`."""
    with _refused():
        return check_runnable(
            policy_core.policy_from_flags(policy, threshold, patience, layer, max_layer, saved)
        )


# --------------------------------------------------------------------------------------------------
# the engine


@dataclass
class LiteResult(ResultRow):
    """One input's answer: its normalised transcript, the exit that gave it and what it cost; the row of
    ``wav2vec2-ee transcribe``'s ``--output`` (:meth:`to_dict`: the columns of
    :data:`~wav2vec2_ee.transcripts.ROW_FIELDS`; that module describes each).

    Args:
        text: the transcript (an input split at its pauses: its segments' texts joined by spaces);
            empty when ``error`` is set.
        exit_index / exit_layer: the exit that answered (split: the deepest over the segments); ``-1`` /
            ``None`` when ``error`` is set or no piece had speech.
        source: the path as given, or ``<array i>`` for the i-th array.
        layers_computed: layers run for it (split: the segments' mean weighted by their audio); 0 when
            ``error`` is set.
        num_layers: the model's depth (the layer of its last exit).
        seconds: its share of the compute time of the batches it ran in (each batch's time split in
            proportion to audio x layers run; audio decoding excluded): the results' ``seconds`` add up
            to the compute time.
        audio_seconds: its duration.
        error: why it was not transcribed (``None``: it was); names the input.
        chunks: the pieces it ran as (1: whole; split: its segments; 0 when ``error`` is set or no piece
            had speech).
        path: its resolved absolute path (what identifies it across runs); ``None`` for an array.
        latency_seconds: seconds from the start of its first batch until its answer was ready (split:
            the reading and splitting between its batches included).
        decoder: what gave ``text``: ``greedy`` (the lite runtime has no lexicon search).
        segments: the pieces it ran as, in order (:class:`~wav2vec2_ee.timestamps.Segment`: start and end
            in the recording, text, exit layer, layers run, and with ``word_timestamps`` its words); one
            for an input run whole, none when ``error`` is set.
    """

    text: str
    exit_index: int
    exit_layer: int | None
    source: str = "<array>"
    layers_computed: int | float = 0
    num_layers: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    error: str | None = None
    chunks: int = 1
    path: str | None = None
    latency_seconds: float = 0.0
    decoder: str = "greedy"
    segments: list[Segment] = field(default_factory=list)


@dataclass
class _Answer:
    """One row of a batch: the exit that answered, its transcript, its greedy ids on the row's valid
    frames (when asked), and when it was ready (``time.perf_counter()``)."""

    exit_index: int
    text: str
    ids: np.ndarray | None = None
    ready: float = 0.0


def _exit_answers(
    segments: OnnxSegments,
    input_values: np.ndarray,
    attention_mask: np.ndarray | None,
    policy: ExitPolicy,
    vocabulary: Vocabulary,
    with_ids: bool = False,
) -> list[_Answer]:
    """:func:`run_lite_early_exit`'s answers, each with when it was ready and, ``with_ids``, its ids."""
    with _refused():
        deepest = policy.deepest_exit(segments.exit_layers)
    answers: list[_Answer] = [_Answer(-1, "")] * len(input_values)

    def record(view: ExitView) -> None:
        texts = view.stat("transcripts")
        ready = time.perf_counter()
        ids = view.logits.argmax(-1) if with_ids else None
        lengths = view.output_lengths.tolist()
        for j, (row, text) in enumerate(zip(view.rows.tolist(), texts)):
            row_ids = None if ids is None else ids[j, : int(lengths[j])]
            answers[row] = _Answer(view.exit_index, text, row_ids, ready)

    exit_loop(
        run_onnx_exits(segments, input_values, attention_mask, range(deepest + 1)),
        deepest,
        lambda step: ExitView(
            step.exit_index, step.layer, step.rows, step.logits, step.output_lengths, vocabulary
        ),
        lambda history: np.asarray(policy.should_exit(history), dtype=bool),
        np.flatnonzero,
        record,
    )
    return answers


def run_lite_early_exit(
    segments: OnnxSegments,
    input_values: np.ndarray,
    attention_mask: np.ndarray | None,
    policy: ExitPolicy,
    vocabulary: Vocabulary,
) -> list[tuple[int, str]]:
    """``(exit_index, transcript)`` per row of a normalised, padded batch: the PyTorch engine's loop
    (:func:`~wav2vec2_ee.policy_core.exit_loop`) on the ONNX segments with numpy exit views."""
    answers = _exit_answers(segments, input_values, attention_mask, policy, vocabulary)
    return [(a.exit_index, a.text) for a in answers]


def read_audio(path: str | os.PathLike) -> np.ndarray:
    """``(samples,)`` float32 mono 16 kHz audio of a file (:func:`wav2vec2_ee.audio.load_audio`: soundfile;
    other rates resampled with soxr when it is installed, refused otherwise)."""
    with _as_lite_error():
        return audio_io.load_audio(path)


def to_mono(array: np.ndarray, rate: int, source: str = "<array>") -> np.ndarray:
    """``(samples,)`` float32 mono 16 kHz from ``(samples,)`` or ``(samples, channels)`` at ``rate``."""
    with _as_lite_error():
        return audio_io.to_mono_16k(array, rate, source)


@contextmanager
def _as_lite_error() -> Iterator[None]:
    """An input that cannot be read (:class:`~wav2vec2_ee.audio.AudioError`) or another refusal (a
    :class:`~wav2vec2_ee.errors.UserError`: a missing extra, a bad option) as :class:`LiteError`."""
    try:
        yield
    except LiteError:
        raise
    except UserError as err:
        raise LiteError(str(err)) from err


@dataclass
class _Input:
    """One input of :meth:`LiteTranscriber.transcribe`: a file (decoded when its batch runs, or read block
    by block when it is split) or an array (16 kHz mono already), its duration in seconds (the file's
    header, once measured), or why it cannot be used (``error``: a folder without audio, a named pipe
    found in a folder, an array that is no waveform)."""

    source: str
    seconds: float = 0.0
    path: str | os.PathLike | None = None
    array: np.ndarray | None = None
    error: str | None = None
    measured: bool = False

    @classmethod
    def of(cls, index: int, item, sampling_rate: int) -> _Input:
        """The input ``item`` (a path, or an array at ``sampling_rate``), its duration measured; a
        :class:`LiteError` naming it when it cannot be used (missing, not a regular file, no audio)."""
        if isinstance(item, np.ndarray):
            array = to_mono(item, sampling_rate, f"<array {index}>")
            return cls(f"<array {index}>", len(array) / audio_io.SAMPLING_RATE, array=array, measured=True)
        with _as_lite_error():
            return cls(str(item), audio_io.audio_duration(item), path=item, measured=True)

    @property
    def is_array(self) -> bool:
        return self.array is not None

    @property
    def key(self) -> str:
        """What identifies the recording across runs (``--output``'s rows): a file's resolved path
        (``.`` and an absolute path name one file; links resolved), ``<array i>`` for an array."""
        if self.is_array:
            return self.source
        return os.path.realpath(self.path if self.path is not None else self.source)

    @property
    def resolved(self) -> str | None:
        """:attr:`LiteResult.path`: the resolved path, ``None`` for an array."""
        return None if self.is_array else self.key

    def measure(self) -> None:
        """Its duration from the header (a file), once; a :class:`LiteError` naming it when it cannot be
        used."""
        if self.error is not None:
            raise LiteError(self.error)
        if not self.measured:
            with _as_lite_error():
                self.seconds = audio_io.audio_duration(self.path)  # type: ignore[arg-type]
            self.measured = True

    def read(self) -> np.ndarray:
        """The ``(samples,)`` float32 16 kHz waveform (a file decoded now)."""
        return self.array if self.array is not None else read_audio(self.path)  # type: ignore[arg-type]

    def blocks(self, counted: list[int]) -> Iterator[np.ndarray]:
        """Its 16 kHz audio in blocks of :data:`_BLOCK_SECONDS` (a file decoded block by block, never
        whole: :func:`~wav2vec2_ee.segmentation.iter_audio_blocks`); ``counted[0]`` counts the samples."""
        if self.array is not None:
            step = int(_BLOCK_SECONDS * audio_io.SAMPLING_RATE)
            source = (self.array[i : i + step] for i in range(0, len(self.array), step))
        else:
            source = iter_audio_blocks(self.path, _BLOCK_SECONDS, self.source)  # type: ignore[arg-type]
        for block in source:
            counted[0] += len(block)
            yield block


def expand_inputs(items: Sequence, sampling_rate: int = audio_io.SAMPLING_RATE) -> list[_Input]:
    """One :class:`_Input` per recording, in order: folders walked for audio files as ``transcribe``
    walks them (:func:`~wav2vec2_ee.audio.walk_audio_files`: recursively, audio extensions, sorted; a
    named pipe, socket or device found there is an input with its ``error``, never opened; a folder
    without audio is one), arrays (at ``sampling_rate``) named ``<array i>`` by their position and made
    16 kHz mono now. Files are not opened here."""
    out: list[_Input] = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            source = f"<array {i}>"
            try:
                array = to_mono(item, sampling_rate, source)
            except LiteError as err:
                out.append(_Input(source, array=np.zeros(0, np.float32), error=str(err)))
                continue
            out.append(_Input(source, len(array) / audio_io.SAMPLING_RATE, array=array, measured=True))
        elif os.path.isdir(item):
            found = audio_io.walk_audio_files(item)
            for path in found:
                error = None
                if audio_io.is_special_file(path):
                    try:
                        audio_io.check_regular_file(path)
                    except audio_io.AudioError as err:
                        error = str(err)
                out.append(_Input(path, path=path, error=error))
            if not found:
                out.append(_Input(str(item), error=f"{item}: no audio files in this folder"))
        else:
            out.append(_Input(str(item), path=item))
    return out


class LiteStream(ResultStream[LiteResult]):
    """The results of :meth:`LiteTranscriber.transcribe_stream` (:class:`~wav2vec2_ee.transcripts.ResultStream`
    of :class:`LiteResult`)."""


#: How recordings are split unless told otherwise (``--max-segment-seconds 20``, ``--vad auto``: as
#: ``transcribe``).
DEFAULT_SPLIT = SplitOptions()

#: With splitting off, inputs longer than this many seconds are refused (as ``transcribe --max-seconds``).
DEFAULT_MAX_SECONDS = 60.0

#: Seconds of audio per block when a long file is read (and a long array fed to the splitter).
_BLOCK_SECONDS = 30.0

#: Consecutive inputs (in batches' worth) whose whole ones are length-grouped together, and pieces of a
#: long one gathered before they are length-grouped: a result waits at most this many batches for an
#: earlier input (as ``transcribe``).
_GROUP_BATCHES = 4


class LiteTranscriber:
    """Transcribe with an exported folder, torch-free (see the module docstring).

    Args:
        folder: a folder written by ``wav2vec2-ee export``.
        policy: an exit policy (:mod:`wav2vec2_ee.policy_core`), a policy name (with ``value`` /
            ``max_layer``, :func:`build_policy`), or ``None``: the folder's ``policy.json`` if it has one,
            else the last exit (under ``max_layer`` when given).
        precision: ``"float"`` or ``"int8"`` (default: int8 where the folder has it).
        batch_size: utterances per batch (grouped by length, so padding stays small).
        max_batch_seconds: seconds of padded audio per batch (``batch_size`` times the longest), as
            ``transcribe``'s ``--max-batch-seconds``: memory stays bounded whatever ``batch_size`` is; a
            longer input runs alone. ``None``: no bound.
        num_threads: onnxruntime intra-op threads per session.
        providers: onnxruntime execution providers (default: CPU).
        split: how an input longer than ``split.max_seconds`` is split at its pauses
            (:class:`~wav2vec2_ee.segmentation.SplitOptions`, ``transcribe``'s ``--max-segment-seconds``
            / ``--vad``; default :data:`DEFAULT_SPLIT`: 20 s, ``auto``): read block by block, its pieces
            run as utterances of their own (length-grouped into batches, each with its own exit), so
            memory stays bounded however long it is. Shorter inputs run whole. ``None``: never split
            (each input in one pass: memory grows with the square of its length; ``max_seconds``
            applies).
        max_seconds: with splitting off (``split=None``), an input longer than this is refused (an
            error naming it, its duration and the limit), as ``transcribe``'s ``--max-seconds``.
            ``None``: no limit.
        word_timestamps: give each segment its words, timed from the CTC alignment
            (:func:`~wav2vec2_ee.timestamps.words_from_frames`).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        policy: ExitPolicy | str | None = None,
        *,
        value: float | int | None = None,
        max_layer: int | None = None,
        precision: str | None = None,
        batch_size: int = 8,
        max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        split: SplitOptions | None = DEFAULT_SPLIT,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        word_timestamps: bool = False,
    ):
        with _refused():
            check_batching(batch_size, max_batch_seconds)
        if max_seconds is not None and not float(max_seconds) > 0:
            raise LiteError(f"--max-seconds must be a number > 0, got {max_seconds}")
        if split is not None and not isinstance(split, SplitOptions):
            raise TypeError(f"split must be a SplitOptions or None, got {type(split).__name__}")
        self.folder = Path(folder)
        with _refused():  # a folder that does not verify (export.runtime), as a LiteError
            self.segments = load_segments(
                self.folder, precision, providers=providers, num_threads=num_threads
            )
        self.features = FeatureSettings.from_folder(self.folder)
        self.vocabulary = Vocabulary(self.folder)
        self.geometry = FrameGeometry.from_folder(self.folder)
        self.policy = self._policy(policy, value, max_layer)
        self.batch_size = int(batch_size)
        self.max_batch_seconds = None if max_batch_seconds is None else float(max_batch_seconds)
        self.split = split
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.word_timestamps = bool(word_timestamps)
        self._vad: EnergyVAD | SileroVAD | None = None
        if split is not None:
            with _as_lite_error():  # --vad silero without its package: one line naming the extra
                self._vad = build_vad(split.vad)

    def _policy(
        self, policy: ExitPolicy | str | None, value: float | int | None, max_layer: int | None
    ) -> ExitPolicy:
        """The policy the arguments name (see the class docstring), checked against the folder's exits."""
        with _refused():
            if isinstance(policy, str):
                policy = build_policy(policy, value, max_layer)
            elif value is not None:
                raise LiteError(f"value {value} needs a policy name (the policy it is the value of)")
            elif policy is None:
                saved = self.segments.policy()
                policy = policy_core.policy_from_flags(None, max_layer=max_layer, saved=saved)
            elif max_layer is not None:
                policy = LayerBudget(policy, max_layer)
            check_runnable(policy)
            policy.deepest_exit(self.segments.exit_layers)  # a layer that is not an exit fails now
        return policy

    @property
    def num_layers(self) -> int:
        """The model's depth: the layer of its last exit."""
        return int(self.segments.exit_layers[-1])

    # ----------------------------------------------------------------------------------------------
    # the API

    def transcribe(
        self, audio, sampling_rate: int | None = None, raise_errors: bool = True
    ) -> LiteResult | list[LiteResult]:
        """Transcribe a path, an array (mono, at the model's rate unless ``sampling_rate`` says), a folder
        (walked for audio files), or a list of them (a list in, a list out, in input order; a folder
        gives a list). Files are decoded when their batch runs; one longer than ``split.max_seconds`` is
        read block by block and split at its pauses.

        ``raise_errors``: every input is checked first (files from their headers) and a
        :class:`LiteError` names the first that cannot be transcribed (missing, not audio, too short,
        ...), before any runs; ``False``: such an input's result has its ``error`` set and the others are
        transcribed."""
        single = isinstance(audio, np.ndarray) or (
            isinstance(audio, (str, os.PathLike)) and not os.path.isdir(audio)
        )
        items = [audio] if isinstance(audio, (str, os.PathLike, np.ndarray)) else list(audio)
        inputs = expand_inputs(items, sampling_rate or self.features.sampling_rate)
        if raise_errors:
            for item in inputs:
                self._check(item)
        results = list(self._in_order(inputs))
        if raise_errors:
            failed = next((r for r in results if r.error is not None), None)
            if failed is not None:
                raise LiteError(failed.error)
        return results[0] if single else results

    def transcribe_stream(
        self,
        audio: Sequence,
        sampling_rate: int | None = None,
        skip: Collection[str] = (),
        once: bool = False,
    ) -> LiteStream:
        """Transcribe a list of inputs (paths, folders, arrays), giving each result in input order as
        soon as it and every input before it are done (whole inputs are length-grouped among a few
        batches' worth of consecutive inputs, so a result waits a few batches at most); an input that
        cannot be transcribed is a result with its ``error`` (the others go on). Inputs whose source or
        resolved path is in ``skip`` are left out (a resumed run); ``once``: a file named twice (``.``
        and its absolute path) runs once. Folders are walked now (``total`` is known)."""
        inputs = expand_inputs(list(audio), sampling_rate or self.features.sampling_rate)
        seen = set(skip)
        plan = []
        for item in inputs:
            if item.source in seen or item.key in seen:
                continue
            if once:
                seen.add(item.key)
            plan.append(item)
        return LiteStream(len(plan), self._in_order(plan))

    # ----------------------------------------------------------------------------------------------
    # scheduling: whole inputs batched by length among consecutive ones, long ones split, in order

    def _splits(self, item: _Input) -> bool:
        """Whether the input is split at its pauses (longer than ``split.max_seconds``)."""
        return self.split is not None and item.seconds > self.split.max_seconds

    def _check(self, item: _Input) -> None:
        """Measure an input (a file: its header) and check it against the limits: a :class:`LiteError`
        naming it when it cannot be transcribed."""
        item.measure()
        if self._splits(item):
            return
        if self.split is None and self.max_seconds is not None and item.seconds > self.max_seconds:
            raise LiteError(
                f"{item.source}: {item.seconds:.1f} s of audio is longer than the limit of {self.max_seconds:g} s "
                f"(--max-seconds, LiteTranscriber(max_seconds=...)) for one pass, which would take minutes and "
                f"much memory; let it be split at its pauses (the default: --max-segment-seconds "
                f"{DEFAULT_SPLIT.max_seconds:g}, LiteTranscriber(split=SplitOptions())), or raise the limit"
            )
        self._check_short(item, round(item.seconds * audio_io.SAMPLING_RATE))

    def _check_short(self, item: _Input, samples: int) -> None:
        if samples < self.geometry.min_samples:
            raise LiteError(
                f"{item.source}: {samples} samples is too short for the model "
                f"(at least {self.geometry.min_samples} samples at 16 kHz)"
            )

    def _in_order(self, inputs: list[_Input]) -> Iterator[LiteResult]:
        order = InputOrder()
        group = _GROUP_BATCHES * self.batch_size
        window: list[int] = []

        def flush() -> Iterator[LiteResult]:
            members = list(window)
            window.clear()
            for batch in self._run_whole([inputs[i] for i in members]):
                for j, result in batch:
                    yield from order.add(members[j], result)

        for i, item in enumerate(inputs):
            try:
                self._check(item)
            except LiteError as err:
                yield from order.add(i, self._failed(item, str(err)))
                continue
            if self._splits(item):
                yield from flush()  # the inputs before it first: results stay in input order
                try:
                    result = self._transcribe_split(item)
                except LiteError as err:
                    result = self._failed(item, str(err))
                yield from order.add(i, result)
            else:
                window.append(i)
                if len(window) >= group:
                    yield from flush()
        yield from flush()

    def _answer_batch(self, arrays: Sequence[np.ndarray]) -> tuple[list[_Answer], list[float], float]:
        """Run one batch of 16 kHz waveforms: the answers, each row's share of the batch's time (in
        proportion to its audio x the layers it ran) and when the batch started."""
        started = time.perf_counter()
        values, mask = self.features.batch(arrays)
        answers = _exit_answers(
            self.segments, values, mask, self.policy, self.vocabulary, self.word_timestamps
        )
        elapsed = time.perf_counter() - started
        weights = [
            len(a) * self.segments.exit_layers[answer.exit_index] for a, answer in zip(arrays, answers)
        ]
        total = sum(weights) or 1
        return answers, [elapsed * w / total for w in weights], started

    def _segment(self, answer: _Answer, start: int, end: int) -> Segment:
        """The segment of samples ``[start, end)`` of a recording and its answer."""
        rate = audio_io.SAMPLING_RATE
        words = None
        if self.word_timestamps and answer.ids is not None:
            words = self.vocabulary.words(answer.ids, self.geometry.frame_seconds, start / rate)
        layer = self.segments.exit_layers[answer.exit_index]
        return Segment(round(start / rate, 3), round(end / rate, 3), answer.text, words, layer, layer)

    def _run_whole(self, items: list[_Input]) -> Iterator[list[tuple[int, LiteResult]]]:
        """Inputs run whole, in batches of similar length (:func:`length_grouped_batches`), each decoded
        when its batch runs: per batch, ``(position in items, result)`` pairs; an input that cannot be
        decoded is a result with its error."""
        layers = self.segments.exit_layers
        durations = [item.seconds for item in items]
        for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
            rows, arrays, out = [], [], []
            for j in batch:
                try:
                    array = items[j].read()
                    self._check_short(items[j], len(array))
                except LiteError as err:
                    out.append((j, self._failed(items[j], str(err))))
                    continue
                rows.append(j)
                arrays.append(array)
            if rows:
                answers, shares, started = self._answer_batch(arrays)
                for j, array, answer, share in zip(rows, arrays, answers, shares):
                    item, layer = items[j], layers[answer.exit_index]
                    result = LiteResult(
                        answer.text,
                        answer.exit_index,
                        layer,
                        item.source,
                        layers_computed=layer,
                        num_layers=self.num_layers,
                        seconds=share,
                        audio_seconds=len(array) / audio_io.SAMPLING_RATE,
                        path=item.resolved,
                        latency_seconds=answer.ready - started,
                        segments=[self._segment(answer, 0, len(array))],
                    )
                    out.append((j, result))
            yield out

    def _transcribe_split(self, item: _Input) -> LiteResult:
        """A long input split at its pauses as it is read (a file block by block, never whole): a few
        batches' worth of pieces at a time are length-grouped into batches and run (each piece exits on
        its own and is one segment); the texts are joined; the silence between pieces is never run. Of
        a piece run, only its segment and figures are kept (not its audio): memory stays bounded."""
        assert self.split is not None
        rate = audio_io.SAMPLING_RATE
        counted = [0]
        done: list[_Done] = []
        started: list[float] = []
        pending: list[Piece] = []
        most = _GROUP_BATCHES * self.batch_size
        seconds_cap = 2 * self.max_batch_seconds if self.max_batch_seconds is not None else float("inf")

        def run() -> None:
            durations = [len(piece.audio) / rate for piece in pending]
            answered = []
            for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
                arrays = [_pad_to(pending[j].audio, self.geometry.min_samples) for j in batch]
                answers, shares, start = self._answer_batch(arrays)
                started.append(start)
                for j, answer, share in zip(batch, answers, shares):
                    piece = pending[j]
                    segment = self._segment(answer, piece.start, piece.end)
                    answered.append(_Done(segment, answer.exit_index, len(piece.audio), share, answer.ready))
            done.extend(sorted(answered, key=lambda entry: entry.segment.start))
            pending.clear()

        with _as_lite_error():  # a file that fails to decode midway: the whole file is an error
            for piece in pieces_of(item.blocks(counted), self.split, self._vad):
                pending.append(piece)
                if len(pending) >= most or sum(len(p.audio) for p in pending) / rate >= seconds_cap:
                    run()
        if pending:
            run()
        layers = [self.segments.exit_layers[d.exit_index] for d in done]
        samples = [d.samples for d in done]
        deepest = max((d.exit_index for d in done), default=-1)
        return LiteResult(
            " ".join(d.segment.text for d in done if d.segment.text),
            deepest,
            self.segments.exit_layers[deepest] if done else None,
            item.source,
            layers_computed=float(np.dot(layers, samples) / sum(samples)) if samples else 0.0,
            num_layers=self.num_layers,
            seconds=sum(d.seconds for d in done),
            audio_seconds=counted[0] / rate,
            chunks=len(done),
            path=item.resolved,
            latency_seconds=max(d.ready for d in done) - min(started) if done else 0.0,
            segments=[d.segment for d in done],
        )

    def _failed(self, item: _Input, error: str) -> LiteResult:
        return LiteResult(
            "",
            -1,
            None,
            item.source,
            layers_computed=0,
            num_layers=self.num_layers,
            audio_seconds=item.seconds,
            error=error,
            chunks=0,
            path=item.resolved,
        )


@dataclass
class _Done:
    """A piece of a long input, answered: its segment, the exit that answered, its samples, its share of
    its batch's time and when its answer was ready (its audio is not kept)."""

    segment: Segment
    exit_index: int
    samples: int
    seconds: float
    ready: float


def _pad_to(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` padded with zeros at its end to at least ``samples`` (a last sliver of a stretch of
    speech cut in two may be shorter than the model's shortest input)."""
    short = samples - len(audio)
    return np.pad(audio, (0, short)) if short > 0 else audio


# --------------------------------------------------------------------------------------------------
# python -m wav2vec2_ee.lite

PROG = "python -m wav2vec2_ee.lite"


def say(message: str) -> None:
    """One line on stderr, after the command's name (what the command tells, not its results)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def show(line: str) -> None:
    """One line of results on stdout, flushed (a reader sees each file as soon as it is done)."""
    print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe audio files with an exported folder (onnxruntime, numpy, soundfile; no torch), "
        "as `wav2vec2-ee transcribe` does: a file longer than --max-segment-seconds is read block by block and "
        "split at its pauses; each file's result is printed (and appended to --output) as soon as it and the "
        "files before it are done. A file that cannot be transcribed does not stop the others: its error goes "
        "to stderr (and into its row), and the exit status is 1. Ctrl-C stops with one line saying what was "
        "written where (exit 130).",
    )
    parser.add_argument("folder", help="a folder written by `wav2vec2-ee export`")
    parser.add_argument(
        "audio",
        nargs="+",
        help="audio files (mono or multi-channel; 16 kHz unless soxr is installed) or folders (walked for "
        "audio files)",
    )
    parser.add_argument(
        "--policy",
        choices=POLICY_NAMES,
        default=None,
        help="exit policy (default: the folder's policy.json, else the last exit)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="entropy / confidence / learned threshold"
    )
    parser.add_argument("--patience", type=int, default=None, help="patience: consecutive exits that agree")
    parser.add_argument("--layer", type=int, default=None, help="fixed: the exit layer")
    parser.add_argument("--max-layer", type=int, default=None, help="never compute beyond this exit layer")
    parser.add_argument("--precision", choices=("float", "int8"), default=None)
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per batch (grouped by length)")
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=DEFAULT_MAX_BATCH_SECONDS,
        help="seconds of padded audio per batch (bounds memory, as transcribe's)",
    )
    parser.add_argument(
        "--max-segment-seconds",
        type=float,
        default=DEFAULT_SPLIT.max_seconds,
        help="a file longer than this is read block by block and split at its pauses (voice activity) into "
        "pieces of at most this many seconds, each with its own exit (memory stays bounded for hour-long "
        "files); shorter files run whole; 0: off (every file in one pass, --max-seconds applies)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="with splitting off (--max-segment-seconds 0), refuse (report as failed) a file longer than this "
        "many seconds: it would run in one pass, for minutes and much memory",
    )
    parser.add_argument(
        "--vad",
        choices=VADS,
        default=DEFAULT_SPLIT.vad,
        help="what finds the pauses: silero (Silero VAD, the [vad] extra), energy (frame energy against the "
        "recording's noise floor), auto (silero where installed, else energy)",
    )
    parser.add_argument(
        "--vad-threshold",
        type=float,
        default=None,
        help="speech probability that starts speech (default: the detector's, 0.5 / 0.35)",
    )
    parser.add_argument(
        "--word-timestamps",
        action="store_true",
        help="give each segment its words with their start and end (seconds, from the CTC alignment): in "
        "--format jsonl and the --output rows",
    )
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default=None,
        help="what is printed, each file as soon as it and the files before it are done: text (a line per "
        "file: path, exit layer, seconds, transcript), tsv (a header line, then the --output columns but "
        "segments), jsonl (a JSON row per file, its segments included), srt / vtt (subtitles of the file's "
        "segments: printed for one input, one file per input in --output-dir), ctm (a NIST CTM line per "
        "word: id, channel, start, duration, word; turns --word-timestamps on)",
    )
    parser.add_argument("--json", action="store_true", help="deprecated spelling of --format jsonl")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="--format srt / vtt: write one subtitle file per input here (NAME.srt, NAME.vtt)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="also write one row per file (transcribe --output's rows) to this .jsonl or .csv file, appended "
        "and synced in input order as files are done; one run at a time writes it (a lock file .NAME.lock "
        "beside it)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="--output exists: skip the files it has transcribed (by resolved path) and retry those whose row "
        "is an error (a partial last line is redone); only a transcription log is continued",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="onnxruntime threads per session")
    return parser


def _format_of(args: argparse.Namespace) -> str:
    """``--format`` (``--json``: its deprecated spelling of ``jsonl``, said on stderr in one line)."""
    if args.json:
        if args.format not in (None, "jsonl"):
            raise LiteError(f"--json is --format jsonl: it does not go with --format {args.format}")
        say("warning: --json is deprecated: use --format jsonl")
        return "jsonl"
    return args.format or "text"


def _check_flags(args: argparse.Namespace, fmt: str) -> TranscriptionLog | None:
    """The usage errors that need neither the model nor a lock (as ``transcribe``'s); ``--output``'s
    log, ``None`` without it."""
    if args.output is not None and not args.output.lower().endswith((".jsonl", ".csv")):
        raise LiteError(f"--output {args.output}: must end in .jsonl or .csv")
    if args.resume and args.output is None:
        raise LiteError("--resume needs --output FILE (the results to continue)")
    if args.output_dir is not None and fmt not in SUBTITLE_FORMATS:
        raise LiteError("--output-dir is where --format srt / vtt writes a subtitle file per input")
    missing = [a for a in args.audio if not os.path.exists(a)]
    if missing:
        raise LiteError(f"{', '.join(missing)}: no such file")
    several = len(args.audio) > 1 or any(os.path.isdir(a) for a in args.audio)
    if fmt in SUBTITLE_FORMATS and several and args.output_dir is None:
        raise LiteError(
            f"--format {fmt} with several inputs writes a subtitle file per input: give --output-dir"
        )
    return TranscriptionLog(args.output) if args.output is not None else None


def _resumed(log: TranscriptionLog, args: argparse.Namespace) -> set[str]:
    """``--output``'s usage errors, checked holding its lock (an existing file needs ``--resume``; only a
    transcription log is continued); what ``--resume`` skips: the files its rows transcribed."""
    if os.path.exists(args.output) and not args.resume:
        raise LiteError(
            f"--output {args.output} exists: pass --resume to continue it (its transcribed files are skipped, "
            "failed ones retried), or remove it"
        )
    log.check()
    if not args.resume:
        return set()
    rows = log.rows()
    done = log.finished(rows)
    if rows:
        failed = len(rows) - len(done)
        retried = f", {failed} that failed retried" if failed else ""
        say(f"resuming: {len(done)} file(s) of {args.output} skipped{retried}")
    return done


class _Printer:
    """What the command prints, each result as it comes (in input order): ``--format``'s form on stdout
    (:class:`~wav2vec2_ee.transcripts.FormatWriter`, as ``transcribe``; srt / vtt with several inputs:
    a file per input in ``--output-dir``), errors on stderr; counts what was written for the end's status
    and for Ctrl-C."""

    def __init__(self, fmt: str, output_dir: str | None, log: str | None):
        self.format = fmt
        self.writer = FormatWriter(fmt, output_dir, show)
        self.log = log
        self.stream: LiteStream | None = None
        self.written = 0
        self.failed = 0
        self.total = 0

    def start(self, stream: LiteStream) -> None:
        self.stream = stream
        self.writer.start()

    def result(self, result: LiteResult) -> None:
        self.total += 1
        if not result.ok:
            self.failed += 1
            say(f"error: {result.error}")
        self.writer.write(result.to_dict(), result.source, result.ok)
        self.written += 1

    def interrupted(self) -> int:
        """Ctrl-C: one line saying what was written where (it stays); exit status 130."""
        sys.stdout.flush()
        total = f" of {self.stream.total}" if self.stream is not None else ""
        where = f"{self.log} (--resume continues)" if self.log is not None else self.writer.where()
        say(f"interrupted: {self.written}{total} files written to {where}")
        return 130

    def finish(self) -> int:
        """The count of failures on stderr; the exit status (1: any failed)."""
        sys.stdout.flush()
        if self.failed:
            say(f"{self.failed} of {self.total} file(s) could not be transcribed")
        return 1 if self.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wav2vec2_ee.lite FOLDER AUDIO...``: exit status 0; 1 when a file could not be
    transcribed (the others were); 2 on a usage error (nothing transcribed); 130 when interrupted
    (what was written stays: ``--output --resume`` continues)."""
    args = _parser().parse_args(argv)
    printer = None
    try:
        fmt = _format_of(args)
        log = _check_flags(args, fmt)
        printer = _Printer(fmt, args.output_dir, args.output)
        with log.lock() if log is not None else nullcontext():
            skip = _resumed(log, args) if log is not None else set()
            transcriber = _transcriber(args, fmt)
            stream = transcriber.transcribe_stream(args.audio, skip=skip, once=log is not None)
            printer.start(stream)
            with log if log is not None else nullcontext():
                for result in stream:
                    if log is not None:
                        log.write([result.to_dict()])
                    printer.result(result)
            if log is not None:
                log.compact()
    except BrokenPipeError:  # stdout closed early (| head): what was written stays; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (LiteError, UserError) as err:
        say(f"error: {err}")
        return 2
    except OSError as err:  # --output's disk full, a folder without permission: one line naming the file
        say(f"error: {_os_message(err)}")
        return 2
    except KeyboardInterrupt:
        if printer is None:
            raise
        return printer.interrupted()
    return printer.finish()


def _os_message(err: OSError) -> str:
    """``<file>: <reason>`` of an operating-system error (as ``wav2vec2-ee``'s dispatcher says it); the
    message as it is for one raised with a message."""
    if err.filename is None or not err.strerror:
        return str(err)
    hint = " (the disk is full)" if err.errno == errno.ENOSPC else ""
    return f"{err.filename}: {err.strerror}{hint}"


def _transcriber(args: argparse.Namespace, fmt: str = "text") -> LiteTranscriber:
    """The :class:`LiteTranscriber` of the flags (the policy: :func:`policy_from_flags`, the rules of
    ``transcribe``; ``--format ctm`` turns the word times on)."""
    split = None
    if args.max_segment_seconds:  # 0: off
        with _as_lite_error():
            split = SplitOptions(args.max_segment_seconds, threshold=args.vad_threshold, vad=args.vad)
    saved = exported_policy_values(args.folder) if wants_saved_policy(args.policy) else None
    policy = policy_from_flags(args.policy, args.threshold, args.patience, args.layer, args.max_layer, saved)
    return LiteTranscriber(
        args.folder,
        policy,
        precision=args.precision,
        batch_size=args.batch_size,
        max_batch_seconds=args.max_batch_seconds,
        num_threads=args.num_threads,
        split=split,
        max_seconds=args.max_seconds,
        word_timestamps=args.word_timestamps or fmt == "ctm",
    )


if __name__ == "__main__":
    sys.exit(main())
