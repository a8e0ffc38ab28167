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
``learned``     :class:`LearnedExit`         a fitted model's score of several exit features ``>= threshold``
``oracle``      :class:`OracleExit`          evaluation only: the shallowest exit with the fewest errors
=============== ============================ ====================================================

The learned policy holds a model fitted on a development split's exit table (:meth:`ExitPolicy.fit`,
:mod:`.learned`); policies with such fitted arguments (:attr:`ExitPolicy.fitted_arguments`) are built
with them (``build_policy("learned", threshold=0.6, model=model)``) or from a saved file.

Saved policies (``calibrate --save-policy``): one JSON format, :data:`SAVED_POLICY_FORMAT`, written as
:data:`SAVED_POLICY` (``exit_policy.json``) into the checkpoint folder and read back by
:func:`policy_from_saved`: ``{"format", "version", "policy", "parameter", "value", "max_layer", ...}``
plus what :meth:`ExitPolicy.saved_fields` adds (the learned policy: its ``model``). ``calibrate
--output-dir``'s ``calibration_<policy>.json`` and an export's ``policy.json`` are the same format.

Accepted values (:meth:`ExitPolicy.check_value`, applied by :func:`build_policy` and the commands; a
``ValueError`` naming the range otherwise): an entropy threshold is a finite number ``>= 0`` (the
statistic lies in ``[0, log(vocab)]``), a confidence or posterior threshold lies in ``(0, 1]`` (the
statistics lie in ``[1/vocab, 1]`` and ``[0, 1]``), patience is an integer ``>= 1``, and a layer
budget is one of the model's exit layers (:func:`check_max_layer`, checked where the policy meets the
model: :meth:`ExitPolicy.deepest_exit`); a learned threshold lies in ``(0, 1]`` (a probability). The
classes themselves take any threshold but NaN: one outside the range is a constant decision
(``EntropyThreshold(-1)`` never stops early).

:func:`build_policy` is the only place that maps names to classes.
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from transformers import Wav2Vec2CTCTokenizer

from ..evaluation.decoding import LexiconBeamDecoder, greedy_decode, nbest_posterior
from ..evaluation.metrics import mean_frame_entropy, mean_max_prob
from ..vocab import normalize_transcript
from .learned import (
    FEATURES,
    LearnedModel,
    agreements,
    exit_labels,
    fit_exit_model,
    log_frames,
    low_quantile_max_prob,
    mean_top_margin,
    non_blank_share,
)

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


def _blank_id(decoders: Decoders) -> int:
    if decoders.tokenizer is None:
        raise ValueError(
            "the non_blank statistic (the learned policy) needs a tokenizer: its pad id is the blank"
        )
    return int(decoders.tokenizer.pad_token_id)


#: Per-utterance statistics of one exit, computed from ``(logits, output_lengths, decoders)``
#: (the learned policy's features: :mod:`.learned`).
STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor, Decoders], torch.Tensor | list[str]]] = {
    "entropy": lambda z, n, d: mean_frame_entropy(z, n),
    "max_prob": lambda z, n, d: mean_max_prob(z, n),
    "max_prob_p10": lambda z, n, d: low_quantile_max_prob(z, n),
    "margin": lambda z, n, d: mean_top_margin(z, n),
    "non_blank": lambda z, n, d: non_blank_share(z, n, _blank_id(d)),
    "log_frames": lambda z, n, d: log_frames(n),
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

    def derived(self, name: str, compute: Callable[[], torch.Tensor | list]) -> torch.Tensor | list:
        """A per-utterance value that needs more than this exit's logits (e.g. the previous exit's
        transcripts): ``compute()`` once, then cached like a statistic (precomputed ones win)."""
        if name not in self._stats:
            self._stats[name] = compute()
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
    #: Constructor arguments fitted on a development split (the learned policy's ``model``): such a
    #: policy is built with them, from :meth:`fit` or a saved file (:meth:`fitted_from_saved`).
    fitted_arguments: ClassVar[tuple[str, ...]] = ()

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

    # fitted policies (the learned one): how sweep / calibrate / saved files get their arguments

    @classmethod
    def fit(cls, table, max_layer: int | None = None, **settings) -> dict:
        """The :attr:`fitted_arguments` fitted on an exit table (:class:`~.table.ExitTable`) whose
        exits at or below ``max_layer`` the policy may use; ``{}`` for a rule."""
        return {}

    @classmethod
    def fitted_from_saved(cls, values: Mapping) -> dict:
        """The :attr:`fitted_arguments` from a saved policy's JSON (``{}`` for a rule)."""
        return {}

    @classmethod
    def prepare_table(cls, table, **fitted) -> None:
        """Add to an exit table the statistic that the policy built with ``fitted`` thresholds (so that
        :meth:`candidate_values` and simulation read it); nothing for a rule on the table's statistics."""
        return None

    def fitted_values(self) -> dict:
        """This policy's :attr:`fitted_arguments` (``{}`` for a rule)."""
        return {name: getattr(self, name) for name in self.fitted_arguments}

    def prepare(self, table) -> None:
        """:meth:`prepare_table` with this policy's fitted arguments (``evaluate_policy`` calls it)."""
        type(self).prepare_table(table, **self.fitted_values())

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


def _agreement(history: Sequence[ExitView]) -> torch.Tensor:
    view = history[-1]
    if len(history) < 2:  # the first exit: no previous transcript to agree with
        return view.derived("agreement", lambda: torch.zeros(len(view), dtype=torch.float32))  # type: ignore[return-value]
    return view.derived("agreement", lambda: agreements(history[-2].transcripts, view.transcripts))  # type: ignore[return-value]


#: Features that need more than the current exit's logits: the previous exit's transcript, the index.
_HISTORY_FEATURES: dict[str, Callable[[Sequence[ExitView]], torch.Tensor]] = {
    "agreement": _agreement,
    "exit_index": lambda h: torch.full((len(h[-1]),), float(h[-1].exit_index)),
}


def learned_features(history: Sequence[ExitView], names: Sequence[str] = FEATURES) -> torch.Tensor:
    """``(batch, F)`` float32 features (:mod:`.learned`) of ``history[-1]``'s utterances, read from the
    exits so far only (the current one and, for ``agreement``, the previous one's transcripts)."""
    columns = []
    for name in names:
        try:
            value = _HISTORY_FEATURES[name](history) if name in _HISTORY_FEATURES else history[-1].stat(name)
        except ValueError as err:
            raise ValueError(
                f"the learned policy needs the {name} feature at exit {history[-1].exit_index}: {err} "
                f"(exit tables of this version have every feature)"
            ) from None
        columns.append(torch.as_tensor(value).to("cpu", torch.float32))
    return torch.stack(columns, 1)


class LearnedExit(ThresholdPolicy):
    """Stop when a fitted model's score (:class:`~.learned.LearnedModel`: the probability that stopping
    here costs no word errors against the deeper exits) of several exit features is at or above
    ``threshold``. The features (:data:`~.learned.FEATURES`: entropy, max-probability and its low
    quantile, top-1/top-2 margin, non-blank share, agreement with the previous exit's transcript, the
    exit index, the length) read the current exit and the previous exit's transcript only.

    Fitted on a development split's exit table (:meth:`fit`, ``calibrate --policy learned``) or read
    from a saved policy (``exit_policy.json``, :meth:`fitted_from_saved`)."""

    name = "learned"
    marker = "P"
    statistic = "learned"
    stop_when_above = True
    larger_is_more_aggressive = False
    example_value = "0.5"
    fitted_arguments = ("model",)
    low, high, low_inclusive = 0.0, 1.0, False
    statistic_range = "the learned score is a probability in [0, 1]"

    def __init__(self, threshold: float, model: LearnedModel | Mapping | None = None):
        super().__init__(threshold)
        if model is None:
            raise ValueError(
                "the learned policy needs its fitted model: `wav2vec2-ee calibrate --policy learned "
                "--save-policy` fits one and saves it as exit_policy.json"
            )
        self.model = model if isinstance(model, LearnedModel) else LearnedModel.from_dict(model)

    def features(self, history: Sequence[ExitView]) -> torch.Tensor:
        """``(batch, F)`` the model's features of ``history[-1]``'s utterances (:func:`learned_features`)."""
        return learned_features(history, self.model.features)

    def score(self, history: Sequence[ExitView]) -> torch.Tensor:
        """``(batch,)`` float64 scores of ``history[-1]``'s utterances (cached in the view as ``learned``)."""
        return history[-1].derived(self.statistic, lambda: self.model.score(self.features(history)))  # type: ignore[return-value]

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        return self.score(history) >= self.threshold

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        fitted = self.model.exit_layers
        if fitted is not None and list(fitted) != [int(x) for x in exit_layers]:
            raise ValueError(
                f"the learned policy was fitted for a model with exits at {list(fitted)}; this model has "
                f"exits at {list(exit_layers)} (fit it again: calibrate --policy learned)"
            )
        return len(exit_layers) - 1

    @classmethod
    def candidate_values(cls, stats, allowed_layers, num=12) -> list[float]:
        if cls.statistic not in stats:
            raise ValueError(
                "the learned policy's thresholds come from its scores on the table: fit or load its model "
                "and score the table first (LearnedExit.prepare_table)"
            )
        return super().candidate_values(stats, allowed_layers, num)

    @classmethod
    def fit(
        cls,
        table,
        max_layer: int | None = None,
        hidden: int = 0,
        l2: float = 1e-3,
        split: str | None = None,
        features: Sequence[str] = FEATURES,
    ) -> dict:
        """``{"model": ...}`` fitted on every utterance at every exit before the deepest allowed one,
        labelled 1 where stopping costs no errors against the deeper allowed exits
        (:func:`~.learned.exit_labels`); ``hidden`` > 0: a tanh MLP of that width."""
        layers = list(table.layers)
        deepest = len(layers) - 1 if max_layer is None else check_max_layer(max_layer, layers)
        if deepest == 0:
            raise ValueError(
                f"the learned policy needs two exits or more to choose from, got {layers[: deepest + 1]}"
            )
        views = table.views()
        x = torch.cat([learned_features(views[: k + 1], features) for k in range(deepest)])
        y = exit_labels(table.errors, deepest).reshape(-1)
        model = fit_exit_model(x, y, features, hidden=hidden, l2=l2)
        model.exit_layers = layers
        model.fit.update(split=split, utterances=table.num_utterances, deciding_exits=layers[:deepest])
        return {"model": model}

    @classmethod
    def fitted_from_saved(cls, values: Mapping) -> dict:
        if "model" not in values:
            raise ValueError(
                "a saved learned policy needs its 'model' (calibrate --policy learned --save-policy)"
            )
        return {"model": LearnedModel.from_dict(values["model"])}

    @classmethod
    def prepare_table(cls, table, model: LearnedModel | None = None, **fitted) -> None:
        """``table.stats["learned"]`` ``(exits, n)``: the scores of ``model`` at every exit (computed by
        :meth:`score` on the table's views, as the engine computes them); kept when ``model`` scored the
        table already (``table.scored_by``)."""
        if model is None:
            return
        if table.scored_by.get(cls.statistic) == model.fingerprint and cls.statistic in table.stats:
            return
        views = table.views()
        table.stats[cls.statistic] = torch.stack(
            [model.score(learned_features(views[: k + 1], model.features)) for k in range(len(views))]
        )
        table.scored_by[cls.statistic] = model.fingerprint

    def saved_fields(self) -> dict:
        return {"model": self.model.to_dict()}

    def __repr__(self) -> str:
        return f"LearnedExit(threshold={self.threshold!r}, model={self.model.kind}:{self.model.fingerprint})"


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

    def fitted_values(self) -> dict:
        return self.policy.fitted_values()

    def prepare(self, table) -> None:
        self.policy.prepare(table)

    def saved_fields(self) -> dict:
        return self.policy.saved_fields()

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


def build_policy(name: str, max_layer: int | None = None, **params) -> ExitPolicy:
    """The policy called ``name`` with its parameters, capped at ``max_layer`` when given.

    ``build_policy("entropy", threshold=0.4)``, ``build_policy("patience", patience=2, max_layer=4)``,
    ``build_policy("fixed", layer=4)``, ``build_policy("budget", max_layer=4)``,
    ``build_policy("learned", threshold=0.6, model=model)`` (its fitted arguments as keywords).
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
    accepted = ([] if cls.parameter is None else [cls.parameter]) + list(cls.fitted_arguments)
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


def policy_with_value(
    name: str, value: float | int | None, max_layer: int | None = None, **fitted
) -> ExitPolicy:
    """``build_policy(name)`` with its one parameter set to ``value`` (what sweeps and the CLI use) and
    its fitted arguments ``fitted`` (the learned policy's ``model``)."""
    cls = POLICIES.get(name)
    if cls is None or cls.parameter is None or value is None:
        return build_policy(name, max_layer=max_layer, **fitted)
    return build_policy(name, max_layer=max_layer, **{cls.parameter: value}, **fitted)


# --------------------------------------------------------------------------------------------------
# saved policies

#: The file a saved policy is written to in a checkpoint folder (``calibrate --save-policy``), and read
#: from by ``transcribe`` / :class:`~.transcriber.Transcriber` when no policy is named.
SAVED_POLICY = "exit_policy.json"
#: The ``format`` of a saved policy (the same for ``calibration_<policy>.json`` and an export's
#: ``policy.json``, which older versions wrote without the field).
SAVED_POLICY_FORMAT = "wav2vec2-ee-exit-policy"


def policy_from_saved(values: Mapping, source: str = "saved policy") -> ExitPolicy:
    """The policy of a saved policy's JSON object: ``{"policy", "value", "max_layer", ...}`` and its
    fitted arguments (:meth:`ExitPolicy.fitted_from_saved`); a ``ValueError`` naming ``source``."""
    if not isinstance(values, Mapping) or "policy" not in values:
        raise ValueError(
            f"{source}: not a calibrated policy (no 'policy' field; see `wav2vec2-ee calibrate --save-policy`)"
        )
    name = values["policy"]
    cls = POLICIES.get(name)
    try:
        fitted = cls.fitted_from_saved(values) if cls is not None else {}
        return policy_with_value(name, values.get("value"), values.get("max_layer"), **fitted)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{source}: {err}") from err


def read_saved_policy(path: str | os.PathLike) -> dict:
    """The JSON object of a saved policy file (a ``ValueError`` naming the file when it is not one)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(values, dict) or "policy" not in values:
        raise ValueError(f"{path}: not a calibrated policy (no 'policy' field; see `wav2vec2-ee calibrate`)")
    return values


def load_saved_policy(path: str | os.PathLike) -> ExitPolicy:
    """The policy saved in ``path`` (``exit_policy.json``, ``calibration_<policy>.json``, ``policy.json``)."""
    return policy_from_saved(read_saved_policy(path), str(path))
