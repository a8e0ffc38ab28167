"""Long recordings split at their pauses into pieces of bounded length, each with its time.

A model trained on single utterances hears a long recording best the way it was trained: one stretch of
speech at a time, cut where the talker pauses (fixed windows cut words in two and glue the words on
either side of a pause together). :class:`PauseSplitter` finds the pauses with a voice activity detector
and cuts there:

1. a detector gives a speech probability every ``hop`` samples: :class:`SileroVAD` (Silero VAD's ONNX
   model from the ``silero-vad`` wheel, run with onnxruntime: the ``[vad]`` extra) or :class:`EnergyVAD`
   (frame energy against the recording's own noise floor, numpy only: the fallback, always there);
2. speech is where the probability rises to ``threshold`` and stays above ``threshold - 0.15``
   (hysteresis); stretches of speech closer than ``min_silence`` are one stretch, stretches shorter
   than ``min_speech`` are dropped (clicks), each keeps ``pad`` seconds of what surrounds it (at most
   half of the pause on either side);
3. a stretch longer than ``max_seconds`` is cut at its least speech-like moment between half and all of
   ``max_seconds`` (the model's input stays bounded however long the talker speaks).

It works as a stream (:meth:`PauseSplitter.feed` blocks of audio, :meth:`~PauseSplitter.finish`), so a
file is read block by block (:func:`iter_audio_blocks`) and memory holds at most about ``max_seconds``
plus one block of audio, however long the file. Every :class:`Piece` carries its first and past-the-end
sample in the recording; the silence between pieces is never run through the model.

numpy and the standard library only (soundfile to read files; soxr to resample, onnxruntime for Silero
when they are installed): the torch-free runtime (:mod:`wav2vec2_ee.lite`), ``transcribe`` and the
server share it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .audio import SAMPLING_RATE, AudioError, check_regular_file, to_mono_16k
from .errors import MissingExtraError, UserError, require

#: The detectors by name (``--vad``); ``auto``: Silero where its package is installed, else energy.
VADS = ("auto", "silero", "energy")


@dataclass(frozen=True)
class SplitOptions:
    """How a recording is split (seconds; see the module docstring).

    Args:
        max_seconds: the longest piece; a longer stretch of speech is cut at its quietest moment.
        min_silence: a pause at least this long separates two pieces.
        min_speech: speech shorter than this alone is dropped.
        pad: audio kept around each stretch of speech (at most half of the pause on either side).
        threshold: speech probability that starts speech (``None``: the detector's default).
        vad: ``auto``, ``silero`` or ``energy``.
    """

    max_seconds: float = 20.0
    min_silence: float = 0.3
    min_speech: float = 0.15
    pad: float = 0.2
    threshold: float | None = None
    vad: str = "auto"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_seconds) and self.max_seconds >= 1.0):
            raise UserError(f"--max-segment-seconds must be a number of seconds >= 1, got {self.max_seconds}")
        for name in ("min_silence", "min_speech", "pad"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value < self.max_seconds / 2):
                raise UserError(f"{name} must be >= 0 s and under half of max_seconds, got {value}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise UserError(f"--vad-threshold must lie in (0, 1), got {self.threshold}")
        if self.vad not in VADS:
            raise UserError(f"--vad must be one of {', '.join(VADS)}, got {self.vad!r}")


@dataclass
class Piece:
    """One stretch of a recording: ``audio`` ``(samples,)`` float32 16 kHz, from sample ``start`` to
    ``end`` (past the end) of the recording."""

    audio: np.ndarray
    start: int
    end: int

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLING_RATE

    @property
    def end_seconds(self) -> float:
        return self.end / SAMPLING_RATE


# --------------------------------------------------------------------------------------------------
# voice activity detectors: speech probabilities, one every `hop` samples, as a stream


class EnergyVAD:
    """Speech probability from frame energy (numpy only): 20 ms frames, each frame's level in dB placed
    between the recording's noise floor (10th percentile) and its speech level (95th percentile), with at
    least 12 dB between them. The percentiles are taken over the last minute up to the end of the frame's
    10-second stretch of the recording (stretches aligned to the recording's start), so the result does
    not depend on how the audio is cut into blocks. Works on digital silence, a low noise floor and steady
    background noise alike; not on babble (it hears any voice)."""

    hop = 320
    default_threshold = 0.35
    #: frames per statistics stretch (10 s) and in the look-back (60 s)
    stretch, history = 500, 3000

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._levels = np.zeros(0)  # the look-back and the current stretch's levels
        self._pending = 0  # levels of the current stretch, not yet scored
        self._rest = np.zeros(0, np.float32)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``(frames,)`` probabilities of every whole 10-second stretch ``block`` completes."""
        audio = np.concatenate([self._rest, block]) if self._rest.size else np.asarray(block, np.float32)
        frames = audio.size // self.hop
        self._rest = audio[frames * self.hop :].copy()
        if frames:
            power = np.square(audio[: frames * self.hop].reshape(frames, self.hop), dtype=np.float64).mean(1)
            self._levels = np.concatenate([self._levels, 10 * np.log10(power + 1e-12)])
            self._pending += frames
        out = []
        while self._pending >= self.stretch:
            out.append(self._score(self.stretch))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The probabilities of the rest (a last partial frame counts as a frame)."""
        if self._rest.size:
            self.__call__(np.zeros(self.hop - self._rest.size, np.float32))
        out = self._score(self._pending) if self._pending else np.zeros(0, np.float32)
        self.reset()
        return out

    def _score(self, count: int) -> np.ndarray:
        end = self._levels.size - self._pending + count
        window = self._levels[max(0, end - self.history) : end]
        floor, loud = np.percentile(window, [10, 95])
        span = max(float(loud - floor), 12.0)
        levels = self._levels[end - count : end]
        self._pending -= count
        self._levels = self._levels[max(0, end - self.history) :]
        return np.clip((levels - floor) / span, 0.0, 1.0).astype(np.float32)


class SileroVAD:
    """Silero VAD (the ``silero-vad`` wheel's ONNX model, run with onnxruntime on 32 ms chunks with its
    recurrent state; the ``[vad]`` extra). No torch is needed to run it."""

    hop = 512
    default_threshold = 0.5
    _CONTEXT = 64

    def __init__(self):
        ort = require("onnxruntime", "vad", "--vad silero")
        model = _silero_model()
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        with resources.as_file(model) as path:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, self._CONTEXT), np.float32)
        self._rest = np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """The probability of a last partial chunk (zero-padded)."""
        out = self.__call__(np.zeros(self.hop - self._rest.size, np.float32)) if self._rest.size else None
        self.reset()
        return out if out is not None else np.zeros(0, np.float32)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._rest, block]) if self._rest.size else np.asarray(block, np.float32)
        chunks = audio.size // self.hop
        self._rest = audio[chunks * self.hop :].copy()
        out = np.empty(chunks, np.float32)
        rate = np.array(SAMPLING_RATE, dtype=np.int64)
        for i in range(chunks):
            chunk = audio[i * self.hop : (i + 1) * self.hop].astype(np.float32)[None]
            x = np.concatenate([self._context, chunk], axis=1)
            prob, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": rate})
            self._context = chunk[:, -self._CONTEXT :]
            out[i] = float(np.asarray(prob).reshape(-1)[0])
        return out


def _silero_model():
    """The ONNX model file of the ``silero-vad`` wheel, found without importing the package (its
    ``__init__`` imports torch: the torch-free runtime must not)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("--vad silero", "silero-vad", "vad")
    for folder in spec.submodule_search_locations:
        path = Path(folder, "data", "silero_vad.onnx")
        if path.is_file():
            return path
    raise MissingExtraError("--vad silero", "silero-vad", "vad")


def silero_available() -> bool:
    """Whether the Silero VAD model (``silero-vad``) and onnxruntime are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("silero_vad", "onnxruntime"))


def build_vad(name: str = "auto") -> EnergyVAD | SileroVAD:
    """The detector ``name`` (``auto``: Silero where :func:`silero_available`, else energy)."""
    if name == "auto":
        name = "silero" if silero_available() else "energy"
    if name == "silero":
        return SileroVAD()
    if name == "energy":
        return EnergyVAD()
    raise UserError(f"--vad must be one of {', '.join(VADS)}, got {name!r}")


# --------------------------------------------------------------------------------------------------
# speech stretches from probabilities


def speech_runs(probs: np.ndarray, on: float, off: float, in_speech: bool = False) -> list[tuple[int, int]]:
    """``[(first, past_last)]`` hops of speech: a run starts where ``probs >= on`` and lasts while
    ``probs >= off`` (hysteresis); ``in_speech``: a run is already going at hop 0."""
    runs, start = [], 0 if in_speech else None
    for i, p in enumerate(probs):
        if start is None and p >= on:
            start = i
        elif start is not None and p < off:
            if i > start:
                runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(probs)))
    return runs


def merge_runs(runs: list[tuple[int, int]], min_gap: int, min_length: int) -> list[tuple[int, int]]:
    """Runs closer than ``min_gap`` joined, then runs shorter than ``min_length`` dropped."""
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged if e - s >= min_length]


def cut_long(run: tuple[int, int], probs: np.ndarray, longest: int) -> list[tuple[int, int]]:
    """``run`` cut into runs of at most ``longest`` hops, each cut in the middle of the least
    speech-like stretch (probability averaged over 5 hops: a pause of a few hops beats a one-hop dip)
    between half and all of ``longest`` from the previous cut."""
    start, end = run
    out = []
    smooth = np.convolve(probs, np.ones(5) / 5, mode="same") if len(probs) >= 5 else probs
    while end - start > longest:
        lo, hi = start + longest // 2, min(start + longest, end - 1)
        window = smooth[lo : hi + 1]
        lowest = np.flatnonzero(window <= window.min() + 1e-6)
        breaks = np.flatnonzero(np.diff(lowest) > 1)
        group = lowest[: breaks[0] + 1] if breaks.size else lowest  # the first stretch of minima
        cut = lo + int(group[0] + group[-1]) // 2
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


@dataclass
class PauseSplitter:
    """The streaming splitter (see the module docstring): :meth:`feed` 16 kHz mono blocks, get the
    pieces that are final; :meth:`finish` gives the rest.

    It keeps the audio and probabilities from the first sample a later piece may need: the start of a
    stretch of speech still going on (with its padding), or the last ``pad`` before the end.

    Args:
        options: how to split; vad: the detector (default: ``options.vad``'s).
    """

    options: SplitOptions = field(default_factory=SplitOptions)
    vad: EnergyVAD | SileroVAD | None = None

    def __post_init__(self) -> None:
        if self.vad is None:
            self.vad = build_vad(self.options.vad)
        self.vad.reset()
        per_second = SAMPLING_RATE / self.vad.hop
        self._on = self.options.threshold or self.vad.default_threshold
        self._off = max(self._on - 0.15, 0.05)
        self._min_gap = max(1, round(self.options.min_silence * per_second))
        self._min_len = max(1, round(self.options.min_speech * per_second))
        self._pad = round(self.options.pad * per_second)
        self._longest = max(2, int(self.options.max_seconds * per_second) - 2 * self._pad)
        self._audio = np.zeros(0, np.float32)
        self._probs = np.zeros(0, np.float32)
        self._first_hop = 0  # the recording's hop at _probs[0] (and sample first_hop * hop at _audio[0])
        self._in_speech = False  # a stretch of speech goes on at _probs[0]
        self._emitted = 0  # the recording's hop where the last piece ended
        self._last_run_end = -(10**9)  # the recording's hop where the last stretch of speech ended

    def feed(self, block: np.ndarray) -> list[Piece]:
        """Add ``(samples,)`` float32 16 kHz audio; the pieces that no later audio can change."""
        block = np.asarray(block, np.float32)
        self._audio = np.concatenate([self._audio, block])
        self._probs = np.concatenate([self._probs, self.vad(block)])
        return self._pieces(final=False)

    def finish(self) -> list[Piece]:
        """The pieces left at the end of the recording (a last partial hop included)."""
        self._probs = np.concatenate([self._probs, self.vad.flush()])
        return self._pieces(final=True)

    def _pieces(self, final: bool) -> list[Piece]:
        hops = len(self._probs)
        runs = merge_runs(speech_runs(self._probs, self._on, self._off, self._in_speech), self._min_gap, 1)
        # A stretch cut at its least speech-like moment goes on after the cut: the cut may fall in one of
        # its merged gaps (probabilities below the hysteresis' lower threshold), so its continuation is the
        # first run within min_gap of the cut, from the cut on (never dropped for being short).
        continuing = self._in_speech and bool(runs) and runs[0][0] < self._min_gap
        if continuing:
            runs[0] = (0, runs[0][1])
        elif self._in_speech and not final and hops < self._min_gap:
            return []  # whether the cut stretch goes on is not known yet: wait for more audio
        head, rest = (runs[:1], runs[1:]) if continuing else ([], runs)
        runs = head + [r for r in rest if r[1] - r[0] >= self._min_len or (not final and r[1] == hops)]
        pieces: list[Piece] = []
        keep_from = max(0, hops - self._pad)  # the padding a stretch starting later may need
        for index, (start, end) in enumerate(runs):
            closed = final or end + max(self._min_gap, self._pad) <= hops
            parts = cut_long((start, end), self._probs, self._longest)
            ready = parts if closed else parts[:-1]
            for k, (lo, hi) in enumerate(ready):
                first, last = (
                    k == 0 and not (index == 0 and continuing),
                    k == len(parts) - 1,
                )
                previous_end = runs[index - 1][1] if index else self._last_run_end - self._first_hop
                following = runs[index + 1][0] if index + 1 < len(runs) else hops + 2 * self._pad
                left = min(self._pad, max(0, (lo - previous_end) // 2)) if first else 0
                right = min(self._pad, max(0, (following - hi) // 2)) if last else 0
                pieces.append(self._piece(lo - left, min(hi + right, hops if not final else hi + right)))
                self._last_run_end = self._first_hop + hi  # a later stretch pads up to half the pause
            if not closed:
                start_kept = parts[-1][0]
                cut_inside = len(parts) > 1
                keep_from = (
                    start_kept
                    if cut_inside or (index == 0 and continuing)
                    else (max(start_kept - self._pad, self._emitted - self._first_hop, 0))
                )
                self._drop(keep_from, in_speech=cut_inside or (index == 0 and continuing))
                return pieces
        if final:
            return pieces
        self._drop(max(keep_from, self._emitted - self._first_hop), in_speech=False)
        return pieces

    def _piece(self, lo: int, hi: int) -> Piece:
        """The piece of hops ``[lo, hi)`` of the kept buffer (the last hop may be partial)."""
        hop = self.vad.hop
        lo = max(lo, self._emitted - self._first_hop, 0)
        first_sample, last_sample = lo * hop, min(hi * hop, self._audio.size)
        self._emitted = self._first_hop + hi
        start = self._first_hop * hop
        return Piece(self._audio[first_sample:last_sample].copy(), start + first_sample, start + last_sample)

    def _drop(self, keep_from: int, in_speech: bool) -> None:
        """Forget the hops (and their audio) before ``keep_from``; ``in_speech``: a stretch goes on there."""
        keep_from = max(0, min(keep_from, len(self._probs)))
        self._audio = self._audio[keep_from * self.vad.hop :]
        self._probs = self._probs[keep_from:]
        self._first_hop += keep_from
        self._in_speech = in_speech


def split_at_pauses(
    audio: np.ndarray, options: SplitOptions | None = None, vad: EnergyVAD | SileroVAD | None = None
) -> list[Piece]:
    """The pieces of a whole ``(samples,)`` float32 16 kHz recording (:class:`PauseSplitter` on one block)."""
    splitter = PauseSplitter(options or SplitOptions(), vad)
    return splitter.feed(audio) + splitter.finish()


# --------------------------------------------------------------------------------------------------
# reading a file block by block


def iter_audio_blocks(
    path: str | os.PathLike, block_seconds: float = 30.0, source: str | None = None
) -> Iterator[np.ndarray]:
    """``(samples,)`` float32 16 kHz mono blocks of an audio file, decoded ``block_seconds`` at a time
    (another rate is resampled as a stream), so that an hour-long file never sits in memory whole. An
    :class:`~wav2vec2_ee.audio.AudioError` naming ``source`` (default: the path) when it cannot be read."""
    import soundfile as sf

    source = source or str(path)
    check_regular_file(path, source)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(source, f"cannot decode audio ({err})") from err
    with handle as f:
        rate, frames = f.samplerate, int(block_seconds * f.samplerate)
        stream = None
        if rate != SAMPLING_RATE:
            soxr = _import_soxr(source, rate)
            stream = soxr.ResampleStream(rate, SAMPLING_RATE, 1, dtype="float32")
        total = 0
        while True:
            try:
                data = f.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(source, f"cannot decode audio at {total / rate:.1f} s ({err})") from err
            last = len(data) < frames
            total += len(data)
            mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            block = to_mono_16k(mono, SAMPLING_RATE, source) if mono.size else mono
            if stream is not None:
                block = stream.resample_chunk(mono, last=last)
            if block.size:
                if not np.isfinite(block).all():
                    raise AudioError(source, "the audio contains NaN or infinite samples")
                yield np.asarray(block, np.float32)
            if last:
                break
        if total == 0:
            raise AudioError(source, "the file holds no audio samples")


def _import_soxr(source: str, rate: int):
    try:
        import soxr
    except ImportError:
        raise AudioError(
            source, f"audio at {rate} Hz; resampling to {SAMPLING_RATE} Hz needs soxr (pip install soxr)"
        ) from None
    return soxr


def file_pieces(
    path: str | os.PathLike, options: SplitOptions | None = None, source: str | None = None,
    vad: EnergyVAD | SileroVAD | None = None, block_seconds: float = 30.0,
) -> Iterator[Piece]:  # fmt: skip
    """The pieces of an audio file, as it is read (:func:`iter_audio_blocks`, :class:`PauseSplitter`)."""
    splitter = PauseSplitter(options or SplitOptions(), vad)
    for block in iter_audio_blocks(path, block_seconds, source):
        yield from splitter.feed(block)
    yield from splitter.finish()


def pieces_of(blocks: Iterable[np.ndarray], options: SplitOptions | None = None, vad=None) -> Iterator[Piece]:
    """The pieces of a recording given as blocks of 16 kHz mono audio."""
    splitter = PauseSplitter(options or SplitOptions(), vad)
    for block in blocks:
        yield from splitter.feed(block)
    yield from splitter.finish()
