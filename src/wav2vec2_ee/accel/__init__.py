"""Optional speed-ups for inference on a CPU, applied by one explicit call.

:class:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC` is built from plain ``transformers`` modules and runs
the same arithmetic on any device, with or without gradients. Everything here exists only to go
faster on a CPU, and changes a model only through :func:`optimize_for_cpu_inference`, which the
commands (``evaluate``, ``transcribe``, ``sweep``, ``calibrate``, the demo) call when, and only when,
they run on a CPU (:func:`wav2vec2_ee.device.prepare_for_inference`):

* :mod:`.onednn`: linear layers and the feed-forward block's fused GELU through oneDNN, where a short
  measurement on this CPU finds it faster than ``F.linear`` (it is on AVX-512 processors, not on every
  AVX2 one);
* :mod:`.cnn`: the CNN feature encoder computed time-major (narrow CNNs) or one utterance at a time
  (wide CNNs, where each utterance needs its own group-norm statistics);
* :mod:`.posconv`: the positional convolution by FFT;
* :mod:`.processes`: forked worker processes that share the CPU's threads (used by evaluation).

Each swap replaces a module's class by a subclass with the same parameters, state dict and
``save_pretrained`` output, whose forward takes the fast path only where no gradient is needed and
falls back to the original otherwise; caches (oneDNN's weight layout, kernel spectra) live on the
modules they belong to. :func:`remove_cpu_optimizations` restores the plain classes (before a
``torch.ao`` quantisation that matches ``nn.Linear`` by exact type, or an export). Another backend
(e.g. ONNX Runtime) can replace this layer without touching the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2FeatureEncoder,
    Wav2Vec2PositionalConvEmbedding,
)

from .cnn import PerUtteranceFeatureEncoder, TimeMajorFeatureEncoder, prefers_time_major, supports_time_major
from .onednn import (
    InferenceFeedForward,
    InferenceLinear,
    onednn_linear_available,
    onednn_linear_is_faster,
    swap_linears,
)
from .posconv import FFTPositionalConvEmbedding, supports_positional_conv_fft

logger = logging.getLogger(__name__)

_ACCELERATED = (TimeMajorFeatureEncoder, PerUtteranceFeatureEncoder, FFTPositionalConvEmbedding)


@dataclass
class Acceleration:
    """What :func:`optimize_for_cpu_inference` changed.

    Args:
        linears: linear layers and feed-forward blocks now on the oneDNN route (0 where it is unavailable
            or measured slower than ``F.linear`` on this CPU).
        feature_encoder: ``"time-major"``, ``"per-utterance"`` or ``None`` (left as it was).
        positional_conv: ``"fft"`` or ``None``.
    """

    linears: int = 0
    feature_encoder: str | None = None
    positional_conv: str | None = None


def optimize_for_cpu_inference(model: nn.Module) -> Acceleration:
    """Swap in the CPU inference speed-ups of this package, in place (same parameters and outputs up to
    float rounding). The model must be on the CPU; call it after ``.to("cpu")``, not before moving the
    model to another device. Applying it twice changes nothing more."""
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"optimize_for_cpu_inference needs a model on the CPU, not on {sorted(devices)}")
    done = Acceleration()
    if onednn_linear_available():
        size = getattr(getattr(model, "config", None), "hidden_size", 256)
        faster, onednn_gflops, blas_gflops = onednn_linear_is_faster(size, 4 * size)
        if faster:
            done.linears = swap_linears(model, enabled=True)
        logger.info(
            "oneDNN linear layers %s: %.0f vs %.0f GFLOPS for F.linear on this CPU (%d x %d)",
            "used" if faster else "not used",
            onednn_gflops,
            blas_gflops,
            size,
            4 * size,
        )
    for module in model.modules():
        if type(module) is Wav2Vec2FeatureEncoder and supports_time_major(module):
            if prefers_time_major(module):
                module.__class__, done.feature_encoder = TimeMajorFeatureEncoder, "time-major"
            else:
                module.__class__, done.feature_encoder = PerUtteranceFeatureEncoder, "per-utterance"
        elif type(module) is Wav2Vec2PositionalConvEmbedding and supports_positional_conv_fft(module):
            module.__class__, done.positional_conv = FFTPositionalConvEmbedding, "fft"
    logger.debug("CPU inference speed-ups: %s", done)
    return done


def remove_cpu_optimizations(model: nn.Module) -> int:
    """Undo :func:`optimize_for_cpu_inference`: every swapped module gets its plain class back (and
    loses its caches). Returns how many modules changed."""
    changed = swap_linears(model, enabled=False)
    for module in model.modules():
        if isinstance(module, _ACCELERATED):
            module.__class__ = module.__class__.__mro__[1]
            module.__dict__.pop("_ee_kernel_spectra", None)
            changed += 1
    return changed


def is_optimized(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a speed-up of this package."""
    kinds = (*_ACCELERATED, InferenceLinear, InferenceFeedForward)
    return any(isinstance(m, kinds) for m in model.modules())


__all__ = ["Acceleration", "is_optimized", "optimize_for_cpu_inference", "remove_cpu_optimizations"]
