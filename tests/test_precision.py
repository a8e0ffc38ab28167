"""Training precision on a CPU: ``--bf16 true`` without a GPU, and ``--auto-bf16``'s measured decision."""

from __future__ import annotations

import json

import pytest
import torch

from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.training import precision
from wav2vec2_ee.training.cli import parse_args

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech, write_model_json

pytestmark = pytest.mark.usefixtures("one_thread")

needs_cpu_only = pytest.mark.skipif(not precision.cpu_only_machine(), reason="a machine with an accelerator")


def _train_args(tmp_path, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    return ["--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(tmp_path / "out"), "--per-device-train-batch-size", "2", "--max-steps", "2",
            "--report-to", "none", "--disable-tqdm", "true", "--overwrite-output-dir", *extra]  # fmt: skip


@needs_cpu_only
def test_bf16_true_on_a_machine_without_gpu_means_bfloat16_on_the_cpu(tmp_path):
    *_, training_args = parse_args(_train_args(tmp_path, "--bf16", "true"))
    assert training_args.use_cpu and training_args.bf16 and training_args.mixed_precision == "bf16"
    *_, plain = parse_args(_train_args(tmp_path))
    assert not plain.bf16 and plain.mixed_precision == "no"


@needs_cpu_only
def test_a_bf16_run_trains_its_matrix_products_in_bfloat16(tmp_path, monkeypatch):
    """The linear layers see bfloat16 inputs under --bf16 true (accelerate's autocast on the CPU), float32
    without; the saved weights stay float32 and the losses are finite."""
    from wav2vec2_ee.training.run import run_training

    seen: list[torch.dtype] = []
    linear = torch.nn.functional.linear

    def spy(input, weight, bias=None):
        out = linear(input, weight, bias)
        if torch.is_grad_enabled():
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    trainer = run_training(*parse_args(_train_args(tmp_path, "--bf16", "true", "--logging-steps", "1")))
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    seen.clear()
    run_training(*parse_args(_train_args(tmp_path)))
    assert seen and set(seen) == {torch.float32}


def test_the_measurement_leaves_weights_gradients_mode_and_random_state_as_they_were():
    model = Wav2Vec2EEForCTC(tiny_config(hidden_dropout=0.1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(model.parameters())
    marker = torch.ones_like(first)
    first.grad = marker
    state = torch.get_rng_state()
    expected = torch.rand(3)
    torch.set_rng_state(state)
    f32, bf16 = precision.measure_step_seconds(model, batch_size=2, samples=3200, rounds=1)
    assert f32 > 0 and bf16 > 0
    assert torch.equal(torch.rand(3), expected)
    assert not model.training and next(model.parameters()).grad is marker
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("native", "timings", "chosen"),
    [(False, None, False), (True, (1.0, 0.5), True), (True, (1.0, 0.95), False), (True, (0.5, 1.0), False)],
)
def test_bf16_is_chosen_only_on_native_bf16_and_when_measured_faster(monkeypatch, native, timings, chosen):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)

    def measure(*args, **kwargs):
        if timings is None:
            raise AssertionError("measured on a CPU without native bfloat16")
        return timings

    monkeypatch.setattr(precision, "measure_step_seconds", measure)
    choice = precision.choose_cpu_bf16(torch.nn.Linear(1, 1), 2, 100)
    assert choice.bf16 is chosen
    if timings is None:
        assert "no native bfloat16" in choice.reason and choice.speedup is None
    else:
        assert choice.speedup == pytest.approx(timings[0] / timings[1])


def test_auto_bf16_decides_before_the_trainer_and_records_it(tmp_path, monkeypatch):
    from wav2vec2_ee.training import run as run_module

    decided = precision.PrecisionChoice(True, 0.4, 0.2, "bfloat16 faster: 0.200 s vs 0.400 s")
    calls = []

    def choose(model, batch_size, samples):
        calls.append((batch_size, samples))
        return decided

    monkeypatch.setattr(run_module, "choose_cpu_bf16", choose)
    args = _train_args(tmp_path, "--auto-bf16", "true", "--pad-to-multiple-of", "1600")
    trainer = run_module.run_training(*parse_args(args))
    assert calls == [(2, 9600)]  # the median length (0.5-0.65 s) rounded up to the padding multiple
    assert trainer.accelerator.mixed_precision == "bf16"
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["precision"]["bf16"] is True
    assert summary["precision"]["auto_bf16"]["float32_seconds"] == 0.4
    calls.clear()
    trainer = run_module.run_training(
        *parse_args(_train_args(tmp_path, "--auto-bf16", "true", "--bf16", "true"))
    )
    assert calls == []  # --bf16 given: nothing to decide
