"""``EarlyExitTrainer``: the ``Trainer`` with an early-exit objective's loss and its per-exit logging.

Everything else the run needs sits beside it, on public ``Trainer`` hooks where transformers has one:

* pseudo-labels of the distilling objectives: :class:`.teacher.TeacherLabels`;
* the non-finite-step guard and the skip counts in checkpoints: :mod:`.callbacks`, counting into
  :class:`.skips.SkipCounts`;
* the time budget: :class:`.budget.TimeBudget` (a callback) and ``create_scheduler``;
* the output folder: the run's settings in every checkpoint (``save_model``) and ``--save-total-limit``
  over the run's own checkpoints only (:class:`.callbacks.RotateOwnCheckpoints`, ``train``);
* the resumable training order: :mod:`.sampler`.

Two private ``Trainer`` hooks remain, each with its reason beside it (``_get_train_sampler``,
``_save_rng_state``); ``pyproject.toml`` pins the transformers versions they were tested with.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..objectives import ObjectiveOutput
from .budget import CompressedLambdaLR, TimeBudget
from .callbacks import RotateOwnCheckpoints, SaveSkipCounts, SkipBadUpdates
from .outputs import RunFolder
from .sampler import epoch_seeded_sampler
from .skips import SkipCounts
from .teacher import TeacherLabels

logger = logging.getLogger(__name__)


class EarlyExitTrainer(Trainer):
    """``Trainer`` whose loss is an early-exit objective; every term is logged per exit.

    Logged as ``loss/ctc_exit_<layer>``, ``loss/kd_exit_<layer>``, ``loss/confidence_exit_<layer>``
    (averaged over the steps since the last log), with the non-zero skip counts.

    Bad batches never kill the run and never move the weights:

    * a batch whose loss is not finite contributes a zero loss (so every DDP process still runs its
      backward) and is counted in ``skipped_nonfinite_batches``;
    * an optimizer step whose gradient is non-finite, or exactly zero because every batch of the step
      was skipped, is not taken (:class:`~.callbacks.SkipBadUpdates`); counted in ``skipped_updates``;
    * audio that fails to decode at training time is replaced by the next readable item by
      :class:`~wav2vec2_ee.data.SpeechDataset` and recorded in ``bad_audio`` (path → reason), also when
      the data loader runs in worker processes.

    These counts (:attr:`counts`) are saved with every checkpoint (``skip_counts.json``,
    :class:`~.callbacks.SaveSkipCounts`) and restored on resume (:meth:`restore_skip_counts`).

    With ``time_budget`` (seconds), the run plans fewer steps when the measured pace would overrun it
    and plays the configured learning-rate schedule compressed to them (:mod:`.budget`).

    ``--save-total-limit`` deletes only checkpoint folders this run wrote (``run_folder``'s; the
    Trainer's own rotation, which deletes any ``checkpoint-*`` folder, is off while training), and
    every checkpoint records the run's settings (``run_settings.json``, before ``trainer_state.json``).

    Args:
        objective: a :func:`~wav2vec2_ee.objectives.build_objective` objective.
        teacher_labels: the objective's pseudo-labels (default: :meth:`TeacherLabels.for_objective`,
            without a frozen teacher).
        time_budget: wall-clock seconds for the training loop, or ``None``.
        run_folder: the output folder's :class:`~.outputs.RunFolder` (its settings and the checkpoints
            the run owns); default: no recorded settings, the run owns the checkpoint folders it creates.
        *args, **kwargs: as for ``Trainer``.
    """

    def __init__(
        self,
        *args,
        objective,
        teacher_labels: TeacherLabels | None = None,
        time_budget: float | None = None,
        run_folder: RunFolder | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.run_folder = run_folder if run_folder is not None else RunFolder(Path(self.args.output_dir))
        self.rotation = RotateOwnCheckpoints(self.run_folder)
        self.objective = objective
        if teacher_labels is None:
            teacher_labels = TeacherLabels.for_objective(objective)
        self.teacher_labels = teacher_labels
        self.time_budget = time_budget
        self.counts = SkipCounts()
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)
        self._batch_skipped = False
        for callback in self._bookkeeping_callbacks():
            self.add_callback(callback)

    def _bookkeeping_callbacks(self) -> list[TrainerCallback]:
        """The time budget, the non-finite-step guard, the skip counts' checkpoint files and the
        rotation of the run's own checkpoints."""
        callbacks: list[TrainerCallback] = []
        if self.time_budget is not None:
            callbacks.append(TimeBudget(self.time_budget))
        if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):  # their engines step the optimizer
            callbacks.append(SkipBadUpdates(self.counts))
        callbacks.append(SaveSkipCounts(self.counts))
        callbacks.append(self.rotation)
        return callbacks

    # ----------------------------------------------------------------------------------------------
    # the two private hooks (tested with the transformers versions pyproject.toml allows)
    def _get_train_sampler(self, train_dataset=None):
        # Private: the Trainer takes no sampler and builds its training sampler only here; the public
        # alternative, overriding get_train_dataloader, would copy the private _get_dataloader (column
        # removal, worker seeding, accelerate's prepare) instead.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = epoch_seeded_sampler(self.args, dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        # Private: every process must have written its files before process 0 writes
        # trainer_state.json, the mark of a complete checkpoint; both happen inside _save_checkpoint
        # with no callback event between them (on_save comes after), so the barrier goes here.
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    # ----------------------------------------------------------------------------------------------
    # public hooks
    def train(self, *args, **kwargs):
        """``Trainer.train`` with ``--save-total-limit`` applied to the run's own checkpoints only
        (:class:`~.callbacks.RotateOwnCheckpoints`): ``args.save_total_limit`` is ``None`` meanwhile (as
        the ``training_args.bin`` of the checkpoints records it)."""
        limit = self.args.save_total_limit
        self.rotation.limit = limit
        self.args.save_total_limit = None
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.save_total_limit = limit

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As ``Trainer.save_model``; into a checkpoint folder (the Trainer's first write of a checkpoint,
        well before ``trainer_state.json``) the run's settings too."""
        super().save_model(output_dir, _internal_call)
        if (
            output_dir is not None
            and self.args.should_save
            and Path(output_dir).name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        ):
            self.run_folder.write_settings_into(output_dir)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The configured schedule; under a time budget, as a :class:`CompressedLambdaLR`."""
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh and self.time_budget is not None:
            self.lr_scheduler = scheduler = CompressedLambdaLR.from_scheduler(scheduler, num_training_steps)
        return scheduler

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        """As ``Trainer.training_step``; a skipped batch reports a NaN loss (a scalar), so that the
        logged running loss leaves it out (``logging_nan_inf_filter``)."""
        self._batch_skipped = False
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._batch_skipped:
            return torch.full_like(loss, float("nan"))
        return loss

    def compute_loss(self, model: nn.Module, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The objective's scalar loss over the exits of the batch ``inputs``.

        ``inputs``: the collator's batch (``input_values`` ``(batch, samples)``, ``attention_mask``,
        ``labels`` ``(batch, target_len)`` padded with -100, ``utt_index`` / ``speed`` ``(batch,)``,
        ``skipped_audio``). In training a non-finite loss becomes a zero (:meth:`_finite_or_zero`).
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        self.counts.note_bad_audio(inputs.pop("skipped_audio", None))
        pseudo = None
        if self.teacher_labels is not None:
            pseudo = self.teacher_labels.before_forward(inputs, model.training)
        for column in TeacherLabels.CACHE_COLUMNS:
            inputs.pop(column, None)
        outputs = model(**inputs, num_exits=self.objective.exits_needed)
        if self.teacher_labels is not None:
            pseudo = self.teacher_labels.after_forward(
                pseudo, outputs.exit_logits, outputs.output_lengths, model.training
            )
        result = self.objective(outputs.exit_logits, outputs.output_lengths, labels, pseudo)
        loss = self._finite_or_zero(result, outputs.exit_logits) if model.training else result.loss
        return (loss, outputs) if return_outputs else loss

    def _finite_or_zero(self, result: ObjectiveOutput, exit_logits: list[torch.Tensor]) -> torch.Tensor:
        """``result.loss`` (a scalar) when finite, its terms kept for the log; else a counted, logged
        zero that still touches every exit's ``(batch, frames, vocab)`` logits, so that DDP sees the
        usual parameters in the backward."""
        if torch.isfinite(result.loss):
            for name, value in result.terms.items():
                v = float(value)
                if math.isfinite(v):
                    self._term_sums[name] += v
                    self._term_counts[name] += 1
            return result.loss
        self.counts.skipped_nonfinite_batches += 1
        self._batch_skipped = True
        logger.warning(
            "step %d: non-finite loss (%s) in a batch; skipped (%d so far)",
            self.state.global_step + 1,
            result.loss.item(),
            self.counts.skipped_nonfinite_batches,
        )
        return sum(z.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0 for z in exit_logits)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """As ``Trainer.log``; a training log also gets the per-exit terms and the skip counts."""
        if "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"loss/{name}"] = round(total / max(1, self._term_counts[name]), 6)
            self._term_sums.clear()
            self._term_counts.clear()
            logs.update(self.counts.log_fields())
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------
    # skip counts
    @property
    def skipped_nonfinite_batches(self) -> int:
        """Batches whose loss was not finite, in this process."""
        return self.counts.skipped_nonfinite_batches

    @property
    def skipped_updates(self) -> int:
        """Optimizer steps not taken."""
        return self.counts.skipped_updates

    @property
    def bad_audio(self) -> dict[str, str]:
        """Audio path → reason, for audio that failed to decode at training time in this process."""
        return self.counts.bad_audio

    def skip_counts(self) -> dict:
        """This process's counts as plain values (:meth:`SkipCounts.as_dict`)."""
        return self.counts.as_dict()

    def restore_skip_counts(self, checkpoint: str | os.PathLike | None) -> None:
        """Continue the counts of ``checkpoint`` (a resumed run reports the whole run's counts)."""
        self.counts.restore(checkpoint, self.args.process_index, self.args.world_size)
