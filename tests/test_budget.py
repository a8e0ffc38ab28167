"""--time-budget: fewer steps when the pace would overrun, the learning-rate schedule compressed to them."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.optimization import get_scheduler

from wav2vec2_ee.training.budget import CompressedLambdaLR, TimeBudget
from wav2vec2_ee.training.cli import parse_args

from helpers_audio import TINY_MODEL

MAX_STEPS, WARMUP, PEAK = 200, 20, 1e-3


def _hf_scheduler():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = get_scheduler(
        "cosine_with_min_lr",
        optimizer,
        num_warmup_steps=WARMUP,
        num_training_steps=MAX_STEPS,
        scheduler_specific_kwargs={"min_lr_rate": 0.1},
    )
    return optimizer, scheduler


def _lrs(scheduler, steps: int) -> list[float]:
    """The learning rate each of ``steps`` optimizer steps uses (as the Trainer steps the scheduler)."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_without_a_replan_the_schedule_is_the_configured_one():
    _, reference = _hf_scheduler()
    _, base = _hf_scheduler()
    compressed = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    assert _lrs(compressed, MAX_STEPS) == pytest.approx(_lrs(reference, MAX_STEPS), rel=1e-12)


def test_a_replan_plays_the_rest_of_the_schedule_in_the_remaining_steps():
    _, reference = _hf_scheduler()
    full = _lrs(reference, MAX_STEPS + 1)  # full[s]: the configured factor at step s, full[200] = floor
    _, base = _hf_scheduler()
    scheduler = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    before = _lrs(scheduler, 50)
    assert before == pytest.approx(full[:50])
    assert scheduler.replan(50, 120)
    assert not scheduler.replan(50, 120) and not scheduler.replan(40, 100)  # same plan / the past
    after = _lrs(scheduler, 70)  # steps 50 .. 119
    assert after[0] == pytest.approx(full[50])  # continuous where the plan changed
    assert all(a >= b for a, b in zip(after, after[1:]))  # still decaying
    # step s plays position 50 + (s - 50) * 150 / 70 of the configured schedule
    s = 85
    position = 50 + (s - 50) * 150 / 70
    expected = full[math.floor(position)] + (position % 1) * (
        full[math.ceil(position)] - full[math.floor(position)]
    )
    assert after[s - 50] == pytest.approx(expected)
    assert scheduler.get_last_lr()[0] == pytest.approx(full[MAX_STEPS])  # at step 120: the schedule's end


def test_a_plan_can_grow_back_and_stays_continuous():
    _, base = _hf_scheduler()
    scheduler = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    _lrs(scheduler, 30)
    scheduler.replan(30, 60)
    lrs = _lrs(scheduler, 10)  # steps 30 .. 39
    at_40 = scheduler.get_last_lr()[0]
    assert scheduler.replan(40, 10_000)  # clamped to max_steps
    assert scheduler.total == MAX_STEPS
    assert scheduler.get_last_lr()[0] == pytest.approx(at_40) and lrs[-1] >= at_40
    rest = _lrs(scheduler, MAX_STEPS - 40 + 1)
    _, reference = _hf_scheduler()
    assert rest[-1] == pytest.approx(_lrs(reference, MAX_STEPS + 1)[-1])  # ends at the floor


def test_the_plan_survives_a_checkpoint_loaded_with_weights_only():
    _, base = _hf_scheduler()
    scheduler = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    _lrs(scheduler, 40)
    scheduler.replan(40, 90)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what the Trainer does on resume
    _, fresh_base = _hf_scheduler()
    resumed = CompressedLambdaLR.from_scheduler(fresh_base, MAX_STEPS)
    resumed.load_state_dict(state)
    assert (resumed.start, resumed.total) == (40, 90)
    assert _lrs(resumed, 20) == pytest.approx(_lrs(scheduler, 20))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_fits_the_steps_to_the_recent_pace():
    _, base = _hf_scheduler()
    scheduler = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    clock = FakeClock()
    budget = TimeBudget(50.0, check_from=10, every=5, window=10, clock=clock)
    args, state, control = TrainingArguments(output_dir="unused"), TrainerState(), TrainerControl()
    state.max_steps = MAX_STEPS
    budget.on_train_begin(args, state, control)
    steps, plans = 0, []
    while not control.should_training_stop:
        _lrs(scheduler, 1)
        clock.now += 1.0 if steps < 20 else 0.2  # slow first steps (audio not cached yet), then faster
        state.global_step += 1
        steps += 1
        budget.on_step_end(args, state, control, lr_scheduler=scheduler)
        plans.append(scheduler.total)
        assert steps <= MAX_STEPS
    assert plans[10] == 10 + 40  # at step 10: 40 s left at 1 s/step
    assert max(plans[20:]) > plans[10]  # grew back once the pace improved
    # 20 s for the first 20 steps, then 0.2 s each: the 50 s afford 20 + 150 steps
    assert steps == scheduler.total and 168 <= steps <= 170 and 49.0 <= clock.now <= 50.0
    _, reference = _hf_scheduler()
    assert scheduler.get_last_lr()[0] == pytest.approx(_lrs(reference, MAX_STEPS + 1)[-1])  # the floor

    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0)
    with pytest.raises(ValueError, match="LambdaLR"):
        CompressedLambdaLR.from_scheduler(torch.optim.lr_scheduler.StepLR(scheduler.optimizer, 10), MAX_STEPS)


def test_every_process_follows_process_zeros_plan(monkeypatch):
    """A process whose own pace affords more steps still plans what process 0 broadcast."""
    import torch.distributed as dist

    broadcast = []

    def from_process_zero(box, src):
        broadcast.append((list(box), src))
        box[0] = 30  # what process 0 planned

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast_object_list", from_process_zero)
    _, base = _hf_scheduler()
    scheduler = CompressedLambdaLR.from_scheduler(base, MAX_STEPS)
    clock = FakeClock()
    budget = TimeBudget(1000.0, check_from=10, every=10, clock=clock)  # alone: no cut at all
    args, state, control = TrainingArguments(output_dir="unused"), TrainerState(), TrainerControl()
    state.max_steps = MAX_STEPS
    budget.on_train_begin(args, state, control)
    for _ in range(10):
        _lrs(scheduler, 1)
        clock.now += 0.1
        state.global_step += 1
        budget.on_step_end(args, state, control, lr_scheduler=scheduler)
    assert broadcast == [([10 + int(999.0 / 0.1)], 0)] and scheduler.total == 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from wav2vec2_ee.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, num_train=8, num_dev=2, num_test=2, workers=1, progress=False)
    return out


def test_training_with_a_budget_stops_early_at_the_end_of_its_schedule(corpus, tmp_path):
    from wav2vec2_ee.training.run import run_training

    model_json = tmp_path / "tiny.json"
    model_json.write_text(json.dumps(TINY_MODEL))
    args = parse_args(
        ["--model", str(model_json), "--data", str(corpus), "--train-splits", "train", "--output-dir",
         str(tmp_path / "run"), "--per-device-train-batch-size", "4", "--report-to", "none",
         "--logging-steps", "10", "--seed", "0", "--disable-tqdm", "true", "--max-steps", "2000",
         "--learning-rate", "1e-3", "--warmup-steps", "5", "--lr-scheduler-type", "linear",
         "--time-budget", "0.5"]
    )  # fmt: skip
    trainer = run_training(*args)
    steps = trainer.state.global_step
    assert 50 <= steps < 2000  # the first re-plan comes after 50 steps
    assert trainer.lr_scheduler.total == steps
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)  # linear: decayed to 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
