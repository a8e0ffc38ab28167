"""Exports you can trust, policies that belong to their model (issue 29, rows 1-6 and the export parts of
rows 14 and 15), on tiny random models: ``a`` (exits 1-4), ``b`` (the same shape, other weights: "the
20-step model") and ``c`` (exits 2 and 4 only: "the exits-4-and-8 model")."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee import cli, lite
from wav2vec2_ee.errors import UserError
from wav2vec2_ee.export import load_segments, read_manifest, run_onnx_exits
from wav2vec2_ee.export.exporter import export_checkpoint, export_model, record_files
from wav2vec2_ee.export.runtime import MANIFEST_VERSION, segment_signature
from wav2vec2_ee.inference.calibrate import calibrate_table, saved_policy
from wav2vec2_ee.inference.table import ExitTable
from wav2vec2_ee.inference.transcriber import Transcriber, saved_policy_values
from wav2vec2_ee.io import replace_folder
from wav2vec2_ee.loading import load_model, save_checkpoint_files
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.policy_core import check_policy_model, check_saved_policy, weights_fingerprint
from wav2vec2_ee.vocab import build_processor

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int, **overrides) -> Wav2Vec2EEForCTC:
    torch.manual_seed(seed)
    model = Wav2Vec2EEForCTC(tiny_config(**overrides)).eval()
    with torch.no_grad():  # every parameter matters (a fresh init leaves norms at 1, biases at 0)
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


MODELS = {"a": (0, {}), "b": (1, {}), "c": (0, {"exit_layers": [2, 4]})}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    for name, (seed, overrides) in MODELS.items():
        save_checkpoint_files(_model(seed, **overrides), build_processor(None), root / name)
    return {name: root / name for name in MODELS}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    for name, checkpoint in checkpoints.items():
        export_checkpoint(checkpoint, root / name, check=False)
    return {name: root / name for name in MODELS}


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(8_000)).astype(np.float32), 16_000)
    return path


def _copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def _logits(folder: Path, precision: str = "float") -> list[np.ndarray]:
    values = np.random.default_rng(1).standard_normal((2, 6000)).astype(np.float32)
    mask = np.ones_like(values, dtype=np.int64)
    mask[1, 4000:] = 0
    return [step.logits for step in run_onnx_exits(load_segments(folder, precision), values * mask, mask)]


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def _refused_everywhere(folder: Path, wav: Path, capsys, named: str, fragment: str = "") -> None:
    """Both runtimes (the API and the command of each) refuse ``folder`` in one line naming ``named``."""
    with pytest.raises(UserError) as caught:
        load_segments(folder)
    assert named in str(caught.value) and fragment in str(caught.value), caught.value
    with pytest.raises(lite.LiteError):
        lite.LiteTranscriber(folder)
    with pytest.raises(UserError):
        Transcriber.from_export(folder)
    assert lite.main([str(folder), str(wav)]) == 2
    assert named in _one_line(capsys, "python -m wav2vec2_ee.lite: error: ")
    assert cli.main(["transcribe", str(folder), str(wav), "--backend", "onnxruntime"]) == 2
    assert named in _one_line(capsys, "wav2vec2-ee transcribe: error: ")


# --------------------------------------------------------------------------------------------------
# the manifest: checksums, signatures, the source's fingerprint


def test_the_manifest_records_each_file_its_signature_and_the_source(checkpoints, exports) -> None:
    folder = exports["a"]
    manifest = read_manifest(folder)
    assert manifest["version"] == MANIFEST_VERSION == 2
    names = {p.name for p in folder.iterdir()} - {"export.json", "policy.json"}
    assert set(manifest["files"]) == names and "config.json" in names and "vocab.json" in names
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (folder / name).stat().st_size and len(entry["sha256"]) == 64
    assert manifest["input_stage"]["signature"] == segment_signature("input_stage", 16, 32)
    assert all(b["signature"] == segment_signature("block", 16, 32) for b in manifest["blocks"])
    assert all(h["signature"] == segment_signature("head", 16, 32) for h in manifest["heads"])
    assert manifest["weights_fingerprint"] == weights_fingerprint(checkpoints["a"]) is not None
    assert load_segments(folder).weights_fingerprint == manifest["weights_fingerprint"]
    assert weights_fingerprint(checkpoints["b"]) != weights_fingerprint(checkpoints["a"])
    assert weights_fingerprint(folder) is None  # an export holds no checkpoint weight files


def test_record_files_after_a_deliberate_replacement(exports, tmp_path) -> None:
    """A tool that replaces segments on purpose (a quantization variant) records them again."""
    folder = _copy(exports["a"], tmp_path)
    shutil.copy(exports["b"] / "block_1.onnx", folder / "block_1.onnx")
    with pytest.raises(UserError, match="block_1.onnx"):
        load_segments(folder)
    record_files(folder)
    load_segments(folder)


# --------------------------------------------------------------------------------------------------
# rows 3, 4, 5: a folder that does not verify is refused by both runtimes, in one line naming the file


def _swap_segment(source: str, name: str) -> Callable[[Path, dict], None]:
    def tamper(folder: Path, exports: dict) -> None:
        shutil.copy(exports[source] / name, folder / name)

    return tamper


def _scramble(folder: Path, exports: dict) -> None:
    data = bytearray((folder / "block_2.onnx").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - x for x in data[middle : middle + 64])
    (folder / "block_2.onnx").write_bytes(bytes(data))


def _manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    return lambda folder, exports: _edit_json(folder / "export.json", edit)


def _reorder(m: dict) -> None:
    m["blocks"][0], m["blocks"][1] = m["blocks"][1], m["blocks"][0]


def _duplicate_head(m: dict) -> None:
    m["heads"][2] = dict(m["heads"][1])


def _swap_two_tokens(vocab: dict) -> None:
    first, second = sorted(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]


def _truncate(name: str, keep: float) -> Callable[[Path, dict], None]:
    def tamper(folder: Path, exports: dict) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return tamper


TAMPERED = {
    # row 3: a segment of another export at the same position, scrambled weights, a reordered manifest
    "other-weights-segment": (_swap_segment("b", "block_1.onnx"), "block_1.onnx", "sha256"),
    "two-layer-block-of-another-export": (_swap_segment("c", "block_0.onnx"), "block_0.onnx", ""),
    "scrambled-weights": (_scramble, "block_2.onnx", "sha256"),
    "blocks-reordered": (_manifest_edit(_reorder), "export.json", "blocks[0] holds layers [2, 2]"),
    "head-duplicated": (_manifest_edit(_duplicate_head), "export.json", "heads[2]"),
    # row 4: exit layers edited in the manifest or the config
    "exit-layers-dropped": (
        _manifest_edit(lambda m: m.update(exit_layers=[1, 2, 3])), "export.json", "4 blocks for 3"
    ),
    "exit-layer-99": (_manifest_edit(lambda m: m.update(exit_layers=[1, 2, 3, 99])), "export.json", "99"),
    "config-exit-layers": (
        lambda folder, exports: _edit_json(folder / "config.json", lambda c: c.update(exit_layers=[1, 3, 4])),
        "config.json",
        "exit_layers",
    ),
    # row 5: a segment missing, truncated, empty; the manifest without blocks or with too few
    "segment-missing": (lambda folder, exports: (folder / "head_2.onnx").unlink(), "head_2.onnx", "no such file"),
    "segment-truncated": (_truncate("block_3.onnx", 0.5), "block_3.onnx", "bytes"),
    "segment-empty": (_truncate("input_stage.onnx", 0.0), "input_stage.onnx", "0 bytes"),
    "vocabulary-changed": (
        lambda folder, exports: _edit_json(folder / "vocab.json", _swap_two_tokens), "vocab.json", ""
    ),
    "no-blocks": (_manifest_edit(lambda m: m.pop("blocks")), "export.json", "no 'blocks' list"),
    "too-few-blocks": (_manifest_edit(lambda m: m.update(blocks=m["blocks"][:3])), "export.json", "3 blocks"),
    # an export of an older version: no checksums to verify it with
    "version-1": (
        _manifest_edit(lambda m: m.update(version=1) or m.pop("files")), "export.json", "export the model again"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_folder_that_does_not_verify_is_refused_by_both_runtimes(
    exports, wav, tmp_path, capsys, case
) -> None:
    tamper, name, fragment = TAMPERED[case]
    folder = _copy(exports["a"], tmp_path)
    tamper(folder, exports)
    _refused_everywhere(folder, wav, capsys, str(folder / name), fragment)


def test_only_the_files_of_the_precision_used_are_read(checkpoints, tmp_path) -> None:
    folder = tmp_path / "int8"
    export_checkpoint(checkpoints["a"], folder, int8=True, check=False)
    _scramble_file(folder / "block_0.int8.onnx")
    with pytest.raises(UserError, match="block_0.int8.onnx"):
        load_segments(folder)  # int8 by default
    assert load_segments(folder, "float").precision == "float"


def _scramble_file(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------------
# row 1: an export appears whole or not at all


class _Killed(BaseException):
    """Stands for the end of the process in the middle of an export."""


def test_an_interrupted_export_leaves_the_old_export_whole(checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    export_checkpoint(checkpoints["a"], out, check=False)
    before = _logits(out)
    written = []

    def progress(line: str) -> None:
        written.append(line)
        if len(written) == 3:  # after the third segment
            raise _Killed

    with pytest.raises(_Killed):
        export_checkpoint(checkpoints["b"], out, check=False, overwrite=True, progress=progress)
    after = _logits(out)
    assert all(np.array_equal(x, y) for x, y in zip(before, after, strict=True))
    assert read_manifest(out)["weights_fingerprint"] == weights_fingerprint(checkpoints["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder, no lock file left
    export_checkpoint(checkpoints["b"], out, check=False, overwrite=True)  # a whole new export
    assert read_manifest(out)["weights_fingerprint"] == weights_fingerprint(checkpoints["b"])
    assert not all(np.array_equal(x, y) for x, y in zip(before, _logits(out), strict=True))


_KILLED_CHILD = """
import os, signal, sys
from wav2vec2_ee.export.exporter import export_checkpoint
count = []
def progress(line):
    count.append(line)
    if len(count) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
export_checkpoint(sys.argv[1], sys.argv[2], check=False, overwrite=True, progress=progress)
"""


def test_an_export_killed_with_sigkill_leaves_the_old_export_and_no_mix(
    checkpoints, exports, tmp_path
) -> None:
    out = _copy(exports["a"], tmp_path, "out")
    before = _logits(out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(checkpoints["b"]), str(out)], env=env, capture_output=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert all(np.array_equal(x, y) for x, y in zip(before, _logits(out), strict=True))
    assert (tmp_path / ".out.export-partial").is_dir()  # what the killed export wrote, beside
    export_checkpoint(checkpoints["b"], out, check=False, overwrite=True)  # takes its leftovers away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert read_manifest(out)["weights_fingerprint"] == weights_fingerprint(checkpoints["b"])


def test_replace_folder(tmp_path) -> None:
    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "a.txt").write_text("new")
    replace_folder(new, target)  # absent: renamed in
    assert (target / "a.txt").read_text() == "new" and not new.exists()
    new.mkdir()
    (new / "b.txt").write_text("newer")
    (tmp_path / ".target.replaced").mkdir()  # left by a run killed between the two renames
    replace_folder(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


# --------------------------------------------------------------------------------------------------
# row 2: a folder holding a checkpoint or another export is refused unless --overwrite


def test_export_refuses_a_folder_holding_a_checkpoint(checkpoints, tmp_path, capsys) -> None:
    other = _copy(checkpoints["c"], tmp_path, "other")
    config = (other / "config.json").read_text()
    command = ["export", str(checkpoints["a"]), "--output-dir", str(other), "--no-check", "--no-progress"]
    assert cli.main(command) == 2
    line = _one_line(capsys, "wav2vec2-ee export: error: ")
    assert f"{other} holds a checkpoint" in line and "--overwrite" in line
    assert (other / "config.json").read_text() == config
    assert load_model(other).config.exit_layers == [2, 4]  # still loads
    assert cli.main([*command, "--overwrite"]) == 0  # replaced whole
    assert not (other / "model.safetensors").exists()
    assert read_manifest(other)["exit_layers"] == [1, 2, 3, 4]


def test_export_refuses_a_folder_holding_an_export_or_other_files(
    checkpoints, exports, tmp_path, capsys
) -> None:
    out = _copy(exports["c"], tmp_path, "out")
    command = ["export", str(checkpoints["a"]), str(out), "--no-check", "--no-progress"]
    assert cli.main(command) == 2
    assert f"{out} holds an export" in _one_line(capsys, "wav2vec2-ee export: error: ")
    assert read_manifest(out)["exit_layers"] == [2, 4]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    for flags in ([], ["--overwrite"]):  # never replaced: they may be anything
        assert cli.main(["export", str(checkpoints["a"]), str(notes), "--no-check", *flags]) == 2
        assert "neither an export nor a checkpoint" in _one_line(capsys, "wav2vec2-ee export: error: ")
    assert (notes / "todo.txt").read_text() == "keep me"
    copy = _copy(checkpoints["a"], tmp_path, "ck")
    assert cli.main(["export", str(copy), str(copy), "--no-check", "--overwrite"]) == 2
    assert "holds the checkpoint being exported" in _one_line(capsys, "wav2vec2-ee export: error: ")
    assert load_model(copy).config.exit_layers == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# row 14 (export): a full disk names the file


def test_a_full_disk_names_the_file(checkpoints, tmp_path, monkeypatch, capsys) -> None:
    export = torch.onnx.export

    def onto_a_full_disk(module, args, f, *rest, **kwargs):  # /dev/full: every write fails with ENOSPC
        return export(module, args, "/dev/full" if str(f).endswith("block_1.onnx") else f, *rest, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", onto_a_full_disk)
    out = tmp_path / "out"
    assert cli.main(["export", str(checkpoints["a"]), str(out), "--no-check", "--no-progress"]) == 2
    line = _one_line(capsys, "wav2vec2-ee export: error: ")
    assert line.endswith(f"{out / 'block_1.onnx'}: No space left on device (the disk is full)"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left


# --------------------------------------------------------------------------------------------------
# row 15 (export): two exports into one folder at once


def test_a_second_export_into_the_same_folder_is_refused_while_one_runs(checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    refused: list[str] = []

    def progress(line: str) -> None:
        if not refused:  # the second export starts while the first is writing
            with pytest.raises(UserError) as caught:
                export_checkpoint(checkpoints["b"], out, check=False, overwrite=True)
            refused.append(str(caught.value))

    export_checkpoint(checkpoints["a"], out, check=False, progress=progress)
    assert "another export is writing into it" in refused[0] and str(os.getpid()) in refused[0]
    assert read_manifest(out)["weights_fingerprint"] == weights_fingerprint(checkpoints["a"])
    export_checkpoint(checkpoints["b"], tmp_path / "other", check=False)  # another folder: not locked


# --------------------------------------------------------------------------------------------------
# row 6: a saved policy records its model and is refused on another


def _policy(checkpoint: Path | None, exit_layers: list[int] | None) -> dict:
    values = {"format": "wav2vec2-ee-exit-policy", "version": 1, "policy": "fixed", "parameter": "layer",
              "value": 2, "max_layer": None}  # fmt: skip
    if exit_layers is not None:
        values["exit_layers"] = exit_layers
    if checkpoint is not None:
        values["weights_fingerprint"] = weights_fingerprint(checkpoint)
    return values


def _exit_layers(name: str) -> list[int]:
    return list(MODELS[name][1].get("exit_layers", [1, 2, 3, 4]))


def _exit_table(layers: list[int]) -> ExitTable:
    n = 4
    return ExitTable(
        ids=[f"u{i}" for i in range(n)],
        references=["a b"] * n,
        layers=layers,
        hypotheses=[["a b"] * n for _ in layers],
        stats={"entropy": torch.rand(len(layers), n)},
        errors=torch.zeros(len(layers), n, dtype=torch.long),
        reference_words=torch.full((n,), 2),
    )


def test_calibrate_records_the_model_of_the_policy(checkpoints) -> None:
    values = saved_policy(calibrate_table(_exit_table([1, 2, 3, 4]), "entropy"), checkpoints["a"])
    assert values["exit_layers"] == [1, 2, 3, 4]
    assert values["weights_fingerprint"] == weights_fingerprint(checkpoints["a"])
    check_saved_policy(values)
    check_policy_model(values, [1, 2, 3, 4], weights_fingerprint(checkpoints["a"]))
    with pytest.raises(UserError, match="other weights"):
        check_policy_model(values, [1, 2, 3, 4], weights_fingerprint(checkpoints["b"]))
    with pytest.raises(UserError, match=r"exit layers \[1, 2, 3, 4\], not this model's \[2, 4\]"):
        check_policy_model(values, [2, 4], None)


@pytest.mark.parametrize(
    ("of", "message"),
    [("c", "calibrated for a model with exit layers [2, 4]"), ("b", "calibrated for other weights")],
)
def test_a_policy_of_another_model_beside_a_checkpoint_is_refused(
    checkpoints, wav, tmp_path, capsys, of, message
) -> None:
    """Row 6: a policy calibrated on the exits-2-and-4 model (or on other weights of the same shape)
    copied in as the checkpoint's exit_policy.json, or given to export --policy."""
    other = checkpoints[of]
    checkpoint = _copy(checkpoints["a"], tmp_path, "ck")
    layers = _exit_layers(of)
    file = checkpoint / "exit_policy.json"
    file.write_text(json.dumps(_policy(other, list(layers))))
    with pytest.raises(UserError) as caught:
        saved_policy_values(checkpoint)
    assert str(caught.value).startswith(f"{file}: {message}")
    with pytest.raises(UserError, match="calibrated for"):
        Transcriber.from_pretrained(checkpoint)
    assert cli.main(["transcribe", str(checkpoint), str(wav)]) == 2
    assert message in _one_line(capsys, "wav2vec2-ee transcribe: error: ")
    # export copies the checkpoint's policy in by default, or the one --policy names: refused
    assert cli.main(["export", str(checkpoint), str(tmp_path / "out"), "--no-check"]) == 2
    assert message in _one_line(capsys, "wav2vec2-ee export: error: ")
    file.unlink()
    policy = tmp_path / "calibration_fixed.json"
    policy.write_text(json.dumps(_policy(other, list(layers))))
    assert (
        cli.main(
            ["export", str(checkpoint), str(tmp_path / "out"), "--no-check", "--policy-file", str(policy)]
        )
        == 2
    )
    assert message in _one_line(capsys, "wav2vec2-ee export: error: ")
    assert not (tmp_path / "out").exists()


def test_a_policy_of_its_own_model_or_without_a_record_is_used(checkpoints, wav, tmp_path) -> None:
    checkpoint = _copy(checkpoints["a"], tmp_path, "ck")
    for values in (_policy(checkpoint, [1, 2, 3, 4]), _policy(None, None)):  # its own; an older file
        (checkpoint / "exit_policy.json").write_text(json.dumps(values))
        assert saved_policy_values(checkpoint) == values
        assert Transcriber.from_pretrained(checkpoint, max_seconds=None).transcribe(str(wav)).exit_layer == 2
    (checkpoint / "exit_policy.json").write_text(json.dumps(_policy(checkpoint, [1, 2, 3, 4])))
    out = tmp_path / "out"
    export_checkpoint(checkpoint, out, check=False)
    stored = json.loads((out / "policy.json").read_text())
    assert stored["weights_fingerprint"] == read_manifest(out)["weights_fingerprint"]
    assert lite.LiteTranscriber(out).transcribe(str(wav)).exit_layer == 2
    assert Transcriber.from_export(out, max_seconds=None).transcribe(str(wav)).exit_layer == 2


@pytest.mark.parametrize(("of", "message"), [("c", "exit layers [2, 4]"), ("b", "other weights")])
def test_an_exports_policy_of_another_model_is_refused_by_both_runtimes(
    checkpoints, exports, wav, tmp_path, capsys, of, message
) -> None:
    folder = _copy(exports["a"], tmp_path)
    layers = _exit_layers(of)
    (folder / "policy.json").write_text(json.dumps(_policy(checkpoints[of], layers)))
    _edit_json(folder / "export.json", lambda m: m.update(policy="policy.json"))
    with pytest.raises(lite.LiteError, match=re.escape(message)):
        lite.LiteTranscriber(folder)
    with pytest.raises(UserError, match=re.escape(message)):
        Transcriber.from_export(folder)
    assert lite.main([str(folder), str(wav)]) == 2
    assert message in _one_line(capsys, "python -m wav2vec2_ee.lite: error: ")
    assert cli.main(["transcribe", str(folder), str(wav), "--backend", "onnxruntime"]) == 2
    assert message in _one_line(capsys, "wav2vec2-ee transcribe: error: ")
    # a named policy does not read it
    assert lite.main([str(folder), str(wav), "--policy", "fixed", "--layer", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_layer"] == 3


def test_export_model_without_a_checkpoint_records_no_fingerprint(tmp_path) -> None:
    export_model(_model(0), tmp_path / "out", check=False)
    assert read_manifest(tmp_path / "out")["weights_fingerprint"] is None
