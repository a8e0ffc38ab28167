"""Training-time audio augmentation: speed perturbation (Kaldi's ``sox speed``, lhotse's ``PerturbSpeed``),
additive noise and reverberation (:class:`NoiseAndReverb`).

Speed perturbation by a factor ``f`` plays the waveform ``f`` times faster: ``f = 1.1`` is 10 % shorter
with every frequency (pitch *and* formants) 10 % higher. It is the standard cheap way to make an ASR
model robust to voices it has not heard (different vocal-tract lengths, speaking rates); Kaldi and
icefall recipes train on factors 0.9, 1.0 and 1.1.

The factor of an utterance is a pure function of ``(seed, epoch, index)``, so an epoch sees the same
perturbations on every process and again after a resume (training stays reproducible bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from ..audio import SAMPLING_RATE
from ..errors import UserError


@dataclass(frozen=True)
class SpeedPerturbation:
    """Resample each training utterance by a factor drawn from ``factors`` (uniformly, per epoch).

    Args:
        factors: speed factors to choose from; ``1.0`` leaves the audio as it is.
        seed: with the epoch and the utterance index, determines every choice.
    """

    factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    seed: int = 0

    def __post_init__(self) -> None:
        factors = tuple(float(f) for f in self.factors)
        if not factors or any(not 0.5 <= f <= 2.0 for f in factors):
            raise UserError(f"speed perturbation factors must lie in [0.5, 2.0], got {list(self.factors)}")
        object.__setattr__(self, "factors", factors)

    def factor(self, epoch: int, index: int) -> float:
        """The factor of utterance ``index`` in ``epoch`` (deterministic)."""
        rng = np.random.default_rng((int(self.seed), int(epoch), int(index)))
        return self.factors[int(rng.integers(len(self.factors)))]

    @staticmethod
    def apply(audio: np.ndarray, factor: float) -> np.ndarray:
        """``(samples,)`` audio played ``factor`` times faster: ``(≈ samples / factor,)`` float32."""
        if factor == 1.0:
            return audio
        # read as sampled at factor * 16 kHz and resampled to 16 kHz: 1 / factor as many samples
        return soxr.resample(audio, SAMPLING_RATE * factor, SAMPLING_RATE).astype(np.float32, copy=False)


@dataclass(frozen=True)
class NoiseAndReverb:
    """Additive noise and synthetic reverberation of training audio (both off unless their probability
    is above 0), written with numpy only.

    * noise, with probability ``noise_prob``: white, pink (1/f) or brown (1/f^2) noise, chosen uniformly,
      added at a signal-to-noise ratio drawn uniformly (in dB) from ``snr_db``;
    * reverberation, with probability ``reverb_prob``: the audio convolved with a synthetic room impulse
      response: a direct path followed by exponentially decaying Gaussian noise whose 60 dB decay time
      (RT60) is drawn uniformly from ``rt60`` seconds (the usual stand-in for measured responses when
      none are at hand; Kaldi's and lhotse's recipes convolve with recorded ones instead). Reverberation
      is applied first, then noise, as in a room with a noisy microphone. The length does not change.

    As :class:`SpeedPerturbation`, every choice is a pure function of ``(seed, epoch, index)``.
    """

    noise_prob: float = 0.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    reverb_prob: float = 0.0
    rt60: tuple[float, float] = (0.15, 0.6)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_prob", "reverb_prob"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must lie in [0, 1], got {value}")
            object.__setattr__(self, name, value)
        for name, low_limit in (("snr_db", -20.0), ("rt60", 0.01)):
            pair = tuple(float(v) for v in getattr(self, name))
            if len(pair) != 2 or pair[0] > pair[1] or pair[0] < low_limit:
                raise UserError(
                    f"{name} must be two increasing numbers, at least {low_limit}, got {list(pair)}"
                )
            object.__setattr__(self, name, pair)
        if self.rt60[1] > 2.0:
            raise UserError(f"rt60 above 2 s is not a room, got {list(self.rt60)}")

    @property
    def enabled(self) -> bool:
        return self.noise_prob > 0 or self.reverb_prob > 0

    def __call__(self, audio: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """``(samples,)`` float32 audio of utterance ``index`` in ``epoch``, reverberated and/or noisy
        (the same array when neither is drawn)."""
        rng = np.random.default_rng((int(self.seed), int(epoch), int(index), 1))
        out = audio
        if rng.random() < self.reverb_prob:
            out = reverberate(out, room_impulse_response(float(rng.uniform(*self.rt60)), rng))
        if rng.random() < self.noise_prob:
            kind = ("white", "pink", "brown")[int(rng.integers(3))]
            out = add_noise(out, colored_noise(out.size, kind, rng), float(rng.uniform(*self.snr_db)))
        return out


def room_impulse_response(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """``(taps,)`` synthetic impulse response: 1 at time 0, then Gaussian noise decaying by 60 dB in
    ``rt60`` seconds, starting after a 2-5 ms gap and lasting ``rt60`` (at most 1 s), energy-normalised."""
    taps = max(2, int(min(rt60, 1.0) * SAMPLING_RATE))
    gap = int(rng.uniform(0.002, 0.005) * SAMPLING_RATE)
    t = np.arange(taps) / SAMPLING_RATE
    tail = rng.standard_normal(taps) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60
    tail[:gap] = 0.0
    # direct path to reverberant energy ratio drawn from 0-10 dB
    tail *= np.sqrt(10 ** (-rng.uniform(0.0, 10.0) / 10) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail**2))).astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``(samples,)`` ``audio`` convolved with ``rir`` (FFT), cut to the input's length, level kept."""
    n = audio.size + rir.size - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(rir, size), size)[: audio.size]
    scale = np.sqrt(np.mean(audio.astype(np.float64) ** 2) / max(float(np.mean(wet**2)), 1e-20))
    return (wet * scale).astype(np.float32)


def colored_noise(samples: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``(samples,)`` unit-power noise: ``white`` (flat), ``pink`` (power 1/f) or ``brown`` (1/f^2).

    Coloured noise is shaped in the frequency domain over the next power of two and cut to ``samples``
    (a stretch of the same stationary noise): an FFT of an arbitrary length, a large prime say, takes
    ~15x longer, and this ran for most training utterances with recording conditions."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    if exponent:
        size = 1 << max(samples - 1, 1).bit_length()
        spectrum = np.fft.rfft(rng.standard_normal(size))
        freqs = np.fft.rfftfreq(size)
        freqs[0] = freqs[1]
        spectrum /= freqs ** (exponent / 2)
        noise = np.fft.irfft(spectrum, size)[:samples]
    else:
        noise = rng.standard_normal(samples)
    noise -= noise.mean()
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio + noise`` scaled so that the ratio of their powers is ``snr_db`` decibels."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    gain = np.sqrt(power / 10 ** (snr_db / 10)) / max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return (audio + gain * noise).astype(np.float32)
