"""The load-adaptive operating point and the online accuracy check, as pure objects (a clock is passed in).

The server serves one point of a frontier at a time: :class:`ServePoint` s sorted from the most accurate
(most layers) to the cheapest, every one within the accuracy budget on the dev split
(:mod:`.frontier` builds them from a calibration). :class:`LoadController` moves along it:

* it watches the **queue delay** (how long the oldest waiting piece of audio has waited, or waited
  before its batch started, or how far the HTTP side lags behind, whichever is longest): above ``step_down_at x objective`` it steps one point cheaper (at most one
  step per ``down_dwell`` seconds), below ``step_up_at x objective`` for ``up_dwell`` seconds it steps one
  point back towards accuracy. A light load is served at the most accurate point; a growing queue moves
  down the frontier, a draining one back up. Never beyond :attr:`LoadController.floor`, the cheapest
  point allowed (the last one on the frontier, until the accuracy check tightens it).
* it sheds load (:meth:`LoadController.shed`): when even the cheapest allowed point would answer a new
  request later than the latency objective (what it has waited for the server so far, plus the audio
  ahead of it and its own x that point's layers x the measured seconds per audio-second-layer, plus the
  latency margin), the request is refused at once (HTTP 503 with ``Retry-After``) instead of being
  answered too late; a fixed-depth server (``adaptive=False``) only refuses when its bounded queue is
  full. The **latency margin** is the feedback that makes the objective a p95: the 95th percentile,
  over the last requests answered, of how much later each was answered than predicted when it was
  queued (:meth:`LoadController.record_latency`: the batch it waited for, the batch it formed with
  pieces behind it, the HTTP side: whatever the cost model does not see).

:class:`AccuracyMonitor` is the online feedback (in the spirit of Apparate, Dai et al., SOSP 2024:
managed exits adjusted from the exits' own feedback): a sampled fraction of requests also runs to the
last exit; the character error rate between what was served and what the last exit says is kept per
point over a window. A point whose live disagreement drifts past what the dev split measured for it
(``tolerance x`` its dev disagreement, plus ``slack``) is taken off the frontier with every cheaper
point (:meth:`LoadController.tighten`): the threshold is tightened.

Standard library only: the tests drive both with a fake clock.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServePoint:
    """One operating point the server can serve.

    Args:
        label: ``entropy=0.4``, ``fixed=8`` (``@L<m>`` when capped at layer m).
        policy / value / max_layer: the exit policy's name, parameter value and layer budget
            (:func:`~wav2vec2_ee.policy_core.policy_with_value`).
        dev_wer: its WER on the dev split (``None``: not measured).
        mean_layers: its mean layers computed on the dev split (``None``: unknown, taken as full depth).
        dev_cer: its character error rate against the last exit's transcripts on the dev split (what
            the live check compares with; ``None``: unknown).
        fitted: the policy's fitted arguments (the learned policy's model).
    """

    label: str
    policy: str
    value: float | int | None = None
    max_layer: int | None = None
    dev_wer: float | None = None
    mean_layers: float | None = None
    dev_cer: float | None = None
    fitted: dict = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> dict:
        """A JSON object for ``/status``, ``verbose_json`` and the page."""
        return {
            "label": self.label,
            "policy": self.policy,
            "value": self.value,
            "max_layer": self.max_layer,
            "dev_wer": self.dev_wer,
            "mean_layers": self.mean_layers,
            "dev_cer": self.dev_cer,
        }


@dataclass
class ControllerSettings:
    """How the controller reacts (seconds; fractions of the latency objective).

    Args:
        objective: the p95 latency objective (seconds).
        step_down_at: queue delay above ``step_down_at x objective`` steps one point cheaper.
        step_up_at: queue delay below ``step_up_at x objective`` for ``up_dwell`` steps one point back.
        down_dwell: at least this long between two steps down (the queue needs a moment to react).
        up_dwell: the delay must stay low this long (and this long since the last step) to step up.
        adaptive: ``False``: serve the first point only and refuse only when the queue is full.
    """

    objective: float = 2.0
    step_down_at: float = 0.25
    step_up_at: float = 0.08
    down_dwell: float = 0.5
    up_dwell: float = 2.0
    adaptive: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.objective) and self.objective > 0):
            raise ValueError(f"the latency objective must be a number of seconds > 0, got {self.objective}")
        if not 0 < self.step_up_at < self.step_down_at:
            raise ValueError(
                f"need 0 < step_up_at < step_down_at, got {self.step_up_at} and {self.step_down_at}"
            )


@dataclass(frozen=True)
class Step:
    """A change of operating point: when (the controller's clock), from, to, and why."""

    time: float
    old: int
    new: int
    reason: str


class LoadController:
    """The current operating point, moved along ``points`` by the queue delay (module docstring).

    Thread-safe (the model worker observes, request handlers ask whether to shed). ``clock`` gives
    seconds (``time.monotonic`` by default; tests pass a fake one).
    """

    #: requests the latency margin is the 95th percentile over, and how many it needs first
    MARGIN_WINDOW = 200
    MARGIN_MIN_SAMPLES = 20

    def __init__(
        self,
        points: Sequence[ServePoint],
        settings: ControllerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        full_depth: int | None = None,
    ):
        if not points:
            raise ValueError("the controller needs at least one operating point")
        self.points = list(points)
        self.settings = settings or ControllerSettings()
        self.clock = clock
        self.full_depth = full_depth
        self.index = 0
        #: the cheapest point allowed (the accuracy check may raise it)
        self.floor = len(self.points) - 1 if self.settings.adaptive else 0
        self.steps: deque[Step] = deque(maxlen=200)
        self._last_change = -math.inf
        self._low_since: float | None = None
        self._delay = 0.0
        self._lock = threading.Lock()
        #: seconds of compute per (audio second x layer run), measured on the batches (EWMA)
        self.seconds_per_audio_layer: float | None = None
        #: answered minus predicted latency of the last requests (:meth:`record_latency`)
        self._residuals: deque[float] = deque(maxlen=self.MARGIN_WINDOW)
        self.margin = 0.0

    # ------------------------------------------------------------------------------------------
    @property
    def point(self) -> ServePoint:
        return self.points[self.index]

    @property
    def delay(self) -> float:
        """The last queue delay observed (seconds)."""
        return self._delay

    def layers_of(self, index: int) -> float:
        """Mean layers run per utterance at point ``index`` (its dev figure; full depth when unknown)."""
        layers = self.points[index].mean_layers
        if layers is None:
            return float(self.full_depth or 1)
        return max(1.0, float(layers))

    def observe(self, delay: float, now: float | None = None) -> int:
        """Take a queue-delay observation (seconds); step the operating point if it calls for it.
        Returns the current point's index."""
        with self._lock:
            now = self.clock() if now is None else now
            self._delay = max(0.0, float(delay))
            if not self.settings.adaptive:
                return self.index
            s = self.settings
            high, low = s.step_down_at * s.objective, s.step_up_at * s.objective
            if self._delay > high:
                self._low_since = None
                if self.index < self.floor and now - self._last_change >= s.down_dwell:
                    self._move(self.index + 1, now, f"queue delay {self._delay:.3f} s > {high:.3f} s")
            elif self._delay < low:
                if self._low_since is None:
                    self._low_since = now
                settled = now - self._low_since >= s.up_dwell and now - self._last_change >= s.up_dwell
                if self.index > 0 and settled:
                    self._move(self.index - 1, now, f"queue delay {self._delay:.3f} s < {low:.3f} s")
                    self._low_since = now
            else:
                self._low_since = None
            return self.index

    def _move(self, new: int, now: float, reason: str) -> None:
        self.steps.append(Step(now, self.index, new, reason))
        self.index = new
        self._last_change = now

    def tighten(self, index: int, reason: str = "live accuracy") -> bool:
        """Take point ``index`` and every cheaper one off the frontier (the floor moves to ``index - 1``,
        never above the first point); the current point follows. Returns whether anything changed."""
        with self._lock:
            new_floor = max(0, min(self.floor, index - 1))
            if new_floor == self.floor:
                return False
            self.floor = new_floor
            if self.index > self.floor:
                self._move(self.floor, self.clock(), reason)
            return True

    # ------------------------------------------------------------------------------------------
    # the cost model and shedding

    def record_batch(self, seconds: float, audio_layers: float, weight: float = 0.2) -> None:
        """A batch took ``seconds`` for ``audio_layers`` = sum over its rows of audio seconds x layers
        run: the cost model's estimate (an exponential moving average) follows it."""
        if audio_layers <= 0 or seconds <= 0:
            return
        rate = seconds / audio_layers
        with self._lock:
            old = self.seconds_per_audio_layer
            self.seconds_per_audio_layer = rate if old is None else (1 - weight) * old + weight * rate

    def predicted_seconds(self, audio_seconds: float, index: int | None = None) -> float | None:
        """Compute seconds of ``audio_seconds`` of audio at point ``index`` (default: the cheapest
        allowed); ``None`` before the first batch was measured."""
        rate = self.seconds_per_audio_layer
        if rate is None:
            return None
        index = self.floor if index is None else index
        return audio_seconds * self.layers_of(index) * rate

    def shed(self, queued_audio: float, audio: float, waited: float = 0.0) -> float | None:
        """Whether to refuse a request of ``audio`` seconds with ``queued_audio`` seconds ahead of it
        (waiting or in the running batch), which has already waited ``waited`` seconds: ``None`` to
        admit it, else the seconds a client should wait before retrying. An adaptive server refuses what
        even the cheapest allowed point would answer after the objective, the latency margin included."""
        if not self.settings.adaptive:
            return None
        predicted = self.predicted_seconds(queued_audio + audio)
        if predicted is None or waited + predicted + self.margin <= self.settings.objective:
            return None
        return max(self.retry_after(queued_audio), waited)

    def record_latency(self, answered: float, predicted: float) -> None:
        """A request was answered ``answered`` seconds after it was queued, where the cost model had
        predicted ``predicted`` (:meth:`predicted_seconds` of the audio ahead of it and its own, at the
        cheapest allowed point). The latency margin becomes the 95th percentile of the last
        :attr:`MARGIN_WINDOW` differences (once :attr:`MARGIN_MIN_SAMPLES` are in), between
        ``-objective / 2`` and the objective: a model that predicts early is corrected, one that predicts
        late lets more in."""
        if not (math.isfinite(answered) and math.isfinite(predicted)):
            return
        with self._lock:
            self._residuals.append(answered - predicted)
            if len(self._residuals) >= self.MARGIN_MIN_SAMPLES:
                ordered = sorted(self._residuals)
                p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
                objective = self.settings.objective
                self.margin = min(objective, max(-objective / 2, p95))

    def retry_after(self, queued_audio: float) -> float:
        """Seconds until the queue has drained at the current point (at least 1)."""
        drain = self.predicted_seconds(queued_audio, self.index) or self.settings.objective
        return max(1.0, drain)

    def describe(self) -> dict:
        """The current state as a JSON object (``/status``, the page)."""
        return {
            "index": self.index,
            "floor": self.floor,
            "point": self.point.describe(),
            "points": [p.describe() for p in self.points],
            "queue_delay": self._delay,
            "objective": self.settings.objective,
            "adaptive": self.settings.adaptive,
            "seconds_per_audio_layer": self.seconds_per_audio_layer,
            "latency_margin": self.margin,
            "steps": [
                {"time": s.time, "from": s.old, "to": s.new, "reason": s.reason}
                for s in list(self.steps)[-10:]
            ],
        }


class AccuracyMonitor:
    """The live character error rate between what was served and the last exit, per operating point
    (module docstring). ``sample()`` says whether a request also runs to the last exit (``fraction``
    of them, drawn with ``rng``); :meth:`add` takes each sampled piece's character edit distance and
    length, and tightens ``controller`` when a point drifts.

    Args:
        controller: whose points and floor are checked.
        fraction: the share of requests sampled (0: none, no check).
        window: the samples per point the live rate is computed over.
        min_chars: a point is judged once its window holds this many reference characters.
        tolerance / slack: a point drifts when its live rate exceeds ``tolerance x dev_cer + slack``.
        fallback_cer: the allowed rate of a point whose dev disagreement is unknown.
    """

    def __init__(
        self,
        controller: LoadController,
        fraction: float = 0.05,
        window: int = 200,
        min_chars: int = 400,
        tolerance: float = 1.5,
        slack: float = 0.02,
        fallback_cer: float = 0.05,
        rng: random.Random | None = None,
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the feedback fraction must lie in [0, 1], got {fraction}")
        self.controller = controller
        self.fraction = float(fraction)
        self.min_chars = int(min_chars)
        self.tolerance, self.slack, self.fallback_cer = float(tolerance), float(slack), float(fallback_cer)
        self.rng = rng or random.Random(0)
        self._windows: dict[int, deque[tuple[int, int]]] = {}
        self._window = int(window)
        self._recent: deque[tuple[int, int]] = deque(maxlen=int(window))
        self.samples = 0
        self.tightenings: list[dict] = []
        self._lock = threading.Lock()

    def sample(self) -> bool:
        with self._lock:
            return self.fraction > 0 and self.rng.random() < self.fraction

    def allowed(self, index: int) -> float:
        """The live rate above which point ``index`` is taken off the frontier."""
        dev = self.controller.points[index].dev_cer
        if dev is None:
            return self.fallback_cer
        return self.tolerance * dev + self.slack

    def add(self, index: int, errors: int, chars: int) -> bool:
        """One sampled piece served at point ``index``: ``errors`` character edits against the last exit's
        ``chars`` characters. Returns whether the frontier was tightened."""
        with self._lock:
            self.samples += 1
            window = self._windows.setdefault(index, deque(maxlen=self._window))
            window.append((int(errors), int(chars)))
            self._recent.append((int(errors), int(chars)))
            live = _rate(window)
            judged = sum(c for _, c in window) >= self.min_chars
            if not judged or live is None or live <= self.allowed(index):
                return False
            window.clear()  # judged: a tightened point starts afresh if it is ever served again
        changed = self.controller.tighten(index, f"live CER {live:.3f} > {self.allowed(index):.3f}")
        if changed:
            self.tightenings.append(
                {
                    "point": index,
                    "live_cer": live,
                    "allowed": self.allowed(index),
                    "floor": self.controller.floor,
                }
            )
        return changed

    def live_cer(self, index: int | None = None) -> float | None:
        """The live rate over the recent samples (of point ``index``, or of all points); ``None``: none."""
        with self._lock:
            return _rate(self._recent if index is None else self._windows.get(index, ()))

    def describe(self) -> dict:
        return {
            "fraction": self.fraction,
            "samples": self.samples,
            "live_cer": self.live_cer(),
            "per_point": {
                str(i): {"live_cer": self.live_cer(i), "allowed": self.allowed(i)}
                for i in sorted(self._windows)
            },
            "tightenings": list(self.tightenings),
        }


def _rate(window) -> float | None:
    chars = sum(c for _, c in window)
    if chars == 0:
        return None
    return sum(e for e, _ in window) / chars
