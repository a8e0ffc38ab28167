"""Minimal eSpeak NG text-to-speech wrapper producing 16 kHz float32 audio.

Two backends are supported:

* ``"library"`` (preferred): ``libespeak-ng`` loaded with :mod:`ctypes` from the ``espeakng-loader`` wheel,
  which also ships the voice data.
* ``"binary"`` (fallback): a system ``espeak-ng`` executable, run as
  ``espeak-ng -v VOICE -s RATE -p PITCH --stdout TEXT``.

If neither is available, :class:`BackendUnavailableError` (a :class:`~wav2vec2_ee.errors.MissingExtraError`
naming the ``demo`` extra, and a :class:`RuntimeError`) explains how to install one.

Determinism: libespeak-ng keeps hidden global state (pitch-flutter phase, gain control, noise generators)
that carries over from one utterance to the next, so the same call can give different samples depending on
what was synthesised before. With ``fresh_state=True`` (the default) the library backend therefore unloads
and reloads the shared library before every utterance (about 6 ms) and seeds its random generators, which
makes the audio a pure function of ``(text, voice, rate, pitch, seed)``. The library is a process-global
singleton: use processes, not threads, for parallel synthesis.
"""

from __future__ import annotations

import ctypes
import glob
import io
import os
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLING_RATE
from ..errors import MissingExtraError, UserError

__all__ = [
    "BackendUnavailableError",
    "ESpeakSynthesizer",
    "detect_backend",
    "espeak_data_path",
    "synthesize",
    "trim_silence",
]

_MAX_PEAK = 0.99

# Constants from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH = 1, 2, 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

INSTALL_HINT = (
    "No eSpeak NG backend available: install the demo extra, `pip install 'wav2vec2-ee[demo]'` (it is "
    "`pip install espeakng-loader`: a wheel that bundles libespeak-ng and its voice data; preferred), or "
    "the system package with `apt-get install espeak-ng` (provides the `espeak-ng` binary)."
)


class BackendUnavailableError(MissingExtraError, RuntimeError):
    """Raised when neither ``espeakng-loader`` (the ``demo`` extra) nor an ``espeak-ng`` binary can be used.

    A :class:`~wav2vec2_ee.errors.MissingExtraError` (``wav2vec2-ee make-corpus`` / ``demo`` print it
    as one line) and, as before, a :class:`RuntimeError`; ``message`` says how to install a backend.
    """

    def __init__(self, message: str = INSTALL_HINT):
        self.feature, self.package, self.extra = "eSpeak NG synthesis", "espeakng-loader", "demo"
        UserError.__init__(self, message)


def trim_silence(
    audio: np.ndarray, sample_rate: int, threshold: float = 0.01, margin_s: float = 0.025
) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``margin_s`` seconds on each side.

    A sample counts as sound when its magnitude exceeds ``threshold`` times the peak magnitude.
    """
    if audio.size == 0:
        return audio
    magnitude = np.abs(audio)
    peak = float(magnitude.max())
    if peak <= 0.0:
        return audio[:0]
    voiced = np.flatnonzero(magnitude > threshold * peak)
    margin = int(round(margin_s * sample_rate))
    return audio[max(int(voiced[0]) - margin, 0) : min(int(voiced[-1]) + 1 + margin, audio.size)]


def _loader_paths() -> tuple[str, str] | None:
    """``(library_path, data_path)`` from ``espeakng-loader``, or ``None`` if it is missing or broken."""
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception:  # noqa: BLE001 - any failure means "backend not available"
        return None
    return (lib_path, data_path) if os.path.exists(lib_path) else None


def espeak_data_path() -> str | None:
    """Directory of the eSpeak NG data (``voices/``, ``lang/``) used by the active backend, if found."""
    paths = _loader_paths()
    if paths is not None:
        return paths[1]
    candidates = [
        os.environ.get("ESPEAK_DATA_PATH", ""),
        "/usr/share/espeak-ng-data",
        "/usr/local/share/espeak-ng-data",
    ]
    candidates += sorted(glob.glob("/usr/lib/*/espeak-ng-data"))
    return next((p for p in candidates if p and os.path.isdir(os.path.join(p, "voices"))), None)


def detect_backend(backend: str = "auto") -> str:
    """Resolve ``"auto"`` to ``"library"`` or ``"binary"`` without loading anything.

    Raises:
        UserError: for an unknown backend name.
        BackendUnavailableError: if the requested backend (for ``"auto"``: any backend) is missing.
    """
    if backend not in ("auto", "library", "binary"):
        raise UserError(f"unknown eSpeak backend {backend!r} (use 'auto', 'library' or 'binary')")
    if backend in ("auto", "library") and _loader_paths() is not None:
        return "library"
    if backend in ("auto", "binary") and shutil.which("espeak-ng") is not None:
        return "binary"
    raise BackendUnavailableError(INSTALL_HINT)


# ---------------------------------------------------------------------------------------------- library
_chunks: list[np.ndarray] = []


def _on_samples(wav, num_samples: int, _events) -> int:  # noqa: ANN001 - ctypes pointers
    if num_samples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    return 0


_callback = _SYNTH_CALLBACK(_on_samples)  # module-level reference: must outlive every library instance
_lock = threading.Lock()
_libc = ctypes.CDLL(None) if sys.platform != "win32" else None


def _dlclose(handle: int) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(handle)


_unload_checked = False


def _check_unloaded(lib_path: str) -> None:
    """Warn once if libespeak-ng stayed mapped after dlclose (someone else holds it: no fresh state)."""
    global _unload_checked
    if _unload_checked or not os.path.exists("/proc/self/maps"):
        return
    _unload_checked = True
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        if any(lib_path in line for line in maps):
            warnings.warn(
                f"{lib_path} could not be unloaded (another module holds it); eSpeak output may then "
                "depend on the order of synthesis calls",
                RuntimeWarning,
                stacklevel=3,
            )


class _Library:
    """One loaded and initialised instance of libespeak-ng (at most one alive per process)."""

    current: _Library | None = None

    def __init__(self, lib_path: str, data_path: str) -> None:
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot load {lib_path}: {exc}. {INSTALL_HINT}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
        lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise BackendUnavailableError(f"espeak_Initialize failed for the data at {data_path}")
        lib.espeak_SetSynthCallback(_callback)
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        self.lib = lib
        self.lib_path = lib_path

    def close(self) -> None:
        self.lib.espeak_Terminate()
        handle = self.lib._handle
        del self.lib, self._set_seed
        _dlclose(handle)  # the next CDLL() maps a pristine copy with fresh global state
        _check_unloaded(self.lib_path)

    def synth(self, text: str, voice: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        lib = self.lib
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak voice {voice!r}")
        lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
        lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
        if self._set_seed is not None:
            self._set_seed(seed)
        if _libc is not None:
            _libc.srand(ctypes.c_uint(seed))  # some generators (Klatt noise) use libc rand()
        data = text.encode("utf-8") + b"\0"
        _chunks.clear()
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        pcm = np.concatenate(_chunks) if _chunks else np.zeros(0, dtype=np.int16)
        _chunks.clear()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
        return pcm


# ---------------------------------------------------------------------------------------------- public
class ESpeakSynthesizer:
    """Synthesise text with eSpeak NG; returns trimmed float32 mono audio at 16 kHz.

    Args:
        backend: ``"auto"`` (library if ``espeakng-loader`` is importable, else binary), ``"library"``
            or ``"binary"``.
        fresh_state: library backend only: reload libespeak-ng before every utterance so that the output
            does not depend on earlier calls (see module docstring). ``False`` is ~3x faster.

    Raises:
        BackendUnavailableError: if the requested backend (for ``"auto"``: any backend) is missing.
    """

    def __init__(self, backend: str = "auto", fresh_state: bool = True) -> None:
        self.backend = detect_backend(backend)
        self.fresh_state = fresh_state
        self._paths = _loader_paths() if self.backend == "library" else None
        self._binary = shutil.which("espeak-ng") if self.backend == "binary" else None

    def _synth_library(
        self, text: str, voice: str, rate: int, pitch: int, seed: int
    ) -> tuple[np.ndarray, int]:
        assert self._paths is not None
        with _lock:
            if _Library.current is not None and self.fresh_state:
                _Library.current.close()
                _Library.current = None
            if _Library.current is None:
                _Library.current = _Library(*self._paths)
            library = _Library.current
            pcm = library.synth(text, voice, rate, pitch, seed)
        return pcm.astype(np.float32) / 32768.0, library.sample_rate

    def _synth_binary(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
        assert self._binary is not None
        cmd = [self._binary, "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True, check=True)
        audio, sample_rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        return (audio.mean(axis=1) if audio.ndim > 1 else audio), int(sample_rate)

    def synthesize(
        self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Render ``text``; return trimmed float32 mono audio at 16 kHz.

        Args:
            text: plain text to speak.
            voice: eSpeak voice name with optional variant, e.g. ``"en-us+f3"``.
            rate: speaking rate in words per minute (eSpeak accepts 80-450).
            pitch: base pitch 0-100 (50 = the variant's default).
            seed: seed of eSpeak's random generators (library backend only).
        """
        if self.backend == "library":
            audio, sample_rate = self._synth_library(text, voice, rate, pitch, seed)
        else:
            audio, sample_rate = self._synth_binary(text, voice, rate, pitch)
        if sample_rate != SAMPLING_RATE and audio.size:
            audio = soxr.resample(audio, sample_rate, SAMPLING_RATE, quality="HQ")
        audio = trim_silence(np.asarray(audio, dtype=np.float32), SAMPLING_RATE)
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak > _MAX_PEAK:  # loud variants overshoot slightly after resampling: scale instead of clipping
            audio = audio * np.float32(_MAX_PEAK / peak)
        return np.ascontiguousarray(audio, dtype=np.float32)


_default: ESpeakSynthesizer | None = None


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, seed: int = 0
) -> np.ndarray:
    """Synthesise with a per-process default :class:`ESpeakSynthesizer`; see its ``synthesize`` method."""
    global _default
    if _default is None:
        _default = ESpeakSynthesizer()
    return _default.synthesize(text, voice, rate, pitch, seed)
