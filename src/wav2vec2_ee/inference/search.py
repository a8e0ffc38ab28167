"""The search behind ``sweep`` and ``calibrate``: a policy simulated on every exit's precomputed outputs,
the parameter values worth trying, and the learned policy fitted on (and scoring) an exit table.

Simulation is exact (:func:`simulate`): a policy's decisions are causal and row-independent
(:mod:`wav2vec2_ee.policy_core`), so replaying :meth:`~wav2vec2_ee.policy_core.ExitPolicy.should_exit`
exit by exit on all utterances at once gives the engine's decisions. Thresholds are placed between
observed values (:func:`threshold_cuts`) so that engine and simulation cannot differ by a float tie.

The tables themselves (:class:`~.table.ExitTable`: every exit's hypothesis, errors and statistics on a
split) and the operating points are in :mod:`.table`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UserError
from ..policy_core import (
    FEATURES,
    ExitPolicy,
    FixedExit,
    LearnedExit,
    OracleExit,
    Patience,
    ThresholdPolicy,
    check_max_layer,
    learned_score,
    learned_weights,
)
from .learned import exit_labels, fit_exit_model
from .policies import ExitView, learned_features

if TYPE_CHECKING:
    from .table import ExitTable

#: The policies ``sweep`` always includes, as reference points: every fixed exit, the oracle.
ALWAYS_SWEPT: tuple[str, ...] = (FixedExit.name, OracleExit.name)


# --------------------------------------------------------------------------------------------------
# simulation


def oracle_exits(errors: torch.Tensor | None, deepest: int) -> torch.Tensor:
    """``(n,)`` long: the shallowest exit at or below ``deepest`` with the fewest word errors
    (``errors``: ``(exits, n)``), the oracle's choice."""
    if errors is None:
        raise ValueError("the oracle needs the word errors of every exit's hypothesis")
    return errors[: deepest + 1].argmin(0)  # the first (shallowest) of the minima


def simulate_until(
    policy: ExitPolicy, views: Sequence[ExitView], errors: torch.Tensor | None, deepest: int
) -> torch.Tensor:
    """:func:`simulate` with exit ``deepest`` answering for everything left.

    Replays ``policy.should_exit`` exit by exit on all utterances at once (exact for causal,
    row-independent policies: decisions after an utterance stopped are ignored); the oracle (and a
    budget over it) reads ``errors`` instead.
    """
    if policy.base_policy.needs_references:
        return oracle_exits(errors, deepest)
    n = len(views[0])
    chosen = torch.full((n,), deepest, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for k in range(deepest):
        stop = policy.should_exit(views[: k + 1]).cpu() & ~done
        chosen[stop] = k
        done |= stop
        if bool(done.all()):
            break
    return chosen


def simulate(
    policy: ExitPolicy, views: Sequence[ExitView], errors: torch.Tensor | None = None
) -> torch.Tensor:
    """The exit each utterance would take, from every exit's precomputed outputs.

    Args:
        views: one :class:`~.policies.ExitView` per exit of the model (all utterances, shallow to deep).
        errors: ``(exits, n)`` word errors of each exit's hypothesis (only the oracle reads them).

    Returns:
        ``(n,)`` long: 0-based exit index per utterance.
    """
    return simulate_until(policy, views, errors, policy.deepest_exit([v.layer for v in views]))


# --------------------------------------------------------------------------------------------------
# the values to try


def _between(low: float, high: float) -> float:
    """The shortest decimal strictly between ``low`` and ``high`` (also in float32, as statistics are)."""
    mid = (low + high) / 2
    for digits in range(0, 17):
        value = round(mid, digits)
        if low < value < high and low < float(np.float32(value)) < high:
            return value
    return mid


def threshold_cuts(
    values: torch.Tensor, low: float = -math.inf, high: float = math.inf, low_inclusive: bool = True
) -> list[float]:
    """Thresholds that separate the sorted distinct ``values``: one below all, one between each pair of
    neighbours (short decimals, so engine and simulation cannot differ by a float tie), one above all.

    Every threshold lies in the accepted range ``[low, high]`` (``(low, high]`` unless
    ``low_inclusive``): the outer ones are moved inside it, to the range's end when no value of the
    range lies beyond every observed value (e.g. a confidence of exactly 1.0), or left out when not even
    the end qualifies (an open lower end at an observed value)."""
    u = torch.unique(values[torch.isfinite(values)].double()).tolist()
    if not u:
        return []
    margin = max(1e-6, 1e-3 * (u[-1] - u[0]))
    inner = [_between(a, b) for a, b in zip(u, u[1:])]
    below = _between(max(u[0] - 2 * margin, low), u[0]) if u[0] > low else (low if low_inclusive else None)
    above = _between(u[-1], min(u[-1] + 2 * margin, high)) if u[-1] < high else high
    cuts = [c for c in (below, *inner, above) if c is not None]
    return list(dict.fromkeys(c for c in cuts if (low <= c if low_inclusive else low < c) and c <= high))


def _threshold_values(
    cls: type[ThresholdPolicy],
    stats: Mapping[str, torch.Tensor],
    allowed_layers: Sequence[int],
    num: int | None,
) -> list[float]:
    if cls.statistic not in stats:
        if cls.fitted_arguments:
            raise UserError(
                f"the {cls.name} policy's thresholds come from its scores on the table: fit or load its model "
                "and score the table first (search.score_table)"
            )
        hint = " (the posterior needs a lexicon: --lexicon or --lexicon-from)" if cls.needs_lexicon else ""
        raise UserError(
            f"the {cls.name} policy needs the {cls.statistic} statistic, which was not computed{hint}"
        )
    deciding = stats[cls.statistic][: max(1, len(allowed_layers) - 1)]
    cuts = threshold_cuts(deciding.flatten(), cls.low, cls.high, cls.low_inclusive)
    if num is None or len(cuts) <= num:
        return cuts
    picks = torch.linspace(0, len(cuts) - 1, max(2, num)).round().long().unique().tolist()
    return [cuts[i] for i in picks]


def candidate_values(
    cls: type[ExitPolicy],
    stats: Mapping[str, torch.Tensor],
    allowed_layers: Sequence[int],
    num: int | None = 12,
) -> list[float | int | None]:
    """The parameter values ``sweep`` and ``calibrate`` try for the policy ``cls``, from a split's
    statistics ``stats`` (name -> ``(exits, n)``) and the exit layers the policy may use.

    ``[None]`` without a parameter; a fixed exit: every allowed exit layer; patience: 1 .. the number of
    allowed exits; a threshold: ``num`` thresholds spread over the quantiles of the statistic as observed
    at the exits where the policy decides (every allowed exit but the deepest), always including one
    that stops nobody early and one that stops everybody at the first exit (``num=None``: every
    distinct decision, :func:`threshold_cuts`)."""
    if cls.parameter is None:
        return [None]
    if issubclass(cls, FixedExit):
        return list(allowed_layers)
    if issubclass(cls, Patience):
        return list(range(1, len(allowed_layers) + 1))
    if issubclass(cls, ThresholdPolicy):
        return list(_threshold_values(cls, stats, allowed_layers, num))
    raise NotImplementedError(f"{cls.__name__} does not say which values of {cls.parameter} to try")


# --------------------------------------------------------------------------------------------------
# fitted policies (the learned one) on an exit table


def fit_learned(
    table: ExitTable,
    max_layer: int | None = None,
    hidden: int = 0,
    l2: float = 1e-3,
    split: str | None = None,
    features: Sequence[str] = FEATURES,
) -> dict:
    """``{"model": LearnedModel}`` fitted on every utterance at every exit before the deepest allowed
    one, labelled 1 where stopping costs no errors against the deeper allowed exits
    (:func:`~.learned.exit_labels`); ``hidden`` > 0: a tanh MLP of that width."""
    layers = list(table.layers)
    deepest = len(layers) - 1 if max_layer is None else check_max_layer(max_layer, layers)
    if deepest == 0:
        raise UserError(
            f"the learned policy needs two exits or more to choose from, got {layers[: deepest + 1]}"
        )
    views = table.views()
    x = torch.cat([learned_features(views[: k + 1], features) for k in range(deepest)])
    y = exit_labels(table.errors, deepest).reshape(-1)
    model = fit_exit_model(x, y, features, hidden=hidden, l2=l2)
    model.exit_layers = layers
    model.fit.update(split=split, utterances=table.num_utterances, deciding_exits=layers[:deepest])
    return {"model": model}


def fit_policy(cls: type[ExitPolicy], table: ExitTable, max_layer: int | None = None, **settings) -> dict:
    """The fitted arguments of the policy ``cls`` on an exit table whose exits at or below ``max_layer``
    it may use (:func:`fit_learned` with ``settings``); ``{}`` for a rule."""
    if issubclass(cls, LearnedExit):
        return fit_learned(table, max_layer, **settings)
    return {}


def score_table(cls: type[ExitPolicy], table: ExitTable, **fitted) -> None:
    """Add to ``table.stats`` the statistic that the policy ``cls`` built with ``fitted`` thresholds, so
    that :func:`candidate_values` and :func:`simulate` read it: the learned policy's scores ``(exits, n)``
    at every exit (as the engine computes them), kept when its model scored the table already
    (``table.scored_by``); nothing for a rule on the table's statistics."""
    model = fitted.get("model")
    if not issubclass(cls, LearnedExit) or model is None:
        return
    weights = learned_weights(model)
    if table.scored_by.get(cls.statistic) == weights.fingerprint and cls.statistic in table.stats:
        return
    views = table.views()
    table.stats[cls.statistic] = torch.stack(
        [torch.from_numpy(learned_score(views[: k + 1], weights)) for k in range(len(views))]
    )
    table.scored_by[cls.statistic] = weights.fingerprint


def prepare(policy: ExitPolicy, table: ExitTable) -> None:
    """:func:`score_table` with this policy's fitted arguments (``evaluate_policy`` calls it)."""
    base = policy.base_policy
    score_table(type(base), table, **base.fitted_values())
