"""The early-exit model: exits, index conventions, checkpoint layouts."""

from __future__ import annotations

import json
import logging

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
    # fresh heads only when asked for (training); inference refuses an encoder without CTC head
    with pytest.raises(ValueError, match=r"no CTC head \(lm_head\)"):
        load_model(tmp_path, vocab_size=32)
    model = load_model(tmp_path, vocab_size=32, num_hidden_layers=2, allow_random_init=True)
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


def _loading_lines(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name in ("wav2vec2_ee.checkpoints", "wav2vec2_ee.loading")
    ]


def test_documented_conversions_are_announced_in_one_line(tmp_path, caplog):
    """Plain Wav2Vec2ForCTC -> exit heads from lm_head; the original code's decoders.{i} layout: each
    conversion is one INFO line (and transformers' multi-line load report is not printed)."""
    plain = Wav2Vec2ForCTC(Wav2Vec2Config(**_plain_kwargs()))
    plain.save_pretrained(tmp_path / "plain")
    with caplog.at_level(logging.INFO):
        model = load_model(tmp_path / "plain", exit_layers=[1, 3, 4])
    assert [torch.equal(h.weight, plain.lm_head.weight) for h in model.exit_heads] == [True, True]
    lines = _loading_lines(caplog)
    assert len(lines) == 1 and "plain CTC checkpoint" in lines[0] and "lm_head" in lines[0]
    assert str(tmp_path / "plain") in lines[0] and "exit_heads.0, exit_heads.1" in lines[0]
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]

    src = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4]))
    state = {k: v for k, v in src.state_dict().items() if not k.startswith(("exit_heads", "lm_head"))}
    state["decoders.0.weight"], state["decoders.0.bias"] = src.lm_head.weight, src.lm_head.bias
    state["lm_head.weight"], state["lm_head.bias"] = src.lm_head.weight, src.lm_head.bias
    state["copy_model.lm_head.weight"] = torch.zeros(32, 16)
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "config.json").write_text(json.dumps({**_plain_kwargs(exit_layers=[2, 4])}))
    save_file({k: v.detach().clone() for k, v in state.items()}, str(tmp_path / "orig" / "model.safetensors"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_model(tmp_path / "orig")
    lines = _loading_lines(caplog)
    assert len(lines) == 1 and "original research code" in lines[0] and "copy_model" in lines[0]


def test_transformers_renames_still_load_strictly(tmp_path):
    """Old weight-norm names (weight_g / weight_v) are renamed by transformers, not reported missing."""
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).eval()
    model.config.save_pretrained(tmp_path)
    state = dict(model.state_dict())
    prefix = "wav2vec2.encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path).eval()
    x, mask = _audio()
    for a, b in zip(model(x, attention_mask=mask).exit_logits, loaded(x, attention_mask=mask).exit_logits):
        assert torch.equal(a, b)


def test_partial_exit_heads_are_not_a_plain_checkpoint(tmp_path):
    """A checkpoint that holds some exit heads but not all (or whose config declares separate heads it
    does not hold) is incomplete, not a plain CTC checkpoint: the heads are not made up from lm_head."""
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"missing 2: exit_heads\.1\.bias, exit_heads\.1\.weight$"):
        load_model(tmp_path, exit_layers=[1, 2, 4])
    model = load_model(tmp_path, exit_layers=[1, 2, 4], allow_random_init=True)  # training: from lm_head
    assert torch.equal(model.exit_heads[1].weight, model.lm_head.weight)


def test_reinit_encoder_keeps_the_cnn():
    model = Wav2Vec2EEForCTC(tiny_config())
    cnn = {k: v.clone() for k, v in model.wav2vec2.feature_extractor.state_dict().items()}
    layer = {k: v.clone() for k, v in model.encoder_layers[0].state_dict().items()}
    torch.manual_seed(123)
    model.reinit_encoder()
    assert all(torch.equal(v, model.wav2vec2.feature_extractor.state_dict()[k]) for k, v in cnn.items())
    changed = [k for k, v in layer.items() if not torch.equal(v, model.encoder_layers[0].state_dict()[k])]
    assert any("attention" in k for k in changed)


# --------------------------------------------------------------------------------------------------
# one encoder path: iter_exits, and the padding rule


LAYER_NORM_CNN = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}


def test_iter_exits_yields_requested_exits_and_stops_at_the_deepest():
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[1, 2, 3, 4], **LAYER_NORM_CNN)).eval()
    calls = []
    for i, layer in enumerate(model.encoder_layers):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append((i, int(a[0].shape[0]))))
    x, mask = _audio()
    full = model(x, attention_mask=mask)
    steps = list(model.iter_exits(x, mask, exits=[2, 0]))
    assert [(s.exit_index, s.layer) for s in steps] == [(0, 1), (2, 3)]
    assert [i for i, _ in calls[-3:]] == [0, 1, 2] and len(calls) == 4 + 3  # layer 4 never ran
    for s in steps:
        torch.testing.assert_close(s.logits, full.exit_logits[s.exit_index], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        list(model.iter_exits(x, mask, exits=[4]))


def test_retained_rows_continue_alone_and_the_loop_ends_when_none_remain():
    model = Wav2Vec2EEForCTC(tiny_config(exit_layers=[1, 2, 3, 4], **LAYER_NORM_CNN)).eval()
    rows_seen = []
    for layer in model.encoder_layers:
        layer.register_forward_hook(lambda m, a, o: rows_seen.append(tuple(a[0].shape[:2])))
    x, mask = _audio()
    full = model(x, attention_mask=mask)
    rows_seen.clear()
    seen = []
    for step in model.iter_exits(x, mask):
        seen.append(step.rows.tolist())
        n = step.output_lengths
        for j, row in enumerate(step.rows.tolist()):  # every retained row still equals the full pass
            T = int(n[j])
            torch.testing.assert_close(
                step.logits[j, :T], full.exit_logits[step.exit_index][row, :T], atol=1e-5, rtol=1e-5
            )
        if step.exit_index == 0:
            step.retain(torch.tensor([False, True, True]))
        elif step.exit_index == 1:
            step.retain(torch.tensor([1]))  # indices into this step's rows: utterance 2
        elif step.exit_index == 2:
            step.retain(torch.tensor([False]))
    frames = full.output_lengths.tolist()
    assert seen == [[0, 1, 2], [1, 2], [2]]
    # layer 2 ran for utterances 1 and 2 on utterance 1's frames, layer 3 for the shortest alone
    assert rows_seen == [(3, frames[0]), (2, frames[1]), (1, frames[2])] and frames[2] < frames[1] < frames[0]
    with pytest.raises(ValueError, match="mask of shape"):
        next(model.iter_exits(x, mask)).retain(torch.tensor([True]))


def test_padding_rule_group_norm_cnn():
    """forward keeps transformers' semantics (batch statistics, gradients as Wav2Vec2ForCTC);
    iter_exits gives every utterance what it gets alone."""
    cfg = tiny_config(feat_extract_norm="group", do_stable_layer_norm=False, exit_layers=[2, 4])
    model = Wav2Vec2EEForCTC(cfg).eval()
    with torch.no_grad():
        gn = model.wav2vec2.feature_extractor.conv_layers[0].layer_norm
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    plain = Wav2Vec2ForCTC(
        Wav2Vec2Config(**_plain_kwargs(feat_extract_norm="group", do_stable_layer_norm=False))
    )
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("exit_heads")})
    plain.eval()
    x, mask = _audio()
    out = model(x, attention_mask=mask)
    ref = plain(x, attention_mask=mask).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    steps = list(model.iter_exits(x, mask))
    for b in range(3):
        n, T = int(mask[b].sum()), int(out.output_lengths[b])
        alone = plain(x[b : b + 1, :n]).logits[0]
        torch.testing.assert_close(steps[-1].logits[b, :T], alone, atol=1e-5, rtol=1e-5)
        if b > 0:  # padded: transformers' batch statistics differ from the utterance alone
            assert not torch.allclose(out.logits[b, :T], alone, atol=1e-4)
    # training (one exit at the top: the objective is Wav2Vec2ForCTC's CTC loss): the same loss and
    # the same gradient through the group norm
    single = Wav2Vec2EEForCTC(
        tiny_config(feat_extract_norm="group", do_stable_layer_norm=False, exit_layers=[4])
    )
    single.load_state_dict(model.state_dict(), strict=False)
    single.train(), plain.train()
    single.config.ctc_loss_reduction = plain.config.ctc_loss_reduction = "sum"
    labels = torch.tensor([[3, 4, 5], [6, 7, -100], [8, -100, -100]])
    ours = single(x, attention_mask=mask, labels=labels).loss
    theirs = plain(x, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    first = "wav2vec2.feature_extractor.conv_layers.0.conv.weight"
    g_ours = torch.autograd.grad(ours, dict(single.named_parameters())[first])[0]
    g_theirs = torch.autograd.grad(theirs, dict(plain.named_parameters())[first])[0]
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-4, rtol=1e-4)
