"""``wav2vec2-ee sweep``: the WER / compute trade-off of exit policies over their thresholds.

How each number is obtained:

* WER, mean exit layer, mean layers computed: **simulated exactly** from one pass that computes every
  exit of every utterance (:func:`~.table.compute_exit_table`): a policy's decisions depend only on
  exit outputs, so replaying them on the table gives the engine's decisions (thresholds are placed
  between observed values, so float ties cannot flip them).
* Wall time: **measured** by really running the early-exit engine over the split for every timed
  operating point (``--timing all``, the default; ``pareto``: the points on the layers Pareto front,
  the fixed exits and the oracle; ``none``), against the model's full forward pass timed in the same
  run (:mod:`.timing`). The timed run's own WER and mean layers are stored beside the simulated ones
  (``engine_wer``, ``engine_mean_layers``) as a check. The oracle is timed by scheduling each
  utterance's oracle exit (:class:`~.policies.ScheduledExit`): what a rule that guessed right would cost.
* The values tried, the simulation and the learned policy's fit: :mod:`.search`.
* The learned policy (``--policies learned``) needs a fitted model: ``--learned-policy exit_policy.json``
  (fitted and thresholded on dev by ``calibrate --policy learned --save-policy``; its calibrated threshold
  is added to the grid: on the test split, that point is the honest figure) or one fitted here on
  ``--fit-split`` (default dev; never the test split: fitting on the swept split itself is flagged
  ``in_sample`` in ``<split>_sweep.json``). Its grid is spread over its scores on the swept split.

Files written to ``output_dir`` (atomically; ``<split>`` is the split's name):

* ``<split>_sweep.csv`` / ``<split>_sweep.json``: one row per operating point.
* ``<split>_sweep.png``: WER against mean layers computed and against wall time, Pareto fronts marked.
* ``<split>_exit_table.jsonl``: per utterance, every exit's hypothesis, errors and statistics.
* ``<split>_decisions.csv``: per utterance, the exit layer each operating point chose.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..ctc.metrics import word_errors
from ..ctc.model import load_evaluation_model
from ..device import DeviceArguments, default_batching
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text
from ..options import resolve_options
from ..policy_core import POLICIES, FixedExit, policy_with_value, read_saved_policy
from ..results import format_decisions_csv, format_points_csv
from .arguments import (
    LexiconArguments,
    LexiconSourceArguments,
    ScoringArguments,
    SweepArguments,
    parse_thresholds,
    posterior_spec,
    scoring_spec,
)
from .calibrate import split_exit_table
from .plots import plot_tradeoff
from .policies import Decoders, ScheduledExit
from .search import ALWAYS_SWEPT, fit_policy
from .table import (
    ExitTable,
    OperatingPoint,
    compute_exit_table,
    evaluate_policy,
    load_prepared_split,
    oracle_curve,
    pareto_front,
    threshold_grid,
    write_exit_table,
)
from .timing import PolicyFactory, load_batches, measure_wall_times

logger = logging.getLogger(__name__)

TIMING_MODES = ("all", "pareto", "none")
DEFAULT_SWEEP_POLICIES = ("entropy", "confidence", "patience")


def sweep_points(
    table: ExitTable,
    policies: Sequence[str],
    thresholds: Mapping[str, Sequence[float]] | None = None,
    num_thresholds: int | None = 12,
    max_layer: int | None = None,
    fitted: Mapping[str, Mapping] | None = None,
    also: Mapping[str, Sequence[float]] | None = None,
) -> list[tuple[OperatingPoint, torch.Tensor]]:
    """Every fixed exit, the oracle, and each policy over its grid, simulated on ``table``.

    Args:
        fitted: per fitted policy (the learned one), its fitted arguments (``{"model": ...}``).
        also: per policy, values added to its grid (a calibrated threshold).

    Returns:
        ``(point, exits)`` pairs, ``exits`` ``(n,)`` the 0-based exit per utterance.
    """
    always = list(ALWAYS_SWEPT)  # every fixed exit, the oracle
    names = [*always, *[p for p in dict.fromkeys(policies) if p not in always]]
    out = []
    for name in names:
        arguments = dict((fitted or {}).get(name) or {})
        if POLICIES[name].fitted_arguments and not arguments:
            raise UserError(f"the {name} policy needs a fitted model (--learned-policy, or --fit-split)")
        given = (thresholds or {}).get(name)
        values = list(given) if given else threshold_grid(table, name, num_thresholds, max_layer, arguments)
        values += [v for v in (also or {}).get(name, []) if v not in values]
        for value in values:
            out.append(evaluate_policy(table, policy_with_value(name, value, max_layer, **arguments)))
    runnable = [x for x in out if not POLICIES[x[0].policy].needs_references]  # the oracle is a bound
    flags = pareto_front(*zip(*[(p.mean_layers_computed, p.wer) for p, _ in runnable]))
    for (point, _), flag in zip(runnable, flags):
        point.pareto_layers = flag
    return out


def _factory(point: OperatingPoint, exits: torch.Tensor, ids: Sequence[str]) -> PolicyFactory:
    if POLICIES[point.policy].needs_references:  # the oracle: replay its decisions
        by_id = dict(zip(ids, exits.tolist()))
        return lambda batch_ids: ScheduledExit([by_id[i] for i in batch_ids])
    policy = point.build()
    return lambda batch_ids: policy


def time_points(
    em,
    table: ExitTable,
    prepared,
    chosen: Sequence[tuple[OperatingPoint, torch.Tensor]],
    decoders: Decoders,
    repeats: int = 1,
    batch_size: int = 16,
    max_batch_seconds: float | None = 320.0,
) -> dict[str, float]:
    """Run the engine for every point of ``chosen``, the model's full forward pass and the engine at
    full depth; fill the points' wall times and engine checks.

    Returns:
        ``{"full_forward_seconds": ..., "engine_full_depth_seconds": ...}``.
    """
    batches = load_batches(prepared, em.feature_extractor, batch_size, max_batch_seconds, em.device)
    runs: dict[str, PolicyFactory | None] = {"full": None, "engine_full": lambda ids: FixedExit()}
    runs.update({str(i): _factory(p, exits, table.ids) for i, (p, exits) in enumerate(chosen)})
    measured = measure_wall_times(em.model, batches, runs, decoders, repeats, em.dtype)
    reference, engine_full = measured["full"].seconds, measured["engine_full"].seconds
    refs = dict(zip(table.ids, table.references))
    for i, (point, exits) in enumerate(chosen):
        m = measured[str(i)]
        point.wall_seconds = m.seconds
        point.wall_relative = m.seconds / reference
        point.wall_relative_engine = m.seconds / engine_full
        point.engine_mean_layers = sum(m.layers_computed.values()) / max(1, len(m.layers_computed))
        if table.policy_transcripts is None:
            errors = sum(word_errors(refs[u], m.transcripts[u]).errors for u in refs if u in m.transcripts)
            point.engine_wer = errors / max(1, point.reference_words)
            same_output = abs(point.engine_wer - point.wer) <= 1e-9
        else:  # scored transcripts come from another decoder: check the engine's greedy ones instead
            expected = {
                u: table.policy_transcripts[k][j] for j, (u, k) in enumerate(zip(table.ids, exits.tolist()))
            }
            same_output = all(m.transcripts.get(u, t) == t for u, t in expected.items())
        if abs(point.engine_mean_layers - point.mean_layers_computed) > 1e-6 or not same_output:
            logger.warning(
                "%s: the engine gave WER %s / %.3f layers, the simulation %.4f / %.3f",
                point.label,
                "other transcripts" if point.engine_wer is None else f"{point.engine_wer:.4f}",
                point.engine_mean_layers,
                point.wer,
                point.mean_layers_computed,
            )
    timed = [p for p, _ in chosen if not POLICIES[p.policy].needs_references]
    for point, flag in zip(timed, pareto_front([p.wall_relative for p in timed], [p.wer for p in timed])):
        point.pareto_wall = flag
    return {"full_forward_seconds": reference, "engine_full_depth_seconds": engine_full}


def format_points(points: Sequence[OperatingPoint], full_depth: int) -> str:
    """A printable table of operating points (``*``: on the Pareto front of WER vs layers)."""
    lines = [f"{'point':<28} {'WER %':>7} {'layers':>7} {f'/{full_depth}':>6} {'wall':>6}  front"]
    for p in points:
        wall = "" if p.wall_relative is None else f"{p.wall_relative:6.3f}"
        lines.append(
            f"{p.label:<28} {100 * p.wer:7.2f} {p.mean_layers_computed:7.3f} {p.depth_fraction:6.3f} {wall:>6}  "
            + ("*" if p.pareto_layers else "")
        )
    return "\n".join(lines)


def run_sweep(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    args: SweepArguments | None = None,
    lexicon: LexiconArguments | None = None,
    source: LexiconSourceArguments | None = None,
    scoring: ScoringArguments | None = None,
    runtime: DeviceArguments | None = None,
    **options,
) -> dict:
    """The ``sweep`` command as a function; returns the content of ``<split>_sweep.json``.

    Takes the command's option dataclasses (:mod:`.arguments`), or their fields as keywords
    (:func:`~wav2vec2_ee.options.resolve_options`). With ``--lm-order``, the WERs are those of the
    lexicon beam search with a word n-gram model (:func:`~.arguments.scoring_spec`); the policies still
    decide from the exit outputs.
    """
    args, lexicon, source, scoring, device = resolve_options(
        (args, lexicon, source, scoring, runtime),
        (SweepArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        options,
    )
    policies = list(dict.fromkeys(args.policies))
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise UserError(f"unknown --policies {bad}: choose from {', '.join(POLICIES)}")
    if args.timing not in TIMING_MODES:
        raise UserError(f"unknown --timing {args.timing!r}: choose from {', '.join(TIMING_MODES)}")
    if args.num_thresholds < 2:
        raise UserError(f"--num-thresholds must be >= 2, got {args.num_thresholds}")
    overrides = parse_thresholds(args.thresholds, [p for p in policies if POLICIES[p].parameter is not None])
    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    em = load_evaluation_model(checkpoint, device=device.device, dtype=device.dtype)
    batching = default_batching(em.device, args.batch_size, args.max_batch_seconds, cpu=(16, 320.0))
    name, prepared = load_prepared_split(em, args.data, args.split, args.progress)
    decoders = Decoders(em.tokenizer)
    if any(POLICIES[p].needs_lexicon for p in policies):
        resolved = posterior_spec(lexicon, source).resolve(args.data, em.tokenizer)
        decoders.lexicon_decoder = resolved.build(name, [u.text for u in prepared])
    score = scoring_spec(lexicon, source, scoring)
    scoring_decoder = score.resolve(args.data, em.tokenizer).build() if score is not None else None
    table = compute_exit_table(
        em,
        prepared,
        decoders.lexicon_decoder,
        *batching,
        args.progress,
        desc=f"exits {name}",
        scoring_decoder=scoring_decoder,
    )
    fitted, also, fits = fitted_policies(em, args, name, table, scoring_decoder, batching, policies)
    results = sweep_points(table, policies, overrides, args.num_thresholds, args.max_layer, fitted, also)

    seconds: dict[str, float] = {}
    if args.timing != "none":
        chosen = [
            (p, e) for p, e in results if args.timing == "all" or p.pareto_layers or p.policy in ALWAYS_SWEPT
        ]
        seconds = time_points(em, table, prepared, chosen, decoders, args.repeats, *batching)
    summary = _write_sweep(checkpoint, output_dir, args, device, em, name, table, results, seconds, fits)
    return summary


def fitted_policies(
    em, args: SweepArguments, name: str, table: ExitTable, scoring_decoder, batching, policies: Sequence[str]
) -> tuple[dict[str, dict], dict[str, list[float]], dict[str, dict]]:
    """``(fitted, also, info)`` for the fitted policies among ``policies`` (the learned one): their
    fitted arguments, read from ``--learned-policy`` (its calibrated value added to the grid, ``also``)
    or fitted on ``--fit-split`` (whose exit table is computed here unless it is the swept split
    ``name``, then flagged in-sample), and what ``<split>_sweep.json`` says about each (``info``)."""
    fitted: dict[str, dict] = {}
    also: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    for policy in policies:
        cls = POLICIES[policy]
        if not cls.fitted_arguments:
            continue
        if args.learned_policy is not None:
            values = read_saved_policy(args.learned_policy)
            if values["policy"] != policy:
                raise UserError(
                    f"--learned-policy {args.learned_policy}: a {values['policy']} policy, not {policy}"
                )
            fitted[policy] = cls.fitted_from_saved(values)
            if values.get("value") is not None:
                also[policy] = [float(values["value"])]
            fit_split = (values.get("splits") or {}).get("dev")
            info[policy] = {
                "source": str(Path(args.learned_policy).resolve()),
                "fit_split": fit_split,
                "calibrated_value": values.get("value"),
                "in_sample": fit_split == name,
            }
        else:
            if args.fit_split in (args.split, name):
                fit_name, fit_table = name, table
            else:
                fit_name, fit_table = split_exit_table(
                    em, args.data, args.fit_split, None, scoring_decoder, batching, args.progress
                )
            settings = {"hidden": args.learned_hidden, "split": fit_name}
            fitted[policy] = fit_policy(cls, fit_table, args.max_layer, **settings)
            info[policy] = {
                "source": f"fitted on {fit_name}",
                "fit_split": fit_name,
                "in_sample": fit_name == name,
            }
        info[policy]["fit"] = {k: getattr(v, "fit", None) for k, v in fitted[policy].items()}
        if info[policy]["in_sample"]:
            logger.warning(
                "the %s policy was fitted on %s, the split swept: its points are in-sample (fit on dev, "
                "sweep the test split for honest figures)",
                policy,
                name,
            )
    return fitted, also, info


def _write_sweep(checkpoint, output_dir, args, device, em, name, table, results, seconds, fits) -> dict:
    """Write the sweep's files (CSV, decisions, exit table, plot, then the JSON) and print the table.
    (Ten parameters: the results of :func:`run_sweep`'s steps, handed over as they are.)"""
    batch_size = default_batching(em.device, args.batch_size, args.max_batch_seconds, cpu=(16, 320.0))[0]
    points = [p for p, _ in results]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = oracle_curve(table)
    files = [f"{name}_sweep.csv", f"{name}_sweep.json", f"{name}_exit_table.jsonl", f"{name}_decisions.csv"]
    write_exit_table(table, out / files[2])
    decisions = [[table.layers[k] for k in exits.tolist()] for _, exits in results]
    atomic_write_text(out / files[3], format_decisions_csv(table.ids, [p.label for p in points], decisions))
    atomic_write_text(out / files[0], format_points_csv(points))
    if args.plot:
        files.append(f"{name}_sweep.png")
        plot_tradeoff(points, out / files[-1], curve, title=f"{Path(checkpoint).name} on {name}")
    summary = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": str(Path(args.data).resolve()),
        "split": name,
        "utterances": table.num_utterances,
        "audio_seconds": sum(table.audio_seconds),
        "exit_layers": table.layers,
        "full_depth": table.full_depth,
        "final_exit_wer": table.wer_of_exit(len(table.layers) - 1),
        "timing": {
            "mode": args.timing,
            "repeats": args.repeats,
            "batch_size": batch_size,
            "device": str(em.device),
            "dtype": device.dtype,
            "full_forward_seconds": seconds.get("full_forward_seconds"),
            "engine_full_depth_seconds": seconds.get("engine_full_depth_seconds"),
            "threads": torch.get_num_threads(),
            "method": "engine runs over the whole split (audio decoded and padded beforehand), fastest of "
            "`repeats` interleaved rounds; wall_relative = seconds / the model's full forward pass (+ greedy "
            "decoding); wall_relative_engine = seconds / the engine at full depth",
        },
        "simulation": "WER and layers replayed on every exit's outputs (exit_table.jsonl)",
        "fitted_policies": fits,
        "points": [p.to_dict() for p in points],
        "oracle_curve": [{"mean_layers": d, "wer": w} for d, w in curve],
        "files": files,
    }
    atomic_write_json(out / files[1], summary)
    return summary
