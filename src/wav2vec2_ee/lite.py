"""A torch-free runtime: transcribe with an exported folder (``wav2vec2-ee export``) and only ``onnxruntime``,
``numpy`` and ``soundfile`` installed (``soxr`` optional, for resampling).

    >>> from wav2vec2_ee.lite import LiteTranscriber
    >>> LiteTranscriber("exported/").transcribe(["a.wav", "b.flac"])

    $ python -m wav2vec2_ee.lite exported/ a.wav b.flac [--policy entropy --threshold 0.4]

What :class:`~wav2vec2_ee.inference.Transcriber` does with PyTorch, in numpy: the audio is read
(:func:`read_audio`), normalised as the exported feature extractor says (zero mean, unit variance per
utterance when ``do_normalize``), padded into a batch with its attention mask, and run segment by
segment (:func:`~wav2vec2_ee.export.runtime.run_onnx_exits`); after each exit a numpy exit policy
(:class:`FixedExit`, :class:`EntropyThreshold`, :class:`ConfidenceThreshold`, :class:`Patience`, each
with an optional layer budget, or a saved :class:`LearnedExit`; default: the folder's ``policy.json``,
else the last exit) decides which
utterances stop; those leave the batch and later blocks run on the rest only, and blocks beyond the
deepest allowed exit never run. Answers are greedy CTC transcripts from ``vocab.json`` (repeats
collapsed, blank dropped, the word delimiter a space), normalised as the PyTorch engine's are.

This module imports nothing heavier than numpy (``onnxruntime`` when segments are loaded,
``soundfile`` when a file is read): never torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export.runtime import OnnxSegments, load_segments, run_onnx_exits

#: The files a feature extractor's settings may be in (transformers 5 nests them in the processor's).
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class LiteError(ValueError):
    """An input or a folder the lite runtime cannot use (the message names it)."""


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


#: The quantile of ``max_prob_p10`` (as :data:`wav2vec2_ee.inference.learned.LOW_QUANTILE`).
LOW_QUANTILE = 0.1


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


def word_agreement(previous: str | None, current: str) -> float:
    """``1 - d / max(1, len(a), len(b))``, ``d`` the word edit distance of the two transcripts' words (0
    without a previous transcript), as :func:`wav2vec2_ee.inference.learned.agreement`."""
    if previous is None:
        return 0.0
    a, b = previous.split(), current.split()
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current_row = [i]
        for j, other in enumerate(b, 1):
            current_row.append(min(row[j] + 1, current_row[j - 1] + 1, row[j - 1] + (word != other)))
        row = current_row
    return 1.0 - row[-1] / max(1, len(a), len(b))


class ExitView:
    """One exit's outputs for the utterances still running (statistics computed once, on first use)."""

    def __init__(self, exit_index: int, layer: int, rows, logits, lengths, vocabulary: Vocabulary | None):
        self.exit_index, self.layer = exit_index, layer
        self.rows, self.logits, self.output_lengths = np.asarray(rows), logits, np.asarray(lengths)
        self.vocabulary = vocabulary
        self._stats: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _stat(self, name: str, compute):
        if name not in self._stats:
            self._stats[name] = compute()
        return self._stats[name]

    @property
    def entropy(self) -> np.ndarray:
        return self._stat("entropy", lambda: mean_frame_entropy(self.logits, self.output_lengths))

    @property
    def max_prob(self) -> np.ndarray:
        return self._stat("max_prob", lambda: mean_max_prob(self.logits, self.output_lengths))

    @property
    def transcripts(self) -> list[str]:
        if self.vocabulary is None:
            raise LiteError("transcripts need the folder's vocabulary")
        return self._stat("transcripts", lambda: self.vocabulary.decode(self.logits, self.output_lengths))

    @property
    def max_prob_p10(self) -> np.ndarray:
        return self._stat("max_prob_p10", lambda: low_quantile_max_prob(self.logits, self.output_lengths))

    @property
    def margin(self) -> np.ndarray:
        return self._stat("margin", lambda: mean_top_margin(self.logits, self.output_lengths))

    @property
    def non_blank(self) -> np.ndarray:
        if self.vocabulary is None:
            raise LiteError("the non_blank statistic needs the folder's vocabulary (the blank id)")
        pad = self.vocabulary.pad_id
        return self._stat("non_blank", lambda: non_blank_share(self.logits, self.output_lengths, pad))

    @property
    def log_frames(self) -> np.ndarray:
        return self._stat("log_frames", lambda: np.log(np.maximum(self.output_lengths, 1).astype(np.float32)))

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


class ExitPolicy:
    """After each exit, which running utterances stop (causal, row-independent, as the PyTorch policies)."""

    name = "policy"
    max_layer: int | None = None

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        return len(exit_layers) - 1

    def should_exit(self, history: Sequence[ExitView]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class FixedExit(ExitPolicy):
    """Always the exit at ``layer`` (``None``: the last exit)."""

    name = "fixed"

    def __init__(self, layer: int | None = None):
        self.layer = None if layer is None else int(layer)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        if self.layer is None:
            return len(exit_layers) - 1
        if self.layer not in exit_layers:
            raise LiteError(
                f"fixed exit layer {self.layer} is not an exit of this model (exits at {list(exit_layers)})"
            )
        return list(exit_layers).index(self.layer)

    def should_exit(self, history):
        view = history[-1]
        return np.full(len(view), self.layer is not None and view.layer >= self.layer)


class EntropyThreshold(ExitPolicy):
    """Stop when the mean frame entropy (nats) is at or below ``threshold``."""

    name = "entropy"

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        if math.isnan(self.threshold):
            raise LiteError("the entropy threshold must be a number, got nan")

    def should_exit(self, history):
        return history[-1].entropy <= self.threshold


class ConfidenceThreshold(ExitPolicy):
    """Stop when the mean frame max-probability is at or above ``threshold``."""

    name = "confidence"

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        if math.isnan(self.threshold):
            raise LiteError("the confidence threshold must be a number, got nan")

    def should_exit(self, history):
        return history[-1].max_prob >= self.threshold


class Patience(ExitPolicy):
    """Stop when the greedy transcripts of ``patience`` consecutive exits agree."""

    name = "patience"

    def __init__(self, patience: int):
        if int(patience) != patience or int(patience) < 1:
            raise LiteError(f"the patience policy's patience must be an integer >= 1, got {patience}")
        self.patience = int(patience)

    def should_exit(self, history):
        n = len(history[-1])
        if len(history) < self.patience:
            return np.zeros(n, dtype=bool)
        recent = [view.transcripts for view in history[-self.patience :]]
        return np.array([all(t[i] == recent[-1][i] for t in recent) for i in range(n)], dtype=bool)


def _agreement(history: Sequence[ExitView]) -> np.ndarray:
    view = history[-1]
    if len(history) < 2:
        return np.zeros(len(view), dtype=np.float32)
    previous = history[-2].transcripts
    return view._stat(
        "agreement",
        lambda: np.array(
            [word_agreement(p, c) for p, c in zip(previous, view.transcripts)], dtype=np.float32
        ),
    )


#: How the learned policy's features are read from the exits so far (numpy twins of
#: :data:`wav2vec2_ee.inference.learned.FEATURES`).
_FEATURES = {
    "entropy": lambda h: h[-1].entropy,
    "max_prob": lambda h: h[-1].max_prob,
    "max_prob_p10": lambda h: h[-1].max_prob_p10,
    "margin": lambda h: h[-1].margin,
    "non_blank": lambda h: h[-1].non_blank,
    "agreement": _agreement,
    "exit_index": lambda h: np.full(len(h[-1]), float(h[-1].exit_index), dtype=np.float32),
    "log_frames": lambda h: h[-1].log_frames,
}


class LearnedExit(ExitPolicy):
    """Stop when a saved learned model's score of the exit features is at or above ``threshold`` (the
    numpy twin of :class:`wav2vec2_ee.inference.policies.LearnedExit`; ``model`` is the ``model`` object
    of a saved policy: ``p = sigmoid(a . w + b)``, ``a = tanh(z @ W + c)`` or ``a = z``,
    ``z = (x - mean) / std``, in float64)."""

    name = "learned"

    def __init__(self, threshold: float, model: dict):
        self.threshold = float(threshold)
        if math.isnan(self.threshold):
            raise LiteError("the learned threshold must be a number, got nan")
        if not isinstance(model, dict) or not {"features", "mean", "std", "output"} <= set(model):
            raise LiteError("policy.json: the learned policy's model needs features, mean, std and output")
        unknown = [f for f in model["features"] if f not in _FEATURES]
        if unknown or model.get("low_quantile", LOW_QUANTILE) != LOW_QUANTILE:
            raise LiteError(f"policy.json: the lite runtime cannot compute the features {unknown or model}")
        self.features = list(model["features"])
        self.mean = np.asarray(model["mean"], dtype=np.float64)
        self.std = np.asarray(model["std"], dtype=np.float64)
        hidden = model.get("hidden")
        self.hidden_weight = None if hidden is None else np.asarray(hidden["weight"], dtype=np.float64)
        self.hidden_bias = None if hidden is None else np.asarray(hidden["bias"], dtype=np.float64)
        self.weight = np.asarray(model["output"]["weight"], dtype=np.float64)
        self.bias = float(model["output"].get("bias", 0.0))
        self.exit_layers = model.get("exit_layers")

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        if self.exit_layers is not None and list(self.exit_layers) != list(exit_layers):
            raise LiteError(
                f"the learned policy was fitted for exits at {list(self.exit_layers)}, this model has "
                f"{list(exit_layers)}"
            )
        return len(exit_layers) - 1

    def score(self, history: Sequence[ExitView]) -> np.ndarray:
        """``(batch,)`` float64 scores of ``history[-1]``'s utterances."""

        def compute() -> np.ndarray:
            x = np.stack([np.asarray(_FEATURES[f](history), dtype=np.float32) for f in self.features], 1)
            z = (x.astype(np.float64) - self.mean) / self.std
            if self.hidden_weight is not None:
                z = np.tanh(z @ self.hidden_weight + self.hidden_bias)
            return 1.0 / (1.0 + np.exp(-(z @ self.weight + self.bias)))

        return history[-1]._stat("learned", compute)

    def should_exit(self, history):
        return self.score(history) >= self.threshold

    def __repr__(self) -> str:
        return f"LearnedExit(threshold={self.threshold!r}, features={self.features!r})"


class LayerBudget(ExitPolicy):
    """``policy`` decides; nothing beyond layer ``max_layer`` (one of the exit layers) is computed."""

    name = "budget"

    def __init__(self, policy: ExitPolicy, max_layer: int):
        self.policy, self.max_layer = policy, int(max_layer)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        if self.max_layer not in exit_layers:
            raise LiteError(
                f"--max-layer {self.max_layer} is not an exit layer of this model: choose one of {list(exit_layers)}"
            )
        return min(self.policy.deepest_exit(exit_layers), list(exit_layers).index(self.max_layer))

    def should_exit(self, history):
        return self.policy.should_exit(history)


_POLICIES = {cls.name: cls for cls in (FixedExit, EntropyThreshold, ConfidenceThreshold, Patience)}
#: The policies of the lite runtime (numpy twins of :mod:`wav2vec2_ee.inference.policies`, which imports torch).
POLICY_NAMES = (*_POLICIES, LayerBudget.name)
#: Policies built from a saved ``policy.json`` only (they hold a fitted model).
_SAVED_ONLY = {LearnedExit.name: LearnedExit}


def build_policy(name: str, value: float | int | None = None, max_layer: int | None = None) -> ExitPolicy:
    """The policy ``name`` with its one parameter ``value`` (fixed: the layer, entropy / confidence: the
    threshold, patience: the count), capped at ``max_layer`` when given (``budget``: the last exit, capped)."""
    if name == LayerBudget.name:
        if max_layer is None:
            raise LiteError("the budget policy needs max_layer (the deepest layer it may compute)")
        return LayerBudget(FixedExit(), max_layer)
    if name in _SAVED_ONLY:
        raise LiteError(
            f"the {name} policy holds a fitted model: it comes from the folder's policy.json "
            f"(calibrate --policy {name} --save-policy, then export)"
        )
    if name not in _POLICIES:
        raise LiteError(
            f"unknown exit policy {name!r} for the lite runtime: choose from {', '.join(POLICY_NAMES)}"
        )
    if value is None and name != FixedExit.name:
        raise LiteError(f"the {name} policy needs its value (--threshold / --patience)")
    policy = _POLICIES[name]() if value is None else _POLICIES[name](value)
    return LayerBudget(policy, max_layer) if max_layer is not None else policy


def policy_from_json(values: dict) -> ExitPolicy:
    """A policy from a ``policy.json`` (``{"policy", "value", "max_layer", ...}`` and, for the learned
    policy, its ``model``: a saved policy of ``calibrate``)."""
    if not isinstance(values, dict) or "policy" not in values:
        raise LiteError("policy.json: not a calibrated policy (no 'policy' field)")
    fitted = _SAVED_ONLY.get(values["policy"])
    if fitted is None:
        return build_policy(values["policy"], values.get("value"), values.get("max_layer"))
    if values.get("value") is None or "model" not in values:
        raise LiteError(f"policy.json: the {values['policy']} policy needs its value and model")
    policy = fitted(values["value"], values["model"])
    max_layer = values.get("max_layer")
    return policy if max_layer is None else LayerBudget(policy, max_layer)


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
    (:func:`~wav2vec2_ee.inference.engine.run_early_exit`) on the ONNX segments with a numpy policy."""
    layers = segments.exit_layers
    deepest = policy.deepest_exit(layers)
    answers: list[tuple[int, str]] = [(-1, "")] * len(input_values)
    history: list[ExitView] = []

    def record(view: ExitView) -> None:
        for row, text in zip(view.rows.tolist(), view.transcripts):
            answers[row] = (view.exit_index, text)

    for step in run_onnx_exits(segments, input_values, attention_mask, range(deepest + 1)):
        history.append(
            ExitView(step.exit_index, step.layer, step.rows, step.logits, step.output_lengths, vocabulary)
        )
        if step.exit_index == deepest:
            record(history[-1])
            break
        stop = np.asarray(policy.should_exit(history), dtype=bool)
        if not stop.any():
            continue
        record(history[-1].select(np.flatnonzero(stop)))
        step.retain(~stop)
        keep = np.flatnonzero(~stop)
        history = [view.select(keep) for view in history]
    return answers


def read_audio(path: str | os.PathLike, sampling_rate: int = 16_000) -> np.ndarray:
    """``(samples,)`` float32 mono audio at ``sampling_rate`` (``soundfile``; other rates are resampled
    with ``soxr`` when it is installed, refused otherwise)."""
    import soundfile as sf

    if not os.path.exists(path):
        raise LiteError(f"{path}: no such file")
    try:
        array, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:  # soundfile raises several types for undecodable files
        raise LiteError(f"{path}: cannot decode audio ({err})") from err
    return to_mono(array, rate, sampling_rate, str(path))


def to_mono(array: np.ndarray, rate: int, sampling_rate: int = 16_000, source: str = "<array>") -> np.ndarray:
    """``(samples,)`` float32 mono at ``sampling_rate`` from ``(samples,)`` or ``(samples, channels)``."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1)
    elif array.ndim != 1:
        raise LiteError(
            f"{source}: expected 1 or 2 dimensions (samples[, channels]), got shape {array.shape}"
        )
    if rate != sampling_rate:
        try:
            import soxr
        except ImportError:
            raise LiteError(
                f"{source}: audio at {rate} Hz; the model needs {sampling_rate} Hz and the lite runtime "
                f"resamples only with soxr installed (pip install soxr), or give {sampling_rate} Hz audio"
            ) from None
        array = soxr.resample(array, rate, sampling_rate).astype(np.float32, copy=False)
    if array.size == 0:
        raise LiteError(f"{source}: no audio samples")
    if not np.isfinite(array).all():
        raise LiteError(f"{source}: the audio contains NaN or infinite samples")
    return array


class LiteTranscriber:
    """Transcribe with an exported folder, torch-free (see the module docstring).

    Args:
        folder: a folder written by ``wav2vec2-ee export``.
        policy: an :class:`ExitPolicy`, a policy name (with ``value`` / ``max_layer``), or ``None``: the
            folder's ``policy.json`` if it has one, else the last exit.
        precision: ``"float"`` or ``"int8"`` (default: int8 where the folder has it).
        batch_size: utterances per batch (sorted by length, so padding stays small).
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
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.folder = Path(folder)
        self.segments = load_segments(self.folder, precision, providers=providers, num_threads=num_threads)
        self.features = FeatureSettings.from_folder(self.folder)
        self.vocabulary = Vocabulary(self.folder)
        if isinstance(policy, str):
            policy = build_policy(policy, value, max_layer)
        elif policy is None:
            stored = self.segments.policy()
            policy = (
                policy_from_json(stored) if stored is not None else build_policy("fixed", None, max_layer)
            )
        elif max_layer is not None:
            policy = LayerBudget(policy, max_layer)
        policy.deepest_exit(self.segments.exit_layers)  # a layer that is not an exit fails now
        self.policy = policy
        if batch_size < 1:
            raise LiteError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def transcribe(self, audio, sampling_rate: int | None = None) -> LiteResult | list[LiteResult]:
        """Transcribe a path, an array (mono, at the model's rate unless ``sampling_rate`` says), or a list
        of them (a list in, a list out, in input order)."""
        single = isinstance(audio, (str, os.PathLike, np.ndarray))
        items = [audio] if single else list(audio)
        rate = self.features.sampling_rate
        arrays, sources = [], []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                arrays.append(to_mono(item, sampling_rate or rate, rate, f"<array {i}>"))
                sources.append(f"<array {i}>")
            else:
                arrays.append(read_audio(item, rate))
                sources.append(str(item))
        results: list[LiteResult | None] = [None] * len(arrays)
        order = sorted(range(len(arrays)), key=lambda i: len(arrays[i]))
        layers = self.segments.exit_layers
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            values, mask = self.features.batch([arrays[i] for i in chunk])
            answers = run_lite_early_exit(self.segments, values, mask, self.policy, self.vocabulary)
            for i, (k, text) in zip(chunk, answers):
                results[i] = LiteResult(text, k, layers[k], sources[i])
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
    parser.add_argument("--threshold", type=float, default=None, help="entropy / confidence threshold")
    parser.add_argument("--patience", type=int, default=None, help="patience: consecutive exits that agree")
    parser.add_argument("--layer", type=int, default=None, help="fixed: the exit layer")
    parser.add_argument("--max-layer", type=int, default=None, help="never compute beyond this exit layer")
    parser.add_argument("--precision", choices=("float", "int8"), default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="JSON lines: path, text, exit_layer")
    args = parser.parse_args(argv)
    value = (
        args.threshold
        if args.threshold is not None
        else args.patience
        if args.patience is not None
        else args.layer
    )
    try:
        transcriber = LiteTranscriber(
            args.folder,
            args.policy,
            value=value,
            max_layer=args.max_layer,
            precision=args.precision,
            batch_size=args.batch_size,
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
