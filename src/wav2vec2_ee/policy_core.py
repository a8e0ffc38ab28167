"""The exit policies' core, without torch: one home for what the PyTorch engine (:mod:`.inference`) and the
torch-free runtime (:mod:`.lite`) must agree on.

It imports numpy and the standard library only (``lite``'s users have numpy, onnxruntime and soundfile):

* the policies (:class:`ExitPolicy` and its subclasses below): names, parameters and their accepted
  values (:meth:`ExitPolicy.check_value`), and the decisions themselves;
* the factory (:func:`build_policy`, :func:`policy_with_value`) and the command-line flags
  (:func:`policy_from_flags`: ``--policy``, ``--threshold``, ``--patience``, ``--layer``, ``--max-layer``);
* saved policies (:data:`SAVED_POLICY`): the one reader (:func:`read_saved_policy`,
  :func:`check_saved_policy`) and writer (:func:`write_saved_policy`) of their JSON format;
* the learned policy's model (:class:`LearnedWeights`): its validation, JSON form and score;
* word agreement (:func:`agreement`) and the exit loop over a stop mask (:func:`exit_loop`).

What stays per array library are the statistic kernels (entropy, max-probability, ...), which each
runtime's exit view computes: a policy reads an exit through the :class:`View` protocol, whose
``stat(name)`` returns the runtime's ``(batch,)`` arrays (torch tensors in :mod:`.inference.policies`,
numpy arrays in :mod:`.lite`), and returns its decision as such an array.

=============== ============================ ====================================================
name            class                        stops at the first exit where
=============== ============================ ====================================================
``fixed``       :class:`FixedExit`           its layer is ``layer`` (default: the last exit)
``entropy``     :class:`EntropyThreshold`    mean frame entropy (nats) ``<= threshold``
``confidence``  :class:`ConfidenceThreshold` mean max-probability ``>= threshold``
``posterior``   :class:`PosteriorThreshold`  n-best posterior of a lexicon beam search ``>= threshold``
``patience``    :class:`Patience`            the greedy transcripts of ``patience`` consecutive exits agree
``budget``      :class:`LayerBudget`         never beyond layer ``max_layer`` (wraps any policy)
``learned``     :class:`LearnedExit`         a fitted model's score of several exit features ``>= threshold``
``oracle``      :class:`OracleExit`          evaluation only: the shallowest exit with the fewest errors
=============== ============================ ====================================================

Two rules make simulation exact (``sweep`` and ``calibrate``, :mod:`.inference.search`): a decision
depends only on the exits computed so far (causal) and only on the utterance's own outputs
(row-independent). The deepest allowed exit (:meth:`ExitPolicy.deepest_exit`) always answers for the
utterances still running.

Accepted values (:meth:`ExitPolicy.check_value`, applied by :func:`build_policy`, the flags and saved
files; a :class:`~.errors.UserError` naming the range otherwise): an entropy threshold is a finite
number ``>= 0``, a confidence, posterior or learned threshold lies in ``(0, 1]``, patience is an
integer ``>= 1``, a fixed layer an integer ``>= 1``; a bool or a string is not a number. A layer
budget (and a fixed layer) must be one of the model's exit layers (:func:`check_max_layer`, checked
where the policy meets the model: :meth:`ExitPolicy.deepest_exit`). The classes themselves take any
threshold but NaN: one outside the range is a constant decision (``EntropyThreshold(-1)`` never stops).

A saved policy (``calibrate --save-policy``; ``calibration_<policy>.json``; an export's ``policy.json``)
is one JSON object::

    {"format": "wav2vec2-ee-exit-policy", "version": 1,
     "policy": "entropy", "parameter": "threshold", "value": 0.4, "max_layer": null,
     "exit_layers": [4, 8, 12],      # optional: the exit layers of the model it was calibrated on
     "model": {...},                 # the learned policy only: LearnedWeights.to_dict()
     ...}                            # anything else (dev and test figures): kept, not read

Files of older versions have no ``format`` / ``version`` (read as version 1); any other ``format`` or
``version`` is refused. Readers ignore fields they do not know, so a later version can add optional
fields (e.g. ``weights_fingerprint``: the weights the policy was calibrated for) without a format break;
a change that readers must understand raises ``version``.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from .errors import UserError
from .io import atomic_write_json

# --------------------------------------------------------------------------------------------------
# numbers


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (an ``int``, a ``float``, a numpy number); a bool is not."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a number with an integer value (``2`` and ``2.0``; not ``2.5``, nan or ``True``)."""
    return is_number(value) and math.isfinite(float(value)) and float(value) == int(value)


# --------------------------------------------------------------------------------------------------
# word agreement


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def agreement(previous: str | None, current: str) -> float:
    """``1 - d / max(1, len(a), len(b))`` over the words ``a`` of ``previous`` and ``b`` of ``current``
    (``d``: :func:`word_edit_distance`); 0 without a previous transcript (the first exit)."""
    if previous is None:
        return 0.0
    a, b = previous.split(), current.split()
    return 1.0 - word_edit_distance(a, b) / max(1, len(a), len(b))


def agreement_array(previous: Sequence[str] | None, current: Sequence[str]) -> np.ndarray:
    """``(n,)`` float32 :func:`agreement` of each utterance's transcripts (``previous=None``: zeros)."""
    if previous is None:
        return np.zeros(len(current), dtype=np.float32)
    return np.array([agreement(p, c) for p, c in zip(previous, current)], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# the learned policy's model

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


# --------------------------------------------------------------------------------------------------
# what a policy sees


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


# --------------------------------------------------------------------------------------------------
# policies


def check_max_layer(max_layer: int, exit_layers: Sequence[int]) -> int:
    """0-based index of the exit at layer ``max_layer``: a layer budget must be one of the model's exit
    layers (a budget between two exits would silently mean the shallower one; one beyond the last exit
    would mean no budget). Raises a :class:`~.errors.UserError` naming the exit layers otherwise."""
    layers = [int(x) for x in exit_layers]
    if max_layer < layers[0]:
        raise UserError(
            f"--max-layer {max_layer} is below the first exit (layer {layers[0]}): "
            f"choose one of the model's exit layers {layers}"
        )
    if max_layer not in layers:
        raise UserError(
            f"--max-layer {max_layer} is not an exit layer of this model: choose one of its exit layers {layers}"
        )
    return layers.index(max_layer)


def check_max_layer_value(max_layer: Any) -> int:
    """``max_layer`` as a layer number (an integer >= 1); whether it is an exit layer is checked where the
    policy meets the model (:func:`check_max_layer`)."""
    if not is_integer(max_layer) or int(max_layer) < 1:
        raise UserError(
            f"--max-layer must be one of the model's exit layers (an integer >= 1), got {max_layer}"
        )
    return int(max_layer)


class ExitPolicy(ABC):
    """Decides after each exit which running utterances stop.

    Subclasses implement :meth:`should_exit` on the :class:`View` s of the exits so far; decisions must
    be causal and row-independent (see the module docstring) so that simulation on precomputed
    statistics equals the engine.
    """

    #: The name :func:`build_policy` knows the policy by.
    name: ClassVar[str]
    #: The name of the policy's one tunable parameter (swept by ``sweep``, chosen by ``calibrate``).
    parameter: ClassVar[str | None] = None
    #: Whether a larger parameter value stops earlier (``None`` when there is no parameter).
    larger_is_more_aggressive: ClassVar[bool | None] = None
    #: Whether the parameter takes integer values only (a layer, a count).
    integer_parameter: ClassVar[bool] = False
    #: Whether the parameter must be given (a policy with an optional parameter has a default).
    parameter_required: ClassVar[bool] = True
    #: An example value of the parameter, for messages (``--threshold 0.4``).
    example_value: ClassVar[str | None] = None
    #: Whether the policy needs a lexicon beam decoder (PyTorch only: ``Decoders.lexicon_decoder``).
    needs_lexicon: ClassVar[bool] = False
    #: Whether the policy needs the reference transcripts (an evaluation bound, never run by the engine).
    needs_references: ClassVar[bool] = False
    #: Constructor arguments fitted on a development split (the learned policy's ``model``): such a
    #: policy is built with them, from a fit (:mod:`.inference.search`) or a saved file
    #: (:meth:`fitted_from_saved`).
    fitted_arguments: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def should_exit(self, history: Sequence[View]) -> Any:
        """``(batch,)`` bool array of the runtime: stop at ``history[-1]``'s exit (all views hold the
        same utterances)."""

    @classmethod
    def check_value(cls, value: Any) -> float | int:
        """``value`` as the policy's parameter, or a :class:`~.errors.UserError` naming the accepted range."""
        if cls.parameter is None:
            raise UserError(f"the {cls.name} policy takes no parameter, got {value}")
        return value

    @classmethod
    def fitted_from_saved(cls, values: Mapping) -> dict:
        """The :attr:`fitted_arguments` from a saved policy's JSON object (``{}`` for a rule)."""
        return {}

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        """0-based index of the deepest exit the policy may use (it answers for everything left)."""
        return len(exit_layers) - 1

    @property
    def base_policy(self) -> ExitPolicy:
        """The policy that decides (a :class:`LayerBudget`'s wrapped policy; else this one)."""
        return self

    def fitted_values(self) -> dict:
        """This policy's :attr:`fitted_arguments` (``{}`` for a rule)."""
        return {name: getattr(self, name) for name in self.fitted_arguments}

    def saved_fields(self) -> dict:
        """What a saved policy holds beyond its name, value and budget (the learned model); ``{}``."""
        return {}

    @property
    def value(self) -> float | int | None:
        """The value of :attr:`parameter`."""
        return None if self.parameter is None else getattr(self, self.parameter)

    @property
    def max_layer(self) -> int | None:
        return None

    def describe(self) -> dict:
        """``{"policy", "parameter", "value", "max_layer"}`` for result files."""
        return {
            "policy": self.name,
            "parameter": self.parameter,
            "value": self.value,
            "max_layer": self.max_layer,
        }

    def __repr__(self) -> str:
        args = "" if self.parameter is None else f"{self.parameter}={self.value!r}"
        return f"{type(self).__name__}({args})"


class FixedExit(ExitPolicy):
    """Always the exit at ``layer`` (``None``: the last exit): the static baseline."""

    name = "fixed"
    parameter = "layer"
    larger_is_more_aggressive = False
    integer_parameter = True
    parameter_required = False

    def __init__(self, layer: int | None = None):
        self.layer = None if layer is None else self.check_value(layer)

    @classmethod
    def check_value(cls, value: Any) -> int:
        if not is_integer(value) or int(value) < 1:
            raise UserError(f"the fixed policy's layer must be an exit layer (an integer >= 1), got {value}")
        return int(value)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        if self.layer is None:
            return len(exit_layers) - 1
        if self.layer not in exit_layers:
            raise UserError(
                f"fixed exit layer {self.layer} is not an exit of this model (exits at {list(exit_layers)})"
            )
        return list(exit_layers).index(self.layer)

    def should_exit(self, history: Sequence[View]) -> Any:
        view = history[-1]
        stop = self.layer is not None and view.layer >= self.layer
        return view.native(np.full(len(view), stop, dtype=bool))


class ThresholdPolicy(ExitPolicy):
    """Stop when an exit statistic crosses ``threshold`` (subclasses name the statistic and side)."""

    parameter = "threshold"
    #: The :class:`View` statistic compared with the threshold.
    statistic: ClassVar[str]
    #: True: stop when ``statistic >= threshold``; False: when ``statistic <= threshold``.
    stop_when_above: ClassVar[bool]
    #: The accepted thresholds: ``[low, high]`` (``(low, high]`` unless ``low_inclusive``), finite.
    low: ClassVar[float]
    high: ClassVar[float]
    low_inclusive: ClassVar[bool] = True
    #: What the statistic can take, for messages.
    statistic_range: ClassVar[str]

    def __init__(self, threshold: float):
        # Any number: one outside the accepted range is a constant decision (EntropyThreshold(-1) never
        # stops early), which tests and simulations use; build_policy and the commands check the range.
        threshold = float(threshold)
        if math.isnan(threshold):
            raise UserError(f"{self.name} threshold must be a number, got nan")
        self.threshold = threshold

    @classmethod
    def accepted_range(cls) -> str:
        """``"a finite number >= 0"``, ``"a number in (0, 1]"``: the accepted thresholds, in words."""
        if math.isinf(cls.high):
            return f"a finite number {'>=' if cls.low_inclusive else '>'} {cls.low:g}"
        return f"a number in {'[' if cls.low_inclusive else '('}{cls.low:g}, {cls.high:g}]"

    @classmethod
    def check_value(cls, value: Any) -> float:
        """``value`` as a threshold: a :class:`~.errors.UserError` naming the accepted range unless it lies in it."""
        threshold = float(value) if is_number(value) else math.nan
        above_low = cls.low <= threshold if cls.low_inclusive else cls.low < threshold
        if not (math.isfinite(threshold) and above_low and threshold <= cls.high):
            raise UserError(
                f"the {cls.name} policy's threshold must be {cls.accepted_range()}, got {value} "
                f"({cls.statistic_range})"
            )
        return threshold

    def should_exit(self, history: Sequence[View]) -> Any:
        value = history[-1].stat(self.statistic)
        return value >= self.threshold if self.stop_when_above else value <= self.threshold


class EntropyThreshold(ThresholdPolicy):
    """Stop when the mean per-frame entropy (nats, over valid frames) is at or below ``threshold``."""

    name = "entropy"
    statistic = "entropy"
    stop_when_above = False
    larger_is_more_aggressive = True
    example_value = "0.4"
    low, high = 0.0, math.inf
    statistic_range = (
        "the mean frame entropy lies in [0, log(vocabulary size)] nats; a threshold at or above "
        "log(vocabulary size) stops every utterance at the first exit"
    )


class ConfidenceThreshold(ThresholdPolicy):
    """Stop when the mean per-frame largest softmax probability is at or above ``threshold``."""

    name = "confidence"
    statistic = "max_prob"
    stop_when_above = True
    larger_is_more_aggressive = False
    example_value = "0.9"
    low, high, low_inclusive = 0.0, 1.0, False
    statistic_range = (
        "the mean max-probability lies in [1/vocabulary size, 1]; a threshold at or below "
        "1/vocabulary size stops every utterance at the first exit"
    )


class PosteriorThreshold(ThresholdPolicy):
    """Stop when the n-best posterior (largest softmax weight over the scores of a lexicon-constrained
    beam search's n-best list, :func:`~wav2vec2_ee.evaluation.nbest_posterior`) is at or above
    ``threshold``. Needs a lexicon beam decoder (PyTorch only)."""

    name = "posterior"
    statistic = "posterior"
    stop_when_above = True
    larger_is_more_aggressive = False
    example_value = "0.9"
    needs_lexicon = True
    low, high, low_inclusive = 0.0, 1.0, False
    statistic_range = "the n-best posterior lies in [0, 1]"


class Patience(ExitPolicy):
    """Stop when the greedy transcripts of ``patience`` consecutive exits agree (PABEE, Zhou et al.
    2020; their patience ``t`` is ``patience = t + 1`` here). ``patience=1`` stops at the first exit."""

    name = "patience"
    parameter = "patience"
    larger_is_more_aggressive = False
    integer_parameter = True
    example_value = "2"

    def __init__(self, patience: int):
        self.patience = self.check_value(patience)

    @classmethod
    def check_value(cls, value: Any) -> int:
        if not is_integer(value) or int(value) < 1:
            raise UserError(
                f"the patience policy's patience must be an integer >= 1 (consecutive exits that agree), "
                f"got {value}"
            )
        return int(value)

    def should_exit(self, history: Sequence[View]) -> Any:
        view = history[-1]
        n = len(view)
        if len(history) < self.patience:
            return view.native(np.zeros(n, dtype=bool))
        recent = [v.stat("transcripts") for v in history[-self.patience :]]
        return view.native(
            np.array([all(t[i] == recent[-1][i] for t in recent) for i in range(n)], dtype=bool)
        )


class LearnedExit(ThresholdPolicy):
    """Stop when a fitted model's score (:class:`LearnedWeights`: the probability that stopping here
    costs no word errors against the deeper exits) of several exit features is at or above
    ``threshold``. The features (:data:`FEATURES`) read the current exit and the previous exit's
    transcript only (:func:`learned_features`).

    ``model``: a :class:`LearnedWeights`, its JSON form, or a runtime's model that gives its weights
    (the PyTorch :class:`~.inference.learned.LearnedModel`, fitted by ``calibrate --policy learned``)."""

    name = "learned"
    statistic = "learned"
    stop_when_above = True
    larger_is_more_aggressive = False
    example_value = "0.5"
    fitted_arguments = ("model",)
    low, high, low_inclusive = 0.0, 1.0, False
    statistic_range = "the learned score is a probability in [0, 1]"

    def __init__(self, threshold: float, model: LearnedWeights | HasLearnedWeights | Mapping | None = None):
        super().__init__(threshold)
        if model is None:
            raise UserError(
                "the learned policy needs its fitted model: `wav2vec2-ee calibrate --policy learned "
                "--save-policy` fits one and saves it as exit_policy.json"
            )
        self.weights = learned_weights(model)
        self.model = self.weights if isinstance(model, Mapping) else model

    @property
    def features(self) -> tuple[str, ...]:
        """The names of the model's features, in the order of its weights."""
        return self.weights.features

    @classmethod
    def fitted_from_saved(cls, values: Mapping) -> dict:
        if "model" not in values:
            raise UserError(
                "a saved learned policy needs its 'model' (calibrate --policy learned --save-policy)"
            )
        return {"model": LearnedWeights.from_dict(values["model"])}

    def score(self, history: Sequence[View]) -> Any:
        """``(batch,)`` float64 scores of ``history[-1]``'s utterances, as the runtime's array (cached in
        the view as ``learned``; a table's precomputed scores are used as they are)."""
        view = history[-1]
        return view.derived(self.statistic, lambda: view.native(learned_score(history, self.weights)))

    def should_exit(self, history: Sequence[View]) -> Any:
        return self.score(history) >= self.threshold

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        self.weights.check_exit_layers(exit_layers)
        return len(exit_layers) - 1

    def saved_fields(self) -> dict:
        return {"model": self.model.to_dict()}  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return (
            f"LearnedExit(threshold={self.threshold!r}, model={self.weights.kind}:{self.weights.fingerprint})"
        )


class LayerBudget(ExitPolicy):
    """Never compute beyond layer ``max_layer`` (a device's compute limit): ``policy`` decides, and
    the deepest exit at or below ``max_layer`` answers for whatever is left."""

    name = "budget"

    def __init__(self, policy: ExitPolicy, max_layer: int):
        self.policy = policy
        self._max_layer = check_max_layer_value(max_layer)

    @property
    def max_layer(self) -> int:
        return self._max_layer

    @property
    def value(self) -> float | int | None:
        return self.policy.value

    @property
    def base_policy(self) -> ExitPolicy:
        return self.policy.base_policy

    def describe(self) -> dict:
        return {**self.policy.describe(), "max_layer": self._max_layer}

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        """The wrapped policy's deepest exit, capped at the exit at ``max_layer``, which must be one of
        ``exit_layers`` (:func:`check_max_layer`: a :class:`~.errors.UserError` naming them otherwise)."""
        return min(self.policy.deepest_exit(exit_layers), check_max_layer(self._max_layer, exit_layers))

    def should_exit(self, history: Sequence[View]) -> Any:
        return self.policy.should_exit(history)

    def fitted_values(self) -> dict:
        return self.policy.fitted_values()

    def saved_fields(self) -> dict:
        return self.policy.saved_fields()

    def __repr__(self) -> str:
        return f"LayerBudget({self.policy!r}, max_layer={self._max_layer})"


class OracleExit(ExitPolicy):
    """Evaluation only: the shallowest exit whose hypothesis has the fewest word errors against the
    reference. It looks at every exit's errors, so it cannot run in the engine; ``sweep`` simulates
    it (:func:`~.inference.search.simulate`) and times it by scheduling each utterance's oracle exit."""

    name = "oracle"
    needs_references = True

    def should_exit(self, history: Sequence[View]) -> Any:
        raise UserError(
            "the oracle needs every exit's errors against the reference: it is an evaluation bound "
            "(see `wav2vec2-ee sweep`), not a policy the engine can run"
        )


# --------------------------------------------------------------------------------------------------
# the factory

POLICIES: dict[str, type[ExitPolicy]] = {
    cls.name: cls
    for cls in (
        FixedExit,
        EntropyThreshold,
        ConfidenceThreshold,
        PosteriorThreshold,
        Patience,
        LearnedExit,
        OracleExit,
    )
}
#: Policy names ``build_policy`` accepts (``budget`` = :class:`LayerBudget` over the last exit).
POLICY_NAMES: tuple[str, ...] = (*POLICIES, LayerBudget.name)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or name not in POLICY_NAMES:
        raise UserError(f"unknown exit policy {name!r}: choose from {', '.join(POLICY_NAMES)}")


def build_policy(name: str, max_layer: int | None = None, **params) -> ExitPolicy:
    """The policy called ``name`` with its parameters, capped at ``max_layer`` when given.

    ``build_policy("entropy", threshold=0.4)``, ``build_policy("patience", patience=2, max_layer=4)``,
    ``build_policy("fixed", layer=4)``, ``build_policy("budget", max_layer=4)``,
    ``build_policy("learned", threshold=0.6, model=model)`` (its fitted arguments as keywords).
    A :class:`~.errors.UserError` names what is wrong with them.
    """
    _check_name(name)
    if name == LayerBudget.name:
        if max_layer is None:
            raise UserError("the budget policy needs max_layer (the deepest layer it may compute)")
        if params:
            raise UserError(f"the budget policy takes only max_layer, got {sorted(params)}")
        return LayerBudget(FixedExit(), max_layer)
    cls = POLICIES[name]
    accepted = ([] if cls.parameter is None else [cls.parameter]) + list(cls.fitted_arguments)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"the {name} policy takes {', '.join(accepted) or 'no parameter'} (and max_layer), got {unknown}"
        )
    if cls.parameter is not None and params.get(cls.parameter) is None and cls.parameter_required:
        raise UserError(
            f"the {name} policy needs its {cls.parameter} (e.g. {cls.example_value}): every policy but "
            "fixed and budget needs its value"
        )
    if cls.parameter is not None and params.get(cls.parameter) is not None:
        params[cls.parameter] = cls.check_value(params[cls.parameter])  # the accepted range
    policy = cls(**params)
    return LayerBudget(policy, max_layer) if max_layer is not None else policy


def policy_with_value(
    name: str, value: float | int | None, max_layer: int | None = None, **fitted
) -> ExitPolicy:
    """``build_policy(name)`` with its one parameter set to ``value`` (what sweeps, the flags, saved files
    and the lite runtime use) and its fitted arguments ``fitted`` (the learned policy's ``model``)."""
    _check_name(name)
    cls = POLICIES.get(name)
    parameter = cls.parameter if cls is not None else None
    if value is None:
        return build_policy(name, max_layer=max_layer, **fitted)
    if parameter is None:
        raise UserError(f"the {name} policy takes no parameter, got {value}")
    return build_policy(name, max_layer=max_layer, **{parameter: value}, **fitted)


# --------------------------------------------------------------------------------------------------
# command-line flags

#: The flag that gives each policy parameter.
VALUE_FLAGS = {"threshold": "--threshold", "patience": "--patience", "layer": "--layer"}


def wants_saved_policy(policy: str | None) -> bool:
    """Whether :func:`policy_from_flags` needs the folder's saved policy: without ``--policy`` (the saved
    one is used), or for a policy with fitted arguments (the learned one takes its model from it)."""
    cls = POLICIES.get(policy) if policy is not None else None
    return policy is None or (cls is not None and bool(cls.fitted_arguments))


def policy_from_flags(
    policy: str | None,
    threshold: float | None = None,
    patience: int | None = None,
    layer: int | None = None,
    max_layer: int | None = None,
    saved: Mapping | None = None,
) -> ExitPolicy:
    """The policy named by ``--policy`` and its value flag (``--threshold``, ``--patience``, ``--layer``),
    under ``--max-layer``: the rules of ``wav2vec2-ee transcribe`` and ``python -m wav2vec2_ee.lite``.

    ``saved``: the folder's saved policy (its JSON object; :func:`wants_saved_policy` says when it is
    needed): without ``--policy``, that policy (under ``--max-layer`` when given), else the last exit; a
    fitted policy named by ``--policy`` (learned) takes its fitted model from it, and its value unless
    given. A :class:`~.errors.UserError` names the flags that do not fit together."""
    given = {"threshold": threshold, "patience": patience, "layer": layer}
    if policy is None:
        stray = [VALUE_FLAGS[k] for k, v in given.items() if v is not None]
        if stray:
            raise UserError(f"{' '.join(stray)} needs --policy (the policy it is the value of)")
        base = policy_from_saved(saved, "the saved exit policy") if saved is not None else FixedExit()
        return base if max_layer is None else LayerBudget(base, max_layer)
    if policy not in POLICY_NAMES:
        raise UserError(f"unknown --policy {policy!r}: choose from {', '.join(POLICY_NAMES)}")
    cls = POLICIES.get(policy)
    if cls is not None and cls.needs_references:
        raise UserError(f"--policy {policy} needs the reference transcripts: it exists only in `sweep`")
    wanted = cls.parameter if cls is not None else None
    stray = [VALUE_FLAGS[k] for k, v in given.items() if v is not None and k != wanted]
    if stray:
        needs = f"takes {VALUE_FLAGS[wanted]}" if wanted else "takes only --max-layer"
        raise UserError(f"--policy {policy} {needs}, not {' '.join(stray)}")
    value = given.get(wanted) if wanted else None
    fitted: dict = {}
    if cls is not None and cls.fitted_arguments:
        if saved is None or saved.get("policy") != policy:
            raise UserError(
                f"--policy {policy} needs its fitted model: the folder has no saved {policy} policy "
                f"(fit and save one: wav2vec2-ee calibrate CHECKPOINT --policy {policy} --save-policy)"
            )
        stored = check_saved_policy(saved, "the saved exit policy")
        fitted, value = stored.fitted, stored.value if value is None else value
    if cls is not None and wanted and cls.parameter_required and value is None:
        raise UserError(
            f"--policy {policy} needs {VALUE_FLAGS[wanted]} (e.g. {VALUE_FLAGS[wanted]} {cls.example_value})"
        )
    if cls is not None and wanted and value is not None:
        try:
            cls.check_value(value)
        except UserError as err:  # the range, with the flag that gave the value
            raise UserError(f"{VALUE_FLAGS[wanted]} {value}: {err}") from None
    return policy_with_value(policy, value, max_layer, **fitted)


# --------------------------------------------------------------------------------------------------
# saved policies

#: The file a saved policy is written to in a checkpoint folder (``calibrate --save-policy``), and read
#: from by ``transcribe`` / ``Transcriber`` when no policy is named.
SAVED_POLICY = "exit_policy.json"
#: The ``format`` of a saved policy (the same for ``calibration_<policy>.json`` and an export's
#: ``policy.json``, which older versions wrote without the field).
SAVED_POLICY_FORMAT = "wav2vec2-ee-exit-policy"
#: The ``version`` this package writes, and the versions it reads (a file without one is version 1).
SAVED_POLICY_VERSION = 1
READABLE_VERSIONS: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class SavedPolicy:
    """A checked saved policy: its name, value, budget and fitted arguments (the learned policy's
    :class:`LearnedWeights`); :meth:`build` gives the policy."""

    policy: str
    value: float | int | None
    max_layer: int | None
    fitted: dict = field(default_factory=dict)
    exit_layers: list[int] | None = None

    def build(self) -> ExitPolicy:
        return policy_with_value(self.policy, self.value, self.max_layer, **self.fitted)


def _check_header(values: Mapping) -> None:
    """``format``, ``version`` and ``policy`` of a saved policy's JSON object."""
    form = values.get("format", SAVED_POLICY_FORMAT)
    if form != SAVED_POLICY_FORMAT:
        raise UserError(f"format {form!r} is not {SAVED_POLICY_FORMAT!r} (not a saved exit policy)")
    version = values.get("version", SAVED_POLICY_VERSION)
    if not is_integer(version) or int(version) not in READABLE_VERSIONS:
        raise UserError(
            f"version {version!r} of {SAVED_POLICY_FORMAT} is not one this wav2vec2-ee reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}): written by a newer version, or not a saved policy"
        )
    _check_name(values["policy"])
    cls = POLICIES.get(values["policy"])
    if cls is not None and cls.needs_references:
        raise UserError(f"the {cls.name} policy needs the reference transcripts: it exists only in `sweep`")


def _check_fields(values: Mapping) -> None:
    """The types of a saved policy's ``parameter``, ``value``, ``max_layer`` and ``exit_layers``."""
    cls = POLICIES.get(values["policy"])
    expected = cls.parameter if cls is not None else None
    parameter = values.get("parameter")
    if parameter is not None and parameter != expected:
        raise UserError(f"parameter {parameter!r} is not the {values['policy']} policy's ({expected})")
    for key in ("value", "max_layer"):
        if values.get(key) is not None and not is_number(values[key]):
            raise UserError(f"{key} {values[key]!r} is not a number")
    layers = values.get("exit_layers")
    if layers is not None and (not isinstance(layers, list) or not all(is_integer(x) for x in layers)):
        raise UserError(f"exit_layers must be a list of layer numbers, got {layers!r}")


def check_saved_policy(values: Any, source: str = "saved policy") -> SavedPolicy:
    """The :class:`SavedPolicy` of a saved policy's JSON object (the format in the module docstring),
    checked whole: its header, its fields' types, its value's range and its fitted model; a one-line
    :class:`~.errors.UserError` starting with ``source`` (the file) otherwise."""
    if not isinstance(values, Mapping) or "policy" not in values:
        raise UserError(
            f"{source}: not a calibrated policy (no 'policy' field; see `wav2vec2-ee calibrate --save-policy`)"
        )
    try:
        _check_header(values)
        _check_fields(values)
        cls = POLICIES.get(values["policy"])
        layers = values.get("exit_layers")
        saved = SavedPolicy(
            values["policy"],
            values.get("value"),
            values.get("max_layer"),
            cls.fitted_from_saved(values) if cls is not None else {},
            None if layers is None else [int(x) for x in layers],
        )
        saved.build()  # the value's range, the budget
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return saved


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # a missing file: FileNotFoundError
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def read_saved_policy(path: str | os.PathLike) -> dict:
    """The JSON object of a saved policy file, checked (:func:`check_saved_policy`; a one-line
    :class:`~.errors.UserError` naming the file otherwise)."""
    path = Path(path)
    values = _read_json(path)
    check_saved_policy(values, str(path))
    return values


def policy_from_saved(values: Any, source: str = "saved policy") -> ExitPolicy:
    """The policy of a saved policy's JSON object (errors name ``source``)."""
    return check_saved_policy(values, source).build()


def load_saved_policy(path: str | os.PathLike) -> ExitPolicy:
    """The policy saved in ``path`` (``exit_policy.json``, ``calibration_<policy>.json``, ``policy.json``)."""
    return check_saved_policy(_read_json(Path(path)), str(path)).build()


def saved_policy_header(policy: ExitPolicy) -> dict:
    """The start of a saved policy's JSON object: format, version, the policy (name, parameter, value,
    budget) and what it saves beyond them (the learned model); the caller adds its figures."""
    return {
        "format": SAVED_POLICY_FORMAT,
        "version": SAVED_POLICY_VERSION,
        **policy.describe(),
        **policy.saved_fields(),
    }


def write_saved_policy(path: str | os.PathLike, values: Mapping) -> Path:
    """Check ``values`` (:func:`check_saved_policy`) and write them to ``path`` atomically."""
    check_saved_policy(values, str(path))
    atomic_write_json(path, dict(values))
    return Path(path)


# --------------------------------------------------------------------------------------------------
# the exit loop


class ExitStep(Protocol):
    """One exit of a batch (``ExitStep`` of the model, ``OnnxExitStep`` of the ONNX segments)."""

    exit_index: int

    def retain(self, keep: Any) -> None: ...


def exit_loop(
    steps: Iterable[ExitStep],
    deepest: int,
    view_of: Callable[[Any], Any],
    stops: Callable[[list], Any],
    positions: Callable[[Any], Any],
    record: Callable[[Any], None],
) -> None:
    """The engine's loop over one batch's exits (shallow to deep), in any array library.

    After each exit the policy decides (``stops(history)``: a ``(rows,)`` bool mask of the utterances
    still running that stop here); those answer (``record`` of their view) and leave the batch
    (``step.retain(~stop)``: later blocks run on the rest only); the exit ``deepest`` answers for all
    that are left, and the loop ends there (or when the steps end: no utterance is left).

    Args:
        steps: the exits of the batch, up to ``deepest`` at least.
        view_of: the policy's view of a step (the runtime's exit view, with ``select(indices)``).
        stops: ``history -> (rows,)`` bool mask on the host (``policy.should_exit`` converted).
        positions: the indices of a mask's true entries, as the views' ``select`` takes them.
        record: called with the view of the utterances that answer at its exit.
    """
    history: list = []  # the exits so far, restricted to the utterances still running
    for step in steps:
        history.append(view_of(step))
        if step.exit_index == deepest:
            record(history[-1])
            return
        stop = stops(history)
        if not bool(stop.any()):
            continue
        record(history[-1].select(positions(stop)))
        step.retain(~stop)
        keep = positions(~stop)
        history = [view.select(keep) for view in history]
