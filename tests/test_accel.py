"""The CPU acceleration layer (wav2vec2_ee.accel): applied only by optimize_for_cpu_inference, the same
numbers as the plain model, a fallback where oneDNN's private op is missing, invisible in checkpoints."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2FeatureEncoder,
    Wav2Vec2FeedForward,
    Wav2Vec2PositionalConvEmbedding,
)

from wav2vec2_ee.accel import (
    is_optimized,
    onednn,
    optimize_for_cpu_inference,
    remove_cpu_optimizations,
)
from wav2vec2_ee.accel.cnn import (
    PerUtteranceFeatureEncoder,
    TimeMajorFeatureEncoder,
    _conv_blocks,
    prefers_time_major,
    supports_time_major,
    time_major_features,
)
from wav2vec2_ee.accel.onednn import (
    InferenceFeedForward,
    InferenceLinear,
    linear,
    onednn_linear_available,
    swap_linears,
    uses_onednn,
)
from wav2vec2_ee.accel.posconv import (
    FFTPositionalConvEmbedding,
    positional_conv_fft,
    supports_positional_conv_fft,
)
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN")
LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}
GROUP_NORM = {"feat_extract_norm": "group", "do_stable_layer_norm": False}


@pytest.fixture(autouse=True)
def _onednn_measured_faster(monkeypatch):
    """The swap of linear layers is decided by a measurement on this CPU; these tests test the swapped
    layers, so the measurement says faster (test_linears_stay_plain_where_onednn_is_slower: the other way)."""
    import wav2vec2_ee.accel as accel

    monkeypatch.setattr(accel, "onednn_linear_is_faster", lambda *a, **k: (True, 2.0, 1.0))


def _model(**overrides) -> Wav2Vec2EEForCTC:
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for k in range(model.config.num_exits):
            model.head(k).weight.mul_(40.0)
        gn = model.wav2vec2.feature_extractor.conv_layers[0].layer_norm
        if isinstance(gn, nn.GroupNorm):  # a trained-looking affine map, not the identity it starts as
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
    return model


def _assert_valid_frames_close(a, b, lengths, tol: float = 1e-4) -> None:
    """``(batch, frames, ...)`` tensors equal on each row's first ``lengths[b]`` frames (padded frames are
    undefined)."""
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(a[row, :n], b[row, :n], atol=tol, rtol=tol)


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    lengths = [4000, 3300, 2600, 1500]
    x = torch.randn(4, max(lengths))
    mask = torch.zeros(4, max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return x * mask, mask


# --------------------------------------------------------------------------------------------------
# the model is plain; the layer is explicit


def test_the_model_builds_plain_transformers_modules():
    model = _model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)
    assert all(type(m) is Wav2Vec2FeedForward for m in model.modules() if isinstance(m, Wav2Vec2FeedForward))
    assert type(model.wav2vec2.feature_extractor) is Wav2Vec2FeatureEncoder
    assert type(model.wav2vec2.encoder.pos_conv_embed) is Wav2Vec2PositionalConvEmbedding
    assert not is_optimized(model)


@pytest.mark.parametrize("norm", [LAYER_NORM, GROUP_NORM], ids=["layer-norm", "group-norm"])
def test_no_grad_arithmetic_is_the_grad_mode_arithmetic(norm):
    model = _model(**norm)
    x, mask = _padded_batch()
    with torch.no_grad():
        quiet = [s.logits for s in model.iter_exits(x, mask)]
    loud = [s.logits for s in model.iter_exits(x, mask)]
    assert loud[-1].requires_grad
    for a, b in zip(quiet, loud):
        torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("norm", [LAYER_NORM, GROUP_NORM], ids=["layer-norm", "group-norm"])
def test_optimized_model_equals_the_plain_one_and_saves_the_same_checkpoint(norm, tmp_path):
    plain, fast = _model(**norm), _model(**norm)
    done = optimize_for_cpu_inference(fast)
    assert done.linears == swap_linears(_model(**norm)) or not onednn_linear_available()
    assert done.feature_encoder == "time-major" and done.positional_conv == "fft"
    assert type(fast.wav2vec2.feature_extractor) is TimeMajorFeatureEncoder
    assert type(fast.wav2vec2.encoder.pos_conv_embed) is FFTPositionalConvEmbedding
    x, mask = _padded_batch()
    with torch.no_grad():
        for a, b in zip(fast.iter_exits(x, mask), plain.iter_exits(x, mask)):
            _assert_valid_frames_close(a.logits, b.logits, b.output_lengths)
        # transformers' semantics (forward) are kept too
        out = plain(x, mask)
        _assert_valid_frames_close(fast(x, mask).logits, out.logits, out.output_lengths)
    fast.save_pretrained(tmp_path)
    reloaded = Wav2Vec2EEForCTC.from_pretrained(tmp_path)
    assert set(reloaded.state_dict()) == set(plain.state_dict()) and not is_optimized(reloaded)
    changed = remove_cpu_optimizations(fast)
    assert changed == done.linears + 2 and not is_optimized(fast)
    assert all(type(m) is nn.Linear for m in fast.modules() if isinstance(m, nn.Linear))
    assert optimize_for_cpu_inference(fast).feature_encoder == "time-major"  # and again


def test_linears_stay_plain_where_onednn_is_slower(monkeypatch, caplog):
    import wav2vec2_ee.accel as accel

    monkeypatch.setattr(accel, "onednn_linear_is_faster", lambda *a, **k: (False, 69.0, 79.0))
    model = _model()
    with caplog.at_level(logging.INFO, logger="wav2vec2_ee.accel"):
        done = optimize_for_cpu_inference(model)
    assert done.linears == 0 and done.feature_encoder == "time-major" and done.positional_conv == "fft"
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert any("not used: 69 vs 79 GFLOPS" in r.message for r in caplog.records)


@needs_onednn
def test_the_measurement_compares_both_products():
    from wav2vec2_ee.accel.onednn import onednn_linear_is_faster

    faster, onednn_gflops, blas_gflops = onednn_linear_is_faster(16, 64, rows=64)
    assert onednn_gflops > 0 and blas_gflops > 0 and faster == (onednn_gflops > 1.05 * blas_gflops)


def test_optimizing_needs_a_cpu_model():
    model = _model()
    model.to(torch.float64)  # still on the CPU: allowed (the fast paths take float32 only)
    optimize_for_cpu_inference(model)
    meta = Wav2Vec2EEForCTC(tiny_config()).to("meta")
    with pytest.raises(ValueError, match="on the CPU"):
        optimize_for_cpu_inference(meta)


def test_a_missing_private_op_falls_back_with_one_log_line(monkeypatch, caplog):
    """Simulate a PyTorch build without torch.ops.mkldnn._linear_pointwise."""

    def missing():
        raise AttributeError("'_OpNamespace' 'mkldnn' object has no attribute '_linear_pointwise'")

    monkeypatch.setattr(onednn, "_linear_pointwise", missing)
    onednn._probe.cache_clear()
    try:
        plain, fast = _model(), _model()
        with caplog.at_level(logging.INFO, logger="wav2vec2_ee.accel.onednn"):
            done = optimize_for_cpu_inference(fast)
        assert done.linears == 0
        assert [r.message for r in caplog.records if "oneDNN" in r.message] == [
            "oneDNN linear unavailable ('_OpNamespace' 'mkldnn' object has no attribute '_linear_pointwise'): "
            "linear layers keep F.linear"
        ]
        assert all(type(m) is nn.Linear for m in fast.modules() if isinstance(m, nn.Linear))
        x, mask = _padded_batch()
        with torch.no_grad():  # the time-major CNN's products take F.linear too
            for a, b in zip(fast.iter_exits(x, mask), plain.iter_exits(x, mask)):
                _assert_valid_frames_close(a.logits, b.logits, b.output_lengths)
    finally:
        monkeypatch.undo()
        onednn._probe.cache_clear()


@needs_onednn
def test_a_failing_op_call_falls_back_for_good(monkeypatch, caplog):
    layer = nn.Linear(24, 40)
    swap_linears(layer)
    x = torch.randn(5, 24)

    def broken(*args, **kwargs):
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(onednn, "onednn_linear", broken)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="wav2vec2_ee.accel.onednn"):
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer(x)
    assert len(caplog.records) == 1 and "falls back to F.linear" in caplog.records[0].message
    assert layer._ee_failed


# --------------------------------------------------------------------------------------------------
# oneDNN products


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


def test_gradients_and_autocast_take_f_linear():
    x, w = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    assert not uses_onednn(x, w)  # autograd needs the gradient of w
    linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(3, 8))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_onednn(x, w) and linear(x, w).dtype == torch.bfloat16
        assert not uses_onednn(x.double(), w.double())
        assert uses_onednn(x, w)


@needs_onednn
def test_the_packed_weight_lives_on_the_module_and_follows_the_parameters():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    swap_linears(layer)
    x = torch.randn(5, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        assert layer._ee_packed is not None  # the cache is the module's own
        layer.weight.mul_(2.0)  # in place, as an optimiser step: a new version of the same storage
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.load_state_dict({"weight": torch.ones(40, 24), "bias": torch.zeros(40)})
        torch.testing.assert_close(layer(x), x.sum(-1, keepdim=True).expand(5, 40), atol=1e-5, rtol=1e-5)
        layer.weight = nn.Parameter(torch.full((40, 24), 0.5))  # a new tensor (version 0 again)
        torch.testing.assert_close(
            layer(x), 0.5 * x.sum(-1, keepdim=True).expand(5, 40), atol=1e-5, rtol=1e-5
        )
        twin = copy.deepcopy(layer)  # the oneDNN copy of the weight is left out of copies
        assert "_ee_packed" not in twin.__dict__
        torch.testing.assert_close(twin(x), layer(x))
    swap_linears(layer, enabled=False)
    assert type(layer) is nn.Linear and "_ee_packed" not in layer.__dict__


@needs_onednn
def test_fused_feed_forward_equals_the_original():
    model = _model()
    swap_linears(model)
    block = model.wav2vec2.encoder.layers[0].feed_forward
    assert type(block) is InferenceFeedForward and type(block.intermediate_dense) is InferenceLinear
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        fused = block(x)
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


# --------------------------------------------------------------------------------------------------
# the CNN and the positional convolution

CNN_SHAPES = {  # every path of cnn._conv_blocks: windows (the one-channel first layer), kernels of
    # 1, 2 and 3 strides, and of 1 or 2 strides and a partial one (3 on 2, 5 on 2), as block products
    "partial": {"conv_dim": (16, 16, 16, 16), "conv_stride": (5, 2, 2, 2), "conv_kernel": (10, 3, 5, 2)},
    "blocks": {"conv_dim": (16, 16, 16, 16), "conv_stride": (5, 2, 2, 2), "conv_kernel": (10, 4, 6, 2)},
}


@pytest.mark.parametrize("shape", list(CNN_SHAPES))
@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_time_major_cnn_equals_the_transformers_cnn(conv_bias, norm, shape):
    config = {"conv_bias": conv_bias, **CNN_SHAPES[shape], **(LAYER_NORM if norm == "layer" else GROUP_NORM)}
    model, reference = _model(**config), _model(**config)
    encoder = model.wav2vec2.feature_extractor
    assert supports_time_major(encoder)
    x, _ = _padded_batch()
    with torch.no_grad():
        expected = encoder(x).transpose(1, 2)
        torch.testing.assert_close(time_major_features(encoder, x), expected, atol=1e-5, rtol=1e-5)
        # each utterance's own statistics: its valid frames as computed alone
        lengths = torch.tensor([x.shape[1], 3001, 2000, 1234])
        padded = time_major_features(encoder, x, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone = encoder(x[b : b + 1, :n]).transpose(1, 2)[0]
            torch.testing.assert_close(padded[b, : alone.shape[0]], alone, atol=1e-5, rtol=1e-5)
        optimize_for_cpu_inference(model)
        for mask in (None, (torch.arange(x.shape[1]) < lengths[:, None]).long()):
            fast = model.embed(x, mask)
            slow = reference.embed(x, mask)
            _assert_valid_frames_close(fast.hidden_states, slow.hidden_states, slow.output_lengths, 1e-5)
    grouped = _model(**config)
    grouped.wav2vec2.feature_extractor.conv_layers[0].conv.groups = 2  # not one plain conv: unsupported
    assert not supports_time_major(grouped.wav2vec2.feature_extractor)
    assert optimize_for_cpu_inference(grouped).feature_encoder is None


@pytest.mark.parametrize("shape", [(1, 8, 10, 5), (4, 8, 3, 2), (8, 8, 4, 2), (8, 8, 5, 2), (8, 8, 2, 2)])
def test_both_ways_of_a_strided_conv_agree(shape):
    channels, out, kernel, stride = shape
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(channels, out, kernel, stride)
    rows, time = 3, 40
    x = torch.randn(rows, time, channels)
    with torch.no_grad():
        expected = conv(x.transpose(1, 2)).transpose(1, 2)  # (rows, frames, out)
        frames = expected.shape[1]
        for windows in (True, False):
            got = _conv_blocks(x.reshape(rows * time, channels), conv, windows=windows)
            got = got.view(rows, time // stride, out)[:, :frames]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_wide_cnns_run_per_utterance_through_the_transformers_cnn(monkeypatch):
    from wav2vec2_ee.accel import cnn

    narrow, wide = _model(**GROUP_NORM), _model(conv_dim=(16, 16, 256), **GROUP_NORM)
    reference = _model(conv_dim=(16, 16, 256), **GROUP_NORM)
    assert prefers_time_major(narrow.wav2vec2.feature_extractor)
    assert supports_time_major(wide.wav2vec2.feature_extractor)
    assert not prefers_time_major(wide.wav2vec2.feature_extractor)
    assert optimize_for_cpu_inference(narrow).feature_encoder == "time-major"
    assert optimize_for_cpu_inference(wide).feature_encoder == "per-utterance"
    assert type(wide.wav2vec2.feature_extractor) is PerUtteranceFeatureEncoder
    calls = []
    real = cnn.time_major_features
    monkeypatch.setattr(cnn, "time_major_features", lambda *a: calls.append(1) or real(*a))
    x, mask = _padded_batch()
    with torch.no_grad():
        narrow.embed(x, mask)
        assert len(calls) == 1
        state = wide.embed(x, mask)  # each utterance alone through transformers' CNN
        assert len(calls) == 1
        expected = reference.embed(x, mask)
        _assert_valid_frames_close(state.hidden_states, expected.hidden_states, expected.output_lengths, 1e-5)
        for b in range(4):
            n = int(mask[b].sum())
            alone = reference.embed(x[b : b + 1, :n]).hidden_states[0]
            torch.testing.assert_close(state.hidden_states[b, : alone.shape[0]], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kernel", "groups"), [(16, 4), (15, 2), (8, 1)])
def test_fft_positional_conv_equals_the_transformers_conv(kernel, groups):
    model = _model(num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=groups)
    module = model.wav2vec2.encoder.pos_conv_embed
    assert supports_positional_conv_fft(module)
    torch.manual_seed(2)
    with torch.no_grad():
        for frames in (1, 7, 50, 300):  # several FFT sizes, frames shorter and longer than the kernel
            hidden = torch.randn(3, frames, model.config.hidden_size)
            torch.testing.assert_close(
                positional_conv_fft(module, hidden), module(hidden), atol=1e-5, rtol=1e-5
            )
        # the cached kernel spectrum follows the weights (an optimiser step changes them in place)
        module.conv.parametrizations.weight.original1.mul_(-0.5)
        hidden = torch.randn(2, 50, model.config.hidden_size)
        torch.testing.assert_close(positional_conv_fft(module, hidden), module(hidden), atol=1e-5, rtol=1e-5)


def test_the_fft_positional_conv_runs_only_without_gradients(monkeypatch):
    from wav2vec2_ee.accel import posconv

    calls = []
    real = posconv.positional_conv_fft
    monkeypatch.setattr(posconv, "positional_conv_fft", lambda m, h: calls.append(1) or real(m, h))
    model = _model()
    optimize_for_cpu_inference(model)
    x, mask = _padded_batch()
    with torch.no_grad():
        fast = model.embed(x, mask).hidden_states
    assert calls == [1]
    assert "_ee_kernel_spectra" in model.wav2vec2.encoder.pos_conv_embed.__dict__  # cached on the module
    slow = model.embed(x, mask).hidden_states  # gradient mode: the differentiable conv
    assert calls == [1] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-4, rtol=1e-4)  # after a LayerNorm
    twin = copy.deepcopy(model)
    assert "_ee_kernel_spectra" not in twin.wav2vec2.encoder.pos_conv_embed.__dict__
