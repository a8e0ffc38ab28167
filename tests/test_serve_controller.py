"""The server's load-adaptive operating point, its accuracy check and its batching queue as pure objects:
a fake clock, a fake engine, no model, no HTTP."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from wav2vec2_ee.serving.controller import AccuracyMonitor, ControllerSettings, LoadController, ServePoint
from wav2vec2_ee.serving.scheduler import BatchSettings, Job, Overloaded, RequestOptions, Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def frontier(n: int = 4) -> list[ServePoint]:
    """n points from full depth (12 layers) down, each a little less accurate and cheaper."""
    return [
        ServePoint(f"entropy={0.1 * i:g}", "entropy", 0.1 * i, None, 0.10 + 0.002 * i, 12 - 2.5 * i, 0.01 * i)
        for i in range(n)
    ]


def controller(clock: Clock, **settings) -> LoadController:
    defaults = dict(objective=1.0, step_down_at=0.25, step_up_at=0.08, down_dwell=0.5, up_dwell=2.0)
    return LoadController(frontier(), ControllerSettings(**{**defaults, **settings}), clock, full_depth=12)


def test_light_load_serves_the_most_accurate_point():
    clock = Clock()
    c = controller(clock)
    for _ in range(20):
        c.observe(0.01, clock.advance(0.1))
    assert c.index == 0 and c.point.label == "entropy=0"


def test_the_point_steps_down_as_the_queue_delay_grows_and_back_up_as_it_drains():
    clock = Clock()
    c = controller(clock)
    # the queue delay crosses 0.25 s: one step per 0.5 s of dwell, down to the cheapest point, never beyond
    path = []
    for _ in range(20):
        path.append(c.observe(0.6, clock.advance(0.25)))
    assert path[:6] == [1, 1, 2, 2, 3, 3] and path[-1] == 3 == c.floor
    # between the marks (0.08 s .. 0.25 s) nothing moves
    for _ in range(20):
        c.observe(0.15, clock.advance(0.25))
    assert c.index == 3
    # the queue drains: up one point per 2 s of low delay
    ups = []
    for _ in range(40):
        ups.append(c.observe(0.0, clock.advance(0.25)))
    assert ups[7] == 3 and ups[8] == 2  # 2 s after the delay fell (8 ticks of 0.25 s)
    assert ups[15] == 2 and ups[16] == 1 and ups[-1] == 0
    reasons = [s.reason for s in c.steps]
    assert len(c.steps) == 6 and "> 0.250 s" in reasons[0] and "< 0.080 s" in reasons[-1]


def test_a_short_spike_does_not_move_the_point_twice():
    clock = Clock()
    c = controller(clock)
    c.observe(2.0, clock.advance(0.1))
    c.observe(2.0, clock.advance(0.1))  # within the 0.5 s dwell: no second step
    assert c.index == 1


def test_a_fixed_server_never_moves():
    clock = Clock()
    c = controller(clock, adaptive=False)
    for _ in range(20):
        c.observe(5.0, clock.advance(1.0))
    assert c.index == 0 and c.floor == 0
    c.record_batch(1.0, 10.0)
    assert c.shed(queued_audio=1000.0, audio=5.0) is None  # refuses only when its queue is full


def test_shedding_predicts_the_latency_at_the_cheapest_allowed_point():
    clock = Clock()
    c = controller(clock)
    assert c.shed(100.0, 5.0) is None  # nothing measured yet: admit
    c.record_batch(seconds=1.0, audio_layers=100.0)  # 0.01 s per audio-second-layer
    # cheapest point: 12 - 7.5 = 4.5 layers; (10 + 5) s x 4.5 x 0.01 = 0.675 s <= 1 s objective
    assert c.shed(10.0, 5.0) is None
    # (30 + 5) x 4.5 x 0.01 = 1.575 s > 1 s: refused, retry after the drain time at the current point
    retry = c.shed(30.0, 5.0)
    assert retry == pytest.approx(max(1.0, 30.0 * 12 * 0.01))
    # time already spent waiting for the server counts: 0.675 s + 0.5 s is over the objective
    assert c.shed(10.0, 5.0, waited=0.2) is None and c.shed(10.0, 5.0, waited=0.5) is not None
    # the accuracy check forbids the cheap points: the prediction uses the floor
    c.tighten(2)
    assert c.floor == 1 and c.shed(15.0, 5.0) is not None  # 20 x 9.5 x 0.01 = 1.9 s


def test_the_latency_margin_is_the_95th_percentile_of_how_late_requests_were_answered():
    clock = Clock()
    c = controller(clock)
    c.record_batch(seconds=1.0, audio_layers=100.0)  # 0.01 s per audio-second-layer, 4.5 layers
    assert c.shed(10.0, 5.0) is None  # 0.675 s predicted, no margin yet
    for _ in range(c.MARGIN_MIN_SAMPLES - 1):
        c.record_latency(answered=0.5, predicted=0.1)
    assert c.margin == 0.0  # too few answers to say
    # 100 answers, late by 0.00, 0.01, ..., 0.99 s: the 95th percentile is 0.94 s
    for k in range(c.MARGIN_WINDOW):
        c.record_latency(answered=0.1 + (k % 100) / 100, predicted=0.1)
    assert c.margin == pytest.approx(0.94)
    assert c.shed(0.0, 1.0) is None  # 0.045 + 0.94 <= 1 s
    assert c.shed(10.0, 5.0) is not None  # 0.675 + 0.94 > 1 s: what used to be admitted is refused now
    assert c.describe()["latency_margin"] == pytest.approx(0.94)
    # a cost model that predicts late lets more in, but the margin stays within [-objective / 2, objective]
    for _ in range(c.MARGIN_WINDOW):
        c.record_latency(answered=0.0, predicted=5.0)
    assert c.margin == pytest.approx(-0.5)
    assert c.shed(25.0, 5.0) is None  # 30 x 4.5 x 0.01 = 1.35 s - 0.5 <= 1 s
    for _ in range(c.MARGIN_WINDOW):
        c.record_latency(answered=50.0, predicted=0.0)
    assert c.margin == pytest.approx(1.0)
    c.record_latency(float("nan"), 0.1)  # ignored
    assert c.margin == pytest.approx(1.0)


def test_tighten_moves_the_floor_and_the_current_point():
    clock = Clock()
    c = controller(clock)
    for _ in range(10):
        c.observe(1.0, clock.advance(1.0))
    assert c.index == 3
    assert c.tighten(3) and c.floor == 2 and c.index == 2
    assert not c.tighten(3)  # already off
    for _ in range(10):
        c.observe(1.0, clock.advance(1.0))
    assert c.index == 2  # never beyond the floor
    assert c.tighten(1) and (c.floor, c.index) == (0, 0)
    assert not c.tighten(0)  # the most accurate point stays


def test_the_accuracy_check_tightens_a_point_whose_live_cer_drifts():
    clock = Clock()
    c = controller(clock)
    for _ in range(10):
        c.observe(1.0, clock.advance(1.0))
    monitor = AccuracyMonitor(c, fraction=1.0, min_chars=100, tolerance=1.5, slack=0.01)
    # point 3's dev disagreement is 0.03: allowed 0.055
    assert monitor.allowed(3) == pytest.approx(0.055)
    for _ in range(4):  # 4 % live: fine, whatever the number of samples
        assert not monitor.add(3, errors=2, chars=50)
    assert c.floor == 3 and monitor.live_cer(3) == pytest.approx(0.04)
    assert not monitor.add(2, errors=20, chars=50)  # a bad sample, but under min_chars for point 2
    assert monitor.add(3, errors=10, chars=50)  # the window drifts to (8 + 10) / 250 = 0.072
    assert c.floor == 2 and c.index == 2
    assert monitor.tightenings[-1]["point"] == 3
    assert monitor.live_cer() is not None and 0 < monitor.live_cer() < 1


def test_sampling_draws_the_fraction():
    c = controller(Clock())
    assert not any(AccuracyMonitor(c, fraction=0.0).sample() for _ in range(100))
    monitor = AccuracyMonitor(c, fraction=0.25)
    drawn = sum(monitor.sample() for _ in range(2000))
    assert 400 < drawn < 600


# --------------------------------------------------------------------------------------------------
# the queue and the worker, with a fake engine


@dataclass
class FakeAnswer:
    text: str
    layers: int = 4


class FakeEngine:
    """Answers each piece with its length; ``gate`` holds the worker inside a batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.points: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def run(self, items, index):
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append([len(item.audio) for item in items])
        self.points.append(index)
        return [FakeAnswer(str(len(item.audio))) for item in items]


def pieces(*samples: int):
    return [(np.zeros(n, np.float32), 0.0, n / 16_000) for n in samples]


def wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def scheduler(engine: FakeEngine, **batching) -> Scheduler:
    c = LoadController(frontier(), ControllerSettings(objective=1000.0))
    return Scheduler(engine.run, c, BatchSettings(**{"max_queue_delay": 0.0, **batching}))


def test_the_audio_of_the_running_batch_counts_as_ahead_of_a_new_request():
    engine = FakeEngine()
    engine.gate.clear()
    s = scheduler(engine, batch_size=1)
    s.controller.seconds_per_audio_layer = 0.01  # cheapest point 4.5 layers: 0.045 s per audio second
    s.start()
    s.submit(Job(pieces(16_000 * 10)))  # 10 s running
    engine.entered.wait(5)
    assert s.running_audio == pytest.approx(10.0) and s.queued_audio == 0
    queued = Job(pieces(16_000 * 2))
    s.submit(queued)
    assert queued.predicted == pytest.approx((10.0 + 2.0) * 4.5 * 0.01)
    engine.gate.set()
    wait(lambda: queued.done)
    assert s.running_audio == 0
    s.stop(5)


def test_batches_form_from_the_pieces_of_every_queued_request():
    engine = FakeEngine()
    engine.gate.clear()
    s = scheduler(engine, batch_size=3)
    s.start()
    first = Job(pieces(1600))
    s.submit(first)
    engine.entered.wait(5)  # the worker holds the first batch; the rest queue behind it
    done = []
    jobs = [Job(pieces(3200, 4800), on_done=done.append), Job(pieces(6400), on_done=done.append)]
    for job in jobs:
        s.submit(job)
    assert s.depth == 3 and s.queued_audio == pytest.approx(0.9)
    engine.gate.set()
    wait(lambda: len(done) == 2)
    assert engine.batches == [[1600], [3200, 4800, 6400]]  # two requests, one batch
    assert [a.text for a in jobs[0].answers] == ["3200", "4800"] and jobs[1].answers[0].text == "6400"
    assert jobs[0].point_index == [0, 0]
    assert s.stop(5)


def test_a_full_queue_refuses_with_retry_after_and_a_long_request_alone_is_taken():
    engine = FakeEngine()
    engine.gate.clear()
    s = scheduler(engine, batch_size=1, max_queue=2)
    s.start()
    s.submit(Job(pieces(1600)))
    engine.entered.wait(5)
    s.submit(Job(pieces(1600, 1600)))
    with pytest.raises(Overloaded) as refused:
        s.submit(Job(pieces(1600)))
    assert refused.value.kind == "queue_full" and refused.value.retry_after >= 1
    assert "queue is full" in refused.value.reason
    engine.gate.set()
    wait(lambda: s.depth == 0 and not s.running_batch)
    s.submit(Job(pieces(*[1600] * 5)))  # more pieces than the queue holds, but nothing waits
    assert s.stop(5)


def test_a_cancelled_request_leaves_the_queue():
    engine = FakeEngine()
    engine.gate.clear()
    s = scheduler(engine, batch_size=8)
    s.start()
    s.submit(Job(pieces(1600)))
    engine.entered.wait(5)
    gone, kept = Job(pieces(3200, 3200)), Job(pieces(4800))
    s.submit(gone)
    s.submit(kept)
    gone.cancel()
    engine.gate.set()
    wait(lambda: kept.done)
    assert engine.batches[-1] == [4800] and not gone.done
    assert s.stop(5)


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    engine = FakeEngine()
    engine.fail = True
    s = scheduler(engine)
    s.start()
    failed = Job(pieces(1600))
    s.submit(failed)
    wait(lambda: failed.done)
    assert isinstance(failed.error, RuntimeError)
    engine.fail = False
    ok = Job(pieces(1600))
    s.submit(ok)
    wait(lambda: ok.done)
    assert ok.error is None and ok.answers[0].text == "1600"
    assert s.stop(5)


def test_stopping_answers_what_is_queued_and_refuses_new_requests():
    engine = FakeEngine()
    engine.gate.clear()
    s = scheduler(engine, batch_size=1)
    s.start()
    jobs = [Job(pieces(1600)) for _ in range(3)]
    for job in jobs:
        s.submit(job)
    engine.entered.wait(5)
    stopper = threading.Thread(target=s.stop, args=(10,))
    stopper.start()
    wait(lambda: s._stopping)
    with pytest.raises(Overloaded) as refused:
        s.submit(Job(pieces(1600)))
    assert refused.value.kind == "draining"
    engine.gate.set()
    stopper.join(10)
    assert all(job.done and job.error is None for job in jobs) and not s.alive


def test_batches_wait_for_the_queue_delay_then_run_what_came():
    engine = FakeEngine()
    s = scheduler(engine, batch_size=4, max_queue_delay=0.3)
    s.start()
    started = time.monotonic()
    a, b = Job(pieces(1600)), Job(pieces(3200))
    s.submit(a)
    s.submit(b)
    wait(lambda: a.done and b.done)
    assert engine.batches == [[1600, 3200]] and time.monotonic() - started >= 0.25
    assert s.stop(5)


def test_request_options_are_plain_values():
    options = RequestOptions(max_layer=2, threshold=0.5, trace=True)
    assert Job(pieces(1600), options).options.max_layer == 2


@pytest.mark.parametrize(
    "module",
    [
        "wav2vec2_ee.serving.arguments",
        "wav2vec2_ee.serving.controller",
        "wav2vec2_ee.serving.scheduler",
        "wav2vec2_ee.serving.uploads",
        "wav2vec2_ee.serving.responses",
    ],
)
def test_the_servers_torch_free_parts_import_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules and 'fastapi' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
