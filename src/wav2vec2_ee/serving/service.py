"""The transcription service behind the HTTP API: uploads to pieces, pieces to the scheduler's queue, answers
to a :class:`~.responses.Result`; the operating point, the accuracy check, the metrics and the status the
page shows.

Nothing is kept between requests (the queue holds requests in flight only): replicas behind a load
balancer are interchangeable.

The engine is passed in (:class:`~.engine.ServingEngine`, or a fake in tests): anything with
``run(items, point_index)``, ``warm_up()``, ``exit_layers``, ``num_layers`` and ``min_seconds``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from ..audio import SAMPLING_RATE
from ..errors import UserError
from ..policy_core import POLICIES, is_integer, is_number
from ..segmentation import SplitOptions
from ..timestamps import Segment
from .controller import AccuracyMonitor, ControllerSettings, LoadController, ServePoint
from .metrics import ServerMetrics
from .responses import Result
from .scheduler import BatchReport, BatchSettings, Job, Overloaded, RequestOptions, Scheduler
from .uploads import DetectorPool, InputError, decode_upload, split_upload

#: Bytes per second of audio assumed for an upload not yet read (16-bit PCM at 16 kHz: WAV; compressed
#: files hold more audio per byte, so they are underestimated, never refused for their size)
BYTES_PER_SECOND = 2 * SAMPLING_RATE

logger = logging.getLogger(__name__)


@dataclass
class ServiceSettings:
    """The operator's limits (the ``serve`` flags).

    Args:
        model_id: the model's name in ``/v1/models``.
        max_upload_bytes: the largest upload (413 beyond).
        max_audio_seconds: the longest recording (400 beyond, from its header).
        split: how recordings longer than ``split.max_seconds`` are split at their pauses (``None``: never).
        allow_overrides: whether a request may set ``max_layer`` / ``threshold``.
        max_layer: the deepest layer any request runs (``None``: the last exit).
        threshold_policy: the policy a request's ``threshold`` is a value of (``None``: none may be set).
        threshold_range: ``(low, high)`` thresholds a request may set.
        request_timeout: seconds a client has to send its upload (408 after).
        feedback_fraction: the share of requests also run to the last exit (the accuracy check).
    """

    model_id: str = "wav2vec2-ee"
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 1200.0
    split: SplitOptions | None = field(default_factory=SplitOptions)
    allow_overrides: bool = True
    max_layer: int | None = None
    threshold_policy: str | None = None
    threshold_range: tuple[float, float] | None = None
    request_timeout: float = 60.0
    feedback_fraction: float = 0.05


class ClientGone(Exception):
    """The client disconnected before its answer: its work was dropped."""


class TranscriptionService:
    """Everything but HTTP (module docstring)."""

    def __init__(
        self,
        engine: Any,
        points: Sequence[ServePoint],
        settings: ServiceSettings | None = None,
        controller: ControllerSettings | None = None,
        batching: BatchSettings | None = None,
        clock=time.monotonic,
    ):
        self.engine = engine
        self.settings = settings or ServiceSettings()
        self.points = list(points)
        self.exit_layers = [int(x) for x in engine.exit_layers]
        self.controller = LoadController(self.points, controller, clock, int(engine.num_layers))
        self.monitor = AccuracyMonitor(self.controller, self.settings.feedback_fraction)
        self.metrics = ServerMetrics(self.exit_layers, self.points)
        self.metrics.set_point(self.controller.index, self.controller.floor)
        self.scheduler = Scheduler(
            engine.run, self.controller, batching, self._on_batch, clock, outside_delay=lambda: self.loop_lag
        )
        #: the HTTP event loop's lag (seconds, smoothed): requests wait that long before they are read
        self.loop_lag = 0.0
        #: requests admitted whose audio is not in the queue yet, and their estimated seconds of audio
        self._preparing: dict[int, float] = {}
        #: requests admitted and not answered yet (what a drain waits for)
        self._in_flight: set[int] = set()
        self._tickets = itertools.count()
        split = self.settings.split
        self.detectors = DetectorPool(split.vad) if split is not None else None
        self.clock = clock
        self.ready = threading.Event()
        self.draining = False
        self.warm_up_seconds: float | None = None
        #: why the service cannot serve (``None``: it can)
        self.failed: str | None = None
        self.started_at = time.time()
        self._recent: deque[tuple[float, float, float, float]] = deque(
            maxlen=2000
        )  # time, latency, layers, audio
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------
    # life

    def start(self, warm_up: bool = True) -> None:
        """Warm the model up (the first batches of a process are slow) and start the worker; then ready.
        A model that fails here leaves the service failed (``/health`` answers 503: restart it)."""
        try:
            if warm_up:
                self.warm_up_seconds = self.engine.warm_up()
                logger.info("warmed up in %.1f s", self.warm_up_seconds)
        except Exception as err:
            logger.exception("the model failed while warming up")
            self.failed = f"the model failed while warming up: {type(err).__name__}: {err}"
            return
        self.scheduler.start()
        self.ready.set()
        self.metrics.ready.set(1)

    def drain(self) -> None:
        """Refuse new requests from now on (SIGTERM); those in flight are answered."""
        self.draining = True
        self.metrics.ready.set(0)

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop after answering what is queued (at most ``timeout`` seconds)."""
        self.drain()
        return self.scheduler.stop(timeout)

    # ------------------------------------------------------------------------------------------
    # a request

    def check_options(
        self, max_layer: Any = None, threshold: Any = None, trace: bool = False, words: bool = False
    ) -> RequestOptions:
        """A request's own settings, checked against the operator's limits (400 naming the limit)."""
        s = self.settings
        if (max_layer is not None or threshold is not None) and not s.allow_overrides:
            param = "max_layer" if max_layer is not None else "threshold"
            raise InputError(
                400, "override_not_allowed", f"this server does not take a per-request {param}", param
            )
        deepest = s.max_layer or self.exit_layers[-1]
        if max_layer is not None:
            allowed = [layer for layer in self.exit_layers if layer <= deepest]
            if not is_integer(max_layer) or int(max_layer) not in allowed:
                raise InputError(
                    400,
                    "invalid_max_layer",
                    f"max_layer {max_layer}: choose one of the exit layers this server allows, {allowed}",
                    "max_layer",
                )
            max_layer = int(max_layer)
        if threshold is not None:
            name = s.threshold_policy
            if name is None:
                raise InputError(
                    400, "threshold_not_allowed", "this server's exit policy takes no threshold", "threshold"
                )
            try:
                value = POLICIES[name].check_value(threshold) if is_number(threshold) else None
            except UserError as err:
                raise InputError(
                    400, "invalid_threshold", f"threshold {threshold}: {err}", "threshold"
                ) from None
            low, high = s.threshold_range or (-float("inf"), float("inf"))
            if value is None or not low <= value <= high:
                raise InputError(
                    400,
                    "invalid_threshold",
                    f"threshold {threshold}: this server allows {name} thresholds in [{low:g}, {high:g}]",
                    "threshold",
                )
            threshold = value
        return RequestOptions(max_layer, threshold, bool(trace), bool(words))

    def prepare(self, data: bytes, name: str) -> tuple[list[tuple[np.ndarray, float, float]], float]:
        """``(pieces, seconds of audio)`` of an upload (blocking: decoding and splitting; run it in a
        thread). :class:`~.uploads.InputError` when it cannot be used."""
        if len(data) > self.settings.max_upload_bytes:
            raise InputError(
                413,
                "file_too_large",
                f"{name}: {len(data)} bytes is more than this server's limit of {self.settings.max_upload_bytes}",
            )
        audio = decode_upload(data, name, self.settings.max_audio_seconds)
        pieces = split_upload(audio, name, self.settings.split, self.engine.min_seconds, self.detectors)
        return pieces, len(audio) / SAMPLING_RATE

    # ------------------------------------------------------------------------------------------
    # admission: before an upload is read

    async def watch_loop(self, period: float = 0.05) -> None:
        """Measure the event loop's lag for as long as it runs (a task of the app's lifespan): a loop
        busy with HTTP work delays every request before the model queue sees it."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(period)
            lag = max(0.0, time.perf_counter() - started - period)
            self.loop_lag = 0.7 * self.loop_lag + 0.3 * lag

    @property
    def preparing_audio(self) -> float:
        """Estimated seconds of audio admitted but not queued yet (being uploaded, decoded, split)."""
        return sum(self._preparing.values())

    def admit(self, declared_bytes: int | None) -> int:
        """Admit a transcription request before its upload is read, or refuse it at once (503): not ready,
        draining, the queue full, or (adaptive) even the cheapest point answering after the objective,
        counting the loop's lag and what is admitted but not queued yet (a refusal then costs the server
        nothing: the upload is not read). Returns a ticket for :meth:`queued`."""
        self.refuse_if_unavailable()
        depth = self.scheduler.depth
        try:
            if depth >= self.scheduler.settings.max_queue:
                raise Overloaded(
                    f"the queue is full ({depth} pieces of audio waiting, at most "
                    f"{self.scheduler.settings.max_queue})",
                    self.controller.retry_after(self.scheduler.queued_audio),
                    "queue_full",
                )
            own = (declared_bytes or 0) / BYTES_PER_SECOND
            waiting = self.scheduler.audio_ahead + self.preparing_audio
            retry = self.controller.shed(waiting, min(own, 30.0), self.loop_lag)
            if retry is not None:
                raise Overloaded(
                    f"even the cheapest operating point would answer after the latency objective "
                    f"({self.controller.settings.objective:g} s): {waiting:.1f} s of audio ahead, the server "
                    f"{self.loop_lag:.2f} s behind",
                    retry,
                    "objective",
                )
        except Overloaded as err:
            self.metrics.shed.labels(err.kind).inc()
            raise
        ticket = next(self._tickets)
        self._preparing[ticket] = own
        self._in_flight.add(ticket)
        self.metrics.in_flight.set(len(self._in_flight))
        return ticket

    def queued(self, ticket: int | None) -> None:
        """The admitted request ``ticket`` is queued (or done): no longer counted as being prepared."""
        if ticket is not None:
            self._preparing.pop(ticket, None)

    def finished(self, ticket: int | None) -> None:
        """The admitted request ``ticket`` is answered (or failed): no longer in flight."""
        self.queued(ticket)
        if ticket is not None:
            self._in_flight.discard(ticket)
            self.metrics.in_flight.set(len(self._in_flight))

    @property
    def requests_in_flight(self) -> int:
        """Requests admitted and not answered yet."""
        return len(self._in_flight)

    def refuse_if_unavailable(self, admitted: bool = False) -> None:
        """Raise :class:`Overloaded` when the service cannot take a request. ``admitted``: the request was
        admitted before (its upload was being read when a drain began): it is in flight and answered."""
        if self.draining and not admitted:
            self.metrics.shed.labels("draining").inc()
            raise Overloaded(
                "the server is shutting down: send the request to another replica", 5.0, "draining"
            )
        if self.failed is not None:
            raise Overloaded(self.failed, 60.0, "failed")
        if not self.ready.is_set():
            raise Overloaded("the model is warming up", 5.0, "warming_up")

    async def transcribe(
        self,
        pieces: list[tuple[np.ndarray, float, float]],
        options: RequestOptions,
        duration: float,
        disconnected: Callable[[], Awaitable[Any]] | None = None,
        waited: float = 0.0,
        received: float | None = None,
        ticket: int | None = None,
    ) -> Result:
        """Queue the pieces, wait for their answers, make the :class:`~.responses.Result`. Raises
        :class:`~.scheduler.Overloaded` (503) when refused, :class:`ClientGone` when ``disconnected()``
        completes first (the job is cancelled: its queued pieces are dropped). ``waited``: seconds the
        request already waited for the server (its event loop, its threads) before it was decoded, part
        of the latency the controller keeps under the objective; ``received``: when its upload was in
        (``time.monotonic()``), where its latency starts; ``ticket``: its :meth:`admit` ticket."""
        started = time.monotonic() if received is None else received
        self.refuse_if_unavailable(admitted=ticket is not None)
        # the accuracy check samples requests served at an operating point as it is (no overrides)
        own = options.trace or options.words or options.threshold is not None or options.max_layer is not None
        sampled = not own and self.monitor.sample()
        run_options = RequestOptions(
            options.max_layer, options.threshold, options.trace or sampled, options.words
        )
        if not pieces:
            self.queued(ticket)
            return Result("", duration, [], self.engine.num_layers)
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(job: Job) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(job))

        job = Job(pieces, run_options, done)
        queued_at = time.monotonic()
        try:
            self.scheduler.submit(job, max(waited, queued_at - started))
        except Overloaded as err:
            self.metrics.shed.labels(err.kind).inc()
            raise
        finally:
            self.queued(ticket)
            self._queue_gauges()
        waiter = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            waits = {future} if waiter is None else {future, waiter}
            finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if future not in finished:
                job.cancel()
                raise ClientGone("the client disconnected")
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            if waiter is not None:
                waiter.cancel()
        if job.error is not None:
            raise job.error
        if job.predicted is not None:  # the latency margin's feedback (controller module docstring)
            self.controller.record_latency(time.monotonic() - queued_at, job.predicted)
        result = self._result(job, duration, options)
        result.latency_seconds = time.monotonic() - started
        if sampled:
            self._feedback(job)
        with self._lock:
            self._recent.append((time.monotonic(), result.latency_seconds, result.layers_computed, duration))
        return result

    def _label(self, index: int, options: RequestOptions) -> str:
        label = self.points[index].label
        if options.threshold is not None:
            label = f"{self.settings.threshold_policy}={options.threshold:g} (request)"
        if options.max_layer is not None:
            label += f"@L{options.max_layer} (request)"
        return label

    def _result(self, job: Job, duration: float, options: RequestOptions) -> Result:
        segments = []
        for item, answer, index in zip(job.items, job.answers, job.point_index):
            extra: dict = {"operating_point": self._label(index or 0, options)}
            if options.trace and answer.exits is not None:
                extra["exits"] = dict(answer.exits)
                extra["exit_seconds"] = round(answer.exit_seconds, 4)
                extra["full_seconds"] = round(answer.full_seconds or 0.0, 4)
            segments.append(
                Segment(
                    item.start,
                    item.end,
                    answer.text,
                    answer.words,
                    answer.exit_layer,
                    answer.layers,
                    answer.score,
                    extra,
                )
            )
        waits = [(item.started or item.enqueued) - item.enqueued for item in job.items]
        return Result(
            text=" ".join(a.text for a in job.answers if a.text),
            duration=duration,
            segments=segments,
            num_layers=self.engine.num_layers,
            compute_seconds=sum(a.seconds for a in job.answers),
            queue_seconds=max(waits, default=0.0),
        )

    def _feedback(self, job: Job) -> None:
        """A sampled request: each piece's served transcript against the last exit's."""
        for answer, index in zip(job.answers, job.point_index):
            reference = answer.last_text
            if reference is None or index is None:
                continue
            errors = Levenshtein.distance(answer.text, reference)
            self.metrics.feedback.inc()
            if self.monitor.add(index, errors, max(len(reference), 1 if errors else 0)):
                logger.warning("live accuracy: %s", self.monitor.tightenings[-1])
        live = self.monitor.live_cer()
        if live is not None:
            self.metrics.live_cer.set(live)
        self.metrics.set_point(self.controller.index, self.controller.floor)

    # ------------------------------------------------------------------------------------------
    # observation

    def _queue_gauges(self) -> None:
        self.metrics.queue_depth.set(self.scheduler.depth)
        self.metrics.queue_audio.set(self.scheduler.queued_audio)

    def _on_batch(self, report: BatchReport) -> None:
        m = self.metrics
        m.batch_size.observe(len(report.items))
        for delay in report.queue_delays:
            m.queue_delay.observe(delay)
        for item, answer in zip(report.items, report.answers):
            m.layers.observe(answer.layers)
            m.exits.labels(str(answer.exit_layer)).inc()
            m.audio_seconds.inc(item.seconds)
        m.set_point(self.controller.index, self.controller.floor)
        self._queue_gauges()

    def recent(self, seconds: float = 30.0) -> dict:
        """Latency percentiles, throughput and layers over the last ``seconds`` (the page's panel)."""
        now = time.monotonic()
        with self._lock:
            rows = [r for r in self._recent if now - r[0] <= seconds]
        if not rows:
            return {"window_seconds": seconds, "requests": 0}
        latencies = np.array([r[1] for r in rows])
        return {
            "window_seconds": seconds,
            "requests": len(rows),
            "requests_per_second": len(rows) / seconds,
            "audio_seconds_per_second": sum(r[3] for r in rows) / seconds,
            "latency_p50": float(np.percentile(latencies, 50)),
            "latency_p95": float(np.percentile(latencies, 95)),
            "mean_layers": float(np.mean([r[2] for r in rows])),
        }

    def status(self) -> dict:
        """The server's state as a JSON object (``GET /status``)."""
        return {
            "model": self.settings.model_id,
            "ready": self.ready.is_set(),
            "draining": self.draining,
            "failed": self.failed,
            "exit_layers": self.exit_layers,
            "num_layers": int(self.engine.num_layers),
            "loop_lag": round(self.loop_lag, 4),
            "preparing_audio": round(self.preparing_audio, 3),
            "requests_in_flight": self.requests_in_flight,
            "queue": {
                "depth": self.scheduler.depth,
                "audio_seconds": round(self.scheduler.queued_audio, 3),
                "oldest_wait": round(self.scheduler.oldest_wait(), 4),
                "running": len(self.scheduler.running_batch),
                "max_queue": self.scheduler.settings.max_queue,
            },
            "batches": self.scheduler.batches,
            "controller": self.controller.describe(),
            "accuracy": self.monitor.describe(),
            "recent": self.recent(),
            "limits": {
                "max_upload_bytes": self.settings.max_upload_bytes,
                "max_audio_seconds": self.settings.max_audio_seconds,
                "max_layer": self.settings.max_layer or self.exit_layers[-1],
                "threshold_policy": self.settings.threshold_policy,
                "threshold_range": self.settings.threshold_range,
                "allow_overrides": self.settings.allow_overrides,
            },
        }
