"""An uploaded file to pieces of 16 kHz audio: decoded from the request's bytes (never from a path: no
request field names a file on the server), checked, and a long recording split at its pauses
(:mod:`wav2vec2_ee.segmentation`, as ``transcribe`` splits it).

Every refusal is an :class:`InputError`: an HTTP status, an error code and a message naming the upload
and the problem (``415`` audio soundfile cannot read, ``400`` empty, corrupt, too short or too long).

numpy, soundfile and the standard library only.
"""

from __future__ import annotations

import io
import queue
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from ..audio import SAMPLING_RATE, AudioError, load_audio
from ..segmentation import EnergyVAD, SileroVAD, SplitOptions, build_vad, pieces_of

#: What soundfile (libsndfile) reads, for messages.
READABLE = "WAV, FLAC, OGG (Vorbis, Opus), MP3, AIFF, CAF and the other formats of libsndfile"


class InputError(Exception):
    """A request the server refuses: ``status`` (HTTP), ``code`` (machine-readable), the message names
    the upload and the problem; ``param`` the form field at fault."""

    def __init__(self, status: int, code: str, message: str, param: str | None = "file"):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def decode_upload(data: bytes, name: str, max_seconds: float) -> np.ndarray:
    """``(samples,)`` float32 mono 16 kHz audio of an uploaded file's bytes, or an :class:`InputError`:
    415 when soundfile cannot read its format, 400 when it is empty, corrupt, or longer than
    ``max_seconds`` (refused from its header, before it is decoded)."""
    if not data:
        raise InputError(400, "empty_file", f"{name}: the uploaded file is empty")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        reason = getattr(err, "error_string", None) or str(err)
        raise InputError(
            415,
            "unsupported_audio",
            f"{name}: not an audio format the server reads ({reason}); send {READABLE}",
        ) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputError(400, "empty_audio", f"{name}: the file holds no audio samples")
    duration = info.frames / info.samplerate
    if duration > max_seconds:
        raise InputError(
            400,
            "audio_too_long",
            f"{name}: {duration:.1f} s of audio is longer than this server's limit of {max_seconds:g} s",
        )
    try:
        return load_audio(data, name)
    except AudioError as err:
        raise InputError(400, "corrupt_audio", str(err)) from None


class DetectorPool:
    """Voice activity detectors for concurrent requests (a detector holds one recording's state)."""

    def __init__(self, vad: str):
        self.vad = vad
        self._free: queue.SimpleQueue[EnergyVAD | SileroVAD] = queue.SimpleQueue()
        build_vad(vad)  # a missing [vad] extra is refused at startup

    def take(self) -> EnergyVAD | SileroVAD:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return build_vad(self.vad)

    def give(self, detector: EnergyVAD | SileroVAD) -> None:
        self._free.put(detector)


def _blocks(audio: np.ndarray, seconds: float = 30.0) -> Iterator[np.ndarray]:
    step = int(seconds * SAMPLING_RATE)
    return (audio[i : i + step] for i in range(0, len(audio), step))


def split_upload(
    audio: np.ndarray, name: str, split: SplitOptions | None, min_seconds: float, pool: DetectorPool | None
) -> list[tuple[np.ndarray, float, float]]:
    """The pieces ``(audio, start seconds, end seconds)`` of a decoded upload: the whole of it when it
    is at most ``split.max_seconds`` long (or splitting is off), else its stretches of speech cut at the
    pauses (none when it holds no speech). Shorter than the model's shortest input: 400."""
    seconds = len(audio) / SAMPLING_RATE
    if seconds < min_seconds:
        raise InputError(
            400,
            "audio_too_short",
            f"{name}: {len(audio)} samples is too short for the model "
            f"(at least {min_seconds * SAMPLING_RATE:.0f} samples at 16 kHz)",
        )
    if split is None or seconds <= split.max_seconds:
        return [(audio, 0.0, round(seconds, 3))]
    detector = pool.take() if pool is not None else None
    try:
        return [
            (piece.audio, round(piece.start_seconds, 3), round(piece.end_seconds, 3))
            for piece in pieces_of(_blocks(audio), split, detector)
        ]
    finally:
        if detector is not None and pool is not None:
            pool.give(detector)
