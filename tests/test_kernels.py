"""The oneDNN route of the linear layers (kernels.py): same numbers as F.linear, only where no gradient
is needed, and invisible in checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeedForward

from wav2vec2_ee.kernels import (
    InferenceFeedForward,
    InferenceLinear,
    linear,
    onednn_linear_available,
    onednn_linears,
    use_inference_linears,
    uses_onednn,
)
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 24), (3, 11, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_f_linear(shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(40, 24)
    b = torch.randn(40) if bias else None
    expected = (x.double() @ w.double().t() + (b.double() if bias else 0)).float()
    with torch.no_grad():
        assert uses_onednn(x, w)
        out = linear(x, w, b)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)
        strided = torch.randn(7, 48)[:, :24]  # rows of a wider matrix, as the CNN's partial kernels
        torch.testing.assert_close(linear(strided, w, b), F.linear(strided, w, b), atol=1e-5, rtol=1e-5)


def test_gradients_autocast_and_the_switch_take_f_linear():
    x, w = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    assert not uses_onednn(x, w)  # autograd needs the gradient of w
    linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(3, 8))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_onednn(x, w) and linear(x, w).dtype == torch.bfloat16
        with onednn_linears(False):
            assert not uses_onednn(x, w)
        assert not uses_onednn(x.double(), w.double())
        assert uses_onednn(x, w) == onednn_linear_available()


def test_models_use_it_and_checkpoints_do_not_show_it(tmp_path):
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config()).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is InferenceLinear for m in linears)
    blocks = [m for m in model.modules() if isinstance(m, Wav2Vec2FeedForward)]
    assert len(blocks) == 4 and all(type(m) is InferenceFeedForward for m in blocks)
    changed = len(linears) + len(blocks)
    x = torch.randn(2, 4000)
    with torch.no_grad():
        fast = model(x).exit_logits
        with onednn_linears(False):
            slow = model(x).exit_logits
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = Wav2Vec2EEForCTC.from_pretrained(tmp_path)
    assert set(reloaded.state_dict()) == set(model.state_dict())
    assert use_inference_linears(reloaded, enabled=False) == changed
    assert not any(type(m) in (InferenceLinear, InferenceFeedForward) for m in reloaded.modules())
    assert use_inference_linears(reloaded) == changed


@needs_onednn
def test_the_packed_weight_follows_the_parameters():
    import copy

    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    use_inference_linears(layer)
    x = torch.randn(5, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.weight.mul_(2.0)  # in place, as an optimiser step: a new version of the same storage
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.load_state_dict({"weight": torch.ones(40, 24), "bias": torch.zeros(40)})
        torch.testing.assert_close(layer(x), x.sum(-1, keepdim=True).expand(5, 40), atol=1e-5, rtol=1e-5)
        layer.weight = nn.Parameter(torch.full((40, 24), 0.5))  # a new tensor (version 0 again)
        torch.testing.assert_close(
            layer(x), 0.5 * x.sum(-1, keepdim=True).expand(5, 40), atol=1e-5, rtol=1e-5
        )
        twin = copy.deepcopy(layer)  # the oneDNN copy of the weight is not part of the module
        torch.testing.assert_close(twin(x), layer(x))


@needs_onednn
def test_fused_feed_forward_equals_the_original():
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config()).eval()
    block = model.wav2vec2.encoder.layers[0].feed_forward
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        fused = block(x)
        with onednn_linears(False):
            original = Wav2Vec2FeedForward.forward(block, x)
    torch.testing.assert_close(fused, original, atol=1e-6, rtol=1e-5)
    block.train()
    with torch.no_grad():  # training mode (dropout): the original forward
        torch.testing.assert_close(block(x), original, atol=1e-6, rtol=1e-5)


@needs_onednn
def test_a_strided_weight_gives_the_same_numbers():
    torch.manual_seed(0)
    x, kernel = torch.randn(50, 8), torch.randn(6, 3, 8)
    strided = kernel[:, 2:].reshape(6, 8)  # a tap of a conv kernel, as the CNN's partial products
    assert not strided.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(linear(x, strided), x @ strided.t(), atol=1e-5, rtol=1e-5)
