"""Device-agnostic commands: --device / --dtype, the acceleration applied on CPU only, batching by
device, and an ONNX export of the plain model (CI runs on the CPU; benchmarks/gpu_check.py on a GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee.accel import is_optimized
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.device import (
    autocast_dtype,
    default_batching,
    forward_precision,
    prepare_for_inference,
    resolve_device,
)
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda: no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")
    assert autocast_dtype("bfloat16") is torch.bfloat16 and autocast_dtype("float32") is None
    with pytest.raises(ValueError, match="unknown --dtype 'int8'"):
        autocast_dtype("int8")


def test_the_cpu_layer_is_applied_on_cpu_only_when_asked():
    model = Wav2Vec2EEForCTC(tiny_config())
    assert not is_optimized(model)
    plain = prepare_for_inference(Wav2Vec2EEForCTC(tiny_config()), "cpu", accelerate=False)
    assert not plain.training and not is_optimized(plain)
    fast = prepare_for_inference(model, "cpu")
    assert fast is model and not fast.training and is_optimized(fast)


def test_batching_defaults_follow_the_device():
    assert default_batching("cpu", None, None) == (8, 320.0)
    assert default_batching("cpu", None, None, cpu=(16, 320.0)) == (16, 320.0)
    assert default_batching("cuda", None, None) == (64, 1200.0)
    assert default_batching("cuda", 4, 30.0) == (4, 30.0)


def test_autocast_precision_reaches_the_products():
    model = prepare_for_inference(Wav2Vec2EEForCTC(tiny_config()), "cpu", accelerate=False)
    x = torch.randn(2, 4000)
    with torch.inference_mode():
        ref = [s.logits for s in model.iter_exits(x)]
        with forward_precision("cpu", torch.bfloat16):
            low = [s.logits for s in model.iter_exits(x)]
    assert low[-1].dtype == torch.bfloat16
    torch.testing.assert_close(low[-1].float(), ref[-1], atol=0.1, rtol=0.1)
    assert not torch.equal(low[-1].float(), ref[-1])


def test_worker_processes_are_refused_off_the_cpu():
    from wav2vec2_ee.ctc.engine import iter_exit_logits
    from wav2vec2_ee.data import SpeechDataset
    from wav2vec2_ee.vocab import build_feature_extractor

    model = Wav2Vec2EEForCTC(tiny_config()).to("meta")  # no data moves: refused before any work
    dataset = SpeechDataset([], build_feature_extractor(None))
    with pytest.raises(ValueError, match="worker processes run on a CPU only"):
        list(iter_exit_logits(model, dataset, processes=2))


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    torch.manual_seed(0)
    Wav2Vec2EEForCTC(tiny_config(feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(
        root / "model"
    )
    write_librispeech(root / "corpus", "dev", good_items(4, seconds=0.6, prefix="d"))
    wav = root / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(9000)).astype(np.float32), 16_000)
    return root


def test_every_command_takes_device_and_dtype(checkpoint_and_data, capsys):
    root = checkpoint_and_data
    ckpt, data, wav = str(root / "model"), str(root / "corpus"), str(root / "a.wav")
    common = ["--device", "cpu", "--dtype", "bfloat16"]
    assert cli_main(["transcribe", ckpt, wav, "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)[0]["exit_layer"] == 4
    out = root / "eval"
    assert (
        cli_main(["evaluate", ckpt, str(out), "--data", data, "--splits", "dev", "--no-plot", *common]) == 0
    )
    summary = json.loads((out / "dev_summary.json").read_text())
    assert summary["settings"]["dtype"] == "bfloat16" and summary["utterances"] == 4
    sweep = root / "sweep"
    argv = ["sweep", ckpt, str(sweep), "--data", data, "--split", "dev", "--policies", "entropy"]
    assert cli_main([*argv, "--num-thresholds", "2", "--no-plot", "--no-progress", *common]) == 0
    timing = json.loads((sweep / "dev_sweep.json").read_text())["timing"]
    assert timing["device"] == "cpu" and timing["dtype"] == "bfloat16"
    assert cli_main(["calibrate", ckpt, "--data", data, "--split", "dev", *common]) == 0
    capsys.readouterr()
    if not torch.cuda.is_available():
        assert cli_main(["transcribe", ckpt, wav, "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


def test_onnx_export_under_no_grad(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(feat_extract_norm="group", do_stable_layer_norm=False)).eval()
    x = torch.randn(2, 4000)
    mask = torch.ones(2, 4000, dtype=torch.long)
    mask[1, 3000:] = 0
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, (x,), path, kwargs={"attention_mask": mask}, input_names=["input_values", "attention_mask"]
        )
        expected = model(x, attention_mask=mask)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input_values": x.numpy(), "attention_mask": mask.numpy()})
    for logits in expected.exit_logits:  # every exit's logits among the graph's outputs
        e = logits.numpy()
        assert any(o.shape == e.shape and np.allclose(o, e, atol=1e-5, rtol=1e-5) for o in outputs)
    assert not np.allclose(expected.exit_logits[0].numpy(), expected.exit_logits[-1].numpy(), atol=1e-3)
