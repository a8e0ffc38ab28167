"""Reliability in training: a non-finite loss never moves the weights, and bad arguments get one line.

The non-finite cases are injected into real (tiny) training runs: a NaN loss from the objective, and NaN
audio in a batch (NaN activations, hence NaN gradients). "Skipped" means the weights and the optimizer
state after that step equal those before it (AdamW with weight decay would otherwise still move them).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import TrainerCallback

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.data import DataCollatorCTCWithPadding
from wav2vec2_ee.training.cli import parse_args

from helpers_audio import good_items, write_librispeech, write_model_json

BAD_STEP = 3  # the (1-based) batch that goes bad


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_librispeech(root, "train", good_items(12, seconds=0.6))
    return root


@pytest.fixture(scope="module")
def model_json(tmp_path_factory):
    return write_model_json(tmp_path_factory.mktemp("cfg") / "tiny.json")


def _nan_loss_at(n: int):
    """Patch ``build_objective`` so that the n-th training loss is NaN (still attached to the graph)."""

    def patch(monkeypatch, run):
        real = run.build_objective

        def build(*args, **kwargs):
            objective = real(*args, **kwargs)

            class NaNObjective:
                calls = 0

                def __getattr__(self, name):
                    return getattr(objective, name)

                def __call__(self, *a, **k):
                    out = objective(*a, **k)
                    NaNObjective.calls += 1
                    if NaNObjective.calls == n:
                        out.loss = out.loss * float("nan")
                    return out

            return NaNObjective()

        monkeypatch.setattr(run, "build_objective", build)

    return patch


def _nan_audio_at(n: int):
    """Patch the collator so that the n-th batch has NaN samples: NaN activations and gradients."""

    def patch(monkeypatch, run):
        class NaNCollator(DataCollatorCTCWithPadding):
            calls = 0

            def __call__(self, features):
                batch = super().__call__(features)
                NaNCollator.calls += 1
                if NaNCollator.calls == n:
                    batch["input_values"][0, :400] = float("nan")
                return batch

        monkeypatch.setattr(run, "DataCollatorCTCWithPadding", NaNCollator)

    return patch


def _train_with_snapshots(corpus, model_json, out, monkeypatch, inject, *extra):
    """Run 4 steps; return the trainer and (weights, optimizer state) after every step."""
    import wav2vec2_ee.training.run as run

    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            snapshots.append((weights, copy.deepcopy(optimizer.state_dict()["state"])))

    class Trainer(run.EarlyExitTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Snapshot())

    monkeypatch.setattr(run, "EarlyExitTrainer", Trainer)
    inject(monkeypatch, run)
    args = parse_args(
        ["--model", str(model_json), "--data", str(corpus), "--train-splits", "train", "--output-dir", str(out),
         "--max-steps", "4", "--per-device-train-batch-size", "4", "--learning-rate", "1e-3",
         "--weight-decay", "0.1", "--warmup-steps", "0", "--save-strategy", "no", "--report-to", "none",
         "--logging-steps", "1", "--no-freeze-feature-encoder", "--disable-tqdm", "true", "--seed", "0", *extra]
    )  # fmt: skip
    return run.run_training(*args), snapshots


def _same(a: dict, b: dict) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize(
    "inject", [_nan_loss_at(BAD_STEP), _nan_audio_at(BAD_STEP)], ids=["nan_loss", "nan_audio"]
)
def test_a_non_finite_batch_leaves_weights_and_optimizer_unchanged(
    corpus, model_json, tmp_path, monkeypatch, inject
):
    trainer, snaps = _train_with_snapshots(corpus, model_json, tmp_path / "run", monkeypatch, inject)
    assert len(snaps) == 4
    before, after = snaps[BAD_STEP - 2], snaps[BAD_STEP - 1]
    assert _same(before[0], after[0]), "the bad batch changed the weights"
    assert _same(before[1], after[1]), "the bad batch changed the optimizer state (momentum, step count)"
    for i in range(1, 4):  # every other step does move the weights
        if i != BAD_STEP - 1:
            assert not _same(snaps[i - 1][0], snaps[i][0])
    assert all(torch.isfinite(v).all() for v in snaps[-1][0].values())
    assert trainer.skipped_nonfinite_batches == 1 and trainer.skipped_updates == 1
    # counted, logged, and left out of the logged running loss
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(x)) for x in losses)
    assert trainer.state.log_history[BAD_STEP - 1]["skipped_nonfinite_batches"] == 1
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["skipped_nonfinite_batches"] == 1 and summary["skipped_updates"] == 1


def test_with_gradient_accumulation_only_the_bad_micro_batch_is_dropped(
    corpus, model_json, tmp_path, monkeypatch
):
    # micro-batch 3 is the first half of step 2: step 2 is still taken from the other half
    trainer, snaps = _train_with_snapshots(
        corpus, model_json, tmp_path / "ga", monkeypatch, _nan_loss_at(3), "--gradient-accumulation-steps", "2",
        "--per-device-train-batch-size", "2", "--max-steps", "2",
    )  # fmt: skip
    assert trainer.skipped_nonfinite_batches == 1 and trainer.skipped_updates == 0
    assert not _same(snaps[0][0], snaps[1][0])


@pytest.mark.parametrize("clipped", [False, True], ids=["unclipped", "clipped"])
def test_under_an_fp16_grad_scaler_zero_steps_are_skipped_and_overflow_is_the_scalers(clipped):
    """The guard under accelerate's fp16 GradScaler (on CPU here): an all-zero gradient is skipped and
    counted without upsetting the scaler, whether or not clipping has unscaled the gradients already;
    a non-finite one is left to the scaler, which skips the step and lowers its scale itself."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers import TrainerControl, TrainerState

    from wav2vec2_ee.training.callbacks import SkipBadUpdates
    from wav2vec2_ee.training.skips import SkipCounts

    Accelerator()  # the state accelerate's optimizer wrapper reads (as the Trainer creates it)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
    counts = SkipCounts()
    guard = SkipBadUpdates(counts)

    def step(loss_factor: float) -> None:
        loss = model(torch.randn(3, 4)).sum() * loss_factor
        scaler.scale(loss).backward()
        if clipped:  # what the Trainer's gradient clipping does first
            scaler.unscale_(inner)
        guard.on_pre_optimizer_step(None, TrainerState(), TrainerControl(), optimizer=optimizer)
        optimizer.step()
        optimizer.zero_grad()

    def snapshot():
        return copy.deepcopy(model.state_dict()), copy.deepcopy(inner.state_dict()["state"])

    step(1.0)
    before = snapshot()
    step(0.0)  # every batch of the step skipped: a zero gradient
    assert counts.skipped_updates == 1
    assert _same(before[0], snapshot()[0]) and _same(before[1], snapshot()[1])
    scale = scaler.get_scale()
    step(float("nan"))
    assert counts.skipped_updates == 1 and scaler.get_scale() < scale
    assert _same(before[0], snapshot()[0]) and _same(before[1], snapshot()[1])
    step(1.0)
    assert not _same(before[0], snapshot()[0])


# ---- bad arguments: one line naming the argument (and the accepted values) ------------------------
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--objective", "foo"], ["--objective", "invalid choice: 'foo'", "ee", "kd", "dkd", "confidence"]),
        (["--objective", "dkd", "--ee-alpha", "0.5"], ["ee_alpha", "one weight per exit", "2 exits"]),
        (["--objective", "kd", "--ee-alpha", "1.5"], ["ee_alpha", "[0, 1]", "1.5"]),
        (["--objective", "dkd", "--ee-alpha", "0.5", "-0.1"], ["ee_alpha", "[0, 1]", "-0.1"]),
        (["--exit-layers", "2", "9"], ["exit_layers", "[1, 4]", "9"]),
        (["--num-exits", "3"], ["num_exits", "[1, 2]"]),
        (["--data", "/no/such/folder"], ["--data", "/no/such/folder", "no such folder"]),
        (["--max-steps", "ten"], ["--max-steps", "invalid int value"]),
        (["--no-such-flag", "1"], ["--no-such-flag"]),
        # issue 29 row 13: a run that would train no step (the Trainer trained one, or none, and saved it)
        (["--max-steps", "0"], ["--max-steps 0", "no step to train"]),
        (
            ["--max-steps", "-5", "--num-train-epochs", "0"],
            ["--max-steps -5", "--num-train-epochs 0", "no step"],
        ),
        (["--num-train-epochs", "0"], ["--max-steps -1", "--num-train-epochs 0", "no step to train"]),
        (["--num-train-epochs", "-2"], ["--max-steps -1", "--num-train-epochs -2", "no step to train"]),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) and v[0].startswith("-") else None,
)
def test_bad_arguments_give_one_line_naming_them(model_json, tmp_path, capsys, extra, expected):
    argv = ["train", "--model", str(model_json), "--data", str(tmp_path), "--output-dir", str(tmp_path / "o"),
            "--report-to", "none", "--disable-tqdm", "true", *extra]  # fmt: skip
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("wav2vec2-ee train: error: ")
    for word in expected:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_the_step_counts_of_transformers_stay_accepted():
    """--max-steps -1 (the default: train --num-train-epochs) with epochs above 0, and a positive
    --max-steps whatever the epochs (it wins), are runs with steps."""
    from wav2vec2_ee.training.run import check_training_length

    for max_steps, epochs in ((-1, 3.0), (-1, 0.5), (5, 0.0), (1, 3)):
        check_training_length(max_steps, epochs)
    with pytest.raises(ValueError, match="--num-train-epochs inf"):
        check_training_length(-1, float("inf"))
