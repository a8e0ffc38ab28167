"""The learned exit policy's pieces: exit features, the model that scores them, and its fit.

The policy itself is :class:`~wav2vec2_ee.policy_core.LearnedExit` (``--policy learned``): at each exit it
reads the features below for every running utterance, scores them with a :class:`LearnedModel` (the
probability that stopping here costs no word errors) and stops where the score is at or above its
threshold, which ``calibrate`` chooses under a WER budget as for every threshold policy (its fit on an
exit table: :func:`~.search.fit_learned`).

Features (:data:`FEATURES`; per utterance, at exit ``k``, from exit ``k``'s logits over the valid
frames and exit ``k - 1``'s greedy transcript only: nothing deeper than the current exit):

================ ===========================================================================
``entropy``      mean frame entropy (nats)
``max_prob``     mean largest softmax probability
``max_prob_p10`` the 10 % quantile (:data:`LOW_QUANTILE`, linear interpolation as ``numpy.quantile``)
                 of the frames' largest softmax probability
``margin``       mean over frames of the largest minus the second largest softmax probability
``non_blank``    share of frames whose argmax is not the CTC blank (the tokenizer's pad id)
``agreement``    ``1 - d / max(1, len(a), len(b))``: ``d`` the word edit distance between the greedy
                 transcripts ``a`` of exit ``k - 1`` and ``b`` of exit ``k`` (0 at the first exit)
``exit_index``   ``k`` (0-based)
``log_frames``   ``log`` of the utterance's valid frames
================ ===========================================================================

The model (:class:`LearnedModel`: the fitted tensors) is plain arithmetic, validated, saved and scored by
:class:`wav2vec2_ee.policy_core.LearnedWeights` (numpy, so the torch-free runtime applies it as well)::

    z = (x - mean) / std                  # x: (n, F) features, in float64
    a = tanh(z @ W + c)   (an MLP)   or   a = z   (logistic regression)
    p = sigmoid(a @ w + b)

The features' names (:data:`FEATURES`), the word agreement (:func:`~wav2vec2_ee.policy_core.agreement`) and
how the policy reads them from the exits so far (:func:`~wav2vec2_ee.policy_core.learned_features`) are in
:mod:`wav2vec2_ee.policy_core` too; here are their torch kernels.

:func:`fit_exit_model` fits it with ``torch`` (L-BFGS on the mean logistic loss plus ``l2`` times the
squared weights) on the rows of a development split's exit table: one row per utterance and exit
before the deepest allowed one, labelled by :func:`exit_labels` (1: this exit's hypothesis has no
more word errors than any deeper exit's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..labels import frame_mask
from ..policy_core import FEATURES, LOW_QUANTILE, LearnedWeights, agreement_array

#: What a label of 1 means (recorded with every fitted model).
LABEL = "the exit's hypothesis has no more word errors than any deeper allowed exit's"


# --------------------------------------------------------------------------------------------------
# features from logits


def _valid(values: torch.Tensor, output_lengths: torch.Tensor | None) -> torch.Tensor:
    """``(..., batch, frames)`` bool mask of the valid frames."""
    if output_lengths is None:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    return frame_mask(output_lengths.to(values.device), values.shape[-1]).expand(values.shape)


def _frame_mean(values: torch.Tensor, output_lengths: torch.Tensor | None) -> torch.Tensor:
    mask = _valid(values, output_lengths).to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def low_quantile_max_prob(
    logits: torch.Tensor, output_lengths: torch.Tensor | None = None, q: float = LOW_QUANTILE
) -> torch.Tensor:
    """The ``q`` quantile over valid frames of the largest softmax probability.

    Args:
        logits: ``(..., batch, frames, vocab)``; output_lengths: ``(batch,)`` (``None``: all valid).

    Returns:
        ``(..., batch)`` float32, ``numpy.quantile(values, q)`` (linear interpolation between the
        sorted values at position ``q * (count - 1)``); 0 for an utterance without valid frames.
    """
    top = F.log_softmax(logits, dim=-1, dtype=torch.float32).amax(-1).exp()
    mask = _valid(top, output_lengths)
    ordered = top.masked_fill(~mask, math.inf).sort(-1).values
    count = mask.sum(-1)
    position = q * (count - 1).clamp(min=0).to(torch.float32)
    low = position.floor().long()
    high = position.ceil().long()
    frac = position - low.to(torch.float32)
    a = ordered.gather(-1, low.unsqueeze(-1)).squeeze(-1)
    b = ordered.gather(-1, high.unsqueeze(-1)).squeeze(-1)
    value = a + (b - a) * frac
    return torch.where(count > 0, value, torch.zeros_like(value))


def mean_top_margin(logits: torch.Tensor, output_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., batch)`` float32 mean over valid frames of the largest minus the second largest softmax
    probability (1 for one-hot outputs, 0 when two tokens tie)."""
    probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).exp()
    top2 = probs.topk(2, dim=-1).values
    return _frame_mean(top2[..., 0] - top2[..., 1], output_lengths)


def non_blank_share(logits: torch.Tensor, output_lengths: torch.Tensor | None, blank_id: int) -> torch.Tensor:
    """``(..., batch)`` float32 share of valid frames whose argmax is not ``blank_id``."""
    speaking = (logits.argmax(-1) != blank_id).to(torch.float32)
    return _frame_mean(speaking, output_lengths)


def log_frames(output_lengths: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` float32 ``log`` of the valid frames (at least 1)."""
    return output_lengths.to(torch.float32).clamp(min=1.0).log()


def agreements(previous: Sequence[str] | None, current: Sequence[str]) -> torch.Tensor:
    """``(n,)`` float32 :func:`~wav2vec2_ee.policy_core.agreement` of each utterance's transcripts
    (``previous=None``: zeros)."""
    return torch.from_numpy(agreement_array(previous, current))


# --------------------------------------------------------------------------------------------------
# the model


@dataclass
class LearnedModel:
    """The fitted tensors of a learned model (:func:`fit_exit_model`): standardisation, then logistic
    regression (``hidden_weight`` ``None``) or a one-hidden-layer tanh MLP. Its checks, JSON form,
    fingerprint and score are those of its :attr:`weights` (:class:`~wav2vec2_ee.policy_core.LearnedWeights`,
    the formula in the module docstring), which :class:`~wav2vec2_ee.policy_core.LearnedExit` scores.

    Args:
        features: the feature names, in the order of the weights' rows (:data:`FEATURES`).
        mean / std: ``(F,)`` float64 standardisation.
        weight: ``(F,)`` (logistic) or ``(H,)`` (MLP) output weights; bias: the output bias.
        hidden_weight: ``(F, H)``; hidden_bias: ``(H,)`` (``None`` for logistic regression).
        exit_layers: the exit layers of the model it was fitted for (the ``exit_index`` feature
            means nothing on another), ``None``: unchecked.
        fit: how it was fitted (split, rows, positive rate, training accuracy, ...).
    """

    features: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: float
    hidden_weight: torch.Tensor | None = None
    hidden_bias: torch.Tensor | None = None
    exit_layers: list[int] | None = None
    fit: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        self.mean, self.std = self.mean.double().reshape(-1), self.std.double().reshape(-1)
        self.weight = self.weight.double().reshape(-1)
        self.bias = float(self.bias)
        if self.hidden_weight is not None:
            self.hidden_weight = self.hidden_weight.double()
            self.hidden_bias = (
                torch.zeros(self.hidden_weight.shape[-1], dtype=torch.float64)
                if self.hidden_bias is None
                else self.hidden_bias.double().reshape(-1)
            )
        _ = self.weights  # checks every field: a UserError starting "learned model:"

    @property
    def weights(self) -> LearnedWeights:
        """These tensors as :class:`~wav2vec2_ee.policy_core.LearnedWeights` (checked; shares their memory)."""
        hidden = self.hidden_weight is not None
        return LearnedWeights(
            features=self.features,
            mean=self.mean.detach().cpu().numpy(),
            std=self.std.detach().cpu().numpy(),
            weight=self.weight.detach().cpu().numpy(),
            bias=self.bias,
            hidden_weight=self.hidden_weight.detach().cpu().numpy() if hidden else None,  # type: ignore[union-attr]
            hidden_bias=self.hidden_bias.detach().cpu().numpy() if hidden else None,  # type: ignore[union-attr]
            exit_layers=self.exit_layers,
            fit=self.fit,
        )

    @classmethod
    def from_weights(cls, weights: LearnedWeights) -> LearnedModel:
        """The tensors of :class:`~wav2vec2_ee.policy_core.LearnedWeights`."""
        hidden = weights.hidden_weight is not None
        return cls(
            features=weights.features,
            mean=torch.from_numpy(weights.mean),
            std=torch.from_numpy(weights.std),
            weight=torch.from_numpy(weights.weight),
            bias=weights.bias,
            hidden_weight=torch.from_numpy(weights.hidden_weight) if hidden else None,  # type: ignore[arg-type]
            hidden_bias=torch.from_numpy(weights.hidden_bias) if hidden else None,  # type: ignore[arg-type]
            exit_layers=weights.exit_layers,
            fit=dict(weights.fit),
        )

    @property
    def kind(self) -> str:
        return "logistic" if self.hidden_weight is None else "mlp"

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float64 logits of ``(n, F)`` features (columns in :attr:`features` order)."""
        return torch.from_numpy(self.weights.logit(x.detach().cpu().numpy()))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float64 probabilities that stopping costs no errors, from ``(n, F)`` features."""
        return torch.from_numpy(self.weights.score(x.detach().cpu().numpy()))

    def to_dict(self) -> dict:
        """The JSON form (``model`` of a saved exit policy); :meth:`from_dict` reads it back exactly."""
        return self.weights.to_dict()

    @classmethod
    def from_dict(cls, values: Mapping) -> LearnedModel:
        """A model from :meth:`to_dict`'s form (a ``UserError`` naming what is wrong otherwise)."""
        return cls.from_weights(LearnedWeights.from_dict(values))

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights (which model scored an exit table)."""
        return self.weights.fingerprint


# --------------------------------------------------------------------------------------------------
# fitting


def exit_labels(errors: torch.Tensor, deepest: int | None = None) -> torch.Tensor:
    """``(deepest, n)`` bool: whether stopping at exit ``k < deepest`` costs no errors against the deeper
    exits, i.e. ``errors[k] <= min(errors[k:deepest + 1])`` (``errors``: ``(exits, n)`` word errors;
    ``deepest``: 0-based deepest allowed exit, default the last)."""
    deepest = errors.shape[0] - 1 if deepest is None else int(deepest)
    allowed = errors[: deepest + 1]
    best_from_here = allowed.flip(0).cummin(0).values.flip(0)  # min over exits k..deepest
    return (allowed <= best_from_here)[:deepest]


def fit_exit_model(
    x: torch.Tensor,
    y: torch.Tensor,
    features: Sequence[str] = FEATURES,
    hidden: int = 0,
    l2: float = 1e-3,
    max_iter: int = 500,
    seed: int = 0,
    sample_weight: torch.Tensor | None = None,
) -> LearnedModel:
    """Fit a :class:`LearnedModel` on ``(rows, F)`` features ``x`` and ``(rows,)`` bool labels ``y``.

    Standardises with the rows' mean and (population) std (a constant feature keeps std 1), then
    minimises the mean logistic loss plus ``l2`` times the sum of squared weights (biases excluded) with
    L-BFGS in float64 (deterministic; ``seed`` draws an MLP's initial weights).

    Args:
        hidden: 0 for logistic regression, else the width of a tanh hidden layer.
        sample_weight: ``(rows,)`` non-negative weights (e.g. the word errors a wrong decision costs):
            the standardisation, the loss and the recorded accuracy become weighted means, so integer
            weights fit what repeating each row that many times would. ``None``: every row counts 1.
    """
    if x.dim() != 2 or x.shape[1] != len(features):
        raise ValueError(f"features: expected (rows, {len(features)}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise UserError("no rows to fit the learned policy on (an exit table with one exit?)")
    if hidden < 0 or l2 < 0:
        raise ValueError(f"hidden must be >= 0 and l2 >= 0, got {hidden} and {l2}")
    x, target = x.to(torch.float64), y.to(torch.float64).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise UserError("features must be finite numbers (a statistic missing from the exit table?)")
    if sample_weight is None:
        w = torch.ones_like(target)
    else:
        w = torch.as_tensor(sample_weight, dtype=torch.float64).reshape(-1)
        if w.numel() != target.numel() or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"sample_weight: expected {target.numel()} finite weights >= 0")
        if float(w.sum()) <= 0:
            raise ValueError("sample_weight: every weight is 0")
    w = w / w.mean()  # weighted means below are plain means of w * value
    mean = (w[:, None] * x).mean(0)
    std = (w[:, None] * (x - mean) ** 2).mean(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    rate = float((w * target).mean().clamp(1e-3, 1 - 1e-3))
    bias = torch.tensor(math.log(rate / (1 - rate)), dtype=torch.float64, requires_grad=True)
    if hidden:
        w1 = torch.randn(x.shape[1], hidden, generator=generator, dtype=torch.float64) / math.sqrt(x.shape[1])
        b1 = torch.zeros(hidden, dtype=torch.float64)
        w2 = torch.randn(hidden, generator=generator, dtype=torch.float64) / math.sqrt(hidden)
        params = [w1.requires_grad_(), b1.requires_grad_(), w2.requires_grad_(), bias]
        penalised = [w1, w2]
    else:
        w2 = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        params, penalised = [w2, bias], [w2]

    def logits() -> torch.Tensor:
        a = torch.tanh(z @ params[0] + params[1]) if hidden else z
        return a @ w2 + bias

    def objective() -> torch.Tensor:
        loss = (w * F.binary_cross_entropy_with_logits(logits(), target, reduction="none")).mean()
        return loss + l2 * sum((p**2).sum() for p in penalised)

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
        accuracy = float((w * ((logits() >= 0) == (target > 0.5)).double()).mean())
    model = LearnedModel(
        features=tuple(features),
        mean=mean,
        std=std,
        weight=w2.detach(),
        bias=float(bias.detach()),
        hidden_weight=params[0].detach() if hidden else None,
        hidden_bias=params[1].detach() if hidden else None,
    )
    model.fit = {
        "rows": int(x.shape[0]),
        "positive_rate": float((w * target).mean()),
        "train_accuracy": accuracy,
        "loss": final,
        "hidden": int(hidden),
        "l2": float(l2),
        "label": LABEL,
    }
    if sample_weight is not None:
        model.fit["weighted"] = True
    return model
