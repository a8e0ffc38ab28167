"""Every exit's outputs on a split, and policies simulated on them (the basis of ``sweep`` / ``calibrate``).

A policy's decision depends only on exit outputs (see :mod:`wav2vec2_ee.policy_core`), so one encoder
pass per batch that computes every exit (:func:`compute_exit_table`) is enough to get the exact exit, WER
and layers computed of any policy at any threshold (:func:`evaluate_policy`, simulated by :mod:`.search`).
Wall time cannot be simulated: :mod:`.timing` measures it by running the engine.

Definitions used throughout:

* WER: corpus WER (total word errors over total reference words, as jiwer over a split) of the
  greedy hypotheses of the answering exits; texts lower-cased, white space normalised.
* mean exit layer: mean over utterances of the answering exit's layer.
* mean layers computed: mean over utterances of the transformer layers run for it; the engine stops
  an utterance at its exit, so it equals the mean exit layer.
* depth fraction: mean layers computed / full depth (the layer of the last exit).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch
from tqdm.auto import tqdm

from ..ctc.decoding import LexiconBeamDecoder, greedy_decode_exits, nbest_posterior
from ..ctc.engine import iter_exit_logits
from ..ctc.metrics import mean_frame_entropy, mean_max_prob, word_errors
from ..ctc.model import EvaluationModel, min_duration_for_ctc
from ..data import PreparedUtterance, SpeechDataset, resolve_splits
from ..data import load_prepared_split as prepare_split
from ..errors import UserError
from ..policy_core import POLICIES, ExitPolicy, policy_with_value
from ..results import write_jsonl
from ..vocab import normalize_transcript
from .learned import agreements, log_frames, low_quantile_max_prob, mean_top_margin, non_blank_share
from .policies import ExitView
from .search import candidate_values, prepare, score_table, simulate

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# the split


def load_prepared_split(
    em: EvaluationModel, data: str | os.PathLike, split: str | None, progress: bool = True
) -> tuple[str, list[PreparedUtterance]]:
    """``(name, utterances)`` of one split of ``data`` (a manifest is one split), ready for the model."""
    pairs = resolve_splits(data, [split] if split else None)
    if len(pairs) != 1:
        raise UserError(f"{data}: name one split with --split (e.g. dev)")
    name, which = pairs[0]
    prepared, _ = prepare_split(data, name, which, em.tokenizer, min_duration_for_ctc(em.model), progress)
    return name, prepared


# --------------------------------------------------------------------------------------------------
# the exit table


@dataclass
class ExitTable:
    """Every exit's greedy hypothesis, statistics and word errors for every utterance of a split.

    Args:
        ids / references: per utterance (references normalised).
        layers: the exits' layer numbers, shallow to deep.
        hypotheses: ``[exit][utterance]`` normalised greedy transcripts.
        stats: ``{name: (exits, n) float32}`` per-utterance exit statistics (``entropy``,
            ``max_prob``, the learned policy's features ``max_prob_p10``, ``margin``, ``non_blank``,
            ``log_frames``, ``agreement`` (:mod:`.learned`), and ``posterior`` when a lexicon decoder was
            given); a fitted policy adds its score (``learned``, :func:`~.search.prepare`).
        errors: ``(exits, n)`` long word errors of each hypothesis.
        reference_words: ``(n,)`` long.
        audio_seconds: ``(n,)`` durations.
    """

    ids: list[str]
    references: list[str]
    layers: list[int]
    hypotheses: list[list[str]]
    stats: dict[str, torch.Tensor]
    errors: torch.Tensor
    reference_words: torch.Tensor
    audio_seconds: list[float] = field(default_factory=list)
    #: what policies see as each exit's transcript (the patience policy): the greedy transcripts, which
    #: differ from ``hypotheses`` only when those come from a scoring decoder
    policy_transcripts: list[list[str]] | None = None
    #: which fitted model computed a score in ``stats`` (statistic name -> the model's fingerprint)
    scored_by: dict[str, str] = field(default_factory=dict)

    @property
    def num_utterances(self) -> int:
        return len(self.ids)

    @property
    def full_depth(self) -> int:
        return int(self.layers[-1])

    def views(self) -> list[ExitView]:
        """One precomputed :class:`ExitView` per exit, over all utterances (for simulation)."""
        rows = torch.arange(self.num_utterances)
        return [
            ExitView(
                k,
                layer,
                rows,
                stats={
                    **{s: v[k] for s, v in self.stats.items()},
                    "transcripts": (self.policy_transcripts or self.hypotheses)[k],
                },
            )
            for k, layer in enumerate(self.layers)
        ]

    def subset(self, rows: Sequence[int] | torch.Tensor) -> ExitTable:
        """The table of the utterances at ``rows`` (in that order): e.g. a learning curve over how many
        development utterances a fitted policy sees. Fitted scores in ``stats`` are kept as they are."""
        idx = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_utterances):
            raise IndexError(f"rows must be in [0, {self.num_utterances}), got {idx.tolist()}")
        pick = idx.tolist()
        return ExitTable(
            ids=[self.ids[i] for i in pick],
            references=[self.references[i] for i in pick],
            layers=list(self.layers),
            hypotheses=[[h[i] for i in pick] for h in self.hypotheses],
            stats={name: v[:, idx] for name, v in self.stats.items()},
            errors=self.errors[:, idx],
            reference_words=self.reference_words[idx],
            audio_seconds=[self.audio_seconds[i] for i in pick] if self.audio_seconds else [],
            policy_transcripts=(
                [[t[i] for i in pick] for t in self.policy_transcripts] if self.policy_transcripts else None
            ),
            scored_by=dict(self.scored_by),
        )

    def wer_of_exit(self, k: int) -> float:
        return float(self.errors[k].sum()) / max(1, int(self.reference_words.sum()))

    def to_records(self) -> list[dict]:
        """Per utterance: id, reference and per exit its layer, hypothesis, errors and statistics."""
        out = []
        for i, utt in enumerate(self.ids):
            exits = []
            for k, layer in enumerate(self.layers):
                row = {"layer": layer, "hypothesis": self.hypotheses[k][i], "errors": int(self.errors[k, i])}
                row.update({s: float(v[k, i]) for s, v in self.stats.items()})
                exits.append(row)
            out.append(
                {
                    "id": utt,
                    "reference": self.references[i],
                    "reference_words": int(self.reference_words[i]),
                    "exits": exits,
                }
            )
        return out


def compute_exit_table(
    em: EvaluationModel,
    prepared: Sequence[PreparedUtterance],
    lexicon_decoder: LexiconBeamDecoder | None = None,
    batch_size: int = 16,
    max_batch_seconds: float | None = 320.0,
    progress: bool = True,
    desc: str = "exits",
    scoring_decoder: LexiconBeamDecoder | None = None,
) -> ExitTable:
    """Run every utterance through every exit once (length-grouped batches) and tabulate the outputs.
    (About 70 lines: one streaming loop fills every column of the table, then unreadable audio is dropped.)

    Args:
        lexicon_decoder: gives the ``posterior`` statistic.
        scoring_decoder: when given, the hypotheses that are scored (WER, oracle) are its best
            hypotheses at every exit (e.g. a lexicon search with a word n-gram model: the output a
            system would show) instead of the greedy ones; policies still see the greedy transcripts.
    """
    dataset = SpeechDataset(prepared, em.feature_extractor)
    n, num_exits = len(prepared), len(em.model.config.exit_layers)
    hyps: list[list[str]] = [[""] * n for _ in range(num_exits)]
    greedy: list[list[str]] = [[""] * n for _ in range(num_exits)]
    names = ["entropy", "max_prob", "max_prob_p10", "margin", "non_blank", "log_frames"]
    names += ["posterior"] if lexicon_decoder is not None else []
    stats = {s: torch.full((num_exits, n), float("nan")) for s in names}
    seen = torch.zeros(n, dtype=torch.bool)
    bar = tqdm(total=n, desc=desc, unit="utt", disable=not progress, dynamic_ncols=True)
    for batch in iter_exit_logits(
        em.model, dataset, None, batch_size=batch_size, max_batch_seconds=max_batch_seconds, dtype=em.dtype
    ):
        index = torch.tensor(batch.indices)
        logits, lengths = torch.stack(batch.exit_logits), batch.output_lengths
        stats["entropy"][:, index] = mean_frame_entropy(logits, lengths).cpu()
        stats["max_prob"][:, index] = mean_max_prob(logits, lengths).cpu()
        stats["max_prob_p10"][:, index] = low_quantile_max_prob(logits, lengths).cpu()
        stats["margin"][:, index] = mean_top_margin(logits, lengths).cpu()
        stats["non_blank"][:, index] = non_blank_share(logits, lengths, em.tokenizer.pad_token_id).cpu()
        stats["log_frames"][:, index] = log_frames(lengths).cpu()
        for k, texts in enumerate(greedy_decode_exits(batch.exit_logits, lengths, em.tokenizer)):
            for j, i in enumerate(batch.indices):
                greedy[k][i] = hyps[k][i] = normalize_transcript(texts[j])
        if scoring_decoder is not None:
            for k, z in enumerate(batch.exit_logits):
                for j, i in enumerate(batch.indices):
                    hyps[k][i] = normalize_transcript(scoring_decoder.decode(z[j], int(lengths[j])))
        if lexicon_decoder is not None:
            for k, z in enumerate(batch.exit_logits):
                post = [nbest_posterior(z[j], lexicon_decoder, int(lengths[j])) for j in range(len(index))]
                stats["posterior"][k, index] = torch.tensor(post).nan_to_num(0.0)
        seen[index] = True
        bar.update(len(index))
    bar.close()
    if not bool(seen.all()):  # unreadable audio (logged by the data loader): drop those utterances
        keep = seen.nonzero().squeeze(1).tolist()
        prepared = [prepared[i] for i in keep]
        hyps = [[h[i] for i in keep] for h in hyps]
        greedy = [[h[i] for i in keep] for h in greedy]
        stats = {s: v[:, keep] for s, v in stats.items()}
    # agreement of each exit's greedy transcript with the previous exit's (what the learned policy reads)
    stats["agreement"] = torch.stack(
        [agreements(greedy[k - 1] if k else None, greedy[k]) for k in range(num_exits)]
    )
    refs = [normalize_transcript(u.text) for u in prepared]
    errors = torch.tensor(
        [[word_errors(r, h).errors for r, h in zip(refs, hk)] for hk in hyps], dtype=torch.long
    )
    words = torch.tensor([len(r.split()) for r in refs], dtype=torch.long)
    return ExitTable(
        ids=[u.id for u in prepared],
        references=refs,
        layers=list(em.model.config.exit_layers),
        hypotheses=hyps,
        stats=stats,
        errors=errors.reshape(num_exits, len(refs)),
        reference_words=words,
        audio_seconds=[u.duration for u in prepared],
        policy_transcripts=greedy if scoring_decoder is not None else None,
    )


# --------------------------------------------------------------------------------------------------
# operating points


@dataclass
class OperatingPoint:
    """One policy at one parameter value on one split: accuracy and cost.

    ``wall_*`` and ``engine_*`` are filled when the point was timed by really running the engine:
    ``wall_relative`` is its wall time over the model's full forward pass, ``wall_relative_engine``
    over the engine at full depth (the early-exit saving alone, without the engine's faster CNN);
    ``engine_wer`` / ``engine_mean_layers`` are what that run produced (they match the simulated
    ``wer`` / ``mean_layers_computed`` up to float rounding at the threshold).
    """

    policy: str
    parameter: str | None
    value: float | int | None
    max_layer: int | None
    wer: float
    errors: int
    reference_words: int
    utterances: int
    mean_exit_layer: float
    mean_layers_computed: float
    depth_fraction: float
    exit_counts: dict[int, int]
    wall_seconds: float | None = None
    wall_relative: float | None = None
    wall_relative_engine: float | None = None
    engine_wer: float | None = None
    engine_mean_layers: float | None = None
    pareto_layers: bool = False
    pareto_wall: bool = False
    #: the policy's fitted arguments (the learned model): not written to result files
    fitted: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``entropy=0.4``, ``fixed=4``, ``oracle``; ``@L<m>`` when capped at layer m."""
        text = self.policy if self.value is None else f"{self.policy}={self.value:g}"
        return text + (f"@L{self.max_layer}" if self.max_layer is not None else "")

    def build(self) -> ExitPolicy:
        """The policy of this point (not for the oracle)."""
        return policy_with_value(self.policy, self.value, self.max_layer, **self.fitted)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fitted"}
        out["exit_counts"] = {str(k): v for k, v in self.exit_counts.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoint:
        """The point :meth:`to_dict` wrote (``<split>_sweep.json``'s ``points``)."""
        return cls(**{**data, "exit_counts": {int(k): v for k, v in data["exit_counts"].items()}})


def point_from_exits(table: ExitTable, policy: ExitPolicy, exits: torch.Tensor) -> OperatingPoint:
    """The :class:`OperatingPoint` of ``policy`` whose utterances answer at ``exits`` ``(n,)``."""
    n = table.num_utterances
    errors = int(table.errors.gather(0, exits.unsqueeze(0)).sum())
    words = int(table.reference_words.sum())
    layers = torch.tensor(table.layers, dtype=torch.float64)[exits]
    counts = torch.bincount(exits, minlength=len(table.layers)).tolist()
    info = policy.describe()
    if info["value"] is None and info["parameter"] == "layer":  # a fixed exit: the deepest allowed
        info["value"] = table.layers[policy.deepest_exit(table.layers)]
    return OperatingPoint(
        policy=info["policy"],
        parameter=info["parameter"],
        value=info["value"],
        max_layer=info["max_layer"],
        wer=errors / max(1, words),
        errors=errors,
        reference_words=words,
        utterances=n,
        mean_exit_layer=float(layers.mean()),
        mean_layers_computed=float(layers.mean()),
        depth_fraction=float(layers.mean()) / table.full_depth,
        exit_counts={layer: c for layer, c in zip(table.layers, counts)},
        fitted=policy.fitted_values(),
    )


def evaluate_policy(table: ExitTable, policy: ExitPolicy) -> tuple[OperatingPoint, torch.Tensor]:
    """Simulate ``policy`` on the table: its operating point and ``(n,)`` exit per utterance (a fitted
    policy first adds its score to the table, :func:`~.search.prepare`)."""
    prepare(policy, table)
    exits = simulate(policy, table.views(), table.errors)
    return point_from_exits(table, policy, exits), exits


# --------------------------------------------------------------------------------------------------
# threshold grids


def threshold_grid(
    table: ExitTable,
    name: str,
    num: int | None = 12,
    max_layer: int | None = None,
    fitted: Mapping | None = None,
) -> list[float | int | None]:
    """The parameter values to try for policy ``name`` on this split (the policy's own
    :func:`~.search.candidate_values` over the exits at or below ``max_layer``); a fitted
    policy's score comes from its ``fitted`` arguments (``{"model": ...}``), added to the table first."""
    if name not in POLICIES:
        raise UserError(f"cannot sweep the policy {name!r}: choose from {', '.join(POLICIES)}")
    score_table(POLICIES[name], table, **(fitted or {}))
    allowed = [layer for layer in table.layers if max_layer is None or layer <= max_layer]
    if not allowed:
        raise UserError(f"max_layer {max_layer} is below the first exit (layer {table.layers[0]})")
    return candidate_values(POLICIES[name], table.stats, allowed, num)


# --------------------------------------------------------------------------------------------------
# fronts and bounds


def pareto_front(costs: Sequence[float], wers: Sequence[float]) -> list[bool]:
    """Whether each point is on the Pareto front (no other point is at most as costly and at most as
    wrong, and strictly better in one)."""
    flags = []
    for i, (c, w) in enumerate(zip(costs, wers)):
        dominated = any(
            (c2 <= c and w2 <= w) and (c2 < c or w2 < w)
            for j, (c2, w2) in enumerate(zip(costs, wers))
            if j != i
        )
        flags.append(not dominated)
    return flags


def oracle_curve(table: ExitTable) -> list[tuple[float, float]]:
    """The fewest errors any per-utterance choice of exits reaches at each mean depth.

    Points ``(mean layers computed, WER)`` of the lower convex hull, from the Lagrangian relaxation
    ``min_k errors[k, i] + lam * layer_k`` per utterance over every breakpoint ``lam`` (exact at the
    hull's vertices; WER is linear between them when utterances switch one at a time). The first
    point (largest depth, ``lam = 0``) is the oracle; the last is the first exit.
    """
    errors = table.errors.double()
    layers = torch.tensor(table.layers, dtype=torch.float64)
    words = max(1, int(table.reference_words.sum()))
    slopes = {0.0}
    for j in range(len(layers)):
        for k in range(j + 1, len(layers)):
            gain = (errors[j] - errors[k]) / (layers[k] - layers[j])
            slopes.update(gain[gain > 0].tolist())
    breaks = sorted(slopes)
    probes = [0.0] + [(a + b) / 2 for a, b in zip(breaks, breaks[1:])] + [breaks[-1] + 1.0]
    points = set()
    for lam in probes:
        # ties go to the shallowest exit (argmin returns the first minimum)
        choice = (errors + lam * layers.unsqueeze(1)).argmin(0)
        depth = float(layers[choice].mean())
        points.add((round(depth, 12), float(errors.gather(0, choice.unsqueeze(0)).sum()) / words))
    return sorted(points, reverse=True)


def oracle_wer_at(curve: Sequence[tuple[float, float]], depth: float) -> float:
    """The oracle curve's WER at mean depth ``depth`` (linear between vertices; the oracle's own WER
    beyond its depth; ``nan`` below the first exit)."""
    pts = sorted(curve)
    if depth >= pts[-1][0]:
        return pts[-1][1]
    if depth < pts[0][0]:
        return float("nan")
    for (d0, w0), (d1, w1) in zip(pts, pts[1:]):
        if d0 <= depth <= d1:
            return w0 if d1 == d0 else w0 + (w1 - w0) * (depth - d0) / (d1 - d0)
    return pts[-1][1]


def write_exit_table(table: ExitTable, path: str | os.PathLike) -> None:
    """The table as JSON lines, one utterance per line (every simulated number traces back here)."""
    write_jsonl(path, table.to_records())
