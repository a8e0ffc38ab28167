"""The operating points the server moves along, from a calibration (``wav2vec2-ee calibrate --output-dir``).

``calibrate`` writes, in its output folder, ``calibration_<policy>.json`` (the chosen threshold, the
accuracy budget ``max_wer_increase``, the final exit's dev WER, the policy's fitted model) and
``<dev split>_exit_table.jsonl`` (every exit's transcript, word errors and statistics for every dev
utterance). From the table, every decision of the policy is simulated exactly as ``calibrate`` does
(:func:`~wav2vec2_ee.inference.table.threshold_grid` with every distinct value, or
:data:`MAX_CANDIDATES` quantiles of a large split, and the calibrated value;
:func:`~wav2vec2_ee.inference.table.evaluate_policy`); the points whose dev WER stays within
``final-exit WER x (1 + budget)`` and that are on the Pareto front of (mean layers, WER) make the
frontier, from the most accurate to the cheapest (the calibrated point), thinned to a few
(``max_points``). Each point also gets its dev disagreement with the last exit (character error rate of
its transcripts against the last exit's), which the live accuracy check compares with.

Without the exit table (only the JSON file was kept) the frontier is the last exit and the calibrated
point. Without a calibration the server serves one point: the policy named by the flags, or the model
folder's saved policy, or the last exit (:func:`static_point`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rapidfuzz.distance import Levenshtein

from ..errors import UserError
from ..inference.table import ExitTable, evaluate_policy, pareto_front, threshold_grid
from ..policy_core import (
    POLICIES,
    ExitPolicy,
    FixedExit,
    check_policy_model,
    check_saved_policy,
    policy_with_value,
    read_saved_policy,
)
from .controller import ServePoint

logger = logging.getLogger(__name__)

#: Thresholds simulated at most (every distinct decision below that; a quantile grid above).
MAX_CANDIDATES = 400

#: The fields of an exit table row's exit that are not statistics.
_EXIT_FIELDS = ("layer", "hypothesis", "errors")


@dataclass
class Frontier:
    """The operating points (most accurate first) and where they came from."""

    points: list[ServePoint]
    source: str
    policy: str | None = None
    reference_wer: float | None = None
    max_wer_increase: float | None = None
    fitted: dict | None = None

    def describe(self) -> dict:
        return {
            "source": self.source,
            "policy": self.policy,
            "reference_wer": self.reference_wer,
            "max_wer_increase": self.max_wer_increase,
            "points": [p.describe() for p in self.points],
        }


def read_exit_table(path: str | os.PathLike) -> ExitTable:
    """The :class:`~wav2vec2_ee.inference.table.ExitTable` a ``<split>_exit_table.jsonl`` holds (what
    :func:`~wav2vec2_ee.inference.table.write_exit_table` wrote)."""
    ids, references, words, hypotheses, errors = [], [], [], [], []
    stats: dict[str, list[list[float]]] = {}
    layers: list[int] | None = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                exits = row["exits"]
                row_layers = [int(e["layer"]) for e in exits]
                if layers is None:
                    layers = row_layers
                    hypotheses = [[] for _ in layers]
                    errors = [[] for _ in layers]
                    stats = {k: [[] for _ in layers] for k in exits[0] if k not in _EXIT_FIELDS}
                if row_layers != layers:
                    raise ValueError(f"exit layers {row_layers}, not {layers} as the first row")
                for k, e in enumerate(exits):
                    hypotheses[k].append(str(e["hypothesis"]))
                    errors[k].append(int(e["errors"]))
                    for name in stats:
                        stats[name][k].append(float(e[name]))
                ids.append(str(row["id"]))
                references.append(str(row["reference"]))
                words.append(int(row["reference_words"]))
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{number}: not a row of an exit table ({err})") from None
    if layers is None:
        raise UserError(f"{path}: an empty exit table")
    return ExitTable(
        ids=ids,
        references=references,
        layers=layers,
        hypotheses=hypotheses,
        stats={name: torch.tensor(values, dtype=torch.float32) for name, values in stats.items()},
        errors=torch.tensor(errors, dtype=torch.long),
        reference_words=torch.tensor(words, dtype=torch.long),
    )


def calibration_file(path: str | os.PathLike) -> Path:
    """The ``calibration_<policy>.json`` of ``--calibration``: the file, or the one in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("calibration_*.json"))
        if len(found) != 1:
            what = "no calibration_<policy>.json" if not found else f"{len(found)} calibration files"
            raise UserError(
                f"{path}: {what} (the --output-dir of `wav2vec2-ee calibrate`); name the file with --calibration"
            )
        return found[0]
    if not path.is_file():
        raise UserError(f"{path}: no such calibration file or folder")
    return path


def _label(policy: ExitPolicy, layers: Sequence[int]) -> str:
    info = policy.describe()
    value = info["value"]
    if value is None and info["parameter"] == "layer":
        value = layers[policy.deepest_exit(layers)]
    text = info["policy"] if value is None else f"{info['policy']}={value:g}"
    return text + (f"@L{info['max_layer']}" if info["max_layer"] is not None else "")


def _check_runnable(name: str, source: str) -> None:
    cls = POLICIES.get(name)
    if cls is not None and (cls.needs_lexicon or cls.needs_references):
        raise UserError(
            f"{source}: the {name} policy needs a lexicon decoder or references, which the server does not "
            "have: calibrate entropy, confidence, patience or learned"
        )


def dev_disagreement(table: ExitTable, exits: torch.Tensor) -> float:
    """Character error rate of the transcripts at ``exits`` ``(n,)`` against the last exit's."""
    last = table.hypotheses[-1]
    errors = chars = 0
    for i, k in enumerate(exits.tolist()):
        errors += Levenshtein.distance(table.hypotheses[k][i], last[i])
        chars += len(last[i])
    return errors / max(1, chars)


def thin(points: list, most: int) -> list:
    """At most ``most`` of ``points``, the first and the last kept, the rest evenly spread."""
    if len(points) <= most:
        return points
    if most <= 1:
        return points[:1]
    step = (len(points) - 1) / (most - 1)
    picks = sorted({round(i * step) for i in range(most)})
    return [points[i] for i in picks]


def load_frontier(
    path: str | os.PathLike,
    exit_layers: Sequence[int],
    fingerprint: str | None = None,
    max_wer_increase: float | None = None,
    max_layer: int | None = None,
    max_points: int = 8,
) -> Frontier:
    """The frontier of a calibration (module docstring), checked against the served model (its exit
    layers and weights ``fingerprint``: a calibration of another model is refused). ``max_wer_increase``
    (default: the calibration's own budget) bounds the points' dev WER; ``max_layer`` caps them."""
    file = calibration_file(path)
    values = read_saved_policy(file)
    check_policy_model(values, exit_layers, fingerprint, str(file))
    saved = check_saved_policy(values, str(file))
    _check_runnable(saved.policy, str(file))
    budget = values.get("max_wer_increase") if max_wer_increase is None else max_wer_increase
    if budget is None or not float(budget) >= 0:
        raise UserError(
            f"{file}: no max_wer_increase recorded: give the accuracy budget (--max-wer-increase)"
        )
    budget = float(budget)
    cap = saved.max_layer
    if max_layer is not None:
        cap = max_layer if cap is None else min(cap, max_layer)
    dev = (values.get("splits") or {}).get("dev")
    table_file = file.parent / f"{dev}_exit_table.jsonl" if dev else None
    layers = [int(x) for x in exit_layers]
    if table_file is None or not table_file.is_file():
        logger.warning(
            "%s: no dev exit table beside it (%s): the frontier is the last exit and the calibrated point",
            file,
            table_file,
        )
        return _two_points(values, saved, layers, budget, cap, str(file))
    table = read_exit_table(table_file)
    if [int(x) for x in table.layers] != layers:
        raise UserError(f"{table_file}: exits at layers {table.layers}, not the served model's {layers}")
    reference = table.wer_of_exit(len(table.layers) - 1)
    limit = reference * (1.0 + budget) + 1e-12
    grid = threshold_grid(table, saved.policy, None, cap, saved.fitted)
    if len(grid) > MAX_CANDIDATES:  # a large dev split: a quantile grid (the frontier is thinned anyway)
        grid = threshold_grid(table, saved.policy, MAX_CANDIDATES, cap, saved.fitted)
    if saved.value is not None and saved.value not in grid:
        grid.append(saved.value)  # the calibrated point itself
    simulated = []
    for value in grid:
        policy = policy_with_value(saved.policy, value, cap, **saved.fitted)
        point, exits = evaluate_policy(table, policy)
        if point.wer <= limit:
            simulated.append((point, exits, policy))
    if not simulated:
        raise UserError(
            f"{file}: no {saved.policy} threshold keeps the dev WER within +{100 * budget:g} % of the last "
            f"exit's {100 * reference:.2f} %"
        )
    front = pareto_front([p.mean_layers_computed for p, _, _ in simulated], [p.wer for p, _, _ in simulated])
    kept = {}
    for (point, exits, policy), on_front in zip(simulated, front):
        key = (round(point.mean_layers_computed, 9), round(point.wer, 12))
        if on_front and key not in kept:  # ties: one point per (cost, WER)
            kept[key] = (point, exits, policy)
    ordered = sorted(kept.values(), key=lambda t: (-t[0].mean_layers_computed, t[0].wer))
    points = [
        ServePoint(
            label=_label(policy, layers),
            policy=saved.policy,
            value=point.value,
            max_layer=cap,
            dev_wer=point.wer,
            mean_layers=point.mean_layers_computed,
            dev_cer=dev_disagreement(table, exits),
            fitted=dict(saved.fitted),
        )
        for point, exits, policy in thin(ordered, max_points)
    ]
    return Frontier(points, str(file), saved.policy, reference, budget, dict(saved.fitted))


def _two_points(
    values: dict, saved, layers: list[int], budget: float, cap: int | None, source: str
) -> Frontier:
    dev = values.get("dev") or {}
    last = last_exit_point(layers, cap, values.get("reference_wer"))
    calibrated = policy_with_value(saved.policy, saved.value, cap, **saved.fitted)
    point = ServePoint(
        label=_label(calibrated, layers),
        policy=saved.policy,
        value=saved.value,
        max_layer=cap,
        dev_wer=dev.get("wer"),
        mean_layers=dev.get("mean_layers_computed"),
        fitted=dict(saved.fitted),
    )
    return Frontier(
        [last, point], source, saved.policy, values.get("reference_wer"), budget, dict(saved.fitted)
    )


def last_exit_point(layers: Sequence[int], cap: int | None = None, wer: float | None = None) -> ServePoint:
    """The point of the deepest allowed exit (full depth, or the operator's ``--max-layer``)."""
    policy = FixedExit(int(layers[-1]) if cap is None else int(cap))
    layer = int(policy.layer)  # type: ignore[arg-type]
    return ServePoint(
        label=_label(policy, layers), policy=policy.name, value=layer, dev_wer=wer, mean_layers=layer
    )


def static_point(policy: ExitPolicy, layers: Sequence[int], saved: dict | None = None) -> Frontier:
    """The one point of a server without a calibration: ``policy`` (the flags', or the model folder's saved
    policy, or the last exit), its dev figures from ``saved`` (the saved policy's JSON) when known."""
    info = policy.describe()
    _check_runnable(info["policy"], "--policy")
    deepest = int(layers[policy.deepest_exit(layers)])
    value = info["value"]
    if value is None and info["parameter"] == "layer":
        value = deepest
    dev = (saved or {}).get("dev") or {}
    mean_layers = dev.get("mean_layers_computed")
    if mean_layers is None and info["parameter"] == "layer":
        mean_layers = deepest
    point = ServePoint(
        label=_label(policy, layers),
        policy=info["policy"],
        value=value,
        max_layer=info["max_layer"],
        dev_wer=dev.get("wer"),
        mean_layers=mean_layers,
        fitted=policy.base_policy.fitted_values(),
    )
    source = "the saved policy" if saved is not None else "the flags (or the last exit)"
    return Frontier([point], source, info["policy"], fitted=policy.base_policy.fitted_values())
