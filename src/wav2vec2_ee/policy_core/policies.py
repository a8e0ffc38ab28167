"""The exit policies (:class:`ExitPolicy` and its subclasses) and their factory
(:func:`build_policy`, :func:`policy_with_value`).

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import UserError
from .learned import (
    HasLearnedWeights,
    LearnedWeights,
    View,
    learned_score,
    learned_weights,
)
from .values import is_integer, is_number


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
