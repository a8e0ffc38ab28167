"""``wav2vec2-ee calibrate``: choose a policy's threshold on a development split.

The rule (:func:`choose_operating_point`): among the policy's operating points on the dev split,
those whose WER is at most ``final-exit WER * (1 + max_wer_increase)`` qualify; the one with the
fewest mean layers computed wins (ties: the lower WER, then the less aggressive value). By default
every distinct decision is tried (all midpoints between observed values of the statistic), so the
choice is the exact optimum of the rule on dev. A test split, when given, only receives the chosen
value: nothing is tuned on it.

The learned policy (``--policy learned``) is first fitted on the dev table (:func:`~.search.fit_learned`),
then its threshold is chosen by the same rule on the same dev table; the test split is only scored.

``--save-policy`` writes the outcome as a saved policy (:func:`saved_policy`, format
:data:`~wav2vec2_ee.policy_core.SAVED_POLICY_FORMAT`, written by
:func:`~wav2vec2_ee.policy_core.write_saved_policy`) to ``<checkpoint>/exit_policy.json`` (or ``--output``), where
``transcribe`` and :class:`~.transcriber.Transcriber` pick it up when no policy is named and ``export``
copies it in as ``policy.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..ctc.model import load_evaluation_model
from ..device import DeviceArguments, default_batching
from ..errors import UserError
from ..options import resolve_options
from ..policy_core import (
    POLICIES,
    SAVED_POLICY,
    SAVED_POLICY_FORMAT,
    SAVED_POLICY_VERSION,
    WEIGHTS_FINGERPRINT,
    ExitPolicy,
    LayerBudget,
    OracleExit,
    policy_with_value,
    weights_fingerprint,
    write_saved_policy,
)
from .arguments import (
    CalibrateArguments,
    LexiconArguments,
    LexiconSourceArguments,
    ScoringArguments,
    posterior_spec,
    scoring_spec,
)
from .search import fit_policy
from .table import (
    ExitTable,
    OperatingPoint,
    compute_exit_table,
    evaluate_policy,
    load_prepared_split,
    threshold_grid,
    write_exit_table,
)


def _aggressiveness(point: OperatingPoint) -> float:
    """Larger = stops earlier (for tie-breaking towards the safer value)."""
    cls = POLICIES.get(point.policy)
    if point.value is None or cls is None or cls.larger_is_more_aggressive is None:
        return 0.0
    return float(point.value) if cls.larger_is_more_aggressive else -float(point.value)


def choose_operating_point(
    points: Sequence[OperatingPoint], reference_wer: float, max_wer_increase: float
) -> OperatingPoint:
    """The most aggressive point (fewest mean layers computed) whose WER stays within
    ``reference_wer * (1 + max_wer_increase)``; ties go to the lower WER, then the safer value.

    Raises:
        UserError: when no point qualifies.
    """
    if max_wer_increase < 0 or math.isnan(max_wer_increase):
        raise UserError(
            f"--max-wer-increase must be >= 0 (a relative increase, 0.05 = 5 %), got {max_wer_increase}"
        )
    limit = reference_wer * (1.0 + max_wer_increase)
    eligible = [p for p in points if p.wer <= limit + 1e-12]
    if not eligible:
        best = min(points, key=lambda p: p.wer)
        raise UserError(
            f"no {points[0].policy} threshold keeps WER within {100 * limit:.2f} % "
            f"(+{100 * max_wer_increase:g} % of {100 * reference_wer:.2f} %); the best reaches "
            f"{100 * best.wer:.2f} % ({best.label})"
        )
    return min(eligible, key=lambda p: (p.mean_layers_computed, p.wer, _aggressiveness(p)))


@dataclass
class Calibration:
    """The outcome of calibrating one policy on a dev table."""

    policy: str
    parameter: str | None
    value: float | int | None
    max_layer: int | None
    max_wer_increase: float
    reference_wer: float
    wer_limit: float
    dev: OperatingPoint
    candidates: int
    test: OperatingPoint | None = None
    test_reference_wer: float | None = None
    splits: dict[str, str] = field(default_factory=dict)
    #: the oracle on the dev split (every exit allowed up to ``max_layer``): ``{"wer", "mean_layers"}``
    oracle: dict = field(default_factory=dict)
    #: the policy's fitted arguments (the learned model, fitted on the dev split); saved by
    #: :meth:`to_dict` as the policy's :meth:`~wav2vec2_ee.policy_core.ExitPolicy.saved_fields`
    fitted: dict = field(default_factory=dict, repr=False)
    #: where ``--save-policy`` wrote the policy (``None``: not saved)
    saved_to: str | None = field(default=None, repr=False)

    def build(self) -> ExitPolicy:
        """The calibrated policy."""
        return policy_with_value(self.policy, self.value, self.max_layer, **self.fitted)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("dev", "test", "fitted", "saved_to")}
        out["dev"] = self.dev.to_dict()
        out["test"] = None if self.test is None else self.test.to_dict()
        out.update(self.build().saved_fields())
        return out


def oracle_figures(table: ExitTable, max_layer: int | None = None) -> dict:
    """``{"wer", "mean_layers"}`` of the oracle (the shallowest exit with the fewest errors, among the
    exits at or below ``max_layer``) on ``table``: the bound a policy's dev figures compare with."""
    oracle = OracleExit() if max_layer is None else LayerBudget(OracleExit(), max_layer)
    point = evaluate_policy(table, oracle)[0]
    return {"wer": point.wer, "mean_layers": point.mean_layers_computed, "errors": point.errors}


def calibrate_table(
    table: ExitTable,
    policy: str,
    max_wer_increase: float = 0.05,
    values: Sequence[float] | None = None,
    max_layer: int | None = None,
    fitted: dict | None = None,
    fit_settings: dict | None = None,
) -> Calibration:
    """Choose ``policy``'s parameter on ``table`` (every distinct decision unless ``values`` are given).

    A fitted policy (the learned one) uses ``fitted`` (``{"model": ...}``) or, without it, is fitted on
    ``table`` first (:func:`~.search.fit_policy` with ``fit_settings``, e.g. ``hidden``)."""
    if policy not in POLICIES or POLICIES[policy].parameter is None:
        tunable = [n for n, c in POLICIES.items() if c.parameter is not None]
        raise UserError(
            f"cannot calibrate {policy!r}: choose a policy with a parameter: {', '.join(tunable)}"
        )
    cls = POLICIES[policy]
    if cls.fitted_arguments and not fitted:
        fitted = fit_policy(cls, table, max_layer, **(fit_settings or {}))
    fitted = dict(fitted or {})
    grid = list(values) if values else threshold_grid(table, policy, None, max_layer, fitted)
    points = [evaluate_policy(table, policy_with_value(policy, v, max_layer, **fitted))[0] for v in grid]
    reference = table.wer_of_exit(len(table.layers) - 1)
    best = choose_operating_point(points, reference, max_wer_increase)
    return Calibration(
        policy=policy,
        parameter=best.parameter,
        value=best.value,
        max_layer=max_layer,
        max_wer_increase=max_wer_increase,
        reference_wer=reference,
        wer_limit=reference * (1 + max_wer_increase),
        dev=best,
        candidates=len(points),
        oracle=oracle_figures(table, max_layer),
        fitted=fitted,
    )


def apply_to_table(calibration: Calibration, table: ExitTable) -> None:
    """Evaluate the calibrated value on another split (``calibration.test``); nothing is re-tuned."""
    calibration.test = evaluate_policy(table, calibration.build())[0]
    calibration.test_reference_wer = table.wer_of_exit(len(table.layers) - 1)


def format_calibration(c: Calibration) -> list[str]:
    """The human-readable lines (the machine-readable value is printed after them)."""
    depth = c.dev.mean_layers_computed / c.dev.depth_fraction if c.dev.depth_fraction else float("nan")
    dev_name, test_name = c.splits.get("dev", "dev"), c.splits.get("test", "test")
    lines = [
        f"{dev_name}: final-exit WER {100 * c.reference_wer:.2f} %, limit {100 * c.wer_limit:.2f} % "
        f"(+{100 * c.max_wer_increase:g} % relative); {c.candidates} values tried",
        f"{dev_name}: {c.dev.label}: WER {100 * c.dev.wer:.2f} %, mean layers computed "
        f"{c.dev.mean_layers_computed:.3f} / {depth:g} ({c.dev.depth_fraction:.3f} of full depth)",
    ]
    if c.oracle:
        lines.append(
            f"{dev_name}: oracle (shallowest exit with the fewest errors): WER {100 * c.oracle['wer']:.2f} %, "
            f"mean layers computed {c.oracle['mean_layers']:.3f}"
        )
    for name, value in c.fitted.items():
        fit = getattr(value, "fit", {}) or {}
        if fit:
            lines.append(
                f"{dev_name}: {c.policy} {name} fitted on {fit.get('rows')} exit decisions of "
                f"{fit.get('utterances')} utterances (positive rate {fit.get('positive_rate', 0):.3f}, "
                f"training accuracy {fit.get('train_accuracy', 0):.3f})"
            )
    if c.test is not None:
        lines.append(
            f"{test_name} (value from {dev_name}, not tuned on {test_name}): {c.test.label}: WER {100 * c.test.wer:.2f} % "
            f"(final exit {100 * (c.test_reference_wer or 0):.2f} %), mean layers computed "
            f"{c.test.mean_layers_computed:.3f} ({c.test.depth_fraction:.3f} of full depth)"
        )
    return lines


def saved_policy(calibration: Calibration, checkpoint: str | os.PathLike | None = None) -> dict:
    """The saved-policy JSON object of a calibration (``exit_policy.json``): format and version, the
    model it was calibrated for (the checkpoint, its exit layers and the
    :func:`~wav2vec2_ee.policy_core.weights_fingerprint` of its weight files, where it has them: what the
    readers check it against), the policy, its value and budget, the dev figures (WER and mean layers at
    the chosen value, the final exit's and the oracle's), the test figures when a test split was given,
    and what the policy itself saves (the learned model: features, standardisation, weights and how it
    was fitted)."""
    out = {"format": SAVED_POLICY_FORMAT, "version": SAVED_POLICY_VERSION}
    if checkpoint is not None:
        out["checkpoint"] = str(Path(checkpoint).resolve())
    out["exit_layers"] = sorted(int(k) for k in calibration.dev.exit_counts)
    fingerprint = weights_fingerprint(checkpoint) if checkpoint is not None else None
    if fingerprint is not None:
        out[WEIGHTS_FINGERPRINT] = fingerprint
    out.update(calibration.to_dict())
    return out


def saved_policy_path(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Where ``--save-policy`` writes: ``output`` (a ``.json`` file, or a folder to write
    ``exit_policy.json`` into), default ``<checkpoint>/exit_policy.json``."""
    if output is None:
        return Path(checkpoint) / SAVED_POLICY
    output = Path(output)
    return output if output.suffix.lower() == ".json" else output / SAVED_POLICY


def split_exit_table(
    em, data, which, posterior, scoring_decoder, batching, progress
) -> tuple[str, ExitTable]:
    """The exit table of split ``which`` of ``data`` (or of ``which`` as its own manifest file)."""
    if which is not None and Path(which).is_file():  # a split given as its own manifest file
        name, prepared = load_prepared_split(em, which, None, progress)
    else:
        name, prepared = load_prepared_split(em, data, which, progress)
    lexicon_decoder = posterior.build(name, [u.text for u in prepared]) if posterior is not None else None
    table = compute_exit_table(
        em,
        prepared,
        lexicon_decoder,
        *batching,
        progress,
        desc=f"exits {name}",
        scoring_decoder=scoring_decoder,
    )
    return name, table


def calibration_report(result: Calibration, checkpoint: str | os.PathLike, as_json: bool = False) -> str:
    """What ``calibrate`` prints: the human-readable lines, where the policy was saved and the value on
    the last line (a machine reads it); ``as_json``: one JSON object instead."""
    if as_json:
        return json.dumps({"checkpoint": str(Path(checkpoint).resolve()), **result.to_dict()}, indent=2)
    lines = list(format_calibration(result))
    if result.saved_to is not None:
        lines.append(f"saved the policy to {result.saved_to}")
    return "\n".join([*lines, f"{result.value!r}"])


def run_calibration(
    checkpoint: str | os.PathLike,
    args: CalibrateArguments | None = None,
    lexicon: LexiconArguments | None = None,
    source: LexiconSourceArguments | None = None,
    scoring: ScoringArguments | None = None,
    runtime: DeviceArguments | None = None,
    **options,
) -> Calibration:
    """The ``calibrate`` command as a function: returns the calibration (``saved_to``: where
    ``--save-policy`` wrote it); the command prints it (:func:`calibration_report`).

    Takes the command's option dataclasses (:mod:`.arguments`), or their fields as keywords
    (:func:`~wav2vec2_ee.options.resolve_options`). With ``output_dir``, also writes
    ``<split>_exit_table.jsonl`` per split (every number traces back to them) and
    ``calibration_<policy>.json``; with ``save_policy``, the saved policy (:func:`saved_policy`) to
    :func:`saved_policy_path`. With ``--lm-order``, the WERs are those of the lexicon beam
    search with a word n-gram model (:func:`~.arguments.scoring_spec`).
    """
    args, lexicon, source, scoring, device = resolve_options(
        (args, lexicon, source, scoring, runtime),
        (CalibrateArguments, LexiconArguments, LexiconSourceArguments, ScoringArguments, DeviceArguments),
        options,
    )
    policy, data, progress = args.policy, args.data, args.progress
    if policy not in POLICIES:
        raise UserError(f"unknown --policy {policy!r}: choose from {', '.join(POLICIES)}")
    if args.num_threads:
        torch.set_num_threads(int(args.num_threads))
    em = load_evaluation_model(checkpoint, device=device.device, dtype=device.dtype)
    batching = default_batching(em.device, args.batch_size, args.max_batch_seconds, cpu=(16, 320.0))
    score = scoring_spec(lexicon, source, scoring)
    scoring_decoder = score.resolve(data, em.tokenizer).build() if score is not None else None
    posterior = (
        posterior_spec(lexicon, source).resolve(data, em.tokenizer)
        if POLICIES[policy].needs_lexicon
        else None
    )

    def table_of(which: str | None) -> tuple[str, ExitTable]:
        return split_exit_table(em, data, which, posterior, scoring_decoder, batching, progress)

    split, test_split, output_dir = args.split, args.test_split, args.output_dir
    dev_name, dev = table_of(split)
    fit_settings = {"hidden": args.learned_hidden, "l2": args.learned_l2, "split": dev_name}
    result = calibrate_table(
        dev, policy, args.max_wer_increase, args.thresholds, args.max_layer, fit_settings=fit_settings
    )
    result.splits["dev"] = dev_name
    tables = {dev_name: dev}
    if test_split is not None:
        test_name, test = table_of(test_split)
        result.splits["test"] = test_name
        apply_to_table(result, test)
        tables[test_name] = test
    saved = saved_policy(result, checkpoint) if output_dir is not None or args.save_policy else None
    if output_dir is not None:
        out = Path(output_dir)
        for name, table in tables.items():
            write_exit_table(table, out / f"{name}_exit_table.jsonl")
        write_saved_policy(out / f"calibration_{policy}.json", saved)
    saved_to = None
    if args.save_policy:
        saved_to = saved_policy_path(checkpoint, args.output)
        write_saved_policy(saved_to, saved)
    result.saved_to = None if saved_to is None else str(saved_to)
    return result
