"""The CNN feature encoder for CPU inference: the same function as ``transformers``' wav2vec2 CNN,
computed time-major.

``transformers``' wav2vec2 CNN keeps activations as ``(batch, channels, time)`` and, for layer-norm
CNNs, transposes them twice per layer around the LayerNorm (each transpose a full copy), with the
convolutions in oneDNN. Computed time-major instead, with the rows of the batch (zero-padded to a
multiple of the total stride) concatenated into one ``(batch * time, channels)`` matrix, a strided
convolution whose kernel is ``m`` strides long is one matrix product of that matrix *viewed* as
``(batch * time / stride, stride * channels)`` (no copy) with the ``m`` kernel blocks, plus ``m - 1``
shifted adds (and one more product over a strided view for the taps of a partial stride); only the
one-channel first layer multiplies overlapping windows (an ``as_strided`` view, copied once). The
LayerNorm normalises the last dimension in place of the two transposes, and the activation is
elementwise either way. Same parameters, same results up to float summation order (checked in the
tests). The products go through oneDNN (:mod:`.onednn`). Measured on one CPU thread (AMD EPYC,
AVX-512), batches of new shapes as in an evaluation: the demo model's CNN (64-128 channels, kernels
20/4/4/4/2 on strides 10/4/2/2/2, group norm with each utterance's own statistics) takes 0.20 s for
12 batches of 8 x 1.4-3 s against 0.25 s in ``transformers``; a layer-norm CNN of 32-128 channels
0.33 vs 0.44 s; wav2vec2-base's (512 channels) 4.4 s for 4 batches of 8 x 2.5-3 s against 4.9 s
batched and 3.0 s one utterance at a time in ``transformers``' oneDNN convolutions, which is why
wide CNNs keep those (:func:`prefers_time_major`).

Two accelerated feature encoders, swapped in by :func:`wav2vec2_ee.accel.optimize_for_cpu_inference`
(subclasses of ``Wav2Vec2FeatureEncoder``: same parameters and state dict), each with the
``forward_per_utterance(input_values, sample_lengths)`` hook that
:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.extract_features` calls where a group-norm CNN must give
every utterance its own statistics:

* :class:`TimeMajorFeatureEncoder` (narrow CNNs): the time-major CNN, its group norm masked per
  utterance when asked;
* :class:`PerUtteranceFeatureEncoder` (wide CNNs): ``transformers``' CNN, one call per utterance when
  each needs its own statistics.

Both take the plain path (``transformers``' CNN, or the model's masked group norm) whenever a
gradient has to flow through the CNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2FeatureEncoder,
    Wav2Vec2GroupNormConvLayer,
    Wav2Vec2LayerNormConvLayer,
    Wav2Vec2NoLayerNormConvLayer,
)

from ..modeling import per_utterance_features
from .onednn import linear

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


def _needs_grad(module: nn.Module) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


class TimeMajorFeatureEncoder(Wav2Vec2FeatureEncoder):
    """``Wav2Vec2FeatureEncoder`` computed by :func:`time_major_features` where no gradient is needed."""

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, channels, frames)`` (a transposed view), as the original."""
        if _needs_grad(self):
            return super().forward(input_values)
        return time_major_features(self, input_values).transpose(1, 2)

    def forward_per_utterance(self, input_values: torch.Tensor, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Like ``forward``, each utterance's valid frames as computed alone (group norm over its own
        ``sample_lengths[b]`` samples)."""
        if _needs_grad(self):
            return per_utterance_features(self, input_values, sample_lengths)
        return time_major_features(self, input_values, sample_lengths).transpose(1, 2)


class PerUtteranceFeatureEncoder(Wav2Vec2FeatureEncoder):
    """``Wav2Vec2FeatureEncoder`` that, where each utterance needs its own group-norm statistics, runs
    ``transformers``' CNN once per utterance (faster on CPU than the masked batch for wide CNNs)."""

    def forward_per_utterance(self, input_values: torch.Tensor, sample_lengths: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, channels, frames)``; padded frames are zero."""
        if _needs_grad(self):
            return per_utterance_features(self, input_values, sample_lengths)
        frames = conv_output_frames(self, input_values.shape[-1])
        out = None
        for b, n in enumerate(sample_lengths.tolist()):
            alone = Wav2Vec2FeatureEncoder.forward(self, input_values[b : b + 1, : int(n)])
            if out is None:
                out = alone.new_zeros(len(input_values), alone.shape[1], frames)
            out[b, :, : alone.shape[-1]] = alone[0]
        return out


def conv_output_frames(feature_encoder: nn.Module, samples: int) -> int:
    """Frames the CNN gives for ``samples`` input samples."""
    for layer in feature_encoder.conv_layers:
        samples = (samples - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
    return samples
