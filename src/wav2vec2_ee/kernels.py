"""The matrix-product backend of inference on CPU: oneDNN instead of the BLAS behind ``F.linear``.

On CPU, PyTorch computes a float32 ``F.linear`` with its BLAS (MKL in the x86 wheels), which on AMD
processors runs its AVX2 code path: on this project's machine (AMD EPYC, Zen 5, full-width AVX-512)
that is 84-95 GFLOPS per core for the encoder's shapes (640 x 192 x 768), while oneDNN's own float32
kernels, which PyTorch ships for its CPU fusions (``torch.ops.mkldnn._linear_pointwise``), reach
189-203 GFLOPS on the same shapes, in float32 arithmetic (float32 products and sums, no bfloat16 or
TF32 rounding; on the encoder's shapes the outputs even matched ``F.linear`` bit for bit).
:func:`linear` takes that route where no gradient is needed (evaluation, inference, a teacher) and
falls back to ``F.linear`` everywhere else: autograd, autocast, other devices and dtypes, a PyTorch
build without oneDNN. Training keeps ``F.linear``: an autograd function with oneDNN products in the
backward pass too made the demo's training steps only about 4 % faster, so it was not kept.

:func:`use_inference_linears` makes a model's ``nn.Linear`` layers use it (their class becomes
:class:`InferenceLinear`, a subclass with the same parameters, state dict and ``save_pretrained``
output), and its feed-forward blocks fuse the first product with the GELU
(:class:`InferenceFeedForward`); :class:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC` does so when it is
built. Tools that match ``nn.Linear`` by exact type (``torch.ao`` dynamic quantization) need
``use_inference_linears(model, enabled=False)`` first. ``WAV2VEC2_EE_ONEDNN_LINEAR=0`` in the
environment, or :func:`onednn_linears` as a context manager, turns the route off (for comparisons).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeedForward

_STATE = {"enabled": os.environ.get("WAV2VEC2_EE_ONEDNN_LINEAR", "1") != "0", "available": None}


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's dense float32 linear (``torch.ops.mkldnn._linear_pointwise``)."""
    if _STATE["available"] is None:
        ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        if ok:
            try:
                x, w = torch.ones(2, 3), torch.ones(4, 3)
                with torch.no_grad():
                    ok = torch.equal(_onednn_linear(x, w, None), x @ w.t())
            except (RuntimeError, NotImplementedError):
                ok = False
        _STATE["available"] = ok
    return bool(_STATE["available"])


@contextlib.contextmanager
def onednn_linears(enabled: bool) -> Iterator[None]:
    """Turn the oneDNN route of :func:`linear` on or off inside the ``with`` block (this process)."""
    before = _STATE["enabled"]
    _STATE["enabled"] = enabled
    try:
        yield
    finally:
        _STATE["enabled"] = before


def _onednn_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
    """oneDNN's ``input @ weight.T + bias`` (dense or packed weight), with an exact GELU post-op if asked."""
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


def uses_onednn(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` of these tensors takes the oneDNN route (see the module docstring)."""
    if not _STATE["enabled"] or input.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if input.dtype != torch.float32 or weight.dtype != torch.float32 or input.dim() not in (2, 3):
        return False
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return onednn_linear_available()


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(input, weight, bias)``: ``(..., in) x (out, in) -> (..., out)``, by oneDNN where
    :func:`uses_onednn` (float32 on CPU without gradient), else by ``F.linear``. The input may be a
    strided view; a strided weight is made dense first (oneDNN takes a reference path for it: 1.6 s
    instead of 0.9 ms for 16000 x 64 x 64)."""
    if uses_onednn(input, weight):
        return _onednn_linear(input, weight if weight.is_contiguous() else weight.contiguous(), bias)
    return F.linear(input, weight, bias)


#: oneDNN's own (blocked) layout of each InferenceLinear's weight, with the weight it was made from
#: (its storage and version, which an optimiser step or ``load_state_dict`` changes, and a weak
#: reference to the tensor itself, since a new tensor may reuse a freed one's memory). Kept
#: outside the modules, so that copying or pickling a model never meets these opaque tensors.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packed_weight(module: nn.Linear) -> torch.Tensor:
    weight = module.weight
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = _PACKED.get(module)
    # the same tensor (a new one may reuse a freed one's memory) at the same version
    if cached is None or cached[0] != key or cached[1]() is not weight:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        except (RuntimeError, AttributeError):
            packed = weight.detach()
        cached = (key, weakref.ref(weight), packed)
        _PACKED[module] = cached
    return cached[2]


class InferenceLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (oneDNN where no gradient is needed, with the
    weight kept in oneDNN's layout: about 9 % faster than reordering it at every call)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if uses_onednn(input, self.weight):
            return _onednn_linear(input, _packed_weight(self), self.bias)
        return F.linear(input, self.weight, self.bias)


def _is_exact_gelu(activation: nn.Module) -> bool:
    return isinstance(activation, GELUActivation) and getattr(activation, "act", None) is F.gelu


class InferenceFeedForward(Wav2Vec2FeedForward):
    """``transformers``' wav2vec2 feed-forward block whose first product and exact GELU are one oneDNN
    call (a fused post-op, about 10 % faster than the two) in evaluation mode where no gradient is
    needed; otherwise the original forward."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dense = self.intermediate_dense
        if (
            self.training
            or type(dense) is not InferenceLinear
            or not _is_exact_gelu(self.intermediate_act_fn)
            or not uses_onednn(hidden_states, dense.weight)
        ):
            return super().forward(hidden_states)
        hidden = _onednn_linear(hidden_states, _packed_weight(dense), dense.bias, gelu=True)
        return self.output_dense(hidden)  # the dropouts are identities in evaluation mode


_SWAPS = ((nn.Linear, InferenceLinear), (Wav2Vec2FeedForward, InferenceFeedForward))


def use_inference_linears(module: nn.Module, enabled: bool = True) -> int:
    """Make every plain ``nn.Linear`` in ``module`` an :class:`InferenceLinear` and every wav2vec2
    feed-forward block an :class:`InferenceFeedForward` (in place: same parameters and state dict;
    other subclasses are left alone), or with ``enabled=False`` turn them back into the originals.
    Returns how many modules changed."""
    changed = 0
    for sub in module.modules():
        for original, inference in _SWAPS:
            source, target = (original, inference) if enabled else (inference, original)
            if type(sub) is source:
                sub.__class__ = target
                changed += 1
    return changed
