"""The encoder's positional convolution for CPU inference, by FFT.

The encoder's positional embedding is a grouped convolution over time with a long kernel (128 taps in
wav2vec2-base, 64 in the demo model; 16 groups / 8), which oneDNN computes tap by tap.
:func:`positional_conv_fft` computes the same convolution as a product of spectra: each frequency bin
is one small ``(in/groups) x (out/groups)`` matrix product per group, and the kernel's spectrum is
computed once per FFT size and kept, on the module, until the weights change (:class:`_KernelSpectra`).
Same results up to float rounding (about 1e-6; checked in the tests); about a third of the time of the
convolution (2.5 vs 6-9 ms for 8 x 70 frames, hidden 192, one thread).
:class:`FFTPositionalConvEmbedding` is swapped in by :func:`wav2vec2_ee.accel.optimize_for_cpu_inference`
and uses it where no gradient is needed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2PositionalConvEmbedding


def supports_positional_conv_fft(module: nn.Module) -> bool:
    """Whether :func:`positional_conv_fft` computes this positional embedding (``transformers``' own,
    stride 1, no dilation, "same" padding of ``kernel // 2``)."""
    if not isinstance(module, Wav2Vec2PositionalConvEmbedding):
        return False
    conv = module.conv
    kernel = conv.kernel_size[0]
    return (
        conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.padding == (kernel // 2,)
        and conv.in_channels == conv.out_channels
        and getattr(module.padding, "num_pad_remove", None) == (1 if kernel % 2 == 0 else 0)
    )


def _fft_size(minimum: int) -> int:
    """The smallest size ``2^k`` or ``3 * 2^k`` (k >= 5) of at least ``minimum``: fast FFTs, few distinct
    sizes (so cached kernel spectra are reused) and at most 1.5x zero padding."""
    size = 64
    while True:
        for candidate in (size, size * 3 // 2):
            if candidate >= minimum:
                return candidate
        size *= 2


class _KernelSpectra:
    """Per FFT size, the spectrum of a positional convolution's (time-reversed) kernel as
    ``(freqs, groups, in/groups, out/groups)``, recomputed when any parameter of the module changes
    (an optimiser step, ``load_state_dict``): the cache key holds every parameter's storage and version."""

    MAX_SIZES = 8

    def __init__(self) -> None:
        self.key: tuple = ()
        self.by_size: dict[int, torch.Tensor] = {}

    def get(self, module: Wav2Vec2PositionalConvEmbedding, size: int) -> torch.Tensor:
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())
        if key != self.key:
            self.key, self.by_size = key, {}
        if size not in self.by_size:
            if len(self.by_size) >= self.MAX_SIZES:
                self.by_size.pop(next(iter(self.by_size)))
            conv = module.conv
            weight = conv.weight.detach()  # (out, in/groups, kernel), weight norm applied
            groups = conv.groups
            spectrum = torch.fft.rfft(weight.flip(-1).float(), n=size, dim=-1)  # (out, in/g, freqs)
            out_g, in_g = weight.shape[0] // groups, weight.shape[1]
            self.by_size[size] = spectrum.view(groups, out_g, in_g, -1).permute(3, 0, 2, 1).contiguous()
        return self.by_size[size]


def positional_conv_fft(module: Wav2Vec2PositionalConvEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    """``module(hidden)`` (``transformers``' ``Wav2Vec2PositionalConvEmbedding``) computed by FFT.

    Args:
        hidden: ``(batch, frames, hidden)``, padded frames already zeroed (as the encoder does).

    Returns:
        ``(batch, frames, hidden)``: the activation of the "same"-padded grouped convolution, equal to
        the module's output up to float rounding. No gradient flows to the kernel (inference only).
    """
    conv = module.conv
    batch, frames, channels = hidden.shape
    kernel, groups = conv.kernel_size[0], conv.groups
    # conv1d is a correlation: out[t] = sum_k w[k] x[t + k - kernel // 2], i.e. the linear convolution
    # of x with the reversed kernel, read from index kernel - 1 - kernel // 2
    size = _fft_size(frames + kernel - 1)
    spectra = getattr(module, "_ee_kernel_spectra", None)
    if spectra is None:
        spectra = _KernelSpectra()
        module._ee_kernel_spectra = spectra
    weight = spectra.get(module, size)  # (freqs, groups, in/g, out/g)
    x = torch.fft.rfft(hidden.float(), n=size, dim=1)  # (batch, freqs, hidden)
    freqs = x.shape[1]
    x = x.view(batch, freqs, groups, channels // groups).permute(1, 2, 0, 3)  # (freqs, groups, batch, in/g)
    y = torch.matmul(x, weight).permute(2, 0, 1, 3).reshape(batch, freqs, channels)
    start = kernel - 1 - kernel // 2
    out = torch.fft.irfft(y, n=size, dim=1)[:, start : start + frames]
    if conv.bias is not None:
        out = out + conv.bias
    return module.activation(out.to(hidden.dtype))


class FFTPositionalConvEmbedding(Wav2Vec2PositionalConvEmbedding):
    """``Wav2Vec2PositionalConvEmbedding`` computed by :func:`positional_conv_fft` where no gradient is
    needed (the differentiable convolution otherwise); the kernel spectra are cached on the module."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, hidden)`` -> ``(batch, frames, hidden)``, as the original."""
        grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if grad:
            return super().forward(hidden_states)
        return positional_conv_fft(self, hidden_states)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_ee_kernel_spectra", None)
        return state
