"""The demo base's final-layer WER against its training compute, and what a WER target would cost.

Reads the ``build_record.json`` of several ``wav2vec2-ee demo --build-base --base-minutes M`` runs (the
same preset, different budgets: each run fits its learning-rate schedule to its own budget, so every
point is a finished training, not a checkpoint of a longer one), prints steps, minutes and held-out
test WER per run, fits ``WER = a * steps ** -b`` (least squares in log-log) to the runs whose WER is
below ``--fit-below`` (a run that has not started to learn, ~100 %, is not on the power law) and
prints the steps and hours on this machine's pace that the fit needs for ``--target`` (default 15 %,
the demo-base issue's last-exit target, which the base bounds). Writes a PNG beside ``--output``.

A base trained in stages (``demo --build-base --continue``; its record lists ``stages``) gives one point
per stage, at the steps and minutes of all stages up to it (the curve over stages).

    for m in 10 20 40; do
      wav2vec2-ee demo --build-base --base-minutes $m --output-dir runs/m$m
    done
    python benchmarks/base_compute_curve.py runs/m*/base/model \\
        src/wav2vec2_ee/resources/demo_base --output docs/figures/base_compute_curve.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_run(folder: Path) -> dict:
    """Steps, seconds per step, minutes and final-layer test WER of one base build."""
    path = folder / "build_record.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: not a base build record ({err})") from None
    test = record["wer"]["test"]
    top = max(test, key=int)
    timing = record["timing"]
    return {
        "folder": str(folder),
        "steps": int(timing["steps"]),
        "seconds_per_step": float(timing["seconds_per_step"]),
        "minutes": float(timing["train_runtime"]) / 60,
        "layer": int(top),
        "wer": float(test[top]),
    }


def read_runs(folder: Path) -> list[dict]:
    """:func:`read_run`, or one point per stage (cumulative steps and minutes) for a staged base."""
    first = read_run(folder)  # (its error names the file)
    stages = json.loads((folder / "build_record.json").read_text()).get("stages") or []
    if len(stages) < 2:
        return [first]
    points, steps, minutes = [], 0, 0.0
    for stage in stages:
        steps += int(stage["steps"])
        minutes += float(stage["minutes"])
        test = stage["wer"]["test"]
        top = max(test, key=int)
        points.append(
            {
                "folder": f"{folder} stage {stage['stage']}",
                "steps": steps,
                "seconds_per_step": float(stage["seconds_per_step"]),
                "minutes": minutes,
                "layer": int(top),
                "wer": float(test[top]),
            }
        )
    return points


def fit_power_law(steps: list[float], wers: list[float]) -> tuple[float, float]:
    """``(a, b)`` of ``wer = a * steps ** -b``, least squares on ``log wer`` against ``log steps``."""
    if len(steps) < 2:
        raise ValueError("a power law needs two runs or more below --fit-below")
    xs, ys = [math.log(s) for s in steps], [math.log(w) for w in wers]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def plot(runs: list[dict], a: float, b: float, target: float, steps_needed: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        [r["steps"] for r in runs], [100 * r["wer"] for r in runs], "o", label="base builds (held-out test)"
    )
    lo = min(r["steps"] for r in runs)
    hi = max(steps_needed, max(r["steps"] for r in runs)) * 1.2
    grid = [lo * (hi / lo) ** (i / 99) for i in range(100)]
    ax.plot(grid, [100 * a * s**-b for s in grid], "-", label=f"fit: WER = {a:.3g} * steps^-{b:.3f}")
    ax.axhline(100 * target, color="grey", linestyle="--", label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_yticks([t for t in (5, 10, 15, 20, 30, 40, 60, 80, 100) if 50 * target <= t <= 120])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training steps (batch 16)")
    ax.set_ylabel("greedy WER at the last layer (%)")
    ax.set_title("demo base: WER against training compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="base model folders (each with build_record.json)")
    parser.add_argument("--target", type=float, default=0.15, help="WER to extrapolate to (default 0.15)")
    parser.add_argument("--fit-below", type=float, default=0.9, help="fit only runs below this WER")
    parser.add_argument("--output", default=None, help="PNG of the runs and the fit")
    args = parser.parse_args()
    runs = sorted((r for m in args.models for r in read_runs(Path(m))), key=lambda r: r["steps"])
    print("| run | steps | minutes | s/step | WER (last layer) |\n|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['folder']} | {r['steps']} | {r['minutes']:.1f} | {r['seconds_per_step']:.2f} | {r['wer']:.1%} |"
        )
    fitted = [r for r in runs if r["wer"] < args.fit_below]
    a, b = fit_power_law([r["steps"] for r in fitted], [r["wer"] for r in fitted])
    needed = (a / args.target) ** (1 / b)
    pace = min(r["seconds_per_step"] for r in runs)
    print(
        f"\nfit on {len(fitted)} runs: WER = {a:.4g} * steps^-{b:.4f}; {args.target:.0%} needs {needed:,.0f} "
        f"steps, {needed * pace / 3600:.1f} h at {pace:.2f} s/step (the fastest run's pace)"
    )
    if args.output:
        plot(runs, a, b, args.target, needed, Path(args.output))
        print(f"plot: {args.output}")


if __name__ == "__main__":
    main()
