"""Training-time audio augmentation: speed perturbation (Kaldi's ``sox speed``, lhotse's ``PerturbSpeed``).

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

from .audio import SAMPLING_RATE


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
            raise ValueError(f"speed perturbation factors must lie in [0.5, 2.0], got {list(self.factors)}")
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
