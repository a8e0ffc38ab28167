"""Dynamic batching: one model worker, a bounded queue of pieces of audio, batches formed up to a size or
a queue delay (Triton's ``max_batch_size`` / ``max_queue_delay``).

A request (:class:`Job`) is one or more pieces (a long recording split at its pauses: every piece of every
queued request batches with the others). The worker thread takes the oldest waiting piece and those
queued behind it, up to ``batch_size`` pieces and ``max_batch_seconds`` of padded audio, as soon as the
batch is full or the oldest has waited ``max_queue_delay``; it asks the :class:`~.controller.LoadController`
for the operating point at that moment (the queue delay of the batch is its signal), runs the batch
(``run_batch``: the engine, whose exited rows leave the batch) and hands each answer back to its job; a
job whose pieces are all answered calls its ``on_done``.

Refusals (:class:`Overloaded`, HTTP 503 with ``Retry-After``): the queue holds at most ``max_queue``
pieces, and an adaptive controller refuses what it predicts it would answer after the latency objective
(:meth:`~.controller.LoadController.shed`). A cancelled job (its client went away) is dropped from the
queue, and its rows in a running batch exit at the next exit (the engine asks :attr:`Job.cancelled`).

numpy and the standard library only; the engine is passed in (tests use a fake one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import SAMPLING_RATE
from .controller import LoadController

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The server refuses a request now (HTTP 503): ``retry_after`` seconds until it may have room;
    ``kind``: ``queue_full``, ``objective`` (it would be answered too late) or ``draining``."""

    def __init__(self, reason: str, retry_after: float, kind: str = "queue_full"):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks beyond its audio (checked against the operator's limits by the app).

    Args:
        max_layer: never compute beyond this exit layer (``None``: the operating point's).
        threshold: the serving policy's threshold for this request (``None``: the operating point's).
        trace: run every piece to the last exit and keep the transcript at every exit (the page; the
            sampled accuracy check); what is served is still the exit the policy chose.
        words: time each word (verbose_json with ``timestamp_granularities[]=word``).
    """

    max_layer: int | None = None
    threshold: float | None = None
    trace: bool = False
    words: bool = False


@dataclass
class WorkItem:
    """One piece of a request's audio in the queue: ``audio`` 16 kHz float32, from ``start`` to ``end``
    seconds of its recording."""

    job: Job
    index: int
    audio: np.ndarray
    start: float
    end: float
    enqueued: float = 0.0
    started: float | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLING_RATE


class Job:
    """One request: its pieces, their answers, and ``on_done(job)`` once every piece is answered (or the
    job failed). Thread-safe: the worker delivers, the request's handler cancels."""

    def __init__(
        self,
        pieces: Sequence[tuple[np.ndarray, float, float]],
        options: RequestOptions | None = None,
        on_done: Callable[[Job], None] | None = None,
    ):
        self.options = options or RequestOptions()
        self.items = [WorkItem(self, i, audio, start, end) for i, (audio, start, end) in enumerate(pieces)]
        self.answers: list[Any] = [None] * len(self.items)
        self.point_index: list[int | None] = [None] * len(self.items)
        self.error: BaseException | None = None
        self.on_done = on_done
        self._remaining = len(self.items)
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self.submitted: float | None = None
        self.finished: float | None = None
        #: seconds from queueing to answer the cost model predicted (``None``: nothing measured yet)
        self.predicted: float | None = None

    @property
    def audio_seconds(self) -> float:
        return sum(item.seconds for item in self.items)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client went away: its queued pieces are dropped, its running rows exit early."""
        self._cancelled.set()

    @property
    def done(self) -> bool:
        return self._remaining == 0 or self.error is not None

    def deliver(self, index: int, answer: Any, point_index: int | None = None) -> None:
        with self._lock:
            if self.answers[index] is not None or self.error is not None:
                return
            self.answers[index] = answer
            self.point_index[index] = point_index
            self._remaining -= 1
            finished = self._remaining == 0
        if finished:
            self._finish()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is not None or self._remaining == 0:
                return
            self.error = error
        self._finish()

    def _finish(self) -> None:
        self.finished = time.monotonic()
        if self.on_done is not None:
            self.on_done(self)


@dataclass
class BatchSettings:
    """How batches form and how much may wait.

    Args:
        batch_size: pieces per batch at most.
        max_batch_seconds: seconds of padded audio per batch at most (``None``: no bound).
        max_queue_delay: seconds the oldest piece waits for others before its batch starts anyway.
        max_queue: pieces waiting at most; a request that would exceed it is refused (503).
    """

    batch_size: int = 16
    max_batch_seconds: float | None = 320.0
    max_queue_delay: float = 0.01
    max_queue: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_queue < 1:
            raise ValueError(f"--max-queue must be >= 1, got {self.max_queue}")
        if not self.max_queue_delay >= 0:
            raise ValueError(f"--max-queue-delay-ms must be >= 0, got {1000 * self.max_queue_delay}")


#: ``run_batch(items, point_index) -> answers`` (one per item, each with a ``layers`` attribute).
RunBatch = Callable[[list[WorkItem], int], list[Any]]


@dataclass
class BatchReport:
    """What the worker tells its observer about one batch."""

    items: list[WorkItem]
    answers: list[Any]
    point_index: int
    seconds: float
    queue_delays: list[float] = field(default_factory=list)


class Scheduler:
    """The queue and its one worker thread (module docstring). ``on_batch(report)`` is called after each
    batch (metrics); ``clock`` gives seconds; ``outside_delay()`` how long requests wait before they
    reach the queue (the HTTP side's lag), taken as queue delay too."""

    #: how often an idle worker tells the controller the queue is empty (seconds)
    IDLE_TICK = 0.25

    def __init__(
        self,
        run_batch: RunBatch,
        controller: LoadController,
        settings: BatchSettings | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        outside_delay: Callable[[], float] | None = None,
    ):
        self.run_batch = run_batch
        #: how long work waits before it reaches this queue (the HTTP event loop's lag): queue delay too
        self.outside_delay = outside_delay or (lambda: 0.0)
        self.controller = controller
        self.settings = settings or BatchSettings()
        self.on_batch = on_batch
        self.clock = clock
        self._queue: deque[WorkItem] = deque()
        self._queued_audio = 0.0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running_batch: list[WorkItem] = []
        self.batches = 0

    # ------------------------------------------------------------------------------------------
    # the queue

    @property
    def depth(self) -> int:
        """Pieces waiting."""
        return len(self._queue)

    @property
    def queued_audio(self) -> float:
        """Seconds of audio waiting."""
        return self._queued_audio

    @property
    def running_audio(self) -> float:
        """Seconds of audio in the batch the worker is running."""
        return sum(item.seconds for item in self.running_batch)

    @property
    def audio_ahead(self) -> float:
        """Seconds of audio a new request waits behind: the queue and the running batch, whole (it may
        just have begun)."""
        return self._queued_audio + self.running_audio

    def oldest_wait(self, now: float | None = None) -> float:
        """How long the oldest waiting piece has waited (0 when none waits)."""
        with self._cond:
            return self._oldest_wait(self.clock() if now is None else now)

    def _oldest_wait(self, now: float) -> float:
        return max(0.0, now - self._queue[0].enqueued) if self._queue else 0.0

    def submit(self, job: Job, waited: float = 0.0) -> None:
        """Queue every piece of ``job``, or refuse it whole (:class:`Overloaded`). ``waited``: seconds the
        request waited for the server before it came here (a busy event loop is a queue too: it counts
        as queue delay for the controller and in the predicted latency)."""
        with self._cond:
            if self._stopping:
                raise Overloaded("the server is shutting down", 5.0, "draining")
            now = self.clock()
            self._drop_cancelled()
            self.controller.observe(max(self._oldest_wait(now), waited, self.outside_delay()), now)
            # a request longer than the whole queue is still taken when nothing waits
            if self._queue and len(self._queue) + len(job.items) > self.settings.max_queue:
                raise Overloaded(
                    f"the queue is full ({len(self._queue)} pieces of audio waiting, at most "
                    f"{self.settings.max_queue})",
                    self.controller.retry_after(self._queued_audio),
                )
            # its longest piece: the pieces of a long recording run in parallel rows, and a long recording
            # is not held to an objective meant for utterances
            longest = max((item.seconds for item in job.items), default=0.0)
            ahead = self.audio_ahead
            retry = self.controller.shed(ahead, longest, waited)
            if retry is not None:
                raise Overloaded(
                    f"even the cheapest operating point would answer after the latency objective "
                    f"({self.controller.settings.objective:g} s): {self._queued_audio:.1f} s of audio waiting, "
                    f"{waited:.2f} s waited for the server",
                    retry,
                    "objective",
                )
            job.submitted = now
            job.predicted = self.controller.predicted_seconds(ahead + longest)
            for item in job.items:
                item.enqueued = now
                self._queue.append(item)
                self._queued_audio += item.seconds
            self._cond.notify()

    def _drop_cancelled(self) -> None:
        if any(item.job.cancelled for item in self._queue):
            kept = [item for item in self._queue if not item.job.cancelled]
            self._queue = deque(kept)
            self._queued_audio = sum(item.seconds for item in kept)

    def _take_batch(self) -> list[WorkItem] | None:
        """The next batch (module docstring); ``None`` when stopping with an empty queue."""
        s = self.settings
        with self._cond:
            while True:
                self._drop_cancelled()
                if not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait(self.IDLE_TICK)
                    if not self._queue:
                        self.controller.observe(self.outside_delay(), self.clock())
                    continue
                wait = s.max_queue_delay - self._oldest_wait(self.clock())
                if len(self._queue) >= s.batch_size or wait <= 0 or self._stopping:
                    break
                self._cond.wait(wait)
            batch: list[WorkItem] = []
            longest = 0.0
            for item in list(self._queue):
                if len(batch) >= s.batch_size:
                    break
                padded = max(longest, item.seconds) * (len(batch) + 1)
                if batch and s.max_batch_seconds is not None and padded > s.max_batch_seconds:
                    break  # first in, first out: the next batch starts with it
                batch.append(item)
                longest = max(longest, item.seconds)
            for _ in batch:
                item = self._queue.popleft()
                self._queued_audio -= item.seconds
            if not self._queue:
                self._queued_audio = 0.0
            self.running_batch = batch
            return batch

    # ------------------------------------------------------------------------------------------
    # the worker

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="wav2vec2-ee-model-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking requests; the worker answers what is queued, then ends. Returns whether it ended
        within ``timeout`` seconds (what is left then is failed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self.run_once(batch)

    def run_once(self, batch: list[WorkItem]) -> None:
        """Run one batch and deliver its answers (the worker's step; a failure fails the batch's jobs,
        never the worker)."""
        now = self.clock()
        delays = [now - item.enqueued for item in batch]
        index = self.controller.observe(max(max(delays), self.outside_delay()), now)
        for item in batch:
            item.started = now
        live = [item for item in batch if not item.job.cancelled]
        started = time.perf_counter()
        try:
            answers = self.run_batch(live, index) if live else []
        except Exception as err:  # a bug or a resource error: the requests fail, the server stays up
            logger.exception("a batch of %d pieces failed", len(live))
            for job in {id(item.job): item.job for item in live}.values():
                job.fail(err)
            self.running_batch = []
            return
        seconds = time.perf_counter() - started
        self.batches += 1
        self.controller.record_batch(
            seconds, sum(i.seconds * max(1, a.layers) for i, a in zip(live, answers))
        )
        self.running_batch = []
        for item, answer in zip(live, answers):
            item.job.deliver(item.index, answer, index)
        if self.on_batch is not None:
            try:
                self.on_batch(BatchReport(live, answers, index, seconds, delays))
            except Exception:  # metrics must never take the worker down
                logger.exception("the batch observer failed")
