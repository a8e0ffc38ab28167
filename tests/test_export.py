"""`wav2vec2-ee export`: ONNX segments equal the PyTorch model on padded batches (tiny random models)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from wav2vec2_ee import cli
from wav2vec2_ee.export import load_segments, read_manifest, run_onnx_exits
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.export.segments import build_segments, check_plain_model
from wav2vec2_ee.loading import load_model, save_checkpoint_files
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.vocab import build_processor

from conftest import tiny_config

ATOL = 1e-4
#: the two CNN / LayerNorm layouts: wav2vec2-base (group norm, post-LN) and large-lv60 (layer norm, pre-LN)
LAYOUTS = {
    "group-postln": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    "layer-preln": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}


def _model(**overrides) -> Wav2Vec2EEForCTC:
    torch.manual_seed(0)
    model = Wav2Vec2EEForCTC(tiny_config(**overrides)).eval()
    with torch.no_grad():  # a random post-init leaves some parameters at 0 / 1: make every one matter
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module", params=list(LAYOUTS))
def exported(request, tmp_path_factory):
    model = _model(**LAYOUTS[request.param])
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    summary = export_model(model, folder, int8=True)
    return model, folder, summary


def _batch(
    lengths: list[int], samples: int | None = None, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: row ``b`` has ``lengths[b]`` real samples, zeros after."""
    samples = samples or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(len(lengths), samples, generator=generator)
    mask = (torch.arange(samples)[None] < torch.tensor(lengths)[:, None]).long()
    return values * mask, mask


def _reference(model, values, mask, exits=None):
    with torch.no_grad():
        return [step.logits.numpy() for step in model.iter_exits(values, mask, exits)]


def _assert_valid_close(got: np.ndarray, want: np.ndarray, lengths, atol=ATOL) -> None:
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(got[row, :length], want[row, :length], atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------
# the segments, in PyTorch and in ONNX
def test_torch_segments_equal_iter_exits() -> None:
    for overrides in LAYOUTS.values():
        model = _model(**overrides)
        values, mask = _batch([4000, 2500, 1200])
        lengths = model.output_lengths(mask, values).tolist()
        input_stage, blocks, heads = build_segments(model)
        reference = _reference(model, values, mask)
        with torch.no_grad():
            hidden, frame_mask = input_stage(values, mask)
            assert frame_mask.sum(-1).tolist() == lengths
            for k, (block, head) in enumerate(zip(blocks, heads, strict=True)):
                hidden = block(hidden, frame_mask)
                _assert_valid_close(head(hidden).numpy(), reference[k], lengths, atol=1e-6)


def test_every_segment_equals_pytorch_on_a_padded_batch(exported) -> None:
    """Each ONNX file on its own, fed the PyTorch segment's input: input stage, every block, every head."""
    model, folder, _ = exported
    manifest = read_manifest(folder)
    values, mask = _batch([6000, 3100, 900])  # another batch size and length than the traced one
    lengths = model.output_lengths(mask, values).tolist()
    input_stage, blocks, heads = build_segments(model)

    session = ort.InferenceSession(str(folder / manifest["input_stage"]["file"]))
    hidden_onnx, frame_mask_onnx = session.run(
        None, {"input_values": values.numpy(), "attention_mask": mask.numpy()}
    )
    with torch.no_grad():
        hidden, frame_mask = input_stage(values, mask)
        state = model.embed(values, mask)
    assert frame_mask_onnx.sum(-1).tolist() == lengths
    _assert_valid_close(hidden_onnx, hidden.numpy(), lengths)
    _assert_valid_close(hidden_onnx, state.hidden_states.numpy(), lengths)

    for k, block in enumerate(blocks):
        entry = manifest["blocks"][k]
        session = ort.InferenceSession(str(folder / entry["file"]))
        (out,) = session.run(None, {"hidden_states": hidden.numpy(), "frame_mask": frame_mask.numpy()})
        with torch.no_grad():
            hidden = block(hidden, frame_mask)
            for _ in range(block.start, block.stop):
                state = model.run_layer(state)
        _assert_valid_close(out, hidden.numpy(), lengths)
        _assert_valid_close(out, state.hidden_states.numpy(), lengths)
        session = ort.InferenceSession(str(folder / manifest["heads"][k]["file"]))
        (logits,) = session.run(None, {"hidden_states": hidden.numpy()})
        with torch.no_grad():
            want = model.exit_logits_at(k, state.hidden_states).numpy()
        _assert_valid_close(logits, want, lengths)


@pytest.mark.parametrize(
    "shape", [([6000, 3100, 900], None), ([2000], None), ([5000, 5000], 5000), ([700, 9000], None)]
)
def test_chained_exits_equal_iter_exits(exported, shape) -> None:
    """Every exit of the ONNX chain equals ``iter_exits`` on the valid frames, for batch sizes and lengths
    other than the traced ones (dynamic axes), padded or not."""
    model, folder, _ = exported
    values, mask = _batch(*shape)
    lengths = model.output_lengths(mask, values).tolist()
    reference = _reference(model, values, mask)
    steps = list(run_onnx_exits(load_segments(folder, "float"), values.numpy(), mask.numpy()))
    assert [s.exit_index for s in steps] == list(range(model.config.num_exits))
    assert [s.layer for s in steps] == list(model.config.exit_layers)
    for step in steps:
        assert step.output_lengths.tolist() == lengths
        assert step.rows.tolist() == list(range(len(lengths)))
        _assert_valid_close(step.logits, reference[step.exit_index], lengths)


def test_a_padded_row_equals_the_row_alone(exported) -> None:
    _, folder, _ = exported
    segments = load_segments(folder, "float")
    values, mask = _batch([5200, 2300, 4100])
    batched = list(run_onnx_exits(segments, values.numpy(), mask.numpy()))
    for row in range(3):
        length = int(mask[row].sum())
        alone = list(run_onnx_exits(segments, values[row : row + 1, :length].numpy()))
        frames = int(alone[0].output_lengths[0])
        assert frames == int(batched[0].output_lengths[row])
        for a, b in zip(alone, batched, strict=True):
            np.testing.assert_allclose(b.logits[row, :frames], a.logits[0], atol=ATOL, rtol=0)


def test_retain_drops_rows_and_trims_padding(exported) -> None:
    """Dropping rows between blocks gives what ``iter_exits`` gives with the same ``retain``."""
    model, folder, _ = exported
    values, mask = _batch([3000, 8000, 2000, 4500])
    keep_after = {0: np.array([True, False, True, True]), 1: np.array([0, 2])}  # indices into the step's rows

    got = []
    for step in run_onnx_exits(load_segments(folder, "float"), values.numpy(), mask.numpy()):
        got.append(step)
        if step.exit_index in keep_after:
            step.retain(keep_after[step.exit_index])
    want = []
    with torch.no_grad():
        for step in model.iter_exits(values, mask):
            want.append((step.rows.tolist(), step.output_lengths.tolist(), step.logits.numpy()))
            if step.exit_index in keep_after:
                step.retain(torch.as_tensor(keep_after[step.exit_index]))
    assert len(got) == len(want) == model.config.num_exits
    for step, (rows, lengths, logits) in zip(got, want, strict=True):
        assert step.rows.tolist() == rows
        assert step.output_lengths.tolist() == lengths
        assert step.logits.shape[1] == max(lengths)  # the padding no remaining row needs is gone
        _assert_valid_close(step.logits, logits, lengths)
    assert got[-1].rows.tolist() == [0, 3]


def test_exits_subset_and_dropping_every_row(exported) -> None:
    model, folder, _ = exported
    segments = load_segments(folder, "float")
    values, mask = _batch([3000, 1500])
    steps = list(run_onnx_exits(segments, values.numpy(), mask.numpy(), exits=[1]))
    assert [s.exit_index for s in steps] == [1]
    _assert_valid_close(steps[0].logits, _reference(model, values, mask, [1])[0], steps[0].output_lengths)
    seen = []
    for step in run_onnx_exits(segments, values.numpy(), mask.numpy()):
        seen.append(step.exit_index)
        step.retain(np.zeros(2, dtype=bool))
    assert seen == [0]
    with pytest.raises(ValueError, match="exit indices"):
        next(run_onnx_exits(segments, values.numpy(), mask.numpy(), exits=[9]))


def test_session_threads_and_spinning(exported) -> None:
    """Idle intra-op threads do not spin-wait between the engine's calls unless asked; threads as asked;
    the answers do not depend on either."""
    model, folder, _ = exported
    values, mask = _batch([3000, 1500])
    default = load_segments(folder, "float")
    spinning = load_segments(folder, "float", num_threads=2, spinning=True)
    for segments, spin, threads in ((default, "0", 0), (spinning, "1", 2)):
        for session in (segments.input_stage, *segments.blocks, *segments.heads):
            options = session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == spin
            assert options.intra_op_num_threads == threads
    a = [s.logits for s in run_onnx_exits(default, values.numpy(), mask.numpy())]
    b = [s.logits for s in run_onnx_exits(spinning, values.numpy(), mask.numpy())]
    assert all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------------
# int8
def test_int8_runs_and_stays_close(exported) -> None:
    model, folder, summary = exported
    assert summary.int8_bytes is not None
    values, mask = _batch([6000, 2500])
    lengths = model.output_lengths(mask, values).tolist()
    reference = _reference(model, values, mask)
    segments = load_segments(folder)  # int8 where the folder has it
    assert segments.precision == "int8"
    for step in run_onnx_exits(segments, values.numpy(), mask.numpy()):
        want = reference[step.exit_index]
        scale = max(float(np.abs(want).max()), 1.0)
        _assert_valid_close(step.logits, want, lengths, atol=0.1 * scale)


def test_int8_files_are_smaller(tmp_path) -> None:
    """On a model whose weights outweigh the graph (hidden 128), the int8 blocks and heads are ~1/3."""
    model = _model(hidden_size=128, intermediate_size=512, num_hidden_layers=2, exit_layers=[1, 2])
    summary = export_model(model, tmp_path, int8=True)
    assert summary.int8_bytes < 0.5 * summary.float_bytes
    assert summary.max_abs_diff["float"] < ATOL
    manifest = read_manifest(tmp_path)
    assert manifest["bytes"] == {"float": summary.float_bytes, "int8": summary.int8_bytes}


# --------------------------------------------------------------------------------------------------
# the folder
def test_the_folder_is_self_contained(exported) -> None:
    model, folder, summary = exported
    manifest = read_manifest(folder)
    assert manifest["exit_layers"] == list(model.config.exit_layers)
    assert manifest["check_max_abs_diff"]["float"] < ATOL
    for entry in [manifest["input_stage"], *manifest["blocks"], *manifest["heads"]]:
        assert (folder / entry["file"]).is_file()
    assert [b["layers"] for b in manifest["blocks"]] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert set(summary.files) <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["exit_layers"] == list(model.config.exit_layers)
    assert (folder / "vocab.json").is_file()
    processor = build_processor(folder)
    assert processor.feature_extractor.sampling_rate == 16_000
    assert processor.tokenizer.convert_ids_to_tokens(0) == "<pad>"
    assert manifest["policy"] is None and load_segments(folder, "float").policy() is None


def test_refuses_an_accelerated_model() -> None:
    model = _model()
    model.wav2vec2.feature_extractor.forward_per_utterance = lambda *a: None
    with pytest.raises(ValueError, match="plain model"):
        check_plain_model(model)


def test_runtime_does_not_import_torch() -> None:
    code = "import sys, wav2vec2_ee.export as e; e.load_segments; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# the command
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint_files(_model(**LAYOUTS["group-postln"]), build_processor(None), folder)
    return folder


def test_export_command(checkpoint, tmp_path, capsys) -> None:
    calibration = tmp_path / "calibration_entropy.json"
    calibration.write_text(
        json.dumps({"policy": "entropy", "parameter": "threshold", "value": 0.4, "max_layer": 3})
    )
    out = tmp_path / "out"
    assert (
        cli.main(
            ["export", str(checkpoint), str(out), "--int8", "--opset", "17", "--policy", str(calibration)]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "block_0.int8.onnx" in captured.out and "of float" in captured.out
    assert "wav2vec2-ee export: wrote head_3.onnx" in captured.err
    manifest = read_manifest(out)
    assert manifest["opset"] == 17 and manifest["policy"] == "policy.json"
    policy = load_segments(out).policy()
    assert policy["policy"] == "entropy" and policy["value"] == 0.4 and policy["max_layer"] == 3

    model = load_model(checkpoint)
    values, mask = _batch([3000, 1700])
    lengths = model.output_lengths(mask, values).tolist()
    reference = _reference(model, values, mask)
    for step in run_onnx_exits(load_segments(out, "float"), values.numpy(), mask.numpy()):
        _assert_valid_close(step.logits, reference[step.exit_index], lengths)

    capsys.readouterr()
    out2 = tmp_path / "out2"
    assert (
        cli.main(["export", str(checkpoint), "--output-dir", str(out2), "--no-progress", "--no-check"]) == 0
    )
    assert capsys.readouterr().err == ""
    assert "int8_file" not in read_manifest(out2)["blocks"][0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy-file", "{missing}"], "No such file"),  # --policy until issue 30 (deprecated)
        (["--policy-file", "{bad}"], "not a calibrated policy"),
        (["--opset", "11"], "--opset must be >= 14"),
        (["--output-dir", "{other}"], "two output folders"),
    ],
)
def test_export_command_errors_are_one_line(checkpoint, tmp_path, capsys, extra, message) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    names = {"missing": tmp_path / "missing.json", "bad": tmp_path / "bad.json", "other": tmp_path / "other"}
    extra = [arg.format(**names) for arg in extra]
    assert cli.main(["export", str(checkpoint), str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wav2vec2-ee export: error:") and message in err[0], err
