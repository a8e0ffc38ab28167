"""A wall-clock budget for training: fewer steps, the same learning-rate schedule compressed to them.

``--time-budget SECONDS`` makes a run finish within that much training time on whatever machine it
runs on (the demo's "10 minutes on a laptop"). Stopping a run early at a fixed schedule would leave
it at a high learning rate; instead :class:`TimeBudget` re-plans the number of steps from the measured
seconds per step, and the scheduler maps each step onto the configured schedule so that
what remains of it (warm-up, cosine decay to its floor, ...) is played out in the steps that remain
(:class:`CompressedLambdaLR`):

* before the first re-plan, step ``s`` of the run gets the configured schedule's factor at ``s``;
* a re-plan at step ``s0`` to ``total`` steps maps steps ``s0 .. total`` linearly onto the schedule's
  remaining steps ``e0 .. max_steps`` (``e0`` where step ``s0`` was), so the learning rate is
  continuous and reaches the schedule's end exactly at the last step.

Plans never exceed ``--max-steps``; they are made from the pace of the recent steps (see
:class:`TimeBudget`), and the budget counts this session's training loop (also after ``--resume``). The plan lives in the scheduler's state, which the
Trainer saves with each checkpoint, so a resumed run continues the same compressed schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback

from ..errors import UserError

logger = logging.getLogger(__name__)


class CompressedLambdaLR(LambdaLR):
    """A ``LambdaLR`` whose schedule can be replayed faster from some step on (:meth:`replan`).

    The plan ``(start, anchor, total)`` is plain scheduler state: ``state_dict`` saves it with each
    checkpoint (the configured lambdas are not saved, as for any ``LambdaLR``) and a resumed run loads it.

    Args:
        optimizer / lr_lambdas: as for ``LambdaLR`` (the configured schedule's factors per step).
        max_steps: the configured number of steps.
    """

    def __init__(self, optimizer, lr_lambdas, max_steps: int, last_epoch: int = -1):
        self.max_steps = int(max_steps)
        self.start = 0  # steps up to `start` follow the configured schedule
        self.anchor = 0.0  # where the configured schedule stood at `start`
        self.total = int(max_steps)  # the planned number of steps
        super().__init__(optimizer, lr_lambdas, last_epoch)

    @classmethod
    def from_scheduler(cls, scheduler: LambdaLR, max_steps: int) -> CompressedLambdaLR:
        """The same schedule as ``scheduler`` (a freshly created ``LambdaLR``), now compressible."""
        if not isinstance(scheduler, LambdaLR):
            raise UserError(
                f"--time-budget needs a LambdaLR learning-rate schedule (linear, cosine, ...), got "
                f"{type(scheduler).__name__}"
            )
        return cls(scheduler.optimizer, list(scheduler.lr_lambdas), max_steps)

    def position(self, step: int) -> float:
        """The step of the configured schedule that ``step`` of the run plays."""
        if self.start == 0 and self.total == self.max_steps:  # never re-planned
            return float(step)
        span = max(self.total - self.start, 1)
        return self.anchor + (step - self.start) * (self.max_steps - self.anchor) / span

    def replan(self, step: int, total: int) -> bool:
        """From ``step`` on, play the rest of the configured schedule in ``total - step`` steps
        (``total`` clamped to ``step + 1 .. max_steps``); returns whether the plan changed."""
        total = min(max(int(total), step + 1), self.max_steps)
        if total == self.total or step < self.start:
            return False
        self.anchor, self.start, self.total = self.position(step), int(step), total
        return True

    def _factor(self, fn: Callable[[int], float], step: int) -> float:
        position = self.position(step)
        low = math.floor(position)
        if low == position:
            return fn(int(position))
        # the configured lambdas take integer steps: interpolate between the two around `position`
        frac = position - low
        return (1 - frac) * fn(low) + frac * fn(low + 1)

    def get_lr(self) -> list[float]:
        return [base * self._factor(fn, self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


def process_zero_value(value: int) -> int:
    """``value`` as process 0 has it, in every process of a distributed run (else ``value``).

    Every process measures its own pace; if they planned apart, they would stop at different steps and
    the others would wait in DDP's all-reduce for ever. The re-plans happen at the same steps everywhere,
    so this broadcast is matched in every process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [int(value)]
        torch.distributed.broadcast_object_list(box, src=0)
        return int(box[0])
    return int(value)


class TimeBudget(TrainerCallback):
    """Plan the steps so that training ends within ``seconds`` (see the module docstring).

    Every ``every`` steps from ``check_from`` steps of this session on, the pace of the last ``window``
    steps gives how many steps the rest of the budget affords, and the scheduler (the Trainer's
    ``lr_scheduler`` of the callback events, a :class:`CompressedLambdaLR`) is re-planned to end there:
    fewer steps when the machine is slower than planned, back up to ``--max-steps`` when it speeds up
    again (the first steps, which also read and cache the audio, are the slowest). In a distributed run
    every process follows process 0's plan (:func:`process_zero_value`).

    Args:
        seconds: the budget for this session's training loop.
        check_from / every / window: see above.
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        seconds: float,
        check_from: int = 50,
        every: int = 25,
        window: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ):
        if seconds <= 0:
            raise UserError(f"--time-budget must be positive, got {seconds}")
        self.seconds = float(seconds)
        self.check_from, self.every = max(1, check_from), max(1, every)
        self.clock = clock
        self.started: float | None = None
        self.first_step = 0
        self.logged_plan = 0
        self.recent: deque[tuple[int, float]] = deque(maxlen=max(2, window + 1))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = self.clock(), int(state.global_step)
        self.logged_plan = int(state.max_steps)
        self.recent.clear()
        self.recent.append((self.first_step, self.started))

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        if not isinstance(lr_scheduler, CompressedLambdaLR):
            raise TypeError("TimeBudget needs the Trainer's scheduler to be a CompressedLambdaLR")
        if self.started is None:
            return control
        now, step = self.clock(), int(state.global_step)
        self.recent.append((step, now))
        done = step - self.first_step
        if done >= self.check_from and done % self.every == 0:
            (old_step, old_time) = self.recent[0]
            per_step = (now - old_time) / max(step - old_step, 1)
            left = self.seconds - (now - self.started)
            affordable = process_zero_value(step + int(max(left, 0.0) / max(per_step, 1e-9)))
            if lr_scheduler.replan(step, affordable) and (
                abs(lr_scheduler.total - self.logged_plan) > 0.02 * self.logged_plan
            ):  # logged when the plan moves by more than 2 %
                before, self.logged_plan = self.logged_plan, lr_scheduler.total
                logger.info(
                    "time budget: %.0f of %.0f s left at %.3f s/step: %d steps planned instead of %d "
                    "(of --max-steps %d), the learning-rate schedule fitted to them",
                    left,
                    self.seconds,
                    per_step,
                    lr_scheduler.total,
                    before,
                    lr_scheduler.max_steps,
                )
        if step >= lr_scheduler.total:
            control.should_training_stop = True
        return control
