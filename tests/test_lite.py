"""``wav2vec2_ee.lite``: the torch-free runtime (onnxruntime, numpy, soundfile) equals the PyTorch engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee import inference, lite
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.errors import UserError
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.inference import policies as torch_policies
from wav2vec2_ee.inference.engine import run_early_exit
from wav2vec2_ee.vocab import build_processor

from conftest import sharpened_model

ROOT = Path(__file__).resolve().parents[1]
SECONDS = [0.25, 0.19, 0.14, 0.09, 0.06]


def separating_threshold(values: torch.Tensor, gap: float = 1e-3) -> float:
    """A threshold between two neighbouring observed values, at least ``gap`` from each (numerical
    differences between torch and numpy cannot flip a decision)."""
    u = sorted(set(values.flatten().tolist()))
    cuts = [(a + b) / 2 for a, b in zip(u, u[1:]) if b - a > 2 * gap]
    assert cuts, f"no separating threshold among {u}"
    return cuts[len(cuts) // 2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = sharpened_model()
    folder = tmp_path_factory.mktemp("lite-export")
    export_model(model, folder, check=False)
    return model, folder


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [(0.3 * rng.standard_normal(int(s * 16_000))).astype(np.float32) for s in SECONDS]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory, audio) -> list[Path]:
    folder = tmp_path_factory.mktemp("wavs")
    paths = []
    for i, array in enumerate(audio):
        path = folder / f"utt{i}.wav"
        sf.write(path, array, 16_000, subtype="FLOAT")
        paths.append(path)
    return paths


def _torch_engine(model, folder, arrays, policy):
    """What the PyTorch Transcriber computes: the processor's normalisation and padding, the engine."""
    processor = build_processor(folder)
    fe = processor.feature_extractor
    values = [fe(a, sampling_rate=16_000).input_values[0] for a in arrays]
    batch = fe.pad({"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt")
    decoders = torch_policies.Decoders(processor.tokenizer)
    return run_early_exit(model, batch["input_values"], batch["attention_mask"], policy, decoders)


def _thresholds(model, folder, arrays) -> tuple[float, float]:
    processor = build_processor(folder)
    fe = processor.feature_extractor
    values = [fe(a, sampling_rate=16_000).input_values[0] for a in arrays]
    batch = fe.pad({"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt")
    entropy, max_prob = [], []
    with torch.no_grad():
        for step in model.iter_exits(batch["input_values"], batch["attention_mask"], range(3)):
            view = torch_policies.ExitView(
                step.exit_index, step.layer, step.rows, step.logits, step.output_lengths
            )
            entropy.append(view.entropy)
            max_prob.append(view.max_prob)
    return separating_threshold(torch.stack(entropy)), separating_threshold(torch.stack(max_prob))


def _pairs(model, folder, arrays):
    """(lite policy, the same PyTorch policy) for every policy the lite runtime has."""
    entropy, confidence = _thresholds(model, folder, arrays)
    return {
        "fixed-last": (lite.build_policy("fixed"), inference.FixedExit()),
        "fixed-2": (lite.build_policy("fixed", 2), inference.FixedExit(2)),
        "entropy": (lite.build_policy("entropy", entropy), inference.EntropyThreshold(entropy)),
        "confidence": (
            lite.build_policy("confidence", confidence),
            inference.ConfidenceThreshold(confidence),
        ),
        "patience-2": (lite.build_policy("patience", 2), inference.Patience(2)),
        "patience-1": (lite.build_policy("patience", 1), inference.Patience(1)),
        "budget": (
            lite.build_policy("budget", max_layer=3),
            inference.build_policy("budget", max_layer=3),
        ),
        "entropy-budget": (
            lite.build_policy("entropy", entropy, max_layer=3),
            inference.LayerBudget(inference.EntropyThreshold(entropy), 3),
        ),
    }


@pytest.mark.parametrize("batch_size", [8, 2])
def test_lite_equals_the_torch_engine(exported, audio, batch_size) -> None:
    model, folder = exported
    varied = set()
    for name, (lite_policy, torch_policy) in _pairs(model, folder, audio).items():
        want = _torch_engine(model, folder, audio, torch_policy)
        got = lite.LiteTranscriber(folder, lite_policy, batch_size=batch_size).transcribe(list(audio))
        assert [r.text for r in got] == want.transcripts, name
        assert [r.exit_layer for r in got] == want.exit_layer, name
        assert [r.exit_index for r in got] == want.exit_index, name
        if len(set(want.exit_layer)) > 1:
            varied.add(name)
    assert {"entropy", "confidence", "entropy-budget"} <= varied
    assert any(r.text for r in got)


def test_normalisation_and_statistics_match_torch(exported, audio) -> None:
    _, folder = exported
    fe = build_processor(folder).feature_extractor
    settings = lite.FeatureSettings.from_folder(folder)
    assert settings == lite.FeatureSettings(16_000, True, 0.0)
    for array in audio:
        np.testing.assert_array_equal(
            settings.normalize(array), fe(array, sampling_rate=16_000).input_values[0]
        )
    values, mask = settings.batch(audio[:3])
    assert values.shape == mask.shape == (3, len(audio[0])) and mask.sum(1).tolist() == [
        len(a) for a in audio[:3]
    ]
    logits = torch.randn(3, 11, 32) * 5
    lengths = torch.tensor([11, 7, 1])
    from wav2vec2_ee.ctc.metrics import mean_frame_entropy, mean_max_prob

    np.testing.assert_allclose(
        lite.mean_frame_entropy(logits.numpy(), lengths.numpy()),
        mean_frame_entropy(logits, lengths),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        lite.mean_max_prob(logits.numpy(), lengths.numpy()), mean_max_prob(logits, lengths), atol=1e-6
    )


def test_greedy_decoding_matches_the_tokenizer(exported) -> None:
    from wav2vec2_ee.ctc.decoding import greedy_decode
    from wav2vec2_ee.vocab import normalize_transcript

    _, folder = exported
    tokenizer = build_processor(folder).tokenizer
    vocabulary = lite.Vocabulary(folder)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, 32, generator=generator)
    logits[:, ::3, 0] += 10  # blanks between repeats
    logits[:, 1::5, 4] += 10  # word delimiters
    lengths = torch.tensor([40, 33, 20, 5, 1, 0])
    want = [normalize_transcript(t) for t in greedy_decode(logits, lengths, tokenizer)]
    assert vocabulary.decode(logits.numpy(), lengths.numpy()) == want
    assert any(" " in t for t in want)


def test_lite_reads_files_and_uses_policy_json(exported, wavs, tmp_path) -> None:
    model, folder = exported
    texts = [r.text for r in lite.LiteTranscriber(folder).transcribe(wavs)]  # no policy.json: the last exit
    want = _torch_engine(model, folder, [sf.read(p, dtype="float32")[0] for p in wavs], inference.FixedExit())
    assert texts == want.transcripts

    with_policy = tmp_path / "with-policy"
    calibration = tmp_path / "calibration_fixed.json"
    calibration.write_text(
        json.dumps({"policy": "fixed", "parameter": "layer", "value": 2, "max_layer": None})
    )
    export_model(model, with_policy, policy=calibration, check=False)
    transcriber = lite.LiteTranscriber(with_policy)
    assert isinstance(transcriber.policy, inference.FixedExit) and transcriber.policy.layer == 2
    single = transcriber.transcribe(wavs[0])
    assert isinstance(single, lite.LiteResult) and single.exit_layer == 2 and single.source == str(wavs[0])


def test_resampling_needs_soxr(exported, audio, monkeypatch) -> None:
    _, folder = exported
    transcriber = lite.LiteTranscriber(folder)
    assert transcriber.transcribe(audio[0][::2].copy(), sampling_rate=8_000).exit_layer == 4  # soxr is here
    monkeypatch.setitem(sys.modules, "soxr", None)
    with pytest.raises(lite.LiteError, match=r"8000 Hz.*soxr"):
        transcriber.transcribe(audio[0], sampling_rate=8_000)


def test_lite_errors(exported, tmp_path) -> None:
    _, folder = exported
    with pytest.raises(lite.LiteError, match="not an exit"):
        lite.LiteTranscriber(folder, "fixed", value=5)
    with pytest.raises(lite.LiteError, match="unknown exit policy"):
        lite.build_policy("posterior", 0.9)
    with pytest.raises(lite.LiteError, match="needs its value"):
        lite.build_policy("entropy")
    with pytest.raises(lite.LiteError, match="no such file"):
        lite.LiteTranscriber(folder).transcribe([tmp_path / "missing.wav"])
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(lite.LiteError, match="cannot decode"):
        lite.read_audio(tmp_path / "bad.wav")


def test_lite_command(exported, wavs, capsys) -> None:
    _, folder = exported
    assert lite.main([str(folder), *map(str, wavs[:2]), "--policy", "fixed", "--layer", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in wavs[:2]]
    assert {line["exit_layer"] for line in lines} == {3}
    assert lite.main([str(folder), str(wavs[0]), "--policy", "fixed", "--layer", "7"]) == 2
    assert "not an exit" in capsys.readouterr().err


def _error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0][len(prefix) :]


@pytest.mark.parametrize(
    "flags",
    [
        ["--policy", "entropy", "--patience", "2"],  # not a threshold of 2
        ["--layer", "3"],  # not dropped
        ["--threshold", "0.5", "--patience", "2"],
        ["--policy", "entropy"],
        ["--policy", "fixed", "--threshold", "0.3"],
        ["--policy", "budget", "--threshold", "0.3", "--max-layer", "2"],
        ["--policy", "budget"],
        ["--policy", "confidence", "--threshold", "5"],
        ["--policy", "entropy", "--threshold", "-3"],
        ["--policy", "patience", "--patience", "0"],
        ["--policy", "fixed", "--layer", "0"],
        ["--policy", "fixed", "--layer", "7"],
        ["--policy", "entropy", "--threshold", "0.4", "--max-layer", "9"],
        ["--policy", "learned", "--threshold", "0.5"],  # no saved learned model
    ],
)
def test_the_lite_command_refuses_what_transcribe_refuses(exported, wavs, capsys, flags) -> None:
    _, folder = exported
    assert lite.main([str(folder), str(wavs[0]), *flags]) == 2
    message = _error(capsys, "python -m wav2vec2_ee.lite: error: ")
    transcribe = ["transcribe", str(folder), str(wavs[0]), "--backend", "onnxruntime", *flags]
    assert cli_main(transcribe) == 2
    assert _error(capsys, "wav2vec2-ee transcribe: error: ") == message


def test_a_bad_policy_json_is_refused_by_every_reader(exported, wavs, tmp_path, capsys) -> None:
    _, folder = exported
    bad = tmp_path / "bad-policy"
    shutil.copytree(folder, bad)
    (bad / "policy.json").write_text(json.dumps({"policy": "entropy", "value": True}))
    manifest = json.loads((bad / "export.json").read_text())
    (bad / "export.json").write_text(json.dumps({**manifest, "policy": "policy.json"}))
    expected = f"{bad / 'policy.json'}: value True is not a number"
    with pytest.raises(lite.LiteError) as caught:
        lite.LiteTranscriber(bad)
    assert str(caught.value) == expected
    with pytest.raises(UserError) as caught:
        inference.Transcriber.from_export(bad)
    assert str(caught.value) == expected
    assert lite.main([str(bad), str(wavs[0])]) == 2
    assert _error(capsys, "python -m wav2vec2_ee.lite: error: ") == expected
    assert cli_main(["transcribe", str(bad), str(wavs[0]), "--backend", "onnxruntime"]) == 2
    assert _error(capsys, "wav2vec2-ee transcribe: error: ") == expected
    # a named policy does not read it
    assert lite.main([str(bad), str(wavs[0]), "--policy", "fixed", "--layer", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_layer"] == 2


_CHILD = """
import json, sys
from wav2vec2_ee.lite import LiteTranscriber
results = LiteTranscriber(sys.argv[1], "patience", value=2).transcribe(sys.argv[2:])
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(json.dumps({"texts": [r.text for r in results], "layers": [r.exit_layer for r in results], "heavy": heavy}))
"""


def test_lite_imports_no_torch_and_equals_the_engine(exported, wavs) -> None:
    """Test A: in a fresh interpreter, the lite runtime transcribes without importing torch or transformers."""
    model, folder = exported
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), *map(str, wavs)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["heavy"] == []
    want = _torch_engine(model, folder, [sf.read(p, dtype="float32")[0] for p in wavs], inference.Patience(2))
    assert child["texts"] == want.transcripts and child["layers"] == want.exit_layer


@pytest.mark.slow
def test_lite_in_a_fresh_venv_without_torch(exported, wavs, tmp_path) -> None:
    """Test B: a virtual environment with only onnxruntime, numpy, soundfile and the package (--no-deps)."""
    model, folder = exported
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    for args in (["onnxruntime", "numpy", "soundfile"], ["--no-deps", str(ROOT)]):
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if pip.returncode != 0:
            tail = (pip.stderr or pip.stdout).strip().splitlines()[-3:]
            pytest.skip(f"pip could not install {' '.join(args)}: {' | '.join(tail)}")
    check = "import importlib.util as u; print(u.find_spec('torch') is None and u.find_spec('transformers') is None)"
    probe = subprocess.run([str(python), "-c", check], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True", "the fresh environment must not have torch or transformers"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(
        [str(python), "-m", "wav2vec2_ee.lite", str(folder), *map(str, wavs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    # transcribe's text format (issue 30: lite on par): path, layer, seconds, transcript
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    want = _torch_engine(model, folder, [sf.read(p, dtype="float32")[0] for p in wavs], inference.FixedExit())
    assert [(line[0], line[1], line[-1]) for line in lines] == [
        (str(p), "layer 4/4", t) for p, t in zip(wavs, want.transcripts)
    ]
