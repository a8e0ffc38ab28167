"""Hugging Face conventions: ``Wav2Vec2EEForCTC.from_pretrained`` loads every supported checkpoint
layout as ``load_model`` does (transformers' own key renaming and post-load step, no loader of ours),
and every checkpoint folder the package writes carries its processor, so that ``AutoProcessor`` and
``pipeline("automatic-speech-recognition")`` work on it (the pipeline: plain ``Wav2Vec2ForCTC``, the
final exit)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor, pipeline

from wav2vec2_ee import Wav2Vec2EEForCTC, load_model
from wav2vec2_ee.ctc.decoding import greedy_decode
from wav2vec2_ee.loading import save_checkpoint_files
from wav2vec2_ee.vocab import build_feature_extractor, build_processor, build_tokenizer

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech, write_model_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _audio(batch=3, samples=3000):
    """A padded batch: utterances of 3000, 2200 and 1500 samples."""
    x = torch.randn(batch, samples)
    mask = torch.ones(batch, samples, dtype=torch.long)
    mask[1, 2200:] = 0
    mask[2, 1500:] = 0
    return x * mask, mask


def _plain_kwargs(**over) -> dict:
    cfg = tiny_config(**over).to_dict()
    for key in ("exit_layers", "share_exit_heads", "architectures"):
        cfg.pop(key, None)
    return cfg


def _assert_valid_frames_close(got: torch.Tensor, want: torch.Tensor, lengths: torch.Tensor) -> None:
    assert got.shape == want.shape
    for b, n in enumerate(lengths.tolist()):
        assert torch.allclose(got[b, :n], want[b, :n], atol=1e-5), (b, (got[b, :n] - want[b, :n]).abs().max())


def _no_load_report(caplog) -> bool:
    return not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]


def _our_lines(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name in ("wav2vec2_ee.checkpoints", "wav2vec2_ee.loading")
    ]


# --------------------------------------------------------------------------------------------------
# 1. from_pretrained converts every supported layout


@pytest.mark.parametrize("stable", [False, True])
def test_from_pretrained_plain_ctc_checkpoint_every_exit_reads_its_lm_head(tmp_path, caplog, stable):
    """A plain ``Wav2Vec2ForCTC``: the exit heads it lacks are loaded from its ``lm_head`` (not left
    random): every exit gives the source's ``lm_head`` on that layer's hidden states."""
    over = {"do_stable_layer_norm": True, "feat_extract_norm": "layer"} if stable else {}
    plain = Wav2Vec2ForCTC(Wav2Vec2Config(**_plain_kwargs(**over))).eval()
    plain.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO):
        model, info = Wav2Vec2EEForCTC.from_pretrained(
            tmp_path, exit_layers=[1, 2, 3, 4], output_loading_info=True
        )
    assert model.config.exit_layers == [1, 2, 3, 4]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    lines = _our_lines(caplog)
    assert len(lines) == 1 and "plain CTC checkpoint" in lines[0] and str(tmp_path) in lines[0]
    assert _no_load_report(caplog)  # nothing was initialised at random, so transformers reports nothing

    x, mask = _audio()
    with torch.no_grad():
        ref = plain(x, attention_mask=mask, output_hidden_states=True)
        out = model(x, attention_mask=mask)
    ln = plain.wav2vec2.encoder.layer_norm
    for k, layer in enumerate(model.config.exit_layers):
        hidden = ref.hidden_states[layer]  # the output of that layer (transformers' convention)
        with torch.no_grad():  # pre-LN: the encoder's final LayerNorm at every exit, as at the top
            want = plain.lm_head(ln(hidden) if stable else hidden)
        _assert_valid_frames_close(out.exit_logits[k], want, out.output_lengths)
    _assert_valid_frames_close(out.logits, ref.logits, out.output_lengths)


def _original_checkpoint(folder, src: Wav2Vec2EEForCTC, *, dedupe: bool) -> dict[str, torch.Tensor]:
    """The original research code's layout of ``src``: its heads as ``decoders.{i}`` (only the first
    stored when ``dedupe``, as safetensors stores one module shared by all exits), its own unused
    ``lm_head`` (random, not an exit head) and a ``copy_model.*`` teacher."""
    state = {k: v for k, v in src.state_dict().items() if k.startswith("wav2vec2.")}
    for i in range(1 if dedupe else src.config.num_exits):
        head = src.head(i)
        state[f"decoders.{i}.weight"], state[f"decoders.{i}.bias"] = head.weight, head.bias
    state["lm_head.weight"], state["lm_head.bias"] = torch.randn(32, 16), torch.randn(32)
    state["copy_model.wav2vec2.feature_projection.projection.weight"] = torch.ones(16, 16)
    state["copy_model.lm_head.weight"] = torch.zeros(32, 16)
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({**_plain_kwargs(), "exit_layers": src.config.exit_layers, "model_type": "wav2vec2"})
    )
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()}, str(folder / "model.safetensors")
    )
    return state


@pytest.mark.parametrize("shared", [False, True])
def test_from_pretrained_original_research_code_layout_every_exit(tmp_path, caplog, shared):
    """``decoders.{i}`` heads (separate, or one shared module stored once) are renamed onto ours by
    transformers' key_mapping; the teacher is ignored; every exit equals the source model's; the
    converted model saves in our layout (which plain ``Wav2Vec2ForCTC`` reads as the final exit)."""
    src = Wav2Vec2EEForCTC(tiny_config(exit_layers=[1, 2, 4], share_exit_heads=shared)).eval()
    _original_checkpoint(tmp_path / "orig", src, dedupe=shared)
    with caplog.at_level(logging.INFO):
        model, info = Wav2Vec2EEForCTC.from_pretrained(tmp_path / "orig", output_loading_info=True)
    assert model.config.share_exit_heads is shared and model.config.exit_layers == [1, 2, 4]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    lines = _our_lines(caplog)
    assert len(lines) == 1 and "original research code" in lines[0] and "copy_model" in lines[0]
    assert ("shared" if shared else "one per exit") in lines[0]
    assert _no_load_report(caplog)

    x, mask = _audio()
    with torch.no_grad():
        want = src(x, attention_mask=mask)
        out = model(x, attention_mask=mask)
    for k in range(3):
        _assert_valid_frames_close(out.exit_logits[k], want.exit_logits[k], out.output_lengths)

    # the renaming is not reversed on save: the converted checkpoint is in our layout
    model.save_pretrained(tmp_path / "ours")
    keys = set(load_file(tmp_path / "ours" / "model.safetensors"))
    assert not any(k.startswith(("decoders.", "copy_model.")) for k in keys)
    assert {"lm_head.weight", "lm_head.bias"} <= keys
    assert any(k.startswith("exit_heads.") for k in keys) is not shared
    again = load_model(tmp_path / "ours").eval()
    plain = Wav2Vec2ForCTC.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        for a, b in zip(again(x, attention_mask=mask).exit_logits, out.exit_logits):
            assert torch.equal(a, b)
        _assert_valid_frames_close(plain(x, attention_mask=mask).logits, out.logits, out.output_lengths)


def test_load_model_is_from_pretrained_plus_strictness(tmp_path):
    """``load_model`` gives what ``from_pretrained`` gives for each layout (and refuses what it would
    leave random)."""
    plain = Wav2Vec2ForCTC(Wav2Vec2Config(**_plain_kwargs()))
    plain.save_pretrained(tmp_path / "plain")
    src = Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).eval()
    _original_checkpoint(tmp_path / "orig", src, dedupe=False)
    for folder in (tmp_path / "plain", tmp_path / "orig"):
        a, b = Wav2Vec2EEForCTC.from_pretrained(folder), load_model(folder)
        ca, cb = a.config.to_dict(), b.config.to_dict()
        ca.pop("architectures"), cb.pop("architectures")  # the file's; save_pretrained writes the class's
        assert ca == cb
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # a checkpoint that declares exit heads it does not hold is incomplete, not a plain one
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(tmp_path / "ours")
    state = load_file(tmp_path / "ours" / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("exit_heads.")},
        tmp_path / "ours" / "model.safetensors",
    )
    _, info = Wav2Vec2EEForCTC.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == {"exit_heads.0.weight", "exit_heads.0.bias"}
    with pytest.raises(ValueError, match=r"missing 2: exit_heads\.0\.bias, exit_heads\.0\.weight"):
        load_model(tmp_path / "ours")


# --------------------------------------------------------------------------------------------------
# 2. checkpoint folders carry their processor: AutoProcessor and the ASR pipeline work on them


def _tiny_checkpoint(folder, *, do_normalize: bool = False, **config) -> Wav2Vec2EEForCTC:
    model = Wav2Vec2EEForCTC(tiny_config(**{"exit_layers": [2, 4], **config})).eval()
    processor = build_processor(None)
    processor.feature_extractor.do_normalize = do_normalize
    save_checkpoint_files(model, processor, folder)
    return model


def test_processor_files_read_back_as_autoprocessor_reads_them(tmp_path):
    folder = tmp_path / "ckpt"
    _tiny_checkpoint(folder, do_normalize=False)
    assert {"config.json", "model.safetensors", "processor_config.json", "vocab.json"} <= {
        p.name for p in folder.iterdir()
    }
    auto = AutoProcessor.from_pretrained(str(folder))
    ours = build_processor(folder)
    assert isinstance(ours, Wav2Vec2Processor)
    for fe in (auto.feature_extractor, ours.feature_extractor, build_feature_extractor(folder)):
        assert fe.do_normalize is False  # transformers 5 writes it into processor_config.json
        assert fe.sampling_rate == 16_000 and fe.return_attention_mask is True
    assert auto.tokenizer.get_vocab() == ours.tokenizer.get_vocab() == build_tokenizer(folder).get_vocab()

    # a transformers-4 folder (preprocessor_config.json) is read too
    old = tmp_path / "v4"
    ours.feature_extractor.save_pretrained(old)
    ours.tokenizer.save_pretrained(old)
    assert (old / "preprocessor_config.json").is_file() and not (old / "processor_config.json").exists()
    assert build_processor(old).feature_extractor.do_normalize is False
    # a folder without processor files: the bundled vocabulary and wav2vec2's defaults
    bare = build_processor(tmp_path / "nothing-here")
    assert bare.feature_extractor.do_normalize is True and len(bare.tokenizer) == 32
    # a broken processor_config.json is one line naming it
    (folder / "processor_config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"processor_config\.json: not a valid JSON file") as err:
        build_processor(folder)
    assert "\n" not in str(err.value)


def _pipeline_equals_our_final_exit(folder, audio: np.ndarray) -> str:
    """The ASR pipeline's text for ``audio``, checked against our greedy decoding of the last exit
    (our loader, our processor)."""
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    assert type(asr.model) is Wav2Vec2ForCTC  # plain transformers: model_type "wav2vec2"
    text = asr(audio)["text"]
    model, processor = load_model(folder).eval(), build_processor(folder)
    inputs = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        out = model(inputs.input_values, attention_mask=inputs.get("attention_mask"))
    assert text == greedy_decode(out.exit_logits[-1], out.output_lengths, processor.tokenizer)[0]
    return text


def test_the_asr_pipeline_gives_the_final_exit(tmp_path):
    folder = tmp_path / "ckpt"
    model = _tiny_checkpoint(folder, do_normalize=False)
    # large and offset: normalising it (the default) would change every frame, so a lost
    # do_normalize=False would show
    audio = (0.5 * np.random.default_rng(0).standard_normal(16_000) + 0.3).astype(np.float32)
    text = _pipeline_equals_our_final_exit(folder, audio)
    assert text.strip()  # a random model's text, but not an empty one
    assert json.loads((folder / "config.json").read_text())["architectures"] == [type(model).__name__]


def test_the_demo_base_is_a_plain_float16_ctc_checkpoint(tmp_path):
    """``demo --build-base`` writes its model as ``wav2vec2-base-960h`` is: a plain ``Wav2Vec2ForCTC``
    (float16 safetensors, no exit fields), which our loader reads in float32 with every second layer
    read through the final head."""
    from safetensors import safe_open

    from wav2vec2_ee.demo import export_plain_ctc

    model = _tiny_checkpoint(tmp_path / "run", do_normalize=True, exit_layers=[4])  # CTC at the top only
    out = export_plain_ctc(tmp_path / "run", tmp_path / "base")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForCTC"] and "exit_layers" not in config
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
        assert not [k for k in f.keys() if k.startswith("exit_heads")]  # noqa: SIM118
    audio = torch.from_numpy((0.2 * np.random.default_rng(3).standard_normal((2, 9_000))).astype(np.float32))
    plain = Wav2Vec2ForCTC.from_pretrained(str(out), dtype=torch.float32).eval()
    ours = load_model(out).eval()
    assert {p.dtype for p in ours.parameters()} == {torch.float32}  # whatever the file stores
    assert ours.config.exit_layers == [2, 4]
    assert torch.equal(ours.exit_heads[0].weight, ours.lm_head.weight)  # read through the final head
    with torch.no_grad():
        reference = model(audio).exit_logits[-1]
        exported = plain(audio).logits
        read = ours(audio).exit_logits
    assert torch.equal(read[-1], exported)
    assert torch.allclose(exported, reference, atol=2e-2)  # float16 weights
    assert torch.equal(read[0], ours.lm_head(ours(audio, output_hidden_states=True).hidden_states[2]))
    with pytest.raises(ValueError, match="one head, at the top"):
        _tiny_checkpoint(tmp_path / "ee", exit_layers=[2, 4])
        export_plain_ctc(tmp_path / "ee", tmp_path / "no")


def test_training_writes_the_processor_into_every_checkpoint_folder(tmp_path):
    from wav2vec2_ee.cli import main as cli_main

    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(out), "--max-steps", "1", "--save-steps", "1",
            "--per-device-train-batch-size", "4", "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip
    assert cli_main(argv) == 0
    audio = (0.2 * np.random.default_rng(2).standard_normal(12_000)).astype(np.float32)
    for folder in (out / "checkpoint-1", out):
        processor = AutoProcessor.from_pretrained(str(folder))
        assert len(processor.tokenizer) == 32
        assert (
            processor.feature_extractor.do_normalize is build_processor(folder).feature_extractor.do_normalize
        )
        _pipeline_equals_our_final_exit(folder, audio)
