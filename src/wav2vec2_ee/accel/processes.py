"""Forked worker processes for CPU evaluation: batches run in parallel, each process on its share of the
torch threads.

Small matrices (a few hundred frames by a few hundred channels) keep two intra-op threads far from
twice as fast as one, while processes working on different batches scale almost linearly (1.9x on two
cores). This helps on CPUs only: on a GPU the work is already parallel and ``fork`` after CUDA
initialisation is unsafe, so :func:`default_processes` is 1 there and
:func:`~wav2vec2_ee.ctc.engine.iter_exit_logits` refuses more.

The children end with their parent, however it ends: a parent killed with SIGKILL (or by the
out-of-memory killer) runs no clean-up, and its children would otherwise live on for ever, adopted by
PID 1 and blocked writing results into a pipe that nobody reads (:func:`_exit_with_parent`).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn

from ..errors import UserError

T = TypeVar("T")
R = TypeVar("R")


def default_processes(model: nn.Module, num_batches: int) -> int:
    """Worker processes for :func:`iter_exit_logits` on CPU: one per torch thread (each then runs one
    thread), at most 8 and at most one per batch; 1 on GPU and off Linux (``fork`` after libraries
    that start threads is only safe there).

    Small matrices (a few hundred frames by a few hundred channels) keep two intra-op threads far from
    twice as fast as one, while processes working on different batches scale almost linearly.
    """
    if next(model.parameters()).device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    return max(1, min(torch.get_num_threads(), 8, num_batches))


class WorkerError(RuntimeError):
    """A forked worker of :func:`run_forked` failed (its traceback is in the message) or died."""


_DONE = "done"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ORPHANED = 70  # exit code of a worker that outlived its parent (nobody reads it: the parent is gone)
_WATCH_SECONDS = 0.5  # how often a worker without PR_SET_PDEATHSIG checks that its parent lives


def _set_parent_death_signal() -> bool:
    """Have Linux send this process SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``); ``False``
    where that is not available (other platforms, no C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    """End this process once ``parent`` is no longer its parent (it died and this one was adopted), from a
    daemon thread that checks every :data:`_WATCH_SECONDS` (so also while ``fn`` runs, or while the
    exit waits for results to drain into a pipe that nobody reads)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)
        os._exit(_ORPHANED)

    threading.Thread(target=watch, name="wav2vec2-ee-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, use_signal: bool = True) -> None:
    """Make this forked worker end when ``parent`` (the pid that forked it) does: ``PR_SET_PDEATHSIG`` on
    Linux, else a thread that watches ``os.getppid()``; and end it now if the parent already died
    between the ``fork`` and here (the signal is only sent for deaths after the ``prctl``).

    Linux sends the signal when the *thread* that forked ends, not the process: ``use_signal`` is
    ``False`` when a thread other than the main one forked (it may end while the process, and the
    iteration of :func:`run_forked`, goes on); the watching thread then does the work.
    """
    if not (use_signal and _set_parent_death_signal()):
        _watch_parent(parent)
    if os.getppid() != parent:
        os._exit(_ORPHANED)


def _take(counter, total: int) -> int | None:
    """The next unclaimed task index of the shared ``counter``, or ``None`` when all are claimed."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _forked_worker(
    fn: Callable, tasks: Sequence, counter, results, threads: int, worker: int, parent: tuple[int, bool]
) -> None:
    _exit_with_parent(*parent)
    torch.set_num_threads(threads)
    try:
        while (index := _take(counter, len(tasks))) is not None:
            results.put((index, fn(tasks[index])))
    except BaseException as err:  # sent to the parent, which raises it
        trace = traceback.format_exc()
        try:
            pickle.dumps(err)
        except Exception:
            err = None
        results.put((_DONE, (worker, (err, trace))))
        return
    results.put((_DONE, (worker, None)))


def run_forked(fn: Callable[[T], R], tasks: Sequence[T], processes: int) -> Iterator[R]:
    """``fn(task)`` for every task, in completion order, computed by this process and ``processes - 1``
    forked children that claim tasks from a shared counter (so that the load balances). (About 65
    lines: starting, feeding, collecting and stopping the children belong in one ``try``/``finally``.)

    The children inherit ``fn`` and ``tasks`` by ``fork`` (nothing is pickled on the way in; results
    are pickled on the way back). The torch threads are shared: each process runs
    ``torch.get_num_threads() // processes`` of them (this one is restored afterwards). An exception in
    a child is raised here (its type kept where it can be pickled, with the child's traceback); a child
    that dies (killed, out of memory) raises :class:`WorkerError`. The children are stopped when the
    caller stops iterating early, and end by themselves when this process dies without stopping them
    (SIGKILL, out-of-memory kill: :func:`_exit_with_parent`).
    """
    if processes < 2 or len(tasks) < 2:
        yield from map(fn, tasks)
        return
    if "fork" not in mp.get_all_start_methods():
        raise UserError(f"processes={processes} needs the 'fork' start method, which this platform lacks")
    ctx = mp.get_context("fork")
    threads = max(1, torch.get_num_threads() // processes)
    counter, results = ctx.Value("q", 0), ctx.Queue()
    parent = (os.getpid(), threading.current_thread() is threading.main_thread())  # see _exit_with_parent
    children = [
        ctx.Process(
            target=_forked_worker, args=(fn, tasks, counter, results, threads, i, parent), daemon=True
        )
        for i in range(min(processes, len(tasks)) - 1)
    ]
    own_threads = torch.get_num_threads()
    for child in children:
        child.start()
    running = set(range(len(children)))  # the children that have not reported the end of their work

    def collect(block: bool) -> Iterator[R]:
        while running:
            try:
                key, value = results.get(timeout=0.2) if block else results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                dead = [children[i] for i in running if children[i].exitcode not in (None, 0)]
                if dead:
                    raise WorkerError(
                        f"an evaluation worker process died (exit code {dead[0].exitcode}); "
                        "if it ran out of memory, lower --batch-size or --max-batch-seconds"
                    ) from None
                continue
            if key != _DONE:
                yield value
                continue
            worker, failure = value
            running.discard(worker)
            if failure is not None:
                err, trace = failure
                if err is None:
                    raise WorkerError(f"an evaluation worker process failed:\n{trace}")
                raise err from WorkerError(f"in a worker process:\n{trace}")

    try:
        torch.set_num_threads(threads)
        while (index := _take(counter, len(tasks))) is not None:
            yield fn(tasks[index])
            yield from collect(block=False)
        torch.set_num_threads(own_threads)
        yield from collect(block=True)
    finally:
        torch.set_num_threads(own_threads)
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        results.close()
