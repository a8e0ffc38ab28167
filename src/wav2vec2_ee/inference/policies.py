"""Exit policies: after each exit, which of the running utterances stop there.

A policy is a small object passed to the engine (:func:`~wav2vec2_ee.inference.engine.run_early_exit`).
After every exit the engine hands it the history of :class:`ExitView` s of the utterances still
running (``history[-1]`` is the exit just computed) and the policy answers, per utterance, whether
to stop. Two rules make simulation exact (:meth:`ExitPolicy.simulate`, used by ``sweep`` and
``calibrate``): a decision depends only on the exits computed so far (causal) and only on the
utterance's own outputs (row-independent). The deepest allowed exit (:meth:`ExitPolicy.deepest_exit`)
always answers for the utterances still running.

=============== ============================ ====================================================
name            class                        stops at the first exit where
=============== ============================ ====================================================
``fixed``       :class:`FixedExit`           its layer is ``layer`` (default: the last exit)
``entropy``     :class:`EntropyThreshold`    mean frame entropy (nats) ``<= threshold``
``confidence``  :class:`ConfidenceThreshold` mean max-probability ``>= threshold``
``posterior``   :class:`PosteriorThreshold`  n-best posterior of a lexicon beam search ``>= threshold``
``patience``    :class:`Patience`            the greedy transcripts of ``patience`` consecutive exits agree
``budget``      :class:`LayerBudget`         never beyond layer ``max_layer`` (wraps any policy)
``oracle``      :class:`OracleExit`          evaluation only: the shallowest exit with the fewest errors
=============== ============================ ====================================================

Accepted values (:meth:`ExitPolicy.check_value`, applied by :func:`build_policy` and the commands; a
``ValueError`` naming the range otherwise): an entropy threshold is a finite number ``>= 0`` (the
statistic lies in ``[0, log(vocab)]``), a confidence or posterior threshold lies in ``(0, 1]`` (the
statistics lie in ``[1/vocab, 1]`` and ``[0, 1]``), patience is an integer ``>= 1``, and a layer
budget is one of the model's exit layers (:func:`check_max_layer`, checked where the policy meets the
model: :meth:`ExitPolicy.deepest_exit`). The classes themselves take any threshold but NaN: one
outside the range is a constant decision (``EntropyThreshold(-1)`` never stops early).

:func:`build_policy` is the only place that maps names to classes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from transformers import Wav2Vec2CTCTokenizer

from ..evaluation.decoding import LexiconBeamDecoder, greedy_decode, nbest_posterior
from ..evaluation.metrics import mean_frame_entropy, mean_max_prob
from ..vocab import normalize_transcript

# --------------------------------------------------------------------------------------------------
# what a policy sees


@dataclass
class Decoders:
    """What some exit statistics need: the tokenizer (greedy transcripts) and a lexicon beam decoder
    (the n-best posterior)."""

    tokenizer: Wav2Vec2CTCTokenizer | None = None
    lexicon_decoder: LexiconBeamDecoder | None = None


def _transcripts(logits: torch.Tensor, lengths: torch.Tensor, decoders: Decoders) -> list[str]:
    if decoders.tokenizer is None:
        raise ValueError("greedy transcripts (the patience policy, the answers) need a tokenizer")
    return [normalize_transcript(t) for t in greedy_decode(logits, lengths, decoders.tokenizer)]


def _posterior(logits: torch.Tensor, lengths: torch.Tensor, decoders: Decoders) -> torch.Tensor:
    if decoders.lexicon_decoder is None:
        raise ValueError(
            "the posterior policy needs a lexicon beam decoder (--lexicon FILE or --lexicon-from SPLITS)"
        )
    values = [nbest_posterior(z, decoders.lexicon_decoder, int(n)) for z, n in zip(logits, lengths.tolist())]
    # no hypothesis at all (nan) is no confidence
    return torch.tensor([0.0 if math.isnan(v) else v for v in values], dtype=torch.float32)


#: Per-utterance statistics of one exit, computed from ``(logits, output_lengths, decoders)``.
STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor, Decoders], torch.Tensor | list[str]]] = {
    "entropy": lambda z, n, d: mean_frame_entropy(z, n),
    "max_prob": lambda z, n, d: mean_max_prob(z, n),
    "posterior": _posterior,
    "transcripts": _transcripts,
}


def _take(value: torch.Tensor | list, index: torch.Tensor) -> torch.Tensor | list:
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    return [value[i] for i in index.tolist()]


class ExitView:
    """One exit's outputs for the utterances still running: what a policy sees.

    Statistics (:data:`STATISTICS`: ``entropy``, ``max_prob``, ``posterior`` ``(batch,)`` tensors and
    ``transcripts``, normalised greedy transcripts) are computed on first use and cached, so a
    policy pays only for what it reads. A view built by ``sweep`` from precomputed statistics has no
    logits.

    Args:
        exit_index: 0-based exit (into ``config.exit_layers``); layer: its layer number.
        rows: ``(batch,)`` positions of these utterances in the batch the engine started with.
        logits: ``(batch0, frames, vocab)`` logits of the exit; with ``index`` only the rows
            ``index`` of them belong to this view (views of a shrinking batch share one tensor).
        output_lengths: ``(batch0,)`` valid frames.
        decoders: tokenizer and lexicon decoder for ``transcripts`` and ``posterior``.
        stats: precomputed statistics, each ``(batch,)`` (already restricted to this view's rows).
        index: ``(batch,)`` rows of ``logits`` / ``output_lengths`` in this view (``None``: all).
    """

    def __init__(
        self,
        exit_index: int,
        layer: int,
        rows: torch.Tensor,
        logits: torch.Tensor | None = None,
        output_lengths: torch.Tensor | None = None,
        decoders: Decoders | None = None,
        stats: Mapping[str, torch.Tensor | list] | None = None,
        index: torch.Tensor | None = None,
    ):
        self.exit_index = exit_index
        self.layer = layer
        self.rows = rows
        self._logits = logits
        self._lengths = output_lengths
        self._index = index
        self.decoders = decoders or Decoders()
        self._stats: dict[str, torch.Tensor | list] = dict(stats or {})

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def logits(self) -> torch.Tensor:
        """``(batch, frames, vocab)`` logits of this view's utterances."""
        if self._logits is None:
            raise ValueError(f"exit {self.exit_index} (layer {self.layer}) was given statistics, not logits")
        return self._logits if self._index is None else self._logits[self._index]

    @property
    def output_lengths(self) -> torch.Tensor:
        """``(batch,)`` valid frames."""
        if self._lengths is None:
            raise ValueError(f"exit {self.exit_index} (layer {self.layer}) was given statistics, not logits")
        return self._lengths if self._index is None else self._lengths[self._index]

    def stat(self, name: str) -> torch.Tensor | list[str]:
        """The per-utterance statistic ``name`` (computed once, then cached)."""
        if name not in self._stats:
            if name not in STATISTICS:
                raise ValueError(f"unknown exit statistic {name!r}: choose from {sorted(STATISTICS)}")
            self._stats[name] = STATISTICS[name](self.logits, self.output_lengths, self.decoders)
        return self._stats[name]

    @property
    def entropy(self) -> torch.Tensor:
        return self.stat("entropy")  # type: ignore[return-value]

    @property
    def max_prob(self) -> torch.Tensor:
        return self.stat("max_prob")  # type: ignore[return-value]

    @property
    def posterior(self) -> torch.Tensor:
        return self.stat("posterior")  # type: ignore[return-value]

    @property
    def transcripts(self) -> list[str]:
        return self.stat("transcripts")  # type: ignore[return-value]

    def select(self, keep: torch.Tensor) -> ExitView:
        """The view of the utterances ``keep`` ``(n,)`` (positions in this view); logits are not copied."""
        index = keep if self._index is None else self._index[keep]
        stats = {name: _take(value, keep) for name, value in self._stats.items()}
        return ExitView(
            self.exit_index,
            self.layer,
            self.rows[keep],
            self._logits,
            self._lengths,
            self.decoders,
            stats,
            index if self._logits is not None else None,
        )


# --------------------------------------------------------------------------------------------------
# policies


def check_max_layer(max_layer: int, exit_layers: Sequence[int]) -> int:
    """0-based index of the exit at layer ``max_layer``: a layer budget must be one of the model's exit
    layers (a budget between two exits would silently mean the shallower one; one beyond the last exit
    would mean no budget). Raises a ``ValueError`` naming the exit layers otherwise."""
    layers = [int(x) for x in exit_layers]
    if max_layer < layers[0]:
        raise ValueError(
            f"--max-layer {max_layer} is below the first exit (layer {layers[0]}): "
            f"choose one of the model's exit layers {layers}"
        )
    if max_layer not in layers:
        raise ValueError(
            f"--max-layer {max_layer} is not an exit layer of this model: choose one of its exit layers {layers}"
        )
    return layers.index(max_layer)


class ExitPolicy(ABC):
    """Decides after each exit which running utterances stop there.

    Subclasses implement :meth:`should_exit`; decisions must be causal and row-independent (see
    the module docstring) so that :meth:`simulate` on precomputed statistics equals the engine.
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
    #: Whether the policy needs a lexicon beam decoder (:attr:`Decoders.lexicon_decoder`).
    needs_lexicon: ClassVar[bool] = False
    #: Whether the policy needs the reference transcripts (an evaluation bound, never run by the engine).
    needs_references: ClassVar[bool] = False
    #: Whether ``sweep`` always includes the policy (as a reference point: every fixed exit, the oracle).
    always_swept: ClassVar[bool] = False
    #: The matplotlib marker of the policy's curve in ``sweep``'s plot.
    marker: ClassVar[str] = "o"

    @abstractmethod
    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        """``(batch,)`` bool: stop at ``history[-1]``'s exit (all views hold the same utterances)."""

    @classmethod
    def check_value(cls, value: float | int) -> float | int:
        """``value`` as the policy's parameter, or a ``ValueError`` naming the accepted range."""
        if cls.parameter is None:
            raise ValueError(f"the {cls.name} policy takes no parameter, got {value}")
        return value

    @classmethod
    def candidate_values(
        cls, stats: Mapping[str, torch.Tensor], allowed_layers: Sequence[int], num: int | None = 12
    ) -> list[float | int | None]:
        """The parameter values ``sweep`` and ``calibrate`` try, from a split's statistics ``stats``
        (name -> ``(exits, n)``) and the exit layers the policy may use; ``[None]`` without a parameter."""
        if cls.parameter is None:
            return [None]
        raise NotImplementedError(f"{cls.__name__} does not say which values of {cls.parameter} to try")

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        """0-based index of the deepest exit the policy may use (it answers for everything left)."""
        return len(exit_layers) - 1

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

    def simulate(self, views: Sequence[ExitView], errors: torch.Tensor | None = None) -> torch.Tensor:
        """The exit each utterance would take, from every exit's precomputed outputs.

        Args:
            views: one :class:`ExitView` per exit of the model (all utterances, shallow to deep).
            errors: ``(exits, n)`` word errors of each exit's hypothesis (only the oracle reads them).

        Returns:
            ``(n,)`` long: 0-based exit index per utterance.
        """
        return self.simulate_until(views, errors, self.deepest_exit([v.layer for v in views]))

    def simulate_until(
        self, views: Sequence[ExitView], errors: torch.Tensor | None, deepest: int
    ) -> torch.Tensor:
        """:meth:`simulate` with exit ``deepest`` answering for everything left.

        Replays :meth:`should_exit` exit by exit on all utterances at once (exact for causal,
        row-independent policies: decisions after an utterance stopped are ignored).
        """
        n = len(views[0])
        chosen = torch.full((n,), deepest, dtype=torch.long)
        done = torch.zeros(n, dtype=torch.bool)
        for k in range(deepest):
            stop = self.should_exit(views[: k + 1]).cpu() & ~done
            chosen[stop] = k
            done |= stop
            if bool(done.all()):
                break
        return chosen

    def __repr__(self) -> str:
        args = "" if self.parameter is None else f"{self.parameter}={self.value!r}"
        return f"{type(self).__name__}({args})"


class FixedExit(ExitPolicy):
    """Always the exit at ``layer`` (``None``: the last exit): the static baseline."""

    name = "fixed"
    marker = "s"
    parameter = "layer"
    larger_is_more_aggressive = False
    integer_parameter = True
    parameter_required = False
    always_swept = True

    def __init__(self, layer: int | None = None):
        self.layer = None if layer is None else self.check_value(layer)

    @classmethod
    def check_value(cls, value: float | int) -> int:
        if not _is_integer(value) or int(value) < 1:
            raise ValueError(f"the fixed policy's layer must be an exit layer (an integer >= 1), got {value}")
        return int(value)

    @classmethod
    def candidate_values(cls, stats, allowed_layers, num=12) -> list[int]:
        """Every allowed exit layer."""
        return list(allowed_layers)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        if self.layer is None:
            return len(exit_layers) - 1
        if self.layer not in exit_layers:
            raise ValueError(
                f"fixed exit layer {self.layer} is not an exit of this model (exits at {list(exit_layers)})"
            )
        return list(exit_layers).index(self.layer)

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        view = history[-1]
        stop = self.layer is not None and view.layer >= self.layer
        return torch.full((len(view),), stop, dtype=torch.bool)


def _is_integer(value) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value)) and float(value) == int(value)
    except (TypeError, ValueError):
        return False


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


class ThresholdPolicy(ExitPolicy):
    """Stop when an exit statistic crosses ``threshold`` (subclasses name the statistic and side)."""

    parameter = "threshold"
    #: The :data:`STATISTICS` entry compared with the threshold.
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
            raise ValueError(f"{self.name} threshold must be a number, got nan")
        self.threshold = threshold

    @classmethod
    def accepted_range(cls) -> str:
        """``"a finite number >= 0"``, ``"a number in (0, 1]"``: the accepted thresholds, in words."""
        if math.isinf(cls.high):
            return f"a finite number {'>=' if cls.low_inclusive else '>'} {cls.low:g}"
        return f"a number in {'[' if cls.low_inclusive else '('}{cls.low:g}, {cls.high:g}]"

    @classmethod
    def check_value(cls, value: float | int) -> float:
        """``value`` as a threshold: a ``ValueError`` naming the accepted range unless it lies in it."""
        try:
            threshold = float(value)
        except (TypeError, ValueError):
            threshold = math.nan
        above_low = cls.low <= threshold if cls.low_inclusive else cls.low < threshold
        if not (math.isfinite(threshold) and above_low and threshold <= cls.high):
            raise ValueError(
                f"the {cls.name} policy's threshold must be {cls.accepted_range()}, got {value} "
                f"({cls.statistic_range})"
            )
        return threshold

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        value = history[-1].stat(self.statistic)
        return value >= self.threshold if self.stop_when_above else value <= self.threshold

    @classmethod
    def candidate_values(cls, stats, allowed_layers, num=12) -> list[float]:
        """``num`` thresholds spread over the quantiles of the statistic as observed at the exits where
        the policy decides (every allowed exit but the deepest), always including one that stops nobody
        early and one that stops everybody at the first exit; ``num=None``: every distinct decision
        (all midpoints between observed values, :func:`threshold_cuts`)."""
        if cls.statistic not in stats:
            hint = (
                " (the posterior needs a lexicon: --lexicon or --lexicon-from)" if cls.needs_lexicon else ""
            )
            raise ValueError(
                f"the {cls.name} policy needs the {cls.statistic} statistic, which was not computed{hint}"
            )
        deciding = stats[cls.statistic][: max(1, len(allowed_layers) - 1)]
        cuts = threshold_cuts(deciding.flatten(), cls.low, cls.high, cls.low_inclusive)
        if num is None or len(cuts) <= num:
            return cuts
        picks = torch.linspace(0, len(cuts) - 1, max(2, num)).round().long().unique().tolist()
        return [cuts[i] for i in picks]


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
    marker = "^"
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
    ``threshold``. Needs :attr:`Decoders.lexicon_decoder`."""

    name = "posterior"
    marker = "D"
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
    marker = "v"
    parameter = "patience"
    larger_is_more_aggressive = False
    integer_parameter = True
    example_value = "2"

    @classmethod
    def candidate_values(cls, stats, allowed_layers, num=12) -> list[int]:
        """1 .. the number of allowed exits."""
        return list(range(1, len(allowed_layers) + 1))

    def __init__(self, patience: int):
        self.patience = self.check_value(patience)

    @classmethod
    def check_value(cls, value: float | int) -> int:
        if not _is_integer(value) or int(value) < 1:
            raise ValueError(
                f"the patience policy's patience must be an integer >= 1 (consecutive exits that agree), "
                f"got {value}"
            )
        return int(value)

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        n = len(history[-1])
        if len(history) < self.patience:
            return torch.zeros(n, dtype=torch.bool)
        recent = [view.transcripts for view in history[-self.patience :]]
        return torch.tensor([all(t[i] == recent[-1][i] for t in recent) for i in range(n)], dtype=torch.bool)


class LayerBudget(ExitPolicy):
    """Never compute beyond layer ``max_layer`` (a device's compute limit): ``policy`` decides, and
    the deepest exit at or below ``max_layer`` answers for whatever is left."""

    name = "budget"

    def __init__(self, policy: ExitPolicy, max_layer: int):
        if not _is_integer(max_layer) or int(max_layer) < 1:
            raise ValueError(
                f"--max-layer must be one of the model's exit layers (an integer >= 1), got {max_layer}"
            )
        self.policy = policy
        self._max_layer = int(max_layer)

    @property
    def max_layer(self) -> int:
        return self._max_layer

    @property
    def value(self) -> float | int | None:
        return self.policy.value

    def describe(self) -> dict:
        return {**self.policy.describe(), "max_layer": self._max_layer}

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        """The wrapped policy's deepest exit, capped at the exit at ``max_layer``, which must be one of
        ``exit_layers`` (:func:`check_max_layer`: a ``ValueError`` naming them otherwise)."""
        return min(self.policy.deepest_exit(exit_layers), check_max_layer(self._max_layer, exit_layers))

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        return self.policy.should_exit(history)

    def simulate_until(
        self, views: Sequence[ExitView], errors: torch.Tensor | None, deepest: int
    ) -> torch.Tensor:
        return self.policy.simulate_until(views, errors, deepest)

    def __repr__(self) -> str:
        return f"LayerBudget({self.policy!r}, max_layer={self._max_layer})"


class OracleExit(ExitPolicy):
    """Evaluation only: the shallowest exit whose hypothesis has the fewest word errors against the
    reference. It looks at every exit's errors, so it cannot run in the engine; ``sweep`` simulates
    it (and times it by scheduling each utterance's oracle exit, :class:`ScheduledExit`)."""

    name = "oracle"
    marker = "*"
    needs_references = True
    always_swept = True

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        raise ValueError(
            "the oracle needs every exit's errors against the reference: it is an evaluation bound "
            "(see `wav2vec2-ee sweep`), not a policy the engine can run"
        )

    def simulate_until(
        self, views: Sequence[ExitView], errors: torch.Tensor | None, deepest: int
    ) -> torch.Tensor:
        if errors is None:
            raise ValueError("the oracle needs the word errors of every exit's hypothesis")
        return errors[: deepest + 1].argmin(0)  # the first (shallowest) of the minima


class ScheduledExit(ExitPolicy):
    """Each utterance stops at an exit known in advance (``exits[row]``, 0-based): replays another
    policy's decisions, e.g. to time the oracle. Not in :func:`build_policy`."""

    name = "scheduled"

    def __init__(self, exits: Sequence[int] | torch.Tensor):
        self.exits = torch.as_tensor(exits, dtype=torch.long)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        return min(int(self.exits.max()), len(exit_layers) - 1)

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        view = history[-1]
        return self.exits[view.rows.cpu()] <= view.exit_index


# --------------------------------------------------------------------------------------------------
# the factory

POLICIES: dict[str, type[ExitPolicy]] = {
    cls.name: cls
    for cls in (FixedExit, EntropyThreshold, ConfidenceThreshold, PosteriorThreshold, Patience, OracleExit)
}
#: Policy names ``build_policy`` accepts (``budget`` = :class:`LayerBudget` over the last exit).
POLICY_NAMES: tuple[str, ...] = (*POLICIES, LayerBudget.name)


def build_policy(name: str, max_layer: int | None = None, **params) -> ExitPolicy:
    """The policy called ``name`` with its parameters, capped at ``max_layer`` when given.

    ``build_policy("entropy", threshold=0.4)``, ``build_policy("patience", patience=2, max_layer=4)``,
    ``build_policy("fixed", layer=4)``, ``build_policy("budget", max_layer=4)``.
    """
    if name == LayerBudget.name:
        if max_layer is None:
            raise ValueError("the budget policy needs max_layer (the deepest layer it may compute)")
        if params:
            raise ValueError(f"the budget policy takes only max_layer, got {sorted(params)}")
        return LayerBudget(FixedExit(), max_layer)
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}: choose from {', '.join(POLICY_NAMES)}")
    cls = POLICIES[name]
    accepted = [] if cls.parameter is None else [cls.parameter]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"the {name} policy takes {', '.join(accepted) or 'no parameter'} (and max_layer), got {unknown}"
        )
    if cls.parameter is not None and cls.parameter not in params and cls.parameter_required:
        raise ValueError(f"the {name} policy needs its {cls.parameter} (e.g. {cls.example_value})")
    if cls.parameter is not None and params.get(cls.parameter) is not None:
        params[cls.parameter] = cls.check_value(params[cls.parameter])  # the accepted range, or a ValueError
    policy = cls(**params)
    return LayerBudget(policy, max_layer) if max_layer is not None else policy


def policy_with_value(name: str, value: float | int | None, max_layer: int | None = None) -> ExitPolicy:
    """``build_policy(name)`` with its one parameter set to ``value`` (what sweeps and the CLI use)."""
    cls = POLICIES.get(name)
    if cls is None or cls.parameter is None or value is None:
        return build_policy(name, max_layer=max_layer)
    return build_policy(name, max_layer=max_layer, **{cls.parameter: value})
