"""oneDNN matrix products for CPU inference, instead of the BLAS behind ``F.linear``.

On CPU, PyTorch computes a float32 ``F.linear`` with its BLAS (MKL in the x86 wheels), which on AMD
processors runs its AVX2 code path: on this project's build machine (AMD EPYC, Zen 5, full-width
AVX-512) that is 84-95 GFLOPS per core for the encoder's shapes (640 x 192 x 768), while oneDNN's own
float32 kernels, which PyTorch ships for its CPU fusions (``torch.ops.mkldnn._linear_pointwise``, a
private op), reach 189-203 GFLOPS on the same shapes, in float32 arithmetic (no bfloat16 or TF32
rounding; on the encoder's shapes the outputs matched ``F.linear`` bit for bit).

:class:`InferenceLinear` (an ``nn.Linear`` subclass: same parameters and state dict) takes that route
where no gradient is needed, on CPU float32 outside autocast, and ``F.linear`` everywhere else; its
weight is kept in oneDNN's blocked layout, cached **on the module** (about 9 % faster than reordering
at every call). :class:`InferenceFeedForward` fuses the feed-forward block's first product with its
exact GELU (one call, about 10 % faster than two). Neither is ever built by the model itself:
:func:`wav2vec2_ee.accel.optimize_for_cpu_inference` swaps them in, and
:func:`~wav2vec2_ee.accel.remove_cpu_optimizations` swaps them out.

Where the private op is missing (another PyTorch build) or fails, :func:`onednn_linear_available` is
False (one log line says why) and nothing is swapped; a module whose call fails later falls back to
``F.linear`` for good, with one log line.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUActivation
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeedForward

logger = logging.getLogger(__name__)


def _linear_pointwise():
    """The private op (``torch.ops.mkldnn._linear_pointwise``); raises where this build lacks it."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this PyTorch build has no oneDNN (torch.backends.mkldnn.is_available() is False)")
    return torch.ops.mkldnn._linear_pointwise


def _reorder_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout (the private ``torch.ops.mkldnn._reorder_linear_weight``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def onednn_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
    """oneDNN's ``input @ weight.T + bias`` (dense or packed weight), with an exact GELU post-op if asked."""
    op = _linear_pointwise()
    if gelu:
        return op(input, weight, bias, "gelu", [], "none")
    return op(input, weight, bias, "none", [], "")


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """``None`` when the op works in this process, else why not (checked once: a property of the build)."""
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        with torch.no_grad():
            if not torch.equal(onednn_linear(x, w, None), x @ w.t()):
                return "it gave a wrong product"
    except (RuntimeError, NotImplementedError, AttributeError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def onednn_linear_available() -> bool:
    """Whether oneDNN's dense float32 linear works in this PyTorch build (logs why not, once)."""
    reason = _probe()
    if reason is not None:
        logger.info("oneDNN linear unavailable (%s): linear layers keep F.linear", reason)
    return reason is None


@functools.lru_cache(maxsize=8)
def onednn_linear_is_faster(
    in_features: int, out_features: int, rows: int = 512
) -> tuple[bool, float, float]:
    """Whether oneDNN's product beats ``F.linear`` on this CPU for this shape, measured (best of 5 short
    runs each, one thread as a worker process runs): ``(faster, onednn_gflops, f_linear_gflops)``.

    On an AMD EPYC with AVX-512 (Zen 5) oneDNN reached 2.2x MKL's AVX2 path; on an AVX2-only EPYC
    (family 25) it was slower (69 vs 79 GFLOPS for 640 x 192 x 768), so the swap is decided per machine.
    """
    x, w, b = (
        torch.randn(rows, in_features),
        torch.randn(out_features, in_features),
        torch.randn(out_features),
    )
    packed = _reorder_weight(w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            best = {}
            for name, fn in (
                ("onednn", lambda: onednn_linear(x, packed, b)),
                ("f_linear", lambda: F.linear(x, w, b)),
            ):
                fn()
                runs = []
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(4):
                        fn()
                    runs.append((time.perf_counter() - start) / 4)
                best[name] = 2 * rows * in_features * out_features / min(runs) / 1e9
    finally:
        torch.set_num_threads(threads)
    return best["onednn"] > 1.05 * best["f_linear"], best["onednn"], best["f_linear"]


def uses_onednn(input: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a product of these tensors can take the oneDNN route: float32 on CPU, 2-D or 3-D input,
    no gradient needed, outside autocast."""
    if input.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if input.dtype != torch.float32 or weight.dtype != torch.float32 or input.dim() not in (2, 3):
        return False
    if torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad):
        return False
    return not torch.is_autocast_enabled("cpu")


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(input, weight, bias)``: ``(..., in) x (out, in) -> (..., out)``, by oneDNN where
    :func:`uses_onednn` and the op works, else by ``F.linear``. The input may be a strided view; a
    strided weight is made dense first (oneDNN takes a reference path for it: 1.6 s instead of 0.9 ms
    for 16000 x 64 x 64)."""
    if uses_onednn(input, weight) and _probe() is None:
        return onednn_linear(input, weight if weight.is_contiguous() else weight.contiguous(), bias)
    return F.linear(input, weight, bias)


class InferenceLinear(nn.Linear):
    """``nn.Linear`` whose forward takes oneDNN where no gradient is needed, with the weight kept in
    oneDNN's layout in ``self._ee_packed`` (recomputed when the weight tensor or its version changes: an
    optimiser step, ``load_state_dict``, ``.to()``). Copies and pickles leave the cache out."""

    _ee_packed: tuple | None = None
    _ee_failed: bool = False

    def packed_weight(self) -> torch.Tensor:
        weight = self.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if self._ee_packed is None or self._ee_packed[0] != key:
            try:
                packed = _reorder_weight(weight.detach())
            except (RuntimeError, AttributeError):
                packed = weight.detach()
            self._ee_packed = (key, packed)
        return self._ee_packed[1]

    def _fall_back(self, err: Exception) -> None:
        logger.warning(
            "oneDNN linear failed (%s): this layer falls back to F.linear", str(err).splitlines()[0]
        )
        self._ee_failed = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._ee_failed and uses_onednn(input, self.weight):
            try:
                return onednn_linear(input, self.packed_weight(), self.bias)
            except (RuntimeError, NotImplementedError, AttributeError) as err:
                self._fall_back(err)
        return F.linear(input, self.weight, self.bias)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_ee_packed", None)  # opaque oneDNN tensors: neither copied nor pickled
        return state


def _is_exact_gelu(activation: nn.Module) -> bool:
    return isinstance(activation, GELUActivation) and getattr(activation, "act", None) is F.gelu


class InferenceFeedForward(Wav2Vec2FeedForward):
    """``transformers``' wav2vec2 feed-forward block whose first product and exact GELU are one oneDNN
    call (a fused post-op) in eval mode where no gradient is needed; otherwise the original forward."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dense = self.intermediate_dense
        if (
            self.training
            or not isinstance(dense, InferenceLinear)
            or dense._ee_failed
            or not _is_exact_gelu(self.intermediate_act_fn)
            or not uses_onednn(hidden_states, dense.weight)
        ):
            return super().forward(hidden_states)
        try:
            hidden = onednn_linear(hidden_states, dense.packed_weight(), dense.bias, gelu=True)
        except (RuntimeError, NotImplementedError, AttributeError) as err:
            dense._fall_back(err)
            return super().forward(hidden_states)
        return self.output_dense(hidden)  # the dropouts are identities in eval mode


#: (plain class, accelerated subclass) pairs that :func:`swap_linears` exchanges by exact type.
LINEAR_SWAPS = ((nn.Linear, InferenceLinear), (Wav2Vec2FeedForward, InferenceFeedForward))


def swap_linears(module: nn.Module, enabled: bool = True) -> int:
    """Make every plain ``nn.Linear`` an :class:`InferenceLinear` and every wav2vec2 feed-forward block
    an :class:`InferenceFeedForward` (in place: same parameters and state dict; other subclasses are
    left alone), or with ``enabled=False`` turn them back. Returns how many modules changed."""
    changed = 0
    for sub in module.modules():
        for original, inference in LINEAR_SWAPS:
            source, target = (original, inference) if enabled else (inference, original)
            if type(sub) is source:
                sub.__class__ = target
                if not enabled:
                    sub.__dict__.pop("_ee_packed", None)
                    sub.__dict__.pop("_ee_failed", None)
                changed += 1
    return changed
