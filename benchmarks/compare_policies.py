"""Policies compared at equal WER, from one ``<split>_sweep.json`` of ``wav2vec2-ee sweep``.

For each policy, its WER-layers curve is the lower envelope of its points (the fewest mean layers
computed that reach at most a given WER); for each point of ``--policy`` (default ``learned``), the
script prints the mean layers the other policies need for the same or a lower WER on the same split
(linear interpolation between their envelope points; ``-`` when no point reaches it) and the saving,
and the oracle's WER at the point's mean depth (its lower convex hull, as ``bench_inference.py``).

    python benchmarks/compare_policies.py demo_out/sweep_test/test_sweep.json [--policy learned]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(layers, wer)`` points -> the non-dominated ones, by increasing layers (decreasing WER)."""
    front, best = [], float("inf")
    for layers, wer in sorted(points):
        if wer < best:
            front.append((layers, wer))
            best = wer
    return front


def layers_for_wer(front: list[tuple[float, float]], wer: float) -> float | None:
    """The fewest mean layers at which ``front`` reaches ``wer`` (linear between its points)."""
    for (l0, w0), (l1, w1) in zip(front, front[1:]):
        if w0 <= wer:
            return l0
        if w1 <= wer:
            return l0 + (l1 - l0) * (w0 - wer) / (w0 - w1)
    return front[-1][0] if front and front[-1][1] <= wer else None


def hull_wer_at(points: list[tuple[float, float]], layers: float) -> float | None:
    """The lower convex hull of ``(layers, wer)`` points (the fixed exits and the oracle's point) read
    at ``layers`` (linear between vertices), never above its lowest WER at a smaller depth."""
    hull: list[tuple[float, float]] = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    best_x, best_y = min(hull, key=lambda p: (p[1], p[0]))
    if layers >= best_x:  # more depth never costs the oracle: it may answer where it did
        return best_y
    for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
        if x0 <= layers <= x1:
            return y0 + (y1 - y0) * (layers - x0) / (x1 - x0) if x1 > x0 else min(y0, y1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_json")
    parser.add_argument("--policy", default="learned")
    args = parser.parse_args()
    with open(args.sweep_json, encoding="utf-8") as f:
        sweep = json.load(f)
    by_policy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in sweep["points"]:
        by_policy[p["policy"]].append((float(p["mean_layers_computed"]), float(p["wer"])))
    if args.policy not in by_policy:
        raise SystemExit(f"no {args.policy} points in {args.sweep_json}: {sorted(by_policy)}")
    oracle_points = by_policy.get("oracle", []) + by_policy.get("fixed", [])
    others = [name for name in by_policy if name not in (args.policy, "oracle", "fixed")]
    fronts = {name: envelope(by_policy[name]) for name in others}
    print(f"| {args.policy} WER | layers | oracle WER at that depth | " + " | ".join(
        f"{name} layers (saving)" for name in others) + " |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(others))
    for layers, wer in envelope(by_policy[args.policy]):
        cells = []
        for name in others:
            needed = layers_for_wer(fronts[name], wer)
            cells.append("-" if needed is None else f"{needed:.2f} ({100 * (1 - layers / needed):+.0f} %)")
        oracle = hull_wer_at(oracle_points, layers)
        oracle_cell = "-" if oracle is None else f"{100 * oracle:.2f} %"
        print(f"| {100 * wer:.2f} % | {layers:.2f} | {oracle_cell} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
