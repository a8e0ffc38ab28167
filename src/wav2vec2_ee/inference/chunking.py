"""Long recordings cut into fixed overlapping windows (``--chunk-seconds``, ``Transcriber(chunk_seconds=)``:
an explicit choice; by default long recordings are split at their pauses, :mod:`wav2vec2_ee.segmentation`),
and the frames of each window that are kept.

As ``transformers``' ASR pipeline does for CTC (``chunk_length_s`` / ``stride_length_s``): a recording
longer than ``chunk_seconds`` is cut into windows of ``chunk_seconds``, each with ``stride_seconds``
of context on either side (none at the recording's ends) whose frames are dropped, so that the
central parts tile the recording exactly. A file is read window by window (soundfile
``seek``/``read``), never whole, so memory stays bounded for an hour-long file.

No model here: :func:`array_pieces` / :func:`file_pieces` give :class:`Piece` s (16 kHz audio with
its sample offsets in the recording), :func:`central_frames` the frames of a piece's output to keep.
The :class:`~wav2vec2_ee.inference.transcriber.Transcriber` runs the pieces and joins them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from ..audio import SAMPLING_RATE, AudioError, check_regular_file, to_mono_16k
from ..errors import UserError

#: The recommended window of ``chunk_seconds`` / ``--chunk-seconds`` for long recordings.
DEFAULT_CHUNK_SECONDS = 30.0


def check_chunking(chunk_seconds: float | None, stride_seconds: float | None) -> tuple[float | None, float]:
    """``(chunk_seconds or None, stride_seconds)`` checked: a window > 0 s (0 or ``None``: off), a
    stride >= 0 and under half the window (default: a sixth of it); else a :class:`UserError` naming
    the flag."""
    if chunk_seconds is None or chunk_seconds == 0:
        return None, 0.0
    chunk = float(chunk_seconds)
    if not chunk > 0 or not np.isfinite(chunk):
        raise UserError(f"--chunk-seconds must be a number of seconds > 0 (0: off), got {chunk_seconds}")
    stride = chunk / 6 if stride_seconds is None else float(stride_seconds)
    if not 0 <= stride < chunk / 2:
        raise UserError(
            f"--stride-seconds must be >= 0 and less than half of --chunk-seconds {chunk:g}, "
            f"got {stride_seconds}"
        )
    return chunk, stride


def windows(total: int, chunk: int, stride: int) -> Iterator[tuple[int, int, int, int]]:
    """``(start, end, left, right)`` sample windows over ``total`` samples, as ``transformers``'
    ``chunk_iter``: windows of ``chunk`` samples every ``chunk - 2 * stride``; ``left`` / ``right`` are
    the context samples whose frames are dropped (none at the recording's ends)."""
    step = chunk - 2 * stride
    for start in range(0, total, step):
        end = min(start + chunk, total)
        is_last = start + chunk >= total
        left = 0 if start == 0 else stride
        right = 0 if is_last else stride
        if end - start > left:
            yield start, end, left, right
        if is_last:
            break


def window_count(seconds: float, chunk_seconds: float, stride_seconds: float) -> int:
    """How many windows a recording of ``seconds`` is cut into (at 16 kHz)."""
    chunk, stride = round(chunk_seconds * SAMPLING_RATE), round(stride_seconds * SAMPLING_RATE)
    return sum(1 for _ in windows(round(seconds * SAMPLING_RATE), chunk, stride))


def windows_per_batch(chunk_seconds: float | None, batch_size: int, max_batch_seconds: float | None) -> int:
    """Windows of one recording run together: ``batch_size``, fewer where ``max_batch_seconds`` of
    padded audio would be exceeded, at least 1 (1 when chunking is off)."""
    if chunk_seconds is None:
        return 1
    fit = batch_size
    if max_batch_seconds is not None:
        fit = min(fit, int(max_batch_seconds // chunk_seconds))
    return max(1, fit)


@dataclass
class Piece:
    """One window of a recording.

    Args:
        audio: ``(samples,)`` float32 16 kHz mono waveform of the window, its context included.
        start / end: its first and past-the-end sample in the recording (16 kHz samples).
        left / right: context samples (16 kHz) at its start and end whose frames are dropped.
    """

    audio: np.ndarray
    start: int
    end: int
    left: int
    right: int

    @property
    def central_samples(self) -> int:
        """Samples of the recording this piece answers for (its context excluded)."""
        return len(self.audio) - self.left - self.right


def array_pieces(array: np.ndarray, chunk_seconds: float, stride_seconds: float) -> Iterator[Piece]:
    """The windows of a ``(samples,)`` 16 kHz waveform (views into it, not copies)."""
    chunk, stride = round(chunk_seconds * SAMPLING_RATE), round(stride_seconds * SAMPLING_RATE)
    for start, end, left, right in windows(len(array), chunk, stride):
        yield Piece(array[start:end], start, end, left, right)


def file_pieces(
    path: str | os.PathLike, source: str, chunk_seconds: float, stride_seconds: float
) -> Iterator[Piece]:
    """The windows of an audio file, read one at a time (at the file's rate, then mixed down to mono
    and resampled to 16 kHz); an :class:`~wav2vec2_ee.audio.AudioError` naming ``source`` when it
    cannot be decoded or is not a regular file (:func:`~wav2vec2_ee.audio.check_regular_file`)."""
    check_regular_file(path, source)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(source, f"cannot decode audio ({err})") from err
    with handle as f:
        sr = f.samplerate
        chunk, stride = round(chunk_seconds * sr), round(stride_seconds * sr)
        scale = SAMPLING_RATE / sr
        for start, end, left, right in windows(f.frames, chunk, stride):
            try:
                f.seek(start)
                data = f.read(end - start, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(source, f"cannot decode audio ({err})") from err
            if len(data) == 0:
                raise AudioError(source, f"cannot decode audio at {start / sr:.1f} s (truncated file)")
            audio = to_mono_16k(data, sr, source)
            yield Piece(
                audio, round(start * scale), round(end * scale), round(left * scale), round(right * scale)
            )


def pad_to_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` padded with zeros at its end to at least ``samples`` (a last sliver of a recording
    may be shorter than the model's shortest input)."""
    short = samples - len(audio)
    return np.pad(audio, (0, short)) if short > 0 else audio


def central_frames(frames: int, samples: int, left: int, right: int) -> tuple[int, int]:
    """``(first, last)``: the output frames ``[first, last)`` of a piece's central part, from the
    ``frames`` of ``samples`` input samples whose first ``left`` and last ``right`` are context (or
    padding) to drop."""
    ratio = frames / samples
    return round(left * ratio), frames - round(right * ratio)
