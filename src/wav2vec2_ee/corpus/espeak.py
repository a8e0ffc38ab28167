"""Minimal eSpeak NG text-to-speech wrapper producing 16 kHz float32 audio.

Two backends are supported:

* ``"library"`` (preferred): ``libespeak-ng`` loaded with :mod:`ctypes` from the ``espeakng-loader`` wheel,
  which also ships the voice data. The library is a process-global singleton, so use one
  :class:`ESpeakSynthesizer` per process (parallel synthesis must use processes, not threads).
* ``"binary"`` (fallback): a system ``espeak-ng`` executable run as
  ``espeak-ng -v VOICE -s RATE -p PITCH --stdout TEXT``.

If neither is available :func:`get_synthesizer` raises a :class:`RuntimeError` explaining how to install one.
"""

from __future__ import annotations

import ctypes
import io
import shutil
import subprocess
import threading

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "TARGET_SAMPLE_RATE",
    "BackendUnavailableError",
    "ESpeakSynthesizer",
    "get_synthesizer",
    "synthesize",
    "trim_silence",
]

TARGET_SAMPLE_RATE = 16_000

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_INSTALL_HINT = (
    "No eSpeak NG backend available: install the Python wheel with `pip install espeakng-loader` "
    "(preferred, bundles libespeak-ng and its voice data) or the system package with "
    "`apt-get install espeak-ng` (provides the `espeak-ng` binary)."
)


class BackendUnavailableError(RuntimeError):
    """Raised when neither ``espeakng-loader`` nor an ``espeak-ng`` binary can be used."""


def trim_silence(audio: np.ndarray, sample_rate: int, threshold: float = 0.01, margin_s: float = 0.03) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``margin_s`` seconds of context on each side.

    A sample counts as speech when its magnitude exceeds ``threshold`` times the peak magnitude.
    """
    if audio.size == 0:
        return audio
    peak = float(np.max(np.abs(audio)))
    if peak <= 0.0:
        return audio[:0]
    voiced = np.flatnonzero(np.abs(audio) > threshold * peak)
    margin = int(round(margin_s * sample_rate))
    start = max(int(voiced[0]) - margin, 0)
    end = min(int(voiced[-1]) + 1 + margin, audio.size)
    return audio[start:end]


def _load_loader_paths() -> tuple[str, str] | None:
    """Return ``(library_path, data_path)`` from ``espeakng-loader`` or ``None`` if it is unusable."""
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        lib_path = espeakng_loader.get_library_path()
        data_path = espeakng_loader.get_data_path()
    except Exception:  # noqa: BLE001 - any failure simply means "backend not available"
        return None
    return lib_path, data_path


class ESpeakSynthesizer:
    """Synthesise English text with eSpeak NG and return float32 mono audio at 16 kHz.

    Args:
        backend: ``"auto"`` (library if importable, else binary), ``"library"`` or ``"binary"``.

    Raises:
        BackendUnavailableError: if the requested backend (or, for ``"auto"``, any backend) is missing.
    """

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None  # process-wide singleton
    _lib_rate: int = 0

    def __init__(self, backend: str = "auto") -> None:
        if backend not in ("auto", "library", "binary"):
            raise ValueError(f"unknown eSpeak backend {backend!r}")
        self.backend = ""
        if backend in ("auto", "library"):
            paths = _load_loader_paths()
            if paths is not None:
                self._init_library(*paths)
                self.backend = "library"
            elif backend == "library":
                raise BackendUnavailableError(_INSTALL_HINT)
        if not self.backend:
            self._binary = shutil.which("espeak-ng")
            if self._binary is None:
                raise BackendUnavailableError(_INSTALL_HINT)
            self.backend = "binary"
        self._chunks: list[np.ndarray] = []

    # ------------------------------------------------------------------ library backend
    def _init_library(self, lib_path: str, data_path: str) -> None:
        cls = type(self)
        with cls._lock:
            if cls._lib is not None:
                return
            try:
                lib = ctypes.CDLL(lib_path)
            except OSError as exc:
                raise BackendUnavailableError(f"cannot load {lib_path}: {exc}. {_INSTALL_HINT}") from exc
            lib.espeak_Initialize.restype = ctypes.c_int
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
            lib.espeak_SetSynthCallback.restype = None
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
            if rate <= 0:
                raise BackendUnavailableError(f"espeak_Initialize failed for data at {data_path}")
            cls._callback = _SYNTH_CALLBACK(cls._on_samples)  # keep a reference: must outlive the library
            lib.espeak_SetSynthCallback(cls._callback)
            cls._lib, cls._lib_rate = lib, rate

    _current: list[np.ndarray] | None = None

    @classmethod
    def _on_samples(cls, wav, num_samples: int, _events) -> int:  # noqa: ANN001 - ctypes pointers
        if num_samples > 0 and wav and cls._current is not None:
            cls._current.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def _synth_library(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
        cls = type(self)
        lib = cls._lib
        assert lib is not None
        with cls._lock:
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown eSpeak voice {voice!r}")
            lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
            data = text.encode("utf-8") + b"\0"
            cls._current = []
            try:
                err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                lib.espeak_Synchronize()
                chunks = cls._current
            finally:
                cls._current = None
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0, cls._lib_rate

    # ------------------------------------------------------------------ binary backend
    def _synth_binary(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
        cmd = [self._binary, "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True, check=True)
        audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        return audio, int(sr)

    # ------------------------------------------------------------------ public
    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
        """Render ``text`` and return trimmed float32 mono audio at 16 kHz.

        Args:
            text: plain text to speak.
            voice: eSpeak voice name with optional variant, e.g. ``"en-us+f3"``.
            rate: speaking rate in words per minute (eSpeak accepts 80-450).
            pitch: base pitch 0-100 (50 = the variant's default).
        """
        if self.backend == "library":
            audio, sr = self._synth_library(text, voice, rate, pitch)
        else:
            audio, sr = self._synth_binary(text, voice, rate, pitch)
        if sr != TARGET_SAMPLE_RATE and audio.size:
            audio = soxr.resample(audio, sr, TARGET_SAMPLE_RATE, quality="HQ")
        return np.ascontiguousarray(trim_silence(audio, TARGET_SAMPLE_RATE), dtype=np.float32)


_DEFAULT: ESpeakSynthesizer | None = None


def get_synthesizer(backend: str = "auto") -> ESpeakSynthesizer:
    """Return a per-process cached :class:`ESpeakSynthesizer` (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None or (backend != "auto" and _DEFAULT.backend != backend):
        _DEFAULT = ESpeakSynthesizer(backend)
    return _DEFAULT


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """Synthesise ``text`` with the per-process default synthesiser; see :meth:`ESpeakSynthesizer.synthesize`."""
    return get_synthesizer().synthesize(text, voice, rate, pitch)
