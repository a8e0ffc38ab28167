"""A faster encoder input stage for inference: the same functions as ``transformers``' wav2vec2 CNN and
positional convolution, computed differently.

**CNN, time-major.**

``transformers``' wav2vec2 CNN keeps activations as ``(batch, channels, time)`` and, for layer-norm
CNNs, transposes them twice per layer around the LayerNorm (each transpose a full copy), with the
convolutions in oneDNN. Computed time-major instead, with the rows of the batch (zero-padded to a
multiple of the total stride) concatenated into one ``(batch * time, channels)`` matrix, a strided
convolution whose kernel is ``m`` strides long is one matrix product of that matrix *viewed* as
``(batch * time / stride, stride * channels)`` (no copy) with the ``m`` kernel blocks, plus ``m - 1``
shifted adds (and one more product over a strided view for the taps of a partial stride); only the
one-channel first layer multiplies overlapping windows (an ``as_strided`` view, copied once). The LayerNorm normalises the last dimension in place of the two
transposes, and the activation is elementwise either way. Same parameters, same results up to float
summation order (checked in the tests). The products go through oneDNN where no gradient is needed
(:mod:`wav2vec2_ee.kernels`). Measured on one CPU thread (AMD EPYC, AVX-512), batches of new shapes
as in an evaluation: the demo model's CNN (64-128 channels, kernels 20/4/4/4/2 on strides
10/4/2/2/2, group norm with each utterance's own statistics) takes 0.20 s for 12 batches of
8 x 1.4-3 s against 0.25 s in ``transformers`` (whose group norm includes the padding); a layer-norm
CNN of 32-128 channels 0.33 vs 0.44 s; wav2vec2-base's (512 channels) 4.4 s for 4 batches of
8 x 2.5-3 s against 4.9 s batched and 3.0 s one utterance at a time in ``transformers``' oneDNN
convolutions, which is why wide CNNs keep those (:func:`prefers_time_major`).

:meth:`wav2vec2_ee.modeling.Wav2Vec2EEForCTC.embed` uses it whenever no gradient has to flow through
the CNN (evaluation, inference, a teacher, a frozen feature encoder), for CNNs made of
``Wav2Vec2LayerNormConvLayer`` s, ``Wav2Vec2NoLayerNormConvLayer`` s and the group-norm first layer of
``feat_extract_norm="group"`` models (wav2vec2-base: each channel normalised over time, padding
included, as in ``transformers``). So the full forward pass and the early-exit engine use the same
CNN, and their timings compare like for like.

**Positional convolution by FFT.** The encoder's positional embedding is a grouped convolution over
time with a long kernel (128 taps in wav2vec2-base, 64 in the demo model; 16 groups / 8), which
oneDNN computes tap by tap. :func:`positional_conv_fft` computes the same convolution as a product
of spectra: each frequency bin is one small ``(in/groups) x (out/groups)`` matrix product per group,
and the kernel's spectrum is computed once per FFT size and kept until the weights change
(:class:`_KernelSpectra`). Same results up to float rounding (about 1e-6; checked in the tests);
about a third of the time of the convolution (2.5 vs 6-9 ms for 8 x 70 frames, hidden 192, one
thread). :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.embed` uses it when no gradient is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2GroupNormConvLayer,
    Wav2Vec2LayerNormConvLayer,
    Wav2Vec2NoLayerNormConvLayer,
    Wav2Vec2PositionalConvEmbedding,
)

from .kernels import linear

_SUPPORTED = (Wav2Vec2LayerNormConvLayer, Wav2Vec2NoLayerNormConvLayer, Wav2Vec2GroupNormConvLayer)


def supports_time_major(feature_encoder: nn.Module) -> bool:
    """Whether :func:`time_major_features` can compute this CNN (plain, unpadded, ungrouped convs)."""
    layers = getattr(feature_encoder, "conv_layers", None)
    if layers is None:
        return False
    for layer in layers:
        conv = getattr(layer, "conv", None)
        if not isinstance(layer, _SUPPORTED) or not isinstance(conv, nn.Conv1d):
            return False
        if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
            return False
        if conv.kernel_size[0] < conv.stride[0]:  # frames would outnumber samples / stride
            return False
        if isinstance(layer, Wav2Vec2GroupNormConvLayer):
            norm = layer.layer_norm
            if norm.num_groups != norm.num_channels or not norm.affine:
                return False
    return True


#: The widest CNN (most output channels of a layer) that :func:`prefers_time_major` computes time-major:
#: narrower CNNs run faster so (and it is the cheap way to batch per-utterance group-norm statistics);
#: wider ones (wav2vec2-base: 512) run faster in ``transformers``' oneDNN convolutions one utterance at
#: a time (3.0 s against 4.4 s time-major for 32 utterances of 2.5-3 s on one thread), and at 256
#: channels the two are even (1.8 s each).
TIME_MAJOR_MAX_CHANNELS = 128


def prefers_time_major(feature_encoder: nn.Module) -> bool:
    """Whether the time-major CNN is the default for this CNN where no gradient is needed: supported
    (:func:`supports_time_major`) and at most :data:`TIME_MAJOR_MAX_CHANNELS` channels wide."""
    if not supports_time_major(feature_encoder):
        return False
    return max(layer.conv.out_channels for layer in feature_encoder.conv_layers) <= TIME_MAJOR_MAX_CHANNELS


def _conv_blocks(hidden: torch.Tensor, conv: nn.Conv1d, windows: bool | None = None) -> torch.Tensor:
    """``conv`` over the concatenated rows ``hidden`` ``(rows * time, in)`` -> ``(rows * time / stride, out)``.

    Output ``i`` is the window starting at input ``i * stride``; windows that run past the end of a row
    (into the next one, or past the buffer) give garbage that the caller never reads as a valid frame.
    Viewed as ``(n, stride * in)`` (no copy), the input holds one stride of frames per row. A kernel of
    ``m`` strides and ``r`` more frames is then one matrix product with the ``m`` whole kernel blocks
    side by side, ``(n, m * out)``, and, when ``r > 0``, one with the last ``r`` taps over the first
    ``r`` frames of each row (a strided view, no copy either); output ``i`` sums block ``j`` of product
    row ``i + j`` and the partial product of row ``i + m``. The first layer's windows (a few taps of
    one channel) are multiplied as overlapping windows instead (an ``as_strided`` view, copied once),
    which is faster there (2.6 vs 3.7 ms for 10 taps on stride 5 into 32 channels, 256 000 samples,
    while 64 -> 64 channels, kernel 3 on stride 2 takes 16 ms as blocks and 45 ms as windows).
    ``windows`` forces one way (default: by that rule).
    """
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    n_in, channels = hidden.shape
    n = n_in // stride
    weight = conv.weight.permute(0, 2, 1)  # (out, kernel, in): windows are flattened kernel-major
    out_channels = weight.shape[0]
    m, r = divmod(kernel, stride)
    if windows is None:
        windows = kernel * channels <= 32 and (m, r) != (1, 0)  # a few taps of one channel
    if windows:
        out = hidden.new_empty(n, out_channels)
        count = (n_in - kernel) // stride + 1  # whole windows; the rest of the n outputs stay garbage
        overlapping = hidden.as_strided((count, kernel * channels), (stride * channels, 1))
        flat = weight.reshape(out_channels, kernel * channels).t()
        if conv.bias is None:
            torch.mm(overlapping, flat, out=out[:count])
        else:
            torch.addmm(conv.bias, overlapping, flat, out=out[:count])
        out[count:] = 0.0
        return out
    rows = hidden.view(n, stride * channels)
    blocks = torch.cat([weight[:, j * stride : (j + 1) * stride] for j in range(m)])  # (m * out, stride, in)
    bias = conv.bias
    if bias is not None and m > 1:
        bias = torch.cat([bias, bias.new_zeros((m - 1) * out_channels)])
    product = linear(rows, blocks.reshape(m * out_channels, -1), bias)  # oneDNN on CPU (kernels.py)
    if (m, r) == (1, 0):
        return product
    out = hidden.new_empty(n, out_channels)
    if (m, r) == (2, 0):
        torch.add(product[:-1, :out_channels], product[1:, out_channels:], out=out[:-1])
        out[-1] = product[-1, :out_channels]
        return out
    out.copy_(product[:, :out_channels])
    for j in range(1, m):
        out[:-j] += product[j:, j * out_channels : (j + 1) * out_channels]
    if r:
        tail = weight[:, m * stride :].reshape(out_channels, r * channels).contiguous()  # oneDNN: dense
        out[:-m] += linear(rows[m:, : r * channels], tail)
    return out


def _var_mean_over_time(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased variance and mean of ``hidden`` ``(batch, time, channels)`` over time, ``(batch, 1, channels)``
    each: two passes, as ``torch.var_mean``, whose kernel is about 12x slower when reducing over the
    non-innermost dimension on CPU (0.68 vs 0.05 ms for 1900 x 64 on one thread)."""
    mean = hidden.mean(dim=1, keepdim=True)
    return (hidden - mean).square().mean(dim=1, keepdim=True), mean


def _group_norm_time_major(hidden: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor) -> torch.Tensor:
    """``norm`` (one channel per group) of ``hidden`` ``(batch, time, channels)``: each channel over the
    first ``lengths[b]`` frames of row ``b`` (the rest of the row is not read), then one fused scale
    and shift."""
    if bool((lengths == lengths[0]).all()):
        var, mean = _var_mean_over_time(hidden[:, : max(int(lengths[0]), 1)])
    else:
        stats = [_var_mean_over_time(hidden[b : b + 1, : max(int(n), 1)]) for b, n in enumerate(lengths)]
        var = torch.cat([v for v, _ in stats])
        mean = torch.cat([m for _, m in stats])
    scale = norm.weight * torch.rsqrt(var + norm.eps)  # (batch, 1, channels)
    return torch.addcmul(norm.bias - mean * scale, hidden, scale)


def time_major_features(
    feature_encoder: nn.Module, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """The CNN's output as ``(batch, frames, channels)`` from ``input_values`` ``(batch, samples)``.

    Equals ``feature_encoder(input_values).transpose(1, 2)`` up to float rounding. With
    ``sample_lengths`` ``(batch,)``, a group-norm layer takes its statistics over each utterance's own
    frames only, so every utterance's valid frames equal those of the utterance computed alone (the
    other layers are frame-local or see only valid frames at valid positions).

    The rows are zero-padded to a multiple of the CNN's total stride and run as one concatenated
    sequence ``(batch * time, channels)``, so every layer's input is one contiguous matrix
    (:func:`_conv_blocks`); a frame whose window reaches past its row's ``transformers`` frames is
    garbage, never read by a valid frame, and cut off (or excluded from group-norm statistics).
    """
    layers = feature_encoder.conv_layers
    batch, samples = input_values.shape
    total_stride, frames = 1, samples
    for layer in layers:
        total_stride *= layer.conv.stride[0]
        frames = (frames - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
    width = -(-samples // total_stride) * total_stride
    hidden = F.pad(input_values, (0, width - samples)).reshape(batch * width, 1)
    lengths = torch.full((batch,), samples) if sample_lengths is None else sample_lengths.to(torch.long).cpu()
    for layer in layers:
        kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
        hidden = _conv_blocks(hidden, layer.conv)
        width //= stride
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        if isinstance(layer, Wav2Vec2LayerNormConvLayer):
            hidden = layer.layer_norm(hidden)
        elif isinstance(layer, Wav2Vec2GroupNormConvLayer):
            # GroupNorm with one channel per group: each channel normalised over its row's frames
            # (transformers' frames of the padded batch, or each utterance's own), then the affine map
            channels = hidden.shape[-1]
            hidden = _group_norm_time_major(hidden.view(batch, width, channels), layer.layer_norm, lengths)
            hidden = hidden.view(batch * width, channels)
        hidden = layer.activation(hidden)
    return hidden.view(batch, width, -1)[:, :frames]


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
