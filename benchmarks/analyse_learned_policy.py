"""Why the learned exit policy stops where it does: learning curve, feature ablations, in-sample bound.

Computes the dev and test exit tables of a checkpoint once (every exit's greedy transcript and
statistics, as ``calibrate`` does), then for each variant of the learned policy fits it on (part of)
the dev table, picks its threshold on the same dev rows under the WER budget (``calibrate``'s rule,
``--max-wer-increase`` relative to the final exit), applies it unchanged to the test table and
reports test WER, mean layers computed / full depth, the oracle's test WER at that depth (its lower
convex hull) and the gap (points, and relative to the oracle). Variants:

* the learned policy as ``calibrate --policy learned`` fits it (every feature, logistic), and a tanh
  MLP (``--hidden``);
* a learning curve: fitted and calibrated on random fractions of the dev utterances (``--fractions``,
  ``--draws`` random subsets each; mean and range);
* each feature alone, and every feature but one (which feature carries the signal);
* the in-sample bound: fitted and calibrated on the test table itself. What it misses against the
  oracle is the model class's and the features' limit, not the dev split's size;
* a hidden-state probe (``--probe-dims``): the same logistic model given, beside the exit features, the
  exit layer's hidden states mean-pooled over the valid frames and projected on their first ``k``
  principal directions (fitted on dev). Not the gate head trained jointly with the exits, but the
  question it answers first: do the hidden states carry what the output distributions do not;
* fitted on ``--train-utterances`` random utterances of the training split (voices the model heard:
  more rows than dev has, from another distribution), thresholded on dev; also with the probe;
* other labels and row weights (``--label-variants``): stopping labelled 1 when it costs no errors
  against every deeper exit (the policy's own label), against the final exit only, or against the
  next exit; rows unweighted, or weighted by the word errors the decision changes (``|errors here -
  errors of the exit compared with| + 0.5``: a cost-sensitive fit); fitted on dev and on the training
  split;
* the threshold rules (entropy, confidence) calibrated on dev, for reference.

    python benchmarks/analyse_learned_policy.py demo_out/ee --data demo_out/corpus [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from wav2vec2_ee.evaluation import load_evaluation_model
from wav2vec2_ee.inference.calibrate import apply_to_table, calibrate_table
from wav2vec2_ee.inference.learned import FEATURES, fit_exit_model
from wav2vec2_ee.inference.policies import learned_features
from wav2vec2_ee.inference.search import fit_policy
from wav2vec2_ee.inference.table import (
    ExitTable,
    compute_exit_table,
    load_prepared_split,
    oracle_curve,
    oracle_wer_at,
)
from wav2vec2_ee.inference.timing import load_batches
from wav2vec2_ee.policy_core import POLICIES

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse_shared_utterances  # noqa: E402


def run_variant(
    dev: ExitTable,
    test: ExitTable,
    policy: str = "learned",
    max_wer_increase: float = 0.05,
    fit_on: ExitTable | None = None,
    threshold_on: ExitTable | None = None,
    **fit_settings,
) -> dict:
    """Fit (learned policy) ``policy`` on ``fit_on`` (default ``dev``), choose its threshold on
    ``threshold_on`` (default: the table it was fitted on), apply it to ``test``. ``fitted=`` (a
    ``{"model": ...}``) skips the fit.

    Returns the test figures: ``wer``, ``layers`` (mean layers computed / full depth), ``oracle``
    (the oracle's test WER at that depth), ``gap`` (points) and, for a fitted policy, its fit summary.
    """
    table = dev if fit_on is None else fit_on
    fitted = fit_settings.pop("fitted", None)
    if POLICIES[policy].fitted_arguments and fitted is None:
        fitted = fit_policy(POLICIES[policy], table, None, **fit_settings)
    cal = calibrate_table(threshold_on or table, policy, max_wer_increase, fitted=fitted)
    apply_to_table(cal, test)
    point = cal.test
    layers = point.mean_layers_computed / test.full_depth
    oracle = oracle_wer_at(oracle_curve(test), point.mean_layers_computed)
    out = {
        "value": cal.value,
        "wer": point.wer,
        "layers": layers,
        "oracle": oracle,
        "gap": point.wer - oracle,
        "fit_utterances": table.num_utterances,
    }
    if fitted:
        fit = fitted["model"].fit
        out["fit"] = {k: fit[k] for k in ("rows", "positive_rate", "train_accuracy") if k in fit}
    return out


@torch.inference_mode()
def pooled_hidden_states(em, prepared, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per utterance id, ``(exits, hidden)``: each exit layer's hidden states (the input of its exit
    head's norm and projection) averaged over the utterance's valid frames."""
    model, out = em.model, {}
    for batch in load_batches(prepared, em.feature_extractor, batch_size, device=em.device):
        steps = list(model.iter_exits(batch.input_values, batch.attention_mask, output_hidden_states=True))
        lengths = steps[0].output_lengths
        frames = torch.arange(steps[-1].hidden_states[0].shape[1], device=lengths.device)
        mask = (frames[None, :] < lengths[:, None]).unsqueeze(-1).float()
        pooled = torch.stack(
            [(s.hidden_states[s.layer] * mask).sum(1) / mask.sum(1).clamp(min=1) for s in steps], 1
        )  # (batch, exits, hidden)
        for i, utt in enumerate(batch.ids):
            out[utt] = pooled[i].float().cpu()
    return out


def add_probe_features(tables: dict[str, ExitTable], pooled: dict[str, dict], dims: int) -> tuple[str, ...]:
    """Add ``probe_0 .. probe_<dims-1>`` statistics ``(exits, n)`` to each table: the pooled hidden states
    projected on the first ``dims`` principal directions of the dev table's (every exit pooled together,
    centred on the dev mean). Returns the new statistics' names."""

    def stacked(name: str) -> torch.Tensor:
        return torch.stack([pooled[name][u] for u in tables[name].ids], 1)  # (exits, n, hidden)

    dev = stacked("dev").double()
    flat = dev.reshape(-1, dev.shape[-1])
    mean = flat.mean(0)
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = v[:dims].T  # (hidden, dims)
    names = tuple(f"probe_{j}" for j in range(dims))
    for name, table in tables.items():
        projected = ((dev if name == "dev" else stacked(name).double()) - mean) @ basis  # (exits, n, dims)
        for j, stat in enumerate(names):
            table.stats[stat] = projected[..., j].float()
    return names


#: what a label of 1 compares the exit's word errors with: every deeper exit (the learned policy's
#: label, :func:`~wav2vec2_ee.inference.learned.exit_labels`), the final exit, or the next exit
LABEL_VARIANTS = ("deeper", "final", "next")


def variant_rows(
    table: ExitTable, label: str = "deeper", weighted: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(rows, F)`` features, ``(rows,)`` labels and weights (``None`` unweighted) of every utterance at
    every exit but the last: label 1 when the exit's word errors are at most those of what ``label``
    names (:data:`LABEL_VARIANTS`); a weighted row counts ``|errors - compared errors| + 0.5`` (for
    ``deeper``: against the best exit after this one), the errors a wrong decision there changes."""
    if label not in LABEL_VARIANTS:
        raise ValueError(f"label: choose from {LABEL_VARIANTS}, got {label!r}")
    views = table.views()
    deepest = len(table.layers) - 1
    errors = table.errors.double()
    best_from = errors.flip(0).cummin(0).values.flip(0)  # (exits, n): min over exits k..last
    x = torch.cat([learned_features(views[: k + 1]) for k in range(deepest)])
    ys, ws = [], []
    for k in range(deepest):
        if label == "deeper":
            y, other = errors[k] <= best_from[k], best_from[k + 1]
        else:
            other = errors[-1] if label == "final" else errors[k + 1]
            y = errors[k] <= other
        ys.append(y)
        ws.append((errors[k] - other).abs() + 0.5)
    return x, torch.cat(ys), torch.cat(ws) if weighted else None


def run_label_variant(
    dev: ExitTable,
    test: ExitTable,
    label: str,
    weighted: bool,
    max_wer_increase: float,
    fit_on: ExitTable | None = None,
) -> dict:
    """The learned policy fitted with another label / row weights (:func:`variant_rows`) on ``fit_on``
    (default ``dev``), thresholded on dev, applied to test (:func:`run_variant`'s figures)."""
    x, y, w = variant_rows(fit_on or dev, label, weighted)
    model = fit_exit_model(x, y, FEATURES, sample_weight=w)
    model.exit_layers = list(dev.layers)
    return run_variant(dev, test, max_wer_increase=max_wer_increase, fitted={"model": model})


def learning_curve(
    dev: ExitTable, test: ExitTable, fractions: list[float], draws: int, max_wer_increase: float, seed: int
) -> list[dict]:
    """The learned policy fitted and calibrated on random subsets of the dev utterances."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for fraction in fractions:
        n = max(2, round(fraction * dev.num_utterances))
        runs = []
        for _ in range(draws if n < dev.num_utterances else 1):
            pick = torch.randperm(dev.num_utterances, generator=generator)[:n]
            runs.append(run_variant(dev, test, max_wer_increase=max_wer_increase, fit_on=dev.subset(pick)))
        rows.append(
            {
                "fraction": fraction,
                "utterances": n,
                "draws": len(runs),
                "wer": statistics.fmean(r["wer"] for r in runs),
                "wer_range": [min(r["wer"] for r in runs), max(r["wer"] for r in runs)],
                "layers": statistics.fmean(r["layers"] for r in runs),
                "gap": statistics.fmean(r["gap"] for r in runs),
                "gap_range": [min(r["gap"] for r in runs), max(r["gap"] for r in runs)],
            }
        )
    return rows


def format_row(name: str, r: dict) -> str:
    rel = r["gap"] / r["oracle"] if r.get("oracle") else float("nan")
    return f"| {name} | {r['wer']:.2%} | {r['layers']:.3f} | {r['oracle']:.2%} | {100 * r['gap']:+.2f} | {rel:+.1%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="LibriSpeech-layout corpus folder")
    parser.add_argument("--dev-split", default="dev")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--max-wer-increase", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=8, help="width of the MLP variant")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--draws", type=int, default=5, help="random dev subsets per fraction below 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--probe-dims",
        type=int,
        nargs="*",
        default=[4, 16, 64],
        help="hidden-state probe variants: principal directions kept (the hidden size: the whole pooled "
        "hidden state; none: no probe)",
    )
    parser.add_argument(
        "--probe-hidden",
        type=int,
        default=16,
        help="also fit each probe on the training split as a tanh MLP of this width (a post-hoc gate head "
        "on the hidden state; 0: no)",
    )
    parser.add_argument(
        "--no-label-variants",
        dest="label_variants",
        action="store_false",
        help="skip the other labels and the cost-weighted fits",
    )
    parser.add_argument(
        "--train-split",
        default="train",
        help="variants fitted on this split's utterances (heard voices; threshold still on dev); '' for none",
    )
    parser.add_argument(
        "--train-utterances", type=int, default=1000, help="random utterances of --train-split to fit on"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    em = load_evaluation_model(args.checkpoint, device=args.device)
    tables, pooled = {}, {}
    roles = [("dev", args.dev_split), ("test", args.test_split)]
    if args.train_split:
        roles.append(("train", args.train_split))
    prepared = {}
    for role, split in roles:
        _, utts = load_prepared_split(em, args.data, split, progress=False)
        if role == "train":
            pick = torch.randperm(len(utts), generator=torch.Generator().manual_seed(args.seed))
            utts = [utts[i] for i in pick[: args.train_utterances].tolist()]
        prepared[role] = utts
    # fitted and thresholded on dev (and train), reported on test: never on its own test data
    for role, split in roles[:1] + roles[2:]:
        refuse_shared_utterances(
            args.data,
            (f"--{role}-split {split}", prepared[role]),
            (f"--test-split {args.test_split}", prepared["test"]),
        )
    for role, utts in prepared.items():
        tables[role] = compute_exit_table(em, utts, None, args.batch_size, progress=False)
        if args.probe_dims:
            pooled[role] = pooled_hidden_states(em, utts, args.batch_size)
    dev, test = tables["dev"], tables["test"]
    final = test.wer_of_exit(len(test.layers) - 1)
    oracle_depth, oracle_wer = oracle_curve(test)[0]
    budget = args.max_wer_increase

    started = time.perf_counter()
    results: dict[str, dict] = {
        "learned (all features, logistic)": run_variant(dev, test, max_wer_increase=budget)
    }
    fit_seconds = time.perf_counter() - started
    results[f"learned, MLP ({args.hidden} tanh units)"] = run_variant(
        dev, test, max_wer_increase=budget, hidden=args.hidden
    )
    results["learned, in-sample bound (fit + threshold on test)"] = run_variant(
        dev, test, max_wer_increase=budget, fit_on=test
    )
    train = tables.get("train")
    if train is not None:
        results[f"learned, fitted on {train.num_utterances} train utterances, threshold on dev"] = (
            run_variant(dev, test, max_wer_increase=budget, fit_on=train, threshold_on=dev)
        )
    for dims in args.probe_dims or []:
        names = add_probe_features(tables, pooled, dims)
        results[f"learned + hidden-state probe ({dims} principal directions)"] = run_variant(
            dev, test, max_wer_increase=budget, features=FEATURES + names
        )
        if train is not None:
            # logistic, and (--probe-hidden) a tanh MLP: a post-hoc gate head on the hidden state
            for hidden in dict.fromkeys([0, args.probe_hidden]):
                model = f", MLP ({hidden} tanh units)" if hidden else ""
                results[
                    f"learned + probe ({dims}){model}, fitted on {train.num_utterances} train utterances"
                ] = run_variant(
                    dev,
                    test,
                    max_wer_increase=budget,
                    fit_on=train,
                    threshold_on=dev,
                    features=FEATURES + names,
                    hidden=hidden,
                )
    if args.label_variants:
        for label in LABEL_VARIANTS:
            for weighted in (False, True):
                for where, table in (("dev", dev), ("train", train)):
                    if table is None or (label == "deeper" and not weighted and where == "dev"):
                        continue  # (that one is the learned policy itself, above)
                    name = f"label: no more errors than the {label} exit{'s' if label == 'deeper' else ''}"
                    name += f"{', cost-weighted' if weighted else ''}, fitted on {where}"
                    results[name] = run_label_variant(dev, test, label, weighted, budget, fit_on=table)
    for rule in ("entropy", "confidence"):
        results[f"{rule} (threshold rule)"] = run_variant(dev, test, rule, budget)
    alone = {f: run_variant(dev, test, max_wer_increase=budget, features=(f,)) for f in FEATURES}
    without = {
        f: run_variant(dev, test, max_wer_increase=budget, features=tuple(g for g in FEATURES if g != f))
        for f in FEATURES
    }
    curve = learning_curve(dev, test, args.fractions, args.draws, budget, args.seed)

    print(
        f"test: {test.num_utterances} utterances, final exit {final:.2%}; oracle {oracle_wer:.2%} at "
        f"{oracle_depth / test.full_depth:.3f} of the depth; dev: {dev.num_utterances} utterances; "
        f"thresholds chosen on dev at +{budget:.0%} relative WER; fitting + calibrating the learned "
        f"policy on dev: {fit_seconds:.2f} s"
    )
    header = "| {} | test WER | layers/full | oracle WER at that depth | gap (points) | gap (relative) |"
    print("\n" + header.format("variant") + "\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(format_row(name, r))
    print("\n" + header.format("one feature alone") + "\n|---|---|---|---|---|---|")
    for name, r in alone.items():
        print(format_row(name, r))
    print("\n" + header.format("every feature but") + "\n|---|---|---|---|---|---|")
    for name, r in without.items():
        print(format_row(name, r))
    print(
        "\n| dev utterances | draws | test WER (range) | layers/full | gap, points (range) |\n|---|---|---|---|---|"
    )
    for r in curve:
        lo, hi = r["wer_range"]
        glo, ghi = r["gap_range"]
        print(
            f"| {r['utterances']} | {r['draws']} | {r['wer']:.2%} ({lo:.2%}-{hi:.2%}) | {r['layers']:.3f} | "
            f"{100 * r['gap']:+.2f} ({100 * glo:+.2f} to {100 * ghi:+.2f}) |"
        )
    if args.json:
        payload = {
            "checkpoint": args.checkpoint,
            "final_exit_wer": final,
            "oracle": {"wer": oracle_wer, "layers": oracle_depth / test.full_depth},
            "variants": results,
            "feature_alone": alone,
            "feature_removed": without,
            "learning_curve": curve,
            "fit_seconds": fit_seconds,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
