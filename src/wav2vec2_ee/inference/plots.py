"""The trade-off plot of ``sweep``: WER against mean layers computed and against wall time."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..policy_core import (
    POLICIES,
    ConfidenceThreshold,
    FixedExit,
    LearnedExit,
    OracleExit,
    Patience,
    PosteriorThreshold,
)
from ..results import save_figure
from .table import OperatingPoint

#: The matplotlib marker of each policy's curve (``o`` for the others).
MARKERS: dict[str, str] = {
    FixedExit.name: "s",
    ConfidenceThreshold.name: "^",
    PosteriorThreshold.name: "D",
    Patience.name: "v",
    LearnedExit.name: "P",
    OracleExit.name: "*",
}


def _is_bound(point: OperatingPoint) -> bool:
    """Whether the point is an evaluation bound (the oracle), drawn apart from the policies' curves."""
    return POLICIES[point.policy].needs_references


def _panel(ax, points: Sequence[OperatingPoint], x_of, front_attr: str, xlabel: str, curve=None) -> None:
    policies = list(dict.fromkeys(p.policy for p in points if not _is_bound(p)))
    for name in policies:
        pts = sorted((p for p in points if p.policy == name and x_of(p) is not None), key=x_of)
        if pts:
            ax.plot(
                [x_of(p) for p in pts],
                [100 * p.wer for p in pts],
                marker=MARKERS.get(name, "o"),
                markersize=4,
                linewidth=1,
                label=name,
            )
    front = sorted((p for p in points if getattr(p, front_attr) and x_of(p) is not None), key=x_of)
    if front:
        ax.step(
            [x_of(p) for p in front],
            [100 * p.wer for p in front],
            where="post",
            color="black",
            linewidth=0.8,
            linestyle=":",
        )
        ax.scatter(
            [x_of(p) for p in front],
            [100 * p.wer for p in front],
            s=70,
            facecolors="none",
            edgecolors="black",
            label="Pareto front",
        )
    if curve:
        ax.plot(
            [d for d, _ in curve],
            [100 * w for _, w in curve],
            color="grey",
            linestyle="--",
            label="oracle curve",
        )
    for p in points:
        if _is_bound(p) and x_of(p) is not None:
            ax.scatter(
                [x_of(p)], [100 * p.wer], marker="*", s=140, color="gold", edgecolors="black", label="oracle"
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot_tradeoff(
    points: Sequence[OperatingPoint],
    path: str | os.PathLike,
    oracle_curve: Sequence[tuple[float, float]] | None = None,
    title: str = "",
) -> None:
    """Write a PNG (atomically): WER (%) against mean layers computed (left) and against wall time
    relative to the full forward pass (right, timed points only); Pareto fronts circled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    _panel(
        left, points, lambda p: p.mean_layers_computed, "pareto_layers", "mean layers computed", oracle_curve
    )
    timed = [p for p in points if p.wall_relative is not None]
    if timed:
        _panel(right, timed, lambda p: p.wall_relative, "pareto_wall", "wall time / full forward")
    else:
        right.text(0.5, 0.5, "not timed (--timing none)", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
