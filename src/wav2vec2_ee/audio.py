"""Reading audio: soundfile to decode, soxr to resample to 16 kHz, mixed down to mono.

numpy, soundfile and soxr only (no torch): the torch-free runtime (:mod:`wav2vec2_ee.lite`) reads audio
here too. :data:`SAMPLING_RATE` is the package's one definition of the model's input rate. Folders are
walked for audio files here (:func:`find_audio_files`), for ``transcribe`` and the lite runtime alike.
"""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import soundfile as sf

from .errors import UserError

#: The sampling rate (Hz) of the model's input: the one definition in the package (audio is resampled
#: to it on reading, the feature extractor declares it, the synthetic corpus is written at it).
SAMPLING_RATE = 16_000


class AudioError(UserError):
    """An audio file that cannot be used; the message names the file and the problem."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def resample(array: np.ndarray, sampling_rate: int, source: str = "<array>") -> np.ndarray:
    """``(samples,)`` float32 audio at ``sampling_rate`` resampled to :data:`SAMPLING_RATE` with soxr (a
    dependency of the package; the torch-free runtime may run without it, and then names it)."""
    try:
        import soxr  # imported here: the lite runtime reads 16 kHz audio without it
    except ImportError:
        raise AudioError(
            source,
            f"audio at {sampling_rate} Hz; the model needs {SAMPLING_RATE} Hz and resampling needs soxr "
            f"(pip install soxr), or give {SAMPLING_RATE} Hz audio",
        ) from None
    return soxr.resample(array, sampling_rate, SAMPLING_RATE).astype(np.float32, copy=False)


def to_mono_16k(array: np.ndarray, sampling_rate: int, source: str = "<array>") -> np.ndarray:
    """``(samples,)`` float32 mono audio at 16 kHz from ``(samples,)`` or ``(samples, channels)``."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1)
    elif array.ndim != 1:
        raise AudioError(source, f"expected 1 or 2 dimensions (samples[, channels]), got shape {array.shape}")
    if sampling_rate != SAMPLING_RATE:
        array = resample(array, sampling_rate, source)
    if array.size == 0:
        raise AudioError(source, "the file holds no audio samples")
    if not np.isfinite(array).all():
        raise AudioError(source, "the audio contains NaN or infinite samples")
    return array


#: What a path that is not a regular file is, by ``stat``'s file type (what :func:`check_regular_file` says).
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular_file(path: str | os.PathLike, source: str | None = None) -> None:
    """Raise an :class:`AudioError` unless ``path`` is an existing regular file (a link to one counts).

    Only regular files are read: opening a named pipe (FIFO) blocks until something writes to it, and a
    device or a socket is no recording; such a path is refused from its ``stat`` alone, never opened.
    """
    source = source or str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AudioError(source, "no such file") from None
    except OSError as err:
        raise AudioError(source, f"cannot read the file ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise AudioError(source, f"{kind}, not a regular file: only regular files are read as audio")


def load_audio(path: str | os.PathLike | bytes, source: str | None = None) -> np.ndarray:
    """Decode an audio file (path or encoded bytes) to ``(samples,)`` float32 mono 16 kHz.

    Raises:
        AudioError: naming the file and the problem (missing, not a regular file, unreadable, empty,
            not audio).
    """
    if isinstance(path, bytes):
        source = source or "<bytes>"
        handle = io.BytesIO(path)
    else:
        source = source or str(path)
        check_regular_file(path, source)
        handle = path
    try:
        array, sr = sf.read(handle, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(source, f"cannot decode audio ({err})") from err
    return to_mono_16k(array, sr, source)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header (no decoding).

    The header can be sound while the data is not (a truncated FLAC): such files fail later, in
    :func:`load_audio`. Only a regular file is opened (:func:`check_regular_file`).
    """
    check_regular_file(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(str(path), f"cannot read audio header ({err})") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(str(path), "the file holds no audio samples")
    return info.frames / info.samplerate


#: File extensions (lower case) walked in folders: the formats soundfile (libsndfile) reads.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au",
        ".snd", ".caf", ".w64", ".rf64", ".sph", ".nist", ".voc", ".paf", ".svx", ".8svx", ".sf",
        ".ircam", ".mat", ".mat4", ".mat5", ".pvf", ".xi", ".htk", ".sds", ".avr", ".sd2", ".mpc",
    }
)  # fmt: skip


def walk_audio_files(folder: str | os.PathLike) -> list[str]:
    """Paths under ``folder`` with an audio extension (:data:`AUDIO_EXTENSIONS`, case-insensitive), not
    hidden, sorted (any kind of file: see :func:`find_audio_files`)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(
            os.path.join(root, name)
            for name in sorted(files)
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS and not name.startswith(".")
        )
    return found


def is_special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists but is no regular file (a named pipe, a socket, a device)."""
    return os.path.exists(path) and not os.path.isfile(path)


def find_audio_files(folder: str | os.PathLike) -> list[str]:
    """Audio files under ``folder`` (recursively; :data:`AUDIO_EXTENSIONS`, case-insensitive), sorted;
    only what can be read as a file: named pipes, sockets and devices are left out."""
    return [path for path in walk_audio_files(folder) if not is_special_file(path)]
