"""The WER-by-exit plot (matplotlib's Agg canvas; no display and no global backend change)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..results import save_figure


def plot_wer_by_exit(
    wers: Mapping[str, Mapping[int, float]], path: str | os.PathLike, title: str = ""
) -> None:
    """Plot WER (%) against exit layer, one line per split, and write a PNG atomically.

    Args:
        wers: ``{split: {layer: wer}}`` with WER as a fraction (0.1 = 10 %).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    layers: set[int] = set()
    for split, by_layer in wers.items():
        xs = sorted(by_layer)
        layers.update(xs)
        ax.plot(xs, [100.0 * by_layer[x] for x in xs], marker="o", label=split)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("WER (%)")
    ax.set_xticks(sorted(layers))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if wers:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
