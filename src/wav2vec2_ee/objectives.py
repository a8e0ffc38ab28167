"""Training objectives over exit logits: small pure functions, combined and logged in one place.

Notation (as in the project's docs): exits ``k = 1..K`` at layers ``l_1 < ... < l_K`` with logits
``z_k`` of shape ``(batch, frames, vocab)``; ``T_b`` valid frames per utterance; labels ``y``
``(batch, target_len)`` padded with -100; CTC blank = the pad token id; ``r`` the config's
``ctc_loss_reduction``. Only the first ``n = num_exits`` exits are active (the seed's manual exit
activation), for every objective.

* ``ee``:  ``L = sum_k CTC_r(z_k, y)``
* ``kd``:  ``L = a * sum_k CTC_r(z_k, y) + (1 - a) * sum_{k<K} CTC_r(z_k, y_hat)``, ``y_hat`` from a
  frozen teacher's last exit
* ``dkd``: ``L = sum_k a_k CTC_r(z_k, y) + sum_{k<K} (1 - a_k) CTC_r(z_k, y_hat)``, ``y_hat`` from the
  model's own last exit in the same pass (no gradient through it)
* ``confidence``: ``L = sum_k mean_b(l_{k,b} / (c_k |y_b|))`` (inverse) or ``mean_b(l_{k,b} c_k / |y_b|)``
  with ``c_k = max(0.1, exp(mean over valid frames of max log-prob))``, a constant. The seed averaged
  the confidence over padded frames too; here only valid frames count.

Use :func:`build_objective` (the one place where objective names are read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .configuration import Wav2Vec2EEConfig
from .errors import UserError
from .labels import frame_mask, pad_labels

OBJECTIVES = ("ee", "kd", "dkd", "confidence")
DEFAULT_KD_ALPHA = 0.3
DEFAULT_DKD_ALPHA = (0.65, 0.70, 0.75, 0.80, 0.85, 1.00)


# --------------------------------------------------------------------------------------------------
# pure tensor functions


def ctc_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(frames, batch, vocab)`` float32 log-probabilities, as ``torch.nn.functional.ctc_loss`` wants."""
    return F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)


def ctc_per_utterance(
    logits: torch.Tensor,
    output_lengths: torch.Tensor,
    labels: torch.Tensor,
    blank_id: int,
    zero_infinity: bool = False,
) -> torch.Tensor:
    """``(batch,)`` CTC negative log-likelihood of each utterance (no reduction).

    Args:
        logits: ``(batch, frames, vocab)``.
        output_lengths: ``(batch,)`` valid frames.
        labels: ``(batch, target_len)`` ids padded with -100 (any negative value is padding).
    """
    mask = labels >= 0
    return F.ctc_loss(
        ctc_log_probs(logits),
        labels.masked_select(mask),
        output_lengths.to(torch.long),
        mask.sum(-1),
        blank=blank_id,
        reduction="none",
        zero_infinity=zero_infinity,
    )


def ctc_at_exit(
    logits: torch.Tensor,
    output_lengths: torch.Tensor,
    labels: torch.Tensor,
    blank_id: int,
    config: Wav2Vec2EEConfig | None = None,
    reduction: str | None = None,
    zero_infinity: bool | None = None,
) -> torch.Tensor:
    """Scalar CTC loss of one exit with the reduction of ``Wav2Vec2ForCTC``.

    ``"sum"`` adds the utterance losses; ``"mean"`` divides each by its target length and averages
    over the batch (``torch.nn.functional.ctc_loss``'s ``mean``). Defaults come from ``config``.
    """
    reduction = reduction or (config.ctc_loss_reduction if config is not None else "mean")
    if zero_infinity is None:
        zero_infinity = bool(config.ctc_zero_infinity) if config is not None else False
    losses = ctc_per_utterance(logits, output_lengths, labels, blank_id, zero_infinity)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return (losses / (labels >= 0).sum(-1).clamp(min=1)).mean()
    raise ValueError(f"ctc_loss_reduction must be 'sum' or 'mean', got {reduction!r}")


def exit_confidence(logits: torch.Tensor, output_lengths: torch.Tensor, floor: float = 0.1) -> torch.Tensor:
    """Scalar confidence of an exit: ``max(floor, exp(mean over valid frames of max log-prob)))``.

    The mean runs over every valid frame of the batch; the result carries no gradient.
    """
    with torch.no_grad():
        top = F.log_softmax(logits, dim=-1, dtype=torch.float32).max(dim=-1).values
        mask = frame_mask(output_lengths, logits.shape[1])
        mean = top.masked_select(mask).mean()
        return torch.clamp(mean.exp(), min=floor)


def greedy_pseudo_labels(
    logits: torch.Tensor,
    output_lengths: torch.Tensor,
    blank_id: int,
    word_delimiter_id: int | None,
) -> torch.Tensor:
    """Greedy CTC labels of each utterance, padded with -100: ``(batch, max_label_len)``.

    Over the valid frames: argmax per frame, merge repeats, drop blanks, strip leading and trailing
    word delimiters. Works on ids (no text round trip) and carries no gradient.
    """
    with torch.no_grad():
        best = logits.argmax(dim=-1).cpu()
        rows: list[torch.Tensor] = []
        for b in range(best.shape[0]):
            ids = torch.unique_consecutive(best[b, : int(output_lengths[b])])
            ids = ids[ids != blank_id]
            if word_delimiter_id is not None:
                keep = (ids != word_delimiter_id).nonzero()
                ids = ids[int(keep[0]) : int(keep[-1]) + 1] if len(keep) else ids[:0]
            rows.append(ids)
        return pad_labels(rows).to(logits.device)


# --------------------------------------------------------------------------------------------------
# objectives: callables over exit logits


@dataclass
class ObjectiveOutput:
    """``loss``: the scalar to minimise; ``terms``: detached per-exit, per-kind values for logging
    (``ctc_exit_<layer>``, ``kd_exit_<layer>``, ``confidence_exit_<layer>``)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Objective:
    exit_layers: list[int]
    blank_id: int
    word_delimiter_id: int | None
    reduction: str
    zero_infinity: bool
    num_exits: int

    name = "base"
    #: takes pseudo-labels (``teacher_labels``), from :class:`wav2vec2_ee.training.teacher.TeacherLabels`
    distils = False
    #: ... and in training they must come from a frozen teacher (else: the model's own last exit)
    needs_teacher = False

    @property
    def exits_needed(self) -> int:
        """How many exits the model must compute for this objective."""
        return self.num_exits

    def _ctc(self, logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ctc_at_exit(logits, lengths, labels, self.blank_id, None, self.reduction, self.zero_infinity)

    def _check(self, exit_logits: Sequence[torch.Tensor], n: int) -> None:
        if len(exit_logits) < n:
            raise ValueError(f"{self.name} objective needs {n} exit logits, got {len(exit_logits)}")


@dataclass
class EEObjective(_Objective):
    """Sum of the active exits' CTC losses."""

    name = "ee"

    def __call__(self, exit_logits, output_lengths, labels, teacher_labels=None) -> ObjectiveOutput:
        self._check(exit_logits, self.num_exits)
        terms, total = {}, 0.0
        for k in range(self.num_exits):
            ctc = self._ctc(exit_logits[k], output_lengths, labels)
            terms[f"ctc_exit_{self.exit_layers[k]}"] = ctc.detach()
            total = total + ctc
        return ObjectiveOutput(total, terms)


@dataclass
class KDObjective(_Objective):
    """``a * EE + (1 - a) * sum_{k<K} CTC(z_k, teacher pseudo-labels)``."""

    ee_alpha: float = DEFAULT_KD_ALPHA
    name = "kd"
    distils = True
    needs_teacher = True

    def __call__(self, exit_logits, output_lengths, labels, teacher_labels=None) -> ObjectiveOutput:
        if teacher_labels is None:
            raise ValueError(
                "the kd objective needs teacher_labels (pseudo-labels from the teacher's last exit)"
            )
        self._check(exit_logits, self.num_exits)
        K = len(self.exit_layers)
        terms, ee, kd = {}, 0.0, 0.0
        for k in range(self.num_exits):
            layer = self.exit_layers[k]
            ctc = self._ctc(exit_logits[k], output_lengths, labels)
            terms[f"ctc_exit_{layer}"] = ctc.detach()
            ee = ee + ctc
            if k < K - 1:
                dist = self._ctc(exit_logits[k], output_lengths, teacher_labels)
                terms[f"kd_exit_{layer}"] = dist.detach()
                kd = kd + dist
        return ObjectiveOutput(self.ee_alpha * ee + (1.0 - self.ee_alpha) * kd, terms)


@dataclass
class DKDObjective(_Objective):
    """Per-exit weights ``a_k``; pseudo-labels from the model's own last exit (no gradient).

    Training passes them in (``TeacherLabels``, the one place that makes pseudo-labels at run time);
    called without them, the objective computes the same labels itself.
    """

    ee_alpha: tuple[float, ...] = DEFAULT_DKD_ALPHA
    name = "dkd"
    distils = True

    @property
    def exits_needed(self) -> int:
        return len(self.exit_layers)

    def __call__(self, exit_logits, output_lengths, labels, teacher_labels=None) -> ObjectiveOutput:
        K = len(self.exit_layers)
        self._check(exit_logits, K)
        if teacher_labels is None:
            teacher_labels = greedy_pseudo_labels(
                exit_logits[K - 1].detach(), output_lengths, self.blank_id, self.word_delimiter_id
            )
        terms, total = {}, 0.0
        for k in range(self.num_exits):
            layer, a = self.exit_layers[k], self.ee_alpha[k]
            ctc = self._ctc(exit_logits[k], output_lengths, labels)
            terms[f"ctc_exit_{layer}"] = ctc.detach()
            total = total + a * ctc
            if k < K - 1:
                dist = self._ctc(exit_logits[k], output_lengths, teacher_labels)
                terms[f"kd_exit_{layer}"] = dist.detach()
                total = total + (1.0 - a) * dist
        return ObjectiveOutput(total, terms)


@dataclass
class ConfidenceObjective(_Objective):
    """CTC per utterance, divided by its length and by (or multiplied with) the exit's confidence."""

    inverse_confidence: bool = True
    name = "confidence"

    def __call__(self, exit_logits, output_lengths, labels, teacher_labels=None) -> ObjectiveOutput:
        self._check(exit_logits, self.num_exits)
        target_lengths = (labels >= 0).sum(-1).clamp(min=1)
        terms, total = {}, 0.0
        for k in range(self.num_exits):
            layer = self.exit_layers[k]
            per_utt = ctc_per_utterance(
                exit_logits[k], output_lengths, labels, self.blank_id, self.zero_infinity
            )
            c = exit_confidence(exit_logits[k], output_lengths)
            weight = 1.0 / c if self.inverse_confidence else c
            term = (per_utt * weight / target_lengths).mean()
            terms[f"ctc_exit_{layer}"] = (per_utt / target_lengths).mean().detach()
            terms[f"confidence_exit_{layer}"] = c.detach()
            total = total + term
        return ObjectiveOutput(total, terms)


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no"}:
        return False
    raise UserError(f"inverse_confidence must be true or false, got {value!r}")


def build_objective(
    name: str,
    config: Wav2Vec2EEConfig,
    *,
    ee_alpha: float | Sequence[float] | None = None,
    num_exits: int | None = None,
    inverse_confidence: bool | str = True,
    word_delimiter_id: int | None = 4,
) -> _Objective:
    """Build the objective ``name`` (one of ``ee``, ``kd``, ``dkd``, ``confidence``) for ``config``.

    (About 65 lines: the one factory, a validated branch per objective, so that no code elsewhere
    switches on an objective's name.)

    The returned callable takes ``(exit_logits, output_lengths, labels, teacher_labels=None)`` and
    returns an :class:`ObjectiveOutput` with ``.loss`` and ``.terms``.

    Args:
        ee_alpha: ``kd``: the weight ``a`` of the EE term (default 0.3); ``dkd``: one weight per exit
            (default ``[0.65, 0.70, 0.75, 0.80, 0.85, 1.00]``), its length must equal the number of exits.
        num_exits: how many exits (shallowest first) contribute to the loss; default all.
        inverse_confidence: ``confidence``: divide by the confidence (True) or multiply (False).
        word_delimiter_id: id of ``|``, stripped from the ends of pseudo-labels.
    """
    K = config.num_exits
    if num_exits is None:
        num_exits = K
    if not 1 <= int(num_exits) <= K:
        raise UserError(
            f"num_exits must lie in [1, {K}] (the model has exits after layers {config.exit_layers}), got {num_exits}"
        )
    common = dict(
        exit_layers=list(config.exit_layers),
        blank_id=int(config.pad_token_id),
        word_delimiter_id=word_delimiter_id,
        reduction=config.ctc_loss_reduction,
        zero_infinity=bool(config.ctc_zero_infinity),
        num_exits=int(num_exits),
    )
    if config.ctc_loss_reduction not in ("sum", "mean"):
        raise UserError(f"ctc_loss_reduction must be 'sum' or 'mean', got {config.ctc_loss_reduction!r}")
    if name == "ee":
        return EEObjective(**common)
    if name == "kd":
        a = DEFAULT_KD_ALPHA if ee_alpha is None else ee_alpha
        if isinstance(a, Sequence) and not isinstance(a, str):
            if len(a) != 1:
                raise UserError(f"ee_alpha for the kd objective is one number in [0, 1], got {list(a)}")
            a = a[0]
        a = float(a)
        if not 0.0 <= a <= 1.0:
            raise UserError(f"ee_alpha must lie in [0, 1], got {a}")
        return KDObjective(**common, ee_alpha=a)
    if name == "dkd":
        alphas = DEFAULT_DKD_ALPHA if ee_alpha is None else ee_alpha
        alphas = (alphas,) if isinstance(alphas, (int, float)) else tuple(float(x) for x in alphas)
        if len(alphas) != K:
            raise UserError(
                f"ee_alpha for the dkd objective needs one weight per exit: the model has {K} exits "
                f"(layers {config.exit_layers}), got {len(alphas)} weights {list(alphas)}"
            )
        bad = [x for x in alphas if not 0.0 <= x <= 1.0]
        if bad:
            raise UserError(f"ee_alpha weights must lie in [0, 1], got {bad}")
        return DKDObjective(**common, ee_alpha=alphas)
    if name == "confidence":
        return ConfidenceObjective(**common, inverse_confidence=_parse_bool(inverse_confidence))
    raise UserError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
