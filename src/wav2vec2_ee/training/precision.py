"""Training precision on a CPU: ``--bf16`` without a GPU, and ``--auto-bf16`` (measure, then decide).

``transformers`` trains in bfloat16 through ``accelerate``'s ``torch.autocast``; on a machine without
any accelerator its ``TrainingArguments`` refuse ``--bf16`` unless ``--use-cpu`` is given too.
``wav2vec2-ee train`` sets ``use_cpu`` itself on such a machine (:func:`cpu_only_machine`), so that
``--bf16 true`` trains on the CPU in bfloat16 autocast, as the flag says.

Whether bfloat16 pays on a CPU depends on the CPU: with native bfloat16 instructions (AVX512_BF16,
AMX) the matrix products run ~2x faster than in float32, while on AVX2-only processors bfloat16 is
emulated and slower. ``--auto-bf16`` decides by a short measurement at start-up
(:func:`measure_step_seconds`: a few forward + backward passes of the model being trained, on a
batch of the training batches' shape, in float32 and in bfloat16 autocast), the way
:mod:`wav2vec2_ee.accel` decides its oneDNN kernels, and trains in bfloat16 when it is at least
:data:`MIN_SPEEDUP` faster. The weights, optimizer and random state are those a run without the
measurement would have.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: bfloat16 is chosen only when the measured step is at least this much faster than float32.
MIN_SPEEDUP = 1.1


def cpu_only_machine() -> bool:
    """Whether no accelerator (CUDA, XPU, MPS, ...) is available: training can only run on the CPU."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available()))


def cpu_native_bf16() -> bool:
    """Whether this CPU has native bfloat16 instructions (AVX512_BF16 or AMX), as PyTorch reports it."""
    cpu = torch.cpu
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


@dataclass(frozen=True)
class PrecisionChoice:
    """The outcome of :func:`choose_cpu_bf16`: ``bf16`` or not, and why (the measured seconds)."""

    bf16: bool
    float32_seconds: float | None = None
    bfloat16_seconds: float | None = None
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        if not self.float32_seconds or not self.bfloat16_seconds:
            return None
        return self.float32_seconds / self.bfloat16_seconds


def _synthetic_batch(
    model: nn.Module, batch_size: int, samples: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A batch of the training batches' shape: ``input_values`` ``(batch, samples)``, ``attention_mask``
    and ``labels`` ``(batch, target_len)`` (about 12 labels a second, as speech has)."""
    vocab = int(model.config.vocab_size)
    target = max(1, min(int(samples / 16000 * 12), int(model._get_feat_extract_output_lengths(samples)) // 2))
    return {
        "input_values": torch.randn(batch_size, samples, generator=generator),
        "attention_mask": torch.ones(batch_size, samples, dtype=torch.long),
        "labels": torch.randint(1, vocab, (batch_size, target), generator=generator),
    }


def measure_step_seconds(
    model: nn.Module, batch_size: int, samples: int, rounds: int = 3
) -> tuple[float, float]:
    """Median seconds of one training forward + backward of ``model`` (in train mode, on the CPU) on a
    ``(batch_size, samples)`` batch, in float32 and in bfloat16 autocast (alternating, after one
    warm-up pass each). The gradients, the training mode and the random state are restored."""
    generator = torch.Generator().manual_seed(0)
    batch = _synthetic_batch(model, batch_size, samples, generator)
    rng = torch.get_rng_state()
    was_training = model.training
    grads = {p: p.grad for p in model.parameters()}
    model.train()
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for round_ in range(rounds + 1):
            for bf16 in (False, True):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(**batch).loss
                loss.backward()
                for p in model.parameters():
                    p.grad = None
                if round_:
                    times[bf16].append(time.perf_counter() - start)
    finally:
        for p, g in grads.items():
            p.grad = g
        model.train(was_training)
        torch.set_rng_state(rng)
    return statistics.median(times[False]), statistics.median(times[True])


def choose_cpu_bf16(model: nn.Module, batch_size: int, samples: int) -> PrecisionChoice:
    """Whether to train ``model`` in bfloat16 autocast on this CPU: never without native bfloat16
    instructions (emulated bfloat16 is slower), else when :func:`measure_step_seconds` finds it at least
    :data:`MIN_SPEEDUP` faster."""
    if not cpu_native_bf16():
        return PrecisionChoice(False, reason="this CPU has no native bfloat16 (AVX512_BF16 / AMX)")
    f32, bf16 = measure_step_seconds(model, batch_size, samples)
    faster = f32 / bf16 >= MIN_SPEEDUP
    verdict = "faster" if faster else f"not {MIN_SPEEDUP:g}x faster"
    return PrecisionChoice(
        faster, f32, bf16, f"bfloat16 {verdict}: {bf16:.3f} s vs {f32:.3f} s per forward + backward"
    )
