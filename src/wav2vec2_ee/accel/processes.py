"""Forked worker processes for CPU evaluation: batches run in parallel, each process on its share of the
torch threads.

Small matrices (a few hundred frames by a few hundred channels) keep two intra-op threads far from
twice as fast as one, while processes working on different batches scale almost linearly (1.9x on two
cores). This helps on CPUs only: on a GPU the work is already parallel and ``fork`` after CUDA
initialisation is unsafe, so :func:`default_processes` is 1 there and
:func:`~wav2vec2_ee.evaluation.engine.iter_exit_logits` refuses more.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn

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


def _take(counter, total: int) -> int | None:
    """The next unclaimed task index of the shared ``counter``, or ``None`` when all are claimed."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _forked_worker(fn: Callable, tasks: Sequence, counter, results, threads: int, worker: int) -> None:
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
    caller stops iterating early.
    """
    if processes < 2 or len(tasks) < 2:
        yield from map(fn, tasks)
        return
    if "fork" not in mp.get_all_start_methods():
        raise ValueError(f"processes={processes} needs the 'fork' start method, which this platform lacks")
    ctx = mp.get_context("fork")
    threads = max(1, torch.get_num_threads() // processes)
    counter, results = ctx.Value("q", 0), ctx.Queue()
    children = [
        ctx.Process(target=_forked_worker, args=(fn, tasks, counter, results, threads, i), daemon=True)
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
