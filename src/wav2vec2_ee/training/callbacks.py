"""The trainer's bookkeeping as ``TrainerCallback``s, on public callback events only.

* :class:`SkipBadUpdates`: the non-finite-step guard (``on_pre_optimizer_step``);
* :class:`SaveSkipCounts`: the skip counts in every checkpoint (``on_step_end``, ``on_epoch_end``,
  ``on_save``);
* :class:`RotateOwnCheckpoints`: ``--save-total-limit`` over the run's own checkpoint folders only
  (``on_train_begin``, ``on_step_end``, ``on_epoch_end``, ``on_save``, ``on_train_end``).

The time budget is a callback too, beside the schedule it re-plans (:class:`.budget.TimeBudget`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .outputs import RunFolder
from .skips import SkipCounts

logger = logging.getLogger(__name__)

NON_FINITE_GRADIENT = "non-finite gradient"
ZERO_GRADIENT = "zero gradient: every batch of the step was skipped"


def optimizer_gradients(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The gradients held by ``optimizer``'s parameters (those without one left out), any shapes."""
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def bad_update_reason(grads: list[torch.Tensor]) -> str | None:
    """Why the gradients ``grads`` (any shapes) must not be applied; ``None``: apply them.

    :data:`NON_FINITE_GRADIENT` when their total norm is NaN or inf, :data:`ZERO_GRADIENT` when it is
    exactly zero (every batch of the step contributed a zero loss).
    """
    if not grads:
        return None
    norms = torch._foreach_norm([g.detach() for g in grads])
    total = float(torch.stack([n.to(norms[0].device, torch.float64) for n in norms]).sum())
    if not math.isfinite(total):
        return NON_FINITE_GRADIENT
    if total == 0.0:
        return ZERO_GRADIENT
    return None


def grad_scaler(optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler | None:
    """The enabled fp16 ``GradScaler`` that accelerate's optimizer wrapper steps through, if any."""
    scaler = getattr(optimizer, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def drop_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Make the coming ``optimizer.step()`` a no-op: every parameter's gradient becomes ``None``.

    Torch optimizers pass over parameters without a gradient, so neither the weights nor the optimizer
    state (moments, step count, weight decay) move. Under accelerate's fp16 ``GradScaler``
    (``optimizer.scaler``), the scaler's ``step`` needs the inf checks that its ``unscale_`` records, so
    they are recorded first, on the (finite) gradients still there; ``unscale_`` raises ``RuntimeError``
    when gradient clipping has recorded them already.
    """
    scaler = grad_scaler(optimizer)
    if scaler is not None:
        with contextlib.suppress(RuntimeError):  # already unscaled (by clipping) since the last update
            scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


class SkipBadUpdates(TrainerCallback):
    """The non-finite-step guard: an optimizer step whose gradient must not be applied is not taken.

    Not taken: a step whose gradient is non-finite (NaN or inf from a bad batch), or exactly zero because
    every batch of the step was skipped (AdamW's weight decay and momentum would still move the weights).
    Checked after gradient clipping, just before ``optimizer.step()``; the step is made a no-op with
    :func:`drop_gradients` and counted in ``counts.skipped_updates``; the learning-rate schedule still
    advances. After DDP's all-reduce every process sees the same gradient, so all processes take the same
    decision. Under fp16's ``GradScaler`` a non-finite gradient is the scaler's: it skips that step
    itself and lowers its scale (uncounted). DeepSpeed and FSDP step the optimizer inside their engines:
    the trainer does not add this callback there.

    Args:
        counts: the process's :class:`~.skips.SkipCounts`, shared with the trainer.
    """

    def __init__(self, counts: SkipCounts):
        self.counts = counts

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs,
    ) -> None:
        """Drop the gradient of a step that must not be taken (see the class docstring)."""
        if optimizer is None:
            return
        reason = bad_update_reason(optimizer_gradients(optimizer))
        if reason is None or (reason == NON_FINITE_GRADIENT and grad_scaler(optimizer) is not None):
            return
        self.counts.skipped_updates += 1
        logger.warning(
            "step %d: optimizer step skipped (%s); %d skipped so far",
            state.global_step + 1,
            reason,
            self.counts.skipped_updates,
        )
        drop_gradients(optimizer)


class SaveSkipCounts(TrainerCallback):
    """Checkpoint bookkeeping: the skip counts go into every checkpoint, ahead of ``trainer_state.json``.

    ``trainer_state.json`` is the Trainer's last file of a checkpoint and marks it complete
    (``training.run.last_complete_checkpoint``), so the counts must be there before it. The Trainer
    decides to save in ``on_step_end`` / ``on_epoch_end`` (``DefaultFlowCallback``, which runs first,
    sets ``control.should_save``) and saves right after them: the counts are written then, into the
    ``checkpoint-<global_step>`` folder the Trainer is about to fill. ``on_save`` writes them again
    (atomically) once the checkpoint is saved, so that they include what an evaluation at the same step
    found, and so that a save decided later (``save_strategy="best"``) gets them too. Every process writes
    its own file (:func:`~.skips.skip_counts_name`).

    Args:
        counts: the process's :class:`~.skips.SkipCounts`, shared with the trainer.
    """

    def __init__(self, counts: SkipCounts):
        self.counts = counts

    @staticmethod
    def checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
        """The folder of the checkpoint of the current step (as the Trainer names it)."""
        return Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _write(self, args: TrainingArguments, state: TrainerState) -> None:
        self.counts.save(self.checkpoint_folder(args, state), args.process_index, args.world_size)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        """Before a step's checkpoint: write the counts into its folder."""
        if control.should_save:
            self._write(args, state)

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        """Before an epoch's checkpoint: write the counts into its folder."""
        if control.should_save:
            self._write(args, state)

    def on_save(self, args, state, control, **kwargs) -> None:
        """After a checkpoint: write the counts again, as they are now."""
        if self.checkpoint_folder(args, state).is_dir():
            self._write(args, state)


class RotateOwnCheckpoints(TrainerCallback):
    """``--save-total-limit`` that deletes only checkpoint folders this run wrote.

    The Trainer's own rotation deletes the oldest ``checkpoint-*`` folders of the output folder, whoever
    wrote them (and, with ``load_best_model_at_end`` and a limit of 1, every one but the best at the end);
    ``EarlyExitTrainer.train`` turns it off (``save_total_limit=None`` while training) and hands the limit
    to this callback, which applies the same rule (keep the newest and the best) to the folders the
    :class:`~.outputs.RunFolder` owns. A checkpoint is claimed when the Trainer decides to save it
    (``on_step_end`` / ``on_epoch_end``) and again once saved (``on_save``); the folder's
    ``run_settings.json`` lists the claimed ones, so a resumed run may rotate them too. Only the process
    that saves (``args.should_save``) writes or deletes.

    Args:
        folder: the run's :class:`~.outputs.RunFolder`.
    """

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.limit: int | None = None

    @staticmethod
    def _name(state: TrainerState) -> str:
        return f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    def _claim(self, args: TrainingArguments, state: TrainerState) -> None:
        name = self._name(state)
        if name in self.folder.owned or not self.folder.claim(name):
            return
        if args.should_save:
            self.folder.write_record()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        """Note the checkpoint folders already there that are not the run's (never deleted)."""
        self.folder.begin()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        """Claim the checkpoint about to be saved."""
        if control.should_save:
            self._claim(args, state)

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        """Claim the checkpoint about to be saved."""
        if control.should_save:
            self._claim(args, state)

    def on_save(self, args, state, control, **kwargs) -> None:
        """Claim the checkpoint just saved, then delete the run's oldest beyond the limit."""
        self._claim(args, state)
        if not args.should_save:
            return
        keep = {self._name(state)}
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint).name)
        if self.folder.rotate(self.limit, keep):
            self.folder.write_record()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """As the Trainer with ``load_best_model_at_end`` and a limit of 1: keep only the best of the
        run's checkpoints."""
        if args.should_save and self.limit == 1 and state.best_model_checkpoint:
            best = Path(state.best_model_checkpoint).name
            if self.folder.rotate(1, {best}, keep_newest=False):
                self.folder.write_record()
