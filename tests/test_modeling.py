"""The early-exit model: exits, index conventions, checkpoint layouts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

from wav2vec2_ee import Wav2Vec2EEConfig, Wav2Vec2EEForCTC, load_model
from wav2vec2_ee.configuration import default_exit_layers

from conftest import tiny_config


def _audio(batch=3, samples=3000):
    x = torch.randn(batch, samples)
    mask = torch.ones(batch, samples, dtype=torch.long)
    mask[1, 2200:] = 0
    mask[2, 1500:] = 0
    return x * mask, mask


def _plain_kwargs(**over):
    cfg = tiny_config(**over).to_dict()
    for key in ("exit_layers", "share_exit_heads", "architectures"):
        cfg.pop(key, None)
    return cfg


def test_config_defaults_and_validation():
    assert default_exit_layers(12) == [2, 4, 6, 8, 10, 12]
    assert default_exit_layers(5) == [2, 4, 5]
    assert Wav2Vec2EEConfig(num_hidden_layers=12).exit_layers == [2, 4, 6, 8, 10, 12]
    with pytest.raises(ValueError, match=r"\[0\].*\[1, 4\]"):
        tiny_config(exit_layers=[0, 2])
    with pytest.raises(ValueError, match=r"\[5\]"):
        tiny_config(exit_layers=[2, 5])
    with pytest.raises(ValueError, match="duplicates"):
        tiny_config(exit_layers=[2, 2, 4])
    with pytest.raises(ValueError, match="sorted"):
        tiny_config(exit_layers=[4, 2])


@pytest.mark.parametrize("stable", [False, True])
def test_exits_read_hidden_states_of_their_layers(stable):
    cfg = tiny_config(do_stable_layer_norm=stable, feat_extract_norm="layer", exit_layers=[1, 3, 4])
    model = Wav2Vec2EEForCTC(cfg).eval()
    x, mask = _audio()
    out = model(x, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and len(out.exit_logits) == 3
    ln = model.wav2vec2.encoder.layer_norm
    for k, layer in enumerate(cfg.exit_layers):
        h = out.hidden_states[layer]
        expected = model.head(k)(ln(h) if stable else h)
        assert torch.allclose(out.exit_logits[k], expected, atol=1e-6)
    assert out.logits is out.exit_logits[-1]
    # hidden_states follow transformers' own convention (index 0 = encoder input)
    plain = Wav2Vec2Model(
        Wav2Vec2Config(**_plain_kwargs(do_stable_layer_norm=stable, feat_extract_norm="layer"))
    )
    plain.load_state_dict(
        {k[len("wav2vec2.") :]: v for k, v in model.state_dict().items() if k.startswith("wav2vec2.")}
    )
    ref = plain.eval()(x, attention_mask=mask, output_hidden_states=True).hidden_states
    for a, b in zip(ref, out.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)


def test_padded_batch_equals_single_utterances():
    cfg = tiny_config(do_stable_layer_norm=True, feat_extract_norm="layer")
    model = Wav2Vec2EEForCTC(cfg).eval()
    x, mask = _audio()
    out = model(x, attention_mask=mask)
    for b in range(3):
        n = int(mask[b].sum())
        single = model(x[b : b + 1, :n])
        T = int(out.output_lengths[b])
        assert single.exit_logits[0].shape[1] == T
        for k in range(cfg.num_exits):
            assert torch.allclose(single.exit_logits[k][0], out.exit_logits[k][b, :T], atol=1e-5)


def test_num_exits_stops_the_encoder_early():
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[1, 2, 4])).eval()
    calls = []
    for i, layer in enumerate(model.encoder_layers):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    x, mask = _audio()
    out = model(x, attention_mask=mask, num_exits=2)
    assert len(out.exit_logits) == 2 and calls == [0, 1]
    full = model(x, attention_mask=mask)
    assert torch.allclose(out.exit_logits[1], full.exit_logits[1])


def test_own_checkpoint_round_trip_and_plain_transformers_loads_it(tmp_path):
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    x, mask = _audio()
    ref = model(x, attention_mask=mask)
    again = load_model(tmp_path).eval()
    assert again.config.exit_layers == [2, 4]
    for a, b in zip(ref.exit_logits, again(x, attention_mask=mask).exit_logits):
        assert torch.equal(a, b)
    plain = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    assert torch.allclose(plain(x, attention_mask=mask).logits, ref.logits, atol=1e-6)


def test_plain_ctc_checkpoint_final_exit_equals_its_logits(tmp_path):
    plain = Wav2Vec2ForCTC(Wav2Vec2Config(**_plain_kwargs())).eval()
    plain.save_pretrained(tmp_path)
    assert "exit_layers" not in json.loads((tmp_path / "config.json").read_text())
    model = load_model(tmp_path).eval()
    assert model.config.exit_layers == [2, 4]
    x, mask = _audio()
    out = model(x, attention_mask=mask)
    assert torch.allclose(out.logits, plain(x, attention_mask=mask).logits, atol=1e-6)
    # the other exits start from the pretrained lm_head
    assert torch.equal(model.exit_heads[0].weight, plain.lm_head.weight)


def test_base_model_checkpoint_gets_fresh_heads_and_truncation(tmp_path):
    base = Wav2Vec2Model(Wav2Vec2Config(**_plain_kwargs()))
    base.save_pretrained(tmp_path)
    model = load_model(tmp_path, vocab_size=32, num_hidden_layers=2)
    assert model.config.num_hidden_layers == 2 and len(model.encoder_layers) == 2
    assert model.config.exit_layers == [2]
    # the kept layers are the pretrained first two
    sd = load_file(tmp_path / "model.safetensors")
    key = next(k for k in sd if k.startswith("encoder.layers.1.") and k.endswith("weight"))
    assert torch.equal(model.state_dict()["wav2vec2." + key], sd[key])
    with pytest.raises(ValueError, match="can only be truncated"):
        load_model(tmp_path, num_hidden_layers=9)


@pytest.mark.parametrize("shared", [True, False])
def test_original_research_code_layout(tmp_path, shared):
    """``decoders.{i}`` heads beside ``lm_head``, plus a ``copy_model.*`` teacher that must be dropped."""
    src = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).eval()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith(("exit_heads", "lm_head"))}
    heads = [torch.nn.Linear(16, 32) for _ in range(2)]
    if shared:
        heads = [heads[0], heads[0]]
    for i, h in enumerate(heads):
        state[f"decoders.{i}.weight"], state[f"decoders.{i}.bias"] = h.weight.detach(), h.bias.detach()
    if shared:  # safetensors de-duplicates tied tensors: only one decoder stored
        del state["decoders.1.weight"], state["decoders.1.bias"]
    state["lm_head.weight"], state["lm_head.bias"] = torch.zeros(32, 16), torch.zeros(32)
    state["copy_model.wav2vec2.feature_projection.projection.weight"] = torch.ones(16, 16)
    cfg = _plain_kwargs(exit_layers=[2, 4])
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "wav2vec2"}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))

    model = load_model(tmp_path).eval()
    assert model.config.share_exit_heads is shared
    assert not any(k.startswith("copy_model") for k in model.state_dict())
    x, mask = _audio()
    out = model(x, attention_mask=mask, output_hidden_states=True)
    for k, layer in enumerate([2, 4]):
        assert torch.allclose(out.exit_logits[k], heads[k](out.hidden_states[layer]), atol=1e-5)


def test_reinit_encoder_keeps_the_cnn():
    model = Wav2Vec2EEForCTC(tiny_config())
    cnn = {k: v.clone() for k, v in model.wav2vec2.feature_extractor.state_dict().items()}
    layer = {k: v.clone() for k, v in model.encoder_layers[0].state_dict().items()}
    torch.manual_seed(123)
    model.reinit_encoder()
    assert all(torch.equal(v, model.wav2vec2.feature_extractor.state_dict()[k]) for k, v in cnn.items())
    changed = [k for k, v in layer.items() if not torch.equal(v, model.encoder_layers[0].state_dict()[k])]
    assert any("attention" in k for k in changed)
