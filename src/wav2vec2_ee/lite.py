"""A torch-free runtime: transcribe with an exported folder (``wav2vec2-ee export``) and only ``onnxruntime``,
``numpy`` and ``soundfile`` installed (``soxr`` optional, for resampling).

    >>> from wav2vec2_ee.lite import LiteTranscriber
    >>> LiteTranscriber("exported/").transcribe(["a.wav", "b.flac"])

    $ python -m wav2vec2_ee.lite exported/ a.wav b.flac [--policy entropy --threshold 0.4]

What :class:`~wav2vec2_ee.inference.Transcriber` does with PyTorch, in numpy: inputs are grouped into
batches of similar length bounded as ``transcribe``'s are (``batch_size`` utterances and
``max_batch_seconds`` of padded audio: :func:`~wav2vec2_ee.batching.length_grouped_batches`; durations
from the file headers), a batch's audio is read when that batch runs (:func:`read_audio`; only regular
files), normalised as the exported feature extractor says (zero mean, unit variance per utterance when
``do_normalize``), padded into a batch with its attention mask, and run segment by segment
(:func:`~wav2vec2_ee.export.runtime.run_onnx_exits`); after each exit the exit policy decides which
utterances stop; those leave the batch and later blocks run on the rest only, and blocks beyond
the deepest allowed exit never run (the engine's loop, :func:`~wav2vec2_ee.policy_core.exit_loop`).
Answers are greedy CTC transcripts from ``vocab.json`` (repeats collapsed, blank dropped, the word
delimiter a space), normalised as the PyTorch engine's are.

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
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
        size = max(vocab.values()) + 1
        self.table = [""] * size
        for token, index in vocab.items():
            self.table[index] = "" if token == pad else replacement if token == delimiter else token

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
class LiteResult:
    """One utterance's answer: its normalised transcript and the exit that gave it."""

    text: str
    exit_index: int
    exit_layer: int
    source: str = "<array>"


def run_lite_early_exit(
    segments: OnnxSegments,
    input_values: np.ndarray,
    attention_mask: np.ndarray | None,
    policy: ExitPolicy,
    vocabulary: Vocabulary,
) -> list[tuple[int, str]]:
    """``(exit_index, transcript)`` per row of a normalised, padded batch: the PyTorch engine's loop
    (:func:`~wav2vec2_ee.policy_core.exit_loop`) on the ONNX segments with numpy exit views."""
    with _refused():
        deepest = policy.deepest_exit(segments.exit_layers)
    answers: list[tuple[int, str]] = [(-1, "")] * len(input_values)

    def record(view: ExitView) -> None:
        for row, text in zip(view.rows.tolist(), view.stat("transcripts")):
            answers[row] = (view.exit_index, text)

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
    try:
        yield
    except audio_io.AudioError as err:
        raise LiteError(str(err)) from err


@dataclass
class _Input:
    """One input of :meth:`LiteTranscriber.transcribe`: a file (read when its batch runs) or an array
    (16 kHz mono already), and its duration in seconds (the file's header)."""

    source: str
    seconds: float
    path: str | os.PathLike | None = None
    array: np.ndarray | None = None

    @classmethod
    def of(cls, index: int, item, sampling_rate: int) -> _Input:
        """The input ``item`` (a path, or an array at ``sampling_rate``), its duration measured; a
        :class:`LiteError` naming it when it cannot be used (missing, not a regular file, no audio)."""
        if isinstance(item, np.ndarray):
            array = to_mono(item, sampling_rate, f"<array {index}>")
            return cls(f"<array {index}>", len(array) / audio_io.SAMPLING_RATE, array=array)
        with _as_lite_error():
            return cls(str(item), audio_io.audio_duration(item), path=item)

    def read(self) -> np.ndarray:
        """The ``(samples,)`` float32 16 kHz waveform (a file decoded now)."""
        return self.array if self.array is not None else read_audio(self.path)  # type: ignore[arg-type]


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
    ):
        with _refused():
            check_batching(batch_size, max_batch_seconds)
        self.folder = Path(folder)
        with _refused():  # a folder that does not verify (export.runtime), as a LiteError
            self.segments = load_segments(
                self.folder, precision, providers=providers, num_threads=num_threads
            )
        self.features = FeatureSettings.from_folder(self.folder)
        self.vocabulary = Vocabulary(self.folder)
        self.policy = self._policy(policy, value, max_layer)
        self.batch_size = int(batch_size)
        self.max_batch_seconds = None if max_batch_seconds is None else float(max_batch_seconds)

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

    def transcribe(self, audio, sampling_rate: int | None = None) -> LiteResult | list[LiteResult]:
        """Transcribe a path, an array (mono, at the model's rate unless ``sampling_rate`` says), or a list
        of them (a list in, a list out, in input order). Every input is checked first (files from their
        headers); a batch's files are decoded when it runs (see the class's batch bounds)."""
        single = isinstance(audio, (str, os.PathLike, np.ndarray))
        items = [audio] if single else list(audio)
        rate = sampling_rate or self.features.sampling_rate
        inputs = [_Input.of(i, item, rate) for i, item in enumerate(items)]
        results: list[LiteResult | None] = [None] * len(inputs)
        layers = self.segments.exit_layers
        durations = [x.seconds for x in inputs]
        for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
            values, mask = self.features.batch([inputs[i].read() for i in batch])
            answers = run_lite_early_exit(self.segments, values, mask, self.policy, self.vocabulary)
            for i, (k, text) in zip(batch, answers):
                results[i] = LiteResult(text, k, layers[k], inputs[i].source)
        return results[0] if single else results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# python -m wav2vec2_ee.lite


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wav2vec2_ee.lite",
        description="Transcribe audio files with an exported folder (onnxruntime, numpy, soundfile; no torch). "
        "Prints one line per file: the path, a tab, the transcript.",
    )
    parser.add_argument("folder", help="a folder written by `wav2vec2-ee export`")
    parser.add_argument(
        "audio", nargs="+", help="audio files (mono or multi-channel; 16 kHz unless soxr is installed)"
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
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="JSON lines: path, text, exit_layer")
    args = parser.parse_args(argv)
    try:
        saved = exported_policy_values(args.folder) if wants_saved_policy(args.policy) else None
        policy = policy_from_flags(
            args.policy, args.threshold, args.patience, args.layer, args.max_layer, saved
        )
        transcriber = LiteTranscriber(
            args.folder,
            policy,
            precision=args.precision,
            batch_size=args.batch_size,
            max_batch_seconds=args.max_batch_seconds,
            num_threads=args.num_threads,
        )
        results = transcriber.transcribe(args.audio)
    except (LiteError, FileNotFoundError, ValueError) as err:
        print(f"python -m wav2vec2_ee.lite: error: {err}", file=sys.stderr)
        return 2
    for result in results:  # type: ignore[union-attr]
        if args.json:
            print(json.dumps({"path": result.source, "text": result.text, "exit_layer": result.exit_layer}))
        else:
            print(f"{result.source}\t{result.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
