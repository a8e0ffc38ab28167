"""The ``Trainer`` subclass: the objective's loss, per-exit logging, teacher pseudo-labels."""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..modeling import Wav2Vec2EEForCTC
from ..objectives import greedy_pseudo_labels

logger = logging.getLogger(__name__)


class TeacherLabels:
    """Pseudo-labels of a frozen teacher's last exit, cached per training utterance.

    The teacher runs in eval mode (deterministic), so its greedy labels for an utterance never change:
    the first epoch computes them, later epochs read the cache. The teacher is held here, outside the
    student, so it is never saved inside the student's checkpoints.
    """

    def __init__(self, teacher: Wav2Vec2EEForCTC, blank_id: int, word_delimiter_id: int | None):
        self.teacher = teacher.eval().requires_grad_(False)
        self.blank_id = blank_id
        self.word_delimiter_id = word_delimiter_id
        self.cache: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(batch, max_len)`` pseudo-labels padded with -100 for the batch ``inputs``."""
        index = inputs.get("utt_index")
        keys = index.tolist() if index is not None else [None] * inputs["input_values"].shape[0]
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


class EarlyExitTrainer(Trainer):
    """``Trainer`` whose loss is an early-exit objective; every term is logged per exit.

    Logged as ``loss/ctc_exit_<layer>``, ``loss/kd_exit_<layer>``, ``loss/confidence_exit_<layer>``
    (averaged over the steps since the last log). A batch whose loss is not finite is skipped (no
    gradient from it) and counted in ``skipped_nonfinite_batches``.
    """

    def __init__(self, *args, objective, teacher_labels: TeacherLabels | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.teacher_labels = teacher_labels
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_counts: dict[str, int] = defaultdict(int)
        self.skipped_nonfinite_batches = 0

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=dataset.lengths,
            )
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model: nn.Module, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        teacher_labels = None
        if self.teacher_labels is not None and model.training:
            teacher_labels = self.teacher_labels(inputs)
        inputs.pop("utt_index", None)
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
                logger.warning(
                    "step %d: non-finite loss (%s) in a batch; skipped (%d so far)",
                    self.state.global_step,
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
        if "loss" in logs and self._term_counts:
            for name, total in self._term_sums.items():
                logs[f"loss/{name}"] = round(total / max(1, self._term_counts[name]), 6)
            self._term_sums.clear()
            self._term_counts.clear()
            if self.skipped_nonfinite_batches:
                logs["skipped_nonfinite_batches"] = self.skipped_nonfinite_batches
        super().log(logs, start_time)
