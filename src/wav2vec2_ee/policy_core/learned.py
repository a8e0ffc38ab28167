"""The learned exit policy's model (:class:`LearnedWeights`: validation, JSON form, fingerprint, score)
and the exit features it scores, read through the :class:`View` protocol every runtime implements.

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import UserError
from .agreement import agreement_array
from .values import is_integer, is_number

#: The features a learned model reads by default, in the order of its weights (what each is:
#: :mod:`.inference.learned`).
FEATURES: tuple[str, ...] = (
    "entropy",
    "max_prob",
    "max_prob_p10",
    "margin",
    "non_blank",
    "agreement",
    "exit_index",
    "log_frames",
)
#: The quantile of the frames' largest probability behind ``max_prob_p10``.
LOW_QUANTILE = 0.1
_FORMULA = (
    "p = sigmoid(a . output.weight + output.bias), a = tanh(z @ hidden.weight + hidden.bias) "
    "(or a = z without hidden), z = (x - mean) / std"
)


def _numbers(values: Any, name: str) -> np.ndarray:
    """``values`` (a number, nested lists of numbers or an array) as a float64 array (a bool, a string or
    a ragged list is not one)."""
    if not (isinstance(values, np.ndarray) and values.dtype.kind in "fiu"):
        bad = [v for v in np.asarray(values, dtype=object).reshape(-1) if not is_number(v)]
        if bad:
            raise UserError(f"learned model: {name} must be numbers, got {bad[0]!r}")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"learned model: {name} must be numbers ({err})") from None


@dataclass
class LearnedWeights:
    """Standardisation, then logistic regression (``hidden_weight`` ``None``) or a one-hidden-layer tanh
    MLP: the score of :class:`LearnedExit`, in float64 numpy::

        z = (x - mean) / std;  a = tanh(z @ hidden_weight + hidden_bias)  (or a = z);  p = sigmoid(a @ weight + bias)

    Args:
        features: the feature names, in the order of the weights' rows (:data:`FEATURES` in a saved
            model; an analysis may fit others, which no runtime computes).
        mean / std: ``(F,)`` standardisation (every std > 0).
        weight: ``(F,)`` (logistic) or ``(H,)`` (MLP) output weights; bias: the output bias.
        hidden_weight: ``(F, H)``; hidden_bias: ``(H,)`` (``None``: zeros; both ``None`` for logistic).
        exit_layers: the exit layers of the model it was fitted for (the ``exit_index`` feature means
            nothing on another), ``None``: unchecked.
        fit: how it was fitted (split, rows, positive rate, training accuracy, ...).

    Every check raises a :class:`~.errors.UserError` starting ``learned model:``.
    """

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float
    hidden_weight: np.ndarray | None = None
    hidden_bias: np.ndarray | None = None
    exit_layers: list[int] | None = None
    fit: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        n = len(self.features)
        if not n or len(set(self.features)) != n or not all(isinstance(f, str) for f in self.features):
            raise UserError(f"learned model: features must be distinct names, got {list(self.features)}")
        self.mean = _numbers(self.mean, "mean").reshape(-1)
        self.std = _numbers(self.std, "std").reshape(-1)
        self.weight = _numbers(self.weight, "output.weight").reshape(-1)
        bias = _numbers(self.bias, "output.bias")
        if bias.size != 1:
            raise UserError(f"learned model: output.bias must be one number, got {self.bias!r}")
        self.bias = float(bias.reshape(-1)[0])
        if self.mean.size != n or self.std.size != n:
            raise UserError(f"learned model: mean and std need {n} values (one per feature)")
        if not bool((self.std > 0).all()):
            raise UserError("learned model: every std must be > 0")
        self._check_hidden(n)
        if self.exit_layers is not None:
            if not isinstance(self.exit_layers, Sequence) or not all(is_integer(x) for x in self.exit_layers):
                raise UserError(f"learned model: exit_layers must be layer numbers, got {self.exit_layers!r}")
            self.exit_layers = [int(x) for x in self.exit_layers]
        self.fit = dict(self.fit or {})

    def _check_hidden(self, n: int) -> None:
        """The hidden layer's and the output weight's shapes, and that every weight is finite."""
        width = n
        if self.hidden_weight is not None:
            self.hidden_weight = _numbers(self.hidden_weight, "hidden.weight")
            if self.hidden_weight.ndim != 2 or self.hidden_weight.shape[0] != n:
                raise UserError(f"learned model: the hidden weight must be ({n}, hidden)")
            width = self.hidden_weight.shape[1]
            self.hidden_bias = (
                np.zeros(width, dtype=np.float64)
                if self.hidden_bias is None
                else _numbers(self.hidden_bias, "hidden.bias").reshape(-1)
            )
            if self.hidden_bias.size != width:
                raise UserError(f"learned model: the hidden bias needs {width} values")
        if self.weight.size != width:
            raise UserError(f"learned model: the output weight needs {width} values")
        values = [self.mean, self.std, self.weight, np.array([self.bias])]
        values += [] if self.hidden_weight is None else [self.hidden_weight.reshape(-1), self.hidden_bias]
        if not all(bool(np.isfinite(v).all()) for v in values):
            raise UserError("learned model: every weight must be a finite number")

    @property
    def kind(self) -> str:
        return "logistic" if self.hidden_weight is None else "mlp"

    def logit(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` float64 logits of ``(n, F)`` features (columns in :attr:`features` order)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        if self.hidden_weight is not None:
            z = np.tanh(z @ self.hidden_weight + self.hidden_bias)
        return z @ self.weight + self.bias

    def score(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` float64 probabilities that stopping costs no errors, from ``(n, F)`` features."""
        a = self.logit(x)
        e = np.exp(-np.abs(a))  # a stable sigmoid: no overflow for large |a|
        return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def check_exit_layers(self, exit_layers: Sequence[int]) -> None:
        """Refuse a model with other exit layers than the one it was fitted for."""
        if self.exit_layers is not None and list(self.exit_layers) != [int(x) for x in exit_layers]:
            raise UserError(
                f"the learned policy was fitted for a model with exits at {list(self.exit_layers)}; this model "
                f"has exits at {list(exit_layers)} (fit it again: calibrate --policy learned)"
            )

    def to_dict(self) -> dict:
        """The JSON form (``model`` of a saved exit policy); :meth:`from_dict` reads it back exactly."""
        hidden = None
        if self.hidden_weight is not None:
            hidden = {
                "weight": self.hidden_weight.tolist(),
                "bias": self.hidden_bias.tolist(),  # type: ignore[union-attr]
                "activation": "tanh",
            }
        return {
            "kind": self.kind,
            "features": list(self.features),
            "low_quantile": LOW_QUANTILE,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "hidden": hidden,
            "output": {"weight": self.weight.tolist(), "bias": self.bias},
            "exit_layers": self.exit_layers,
            "formula": _FORMULA,
            "fit": self.fit,
        }

    @classmethod
    def from_dict(cls, values: Any) -> LearnedWeights:
        """A model from :meth:`to_dict`'s form (a :class:`~.errors.UserError` naming what is wrong otherwise)."""
        if not isinstance(values, Mapping):
            raise UserError("learned model: expected an object with features, mean, std, output")
        missing = [k for k in ("features", "mean", "std", "output") if k not in values]
        if missing:
            raise UserError(f"learned model: missing {', '.join(missing)}")
        quantile = values.get("low_quantile", LOW_QUANTILE)
        if quantile != LOW_QUANTILE:
            raise UserError(f"learned model: low_quantile {quantile} (this version computes {LOW_QUANTILE})")
        if not isinstance(values["features"], list):
            raise UserError(f"learned model: features must be a list of names, got {values['features']!r}")
        unknown = [f for f in values["features"] if f not in FEATURES]
        if unknown:
            raise UserError(f"learned model: unknown features {unknown}: choose from {list(FEATURES)}")
        output, hidden = values["output"], values.get("hidden")
        if not isinstance(output, Mapping) or "weight" not in output:
            raise UserError("learned model: output must be an object with weight and bias")
        if hidden is not None and (not isinstance(hidden, Mapping) or "weight" not in hidden):
            raise UserError("learned model: hidden must be null or an object with weight and bias")
        fit = values.get("fit") or {}
        if not isinstance(fit, Mapping):
            raise UserError(f"learned model: fit must be an object, got {fit!r}")
        return cls(
            features=tuple(values["features"]),
            mean=values["mean"],
            std=values["std"],
            weight=output["weight"],
            bias=output.get("bias", 0.0),
            hidden_weight=None if hidden is None else hidden["weight"],
            hidden_bias=None if hidden is None else hidden.get("bias"),
            exit_layers=values.get("exit_layers"),
            fit=dict(fit),
        )

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights (which model scored an exit table)."""
        weights = {k: v for k, v in self.to_dict().items() if k != "fit"}
        return hashlib.sha1(json.dumps(weights, sort_keys=True).encode()).hexdigest()[:16]


class HasLearnedWeights(Protocol):
    """A learned model of a runtime (the PyTorch :class:`~.inference.learned.LearnedModel`) that gives
    its :class:`LearnedWeights`."""

    @property
    def weights(self) -> LearnedWeights: ...


def learned_weights(model: LearnedWeights | HasLearnedWeights | Mapping) -> LearnedWeights:
    """The :class:`LearnedWeights` of a model, of a runtime's model, or of its JSON form."""
    if isinstance(model, LearnedWeights):
        return model
    if isinstance(model, Mapping):
        return LearnedWeights.from_dict(model)
    weights = getattr(model, "weights", None)
    if not isinstance(weights, LearnedWeights):
        raise TypeError(f"a learned model must give its LearnedWeights, got {type(model).__name__}")
    return weights


class View(Protocol):
    """One exit's outputs for the utterances still running, in a runtime's array library.

    ``stat(name)`` is a ``(batch,)`` array of the statistic ``name`` (``entropy``, ``max_prob``,
    ``max_prob_p10``, ``margin``, ``non_blank``, ``log_frames``, ``posterior``; ``transcripts``: a list
    of normalised greedy transcripts), computed once and cached; ``derived(name, compute)`` caches a
    value that needs more than this exit (a precomputed one wins); ``host`` gives a statistic as a
    ``(batch,)`` float32 numpy array, ``native`` a numpy array as the runtime's array."""

    exit_index: int
    layer: int

    def __len__(self) -> int: ...

    def stat(self, name: str) -> Any: ...

    def derived(self, name: str, compute: Callable[[], Any]) -> Any: ...

    def host(self, values: Any) -> np.ndarray: ...

    def native(self, values: np.ndarray) -> Any: ...


def _agreement(history: Sequence[View]) -> np.ndarray:
    view = history[-1]
    if len(history) < 2:  # the first exit: no previous transcript to agree with
        value = view.derived("agreement", lambda: view.native(np.zeros(len(view), dtype=np.float32)))
    else:
        value = view.derived(
            "agreement",
            lambda: view.native(agreement_array(history[-2].stat("transcripts"), view.stat("transcripts"))),
        )
    return view.host(value)


#: Features that need more than the current exit's statistics: the previous exit's transcript, the index.
_HISTORY_FEATURES: dict[str, Callable[[Sequence[View]], np.ndarray]] = {
    "agreement": _agreement,
    "exit_index": lambda h: np.full(len(h[-1]), float(h[-1].exit_index), dtype=np.float32),
}


def learned_features(history: Sequence[View], names: Sequence[str] = FEATURES) -> np.ndarray:
    """``(batch, F)`` float32 features of ``history[-1]``'s utterances, read from the exits so far only
    (the current one and, for ``agreement``, the previous one's transcripts)."""
    view = history[-1]
    columns = []
    for name in names:
        try:
            value = (
                _HISTORY_FEATURES[name](history) if name in _HISTORY_FEATURES else view.host(view.stat(name))
            )
        except ValueError as err:
            raise UserError(
                f"the learned policy needs the {name} feature at exit {view.exit_index}: {err} "
                f"(exit tables of this version have every feature)"
            ) from None
        columns.append(np.asarray(value, dtype=np.float32).reshape(len(view)))
    return np.stack(columns, 1) if columns else np.zeros((len(view), 0), dtype=np.float32)


def learned_score(history: Sequence[View], weights: LearnedWeights) -> np.ndarray:
    """``(batch,)`` float64 scores of ``history[-1]``'s utterances (not cached: :meth:`LearnedExit.score`)."""
    return weights.score(learned_features(history, weights.features))
