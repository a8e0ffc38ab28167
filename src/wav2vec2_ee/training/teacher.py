"""Pseudo-labels of the distilling objectives (kd, dkd): the one place that decides where they come from.

* ``kd`` in training: a frozen teacher's last exit, greedy, cached per training utterance;
* ``kd`` in evaluation, and ``dkd`` always: the student's own last computed exit of the same pass
  (greedy, no gradient).

The objectives take them as ``teacher_labels`` (see :mod:`wav2vec2_ee.objectives`; ``dkd`` still
computes the same labels itself when called without them). ``EarlyExitTrainer.compute_loss`` asks
:class:`TeacherLabels` once before the student's forward (:meth:`~TeacherLabels.before_forward`: the
teacher runs first, so its activations are freed before the student's are built) and once after it
(:meth:`~TeacherLabels.after_forward`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainingArguments, Wav2Vec2CTCTokenizer

from ..errors import UserError
from ..labels import pad_labels
from ..loading import load_model
from ..objectives import greedy_pseudo_labels

CacheKey = int | tuple[int, float]


class TeacherLabels:
    """The pseudo-labels of one run's distilling objective (see the module docstring).

    The frozen teacher runs in eval mode (deterministic), so its greedy labels for an utterance never
    change: the first epoch computes them, later epochs read :attr:`cache` (one entry per speed factor
    when the audio is speed-perturbed, since the labels must fit the perturbed length). The teacher is
    held here, outside the student, so it is never saved inside the student's checkpoints.

    Args:
        teacher: the frozen teacher (``kd``), or ``None`` (``dkd``: the student teaches itself).
        blank_id: the CTC blank id. word_delimiter_id: the id of ``|`` (stripped from the ends).
        frozen_teacher: whether labels in training must come from the frozen teacher (default: whether
            one is given); without a teacher, training then gets no labels and ``kd`` says so.
    """

    #: batch columns that key the cache; they are no model inputs
    CACHE_COLUMNS = ("utt_index", "speed")

    def __init__(
        self,
        teacher: nn.Module | None,
        blank_id: int,
        word_delimiter_id: int | None,
        frozen_teacher: bool | None = None,
    ):
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.blank_id = blank_id
        self.word_delimiter_id = word_delimiter_id
        self.frozen_teacher = teacher is not None if frozen_teacher is None else bool(frozen_teacher)
        self.cache: dict[CacheKey, torch.Tensor] = {}

    @classmethod
    def for_objective(cls, objective, teacher: nn.Module | None = None) -> TeacherLabels | None:
        """The pseudo-labels ``objective`` takes (``None`` when it takes none), with its blank and
        delimiter ids; from ``teacher`` in training when the objective distils a frozen teacher."""
        if not getattr(objective, "distils", False):
            return None
        return cls(teacher, objective.blank_id, objective.word_delimiter_id, objective.needs_teacher)

    def before_forward(self, inputs: dict[str, torch.Tensor], training: bool) -> torch.Tensor | None:
        """The frozen teacher's ``(batch, max_len)`` labels for a training batch; ``None`` otherwise."""
        if training and self.frozen_teacher and self.teacher is not None:
            return self(inputs)
        return None

    def after_forward(
        self,
        labels: torch.Tensor | None,
        exit_logits: list[torch.Tensor],
        output_lengths: torch.Tensor,
        training: bool,
    ) -> torch.Tensor | None:
        """The labels the objective gets: ``labels`` from :meth:`before_forward` when there are some,
        else the student's own ``(batch, max_len)`` labels from its last computed exit.

        Args:
            exit_logits: the student's ``(batch, frames, vocab)`` logits per computed exit.
            output_lengths: ``(batch,)`` valid frames.
        """
        if labels is not None or (training and self.frozen_teacher):
            return labels
        return greedy_pseudo_labels(exit_logits[-1], output_lengths, self.blank_id, self.word_delimiter_id)

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(batch, max_len)`` pseudo-labels of the frozen teacher, padded with -100, for the batch
        ``inputs`` (``input_values`` ``(batch, samples)``, optional ``attention_mask``, ``utt_index`` and
        ``speed`` ``(batch,)``); on the device of ``input_values``."""
        keys = self._cache_keys(inputs)
        missing = [i for i, k in enumerate(keys) if k is None or k not in self.cache]
        fresh = self._run_teacher(inputs, missing) if missing else {}
        for i in missing:
            if keys[i] is not None:
                self.cache[keys[i]] = fresh[i]
        rows = [self.cache[k] if k is not None and k in self.cache else fresh[i] for i, k in enumerate(keys)]
        return pad_labels(rows).to(inputs["input_values"].device)

    @staticmethod
    def _cache_keys(inputs: dict[str, torch.Tensor]) -> list[CacheKey | None]:
        """One cache key per row: ``utt_index``, with ``speed`` when speed-perturbed; ``None``: uncached."""
        index = inputs.get("utt_index")
        if index is None:
            return [None] * inputs["input_values"].shape[0]
        if inputs.get("speed") is not None:  # speed-perturbed: one entry per speed
            return list(zip(index.tolist(), inputs["speed"].tolist()))
        return index.tolist()

    def _run_teacher(self, inputs: dict[str, torch.Tensor], rows: list[int]) -> dict[int, torch.Tensor]:
        """The teacher's labels of the batch rows ``rows``: row → 1-D ids on the CPU."""
        device = next(self.teacher.parameters()).device
        index = torch.as_tensor(rows, device=inputs["input_values"].device)
        values = inputs["input_values"][index].to(device)
        mask = inputs.get("attention_mask")
        mask = mask[index].to(device) if mask is not None else None
        if mask is not None:  # trim padding only the missing rows needed
            width = int(mask.sum(-1).max())
            values, mask = values[:, :width], mask[:, :width]
        out = self.teacher(values, attention_mask=mask)
        labels = greedy_pseudo_labels(out.logits, out.output_lengths, self.blank_id, self.word_delimiter_id)
        return {i: labels[j][labels[j] >= 0].cpu() for j, i in enumerate(rows)}


def build_teacher_labels(
    objective, teacher_path: str | None, tokenizer: Wav2Vec2CTCTokenizer, training_args: TrainingArguments
) -> TeacherLabels | None:
    """Step 4 of a run: the pseudo-labels of ``objective`` (``None`` when it takes none); when it needs
    a frozen teacher, that is loaded from ``teacher_path`` for ``tokenizer``'s vocabulary onto
    ``training_args.device``.

    Raises:
        UserError: ``kd`` without a teacher.
    """
    teacher = None
    if objective.needs_teacher:
        if teacher_path is None:
            raise UserError(
                "--objective kd needs a teacher: pass --teacher or start from a --model checkpoint"
            )
        teacher = load_model(teacher_path, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        teacher.to(training_args.device)
    return TeacherLabels.for_objective(objective, teacher)
