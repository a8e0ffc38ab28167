"""The ``Trainer`` subclass: the objective's loss, per-exit logging, teacher pseudo-labels, and the
guards that keep a long run alive (non-finite batches skipped, bad audio counted, resumable order)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..io import atomic_write_text
from ..modeling import Wav2Vec2EEForCTC
from ..objectives import greedy_pseudo_labels
from .budget import CompressedLambdaLR, TimeBudget

logger = logging.getLogger(__name__)


class TeacherLabels:
    """Pseudo-labels of a frozen teacher's last exit, cached per training utterance.

    The teacher runs in eval mode (deterministic), so its greedy labels for an utterance never change:
    the first epoch computes them, later epochs read the cache (one entry per speed factor when the
    audio is speed-perturbed, since the labels must fit the perturbed length). The teacher is held here, outside the
    student, so it is never saved inside the student's checkpoints.
    """

    def __init__(self, teacher: Wav2Vec2EEForCTC, blank_id: int, word_delimiter_id: int | None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.blank_id = blank_id
        self.word_delimiter_id = word_delimiter_id
        self.cache: dict[int | tuple[int, float], torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(batch, max_len)`` pseudo-labels padded with -100 for the batch ``inputs``."""
        index = inputs.get("utt_index")
        keys = index.tolist() if index is not None else [None] * inputs["input_values"].shape[0]
        if index is not None and inputs.get("speed") is not None:  # speed-perturbed: one entry per speed
            keys = list(zip(keys, inputs["speed"].tolist()))
        missing = [i for i, k in enumerate(keys) if k is None or k not in self.cache]
        if missing:
            device = next(self.teacher.parameters()).device
            rows = torch.as_tensor(missing, device=inputs["input_values"].device)
            values = inputs["input_values"][rows].to(device)
            mask = inputs.get("attention_mask")
            mask = mask[rows].to(device) if mask is not None else None
            if mask is not None:  # trim padding only the missing rows needed
                width = int(mask.sum(-1).max())
                values, mask = values[:, :width], mask[:, :width]
            out = self.teacher(values, attention_mask=mask)
            labels = greedy_pseudo_labels(
                out.logits, out.output_lengths, self.blank_id, self.word_delimiter_id
            )
            fresh = {}
            for j, i in enumerate(missing):
                row = labels[j]
                fresh[i] = row[row >= 0].cpu()
                if keys[i] is not None:
                    self.cache[keys[i]] = fresh[i]
        rows = [self.cache[k] if k is not None and k in self.cache else fresh[i] for i, k in enumerate(keys)]
        width = max(1, max(len(r) for r in rows))
        out = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out.to(inputs["input_values"].device)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """``LengthGroupedSampler`` whose order is drawn from ``seed + epoch`` alone.

    The plain sampler draws from the global RNG, so a run resumed in the middle of a later epoch would
    see another order than the uninterrupted run. Here the order of epoch ``e`` is a function of
    ``(seed, e)``: identical after a resume and on every process. ``set_epoch`` is called by
    ``accelerate``'s data loader at the start of every epoch.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, dataset=None):
        super().__init__(batch_size, lengths=lengths)
        self.seed = int(seed)
        self.epoch = 0
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):  # speed perturbation draws per epoch too
            self.dataset.set_epoch(self.epoch)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        lengths = self.lengths
        if hasattr(self.dataset, "lengths_in_epoch"):  # speed-perturbed lengths: group what gets padded
            lengths = self.dataset.lengths_in_epoch(self.epoch)
        return iter(get_length_grouped_indices(lengths, self.batch_size, generator=generator))


SKIP_COUNTS_NAME = "skip_counts.json"


class EarlyExitTrainer(Trainer):
    """``Trainer`` whose loss is an early-exit objective; every term is logged per exit.

    Logged as ``loss/ctc_exit_<layer>``, ``loss/kd_exit_<layer>``, ``loss/confidence_exit_<layer>``
    (averaged over the steps since the last log).

    Bad batches never kill the run and never move the weights:

    * a batch whose loss is not finite contributes a zero loss (so every DDP process still runs its
      backward) and is counted in ``skipped_nonfinite_batches``;
    * an optimizer step whose gradient is non-finite, or exactly zero because every batch of the step
      was skipped, is not taken (AdamW's weight decay and momentum would otherwise still move the
      weights); counted in ``skipped_updates``. After DDP's all-reduce every process sees the same
      gradient, so all processes take the same decision. The learning-rate schedule still advances.
    * audio that fails to decode at training time is replaced by the next readable item by
      :class:`~wav2vec2_ee.data.SpeechDataset` and recorded in ``bad_audio`` (path → reason), also when
      the data loader runs in worker processes.

    These counts are saved with every checkpoint (``skip_counts.json``) and restored on resume.

    With ``time_budget`` (seconds), the run plans fewer steps when the measured pace would overrun it
    and plays the configured learning-rate schedule compressed to them (:mod:`.budget`).
    """

    def __init__(
        self,
        *args,
        objective,
        teacher_labels: TeacherLabels | None = None,
        time_budget: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.time_budget = time_budget
        if time_budget is not None:
            self.add_callback(TimeBudget(time_budget))
        self.objective = objective
        self.teacher_labels = teacher_labels
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)
        self._batch_skipped = False
        self.skipped_nonfinite_batches = 0
        self.skipped_updates = 0
        self.bad_audio: dict[str, str] = {}

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=dataset.lengths,
                seed=seed,
                dataset=dataset,
            )
        return super()._get_train_sampler(train_dataset)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh and self.time_budget is not None:
            self.lr_scheduler = scheduler = CompressedLambdaLR.from_scheduler(scheduler, num_training_steps)
        return scheduler

    # ----------------------------------------------------------------------------------------------
    # skipping bad updates
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        guardable = not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if guardable and not getattr(optimizer, "_ee_guarded", False):
            # Wrap the torch optimizer itself (inside accelerate's wrapper and any GradScaler), so that
            # a skipped step is skipped whatever calls it.
            inner_step = optimizer.step

            @functools.wraps(inner_step)
            def guarded_step(*args, **kwargs):
                reason = self._bad_update_reason(optimizer)
                if reason is not None:
                    self.skipped_updates += 1
                    logger.warning(
                        "step %d: optimizer step skipped (%s); %d skipped so far",
                        self.state.global_step + 1,
                        reason,
                        self.skipped_updates,
                    )
                    return None
                return inner_step(*args, **kwargs)

            optimizer.step = guarded_step
            optimizer._ee_guarded = True
        return optimizer

    @staticmethod
    def _bad_update_reason(optimizer: torch.optim.Optimizer) -> str | None:
        """Why the gradient held by ``optimizer``'s parameters must not be applied (``None``: apply it)."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return None
        norms = torch._foreach_norm([g.detach() for g in grads])
        total = float(torch.stack([n.to(norms[0].device, torch.float64) for n in norms]).sum())
        if not math.isfinite(total):
            return "non-finite gradient"
        if total == 0.0:
            return "zero gradient: every batch of the step was skipped"
        return None

    def training_step(self, model: nn.Module, inputs, num_items_in_batch=None) -> torch.Tensor:
        self._batch_skipped = False
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._batch_skipped:
            # reported as NaN so that the logged running loss leaves the batch out (logging_nan_inf_filter)
            return torch.full_like(loss, float("nan"))
        return loss

    # ----------------------------------------------------------------------------------------------
    # skip counts: saved in each checkpoint, restored on resume
    def skip_counts(self) -> dict:
        return {
            "skipped_nonfinite_batches": self.skipped_nonfinite_batches,
            "skipped_updates": self.skipped_updates,
            "bad_audio": dict(self.bad_audio),
        }

    def _skip_counts_name(self) -> str:
        if self.args.world_size <= 1:
            return SKIP_COUNTS_NAME
        return SKIP_COUNTS_NAME.replace(".json", f"_{self.args.process_index}.json")

    def restore_skip_counts(self, checkpoint: str | os.PathLike | None) -> None:
        """Continue the counts of ``checkpoint`` (a resumed run reports the whole run's counts)."""
        path = Path(checkpoint, self._skip_counts_name()) if checkpoint else None
        if path is None or not path.is_file():
            return
        counts = json.loads(path.read_text(encoding="utf-8"))
        self.skipped_nonfinite_batches = int(counts.get("skipped_nonfinite_batches", 0))
        self.skipped_updates = int(counts.get("skipped_updates", 0))
        self.bad_audio.update(counts.get("bad_audio", {}))

    def _save_checkpoint(self, model, trial) -> None:
        # Written first: the Trainer writes trainer_state.json last, and its presence marks the
        # checkpoint complete (see training.run.last_complete_checkpoint).
        folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        atomic_write_text(folder / self._skip_counts_name(), json.dumps(self.skip_counts(), indent=2))
        super()._save_checkpoint(model, trial)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            # every process has written its files before process 0 writes trainer_state.json
            torch.distributed.barrier()

    def compute_loss(self, model: nn.Module, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        for source, reason in inputs.pop("skipped_audio", None) or ():
            self.bad_audio.setdefault(str(source), str(reason))
        teacher_labels = None
        if self.teacher_labels is not None and model.training:
            teacher_labels = self.teacher_labels(inputs)
        inputs.pop("utt_index", None)
        inputs.pop("speed", None)
        outputs = model(**inputs, num_exits=self.objective.exits_needed)
        if teacher_labels is None and getattr(self.objective, "needs_teacher", False):
            # evaluation without a cached teacher: distil from the student's own last exit
            teacher_labels = greedy_pseudo_labels(
                outputs.exit_logits[-1],
                outputs.output_lengths,
                self.objective.blank_id,
                self.objective.word_delimiter_id,
            )
        result = self.objective(outputs.exit_logits, outputs.output_lengths, labels, teacher_labels)
        loss = result.loss
        if model.training:
            if not torch.isfinite(loss):
                self.skipped_nonfinite_batches += 1
                self._batch_skipped = True
                logger.warning(
                    "step %d: non-finite loss (%s) in a batch; skipped (%d so far)",
                    self.state.global_step + 1,
                    loss.item(),
                    self.skipped_nonfinite_batches,
                )
                # a zero that still touches every exit's graph, so DDP sees the usual parameters
                loss = sum(z.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0 for z in outputs.exit_logits)
            else:
                for name, value in result.terms.items():
                    v = float(value)
                    if math.isfinite(v):
                        self._term_sums[name] += v
                        self._term_counts[name] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"loss/{name}"] = round(total / max(1, self._term_counts[name]), 6)
            self._term_sums.clear()
            self._term_counts.clear()
            for name in ("skipped_nonfinite_batches", "skipped_updates"):
                if getattr(self, name):
                    logs[name] = getattr(self, name)
            if self.bad_audio:
                logs["unreadable_audio_files"] = len(self.bad_audio)
        super().log(logs, start_time)
