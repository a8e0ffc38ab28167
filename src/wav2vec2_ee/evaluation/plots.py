"""The WER-by-exit plot (matplotlib's Agg canvas; no display and no global backend change)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..results import save_figure

#: Line styles of the decoders after the first (lexicon, lexicon + LM, ...), in order.
_STYLES = ("--", ":", "-.")


def plot_wer_by_exit(
    wers: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike,
    title: str = "",
    decoders: Mapping[str, Mapping[str, Mapping[int, float]]] | None = None,
    decoder: str = "greedy",
) -> None:
    """Plot WER (%) against exit layer, one line per split and decoder, and write a PNG atomically.

    Args:
        wers: ``{split: {layer: wer}}`` of the exits' transcripts (``decoder``: greedy, or beam), WER as
            a fraction (0.1 = 10 %): solid lines.
        decoders: the other decoders that ran, ``{decoder name: {split: {layer: wer}}}`` (the lexicon
            decoder, with its LM if any): dashed, dotted, ... lines in their split's colour. With any,
            each line's label names its decoder.
    """
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    decoders = decoders or {}
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    splits = list(dict.fromkeys([*wers, *(s for by_split in decoders.values() for s in by_split)]))
    colour = {split: palette[i % len(palette)] for i, split in enumerate(splits)}
    curves = [(decoder, "-", wers)] + [
        (name, _STYLES[i % len(_STYLES)], by_split) for i, (name, by_split) in enumerate(decoders.items())
    ]
    layers: set[int] = set()
    for name, style, by_split in curves:
        for split, by_layer in by_split.items():
            xs = sorted(by_layer)
            layers.update(xs)
            label = f"{split} ({name})" if decoders else split
            ax.plot(
                xs,
                [100.0 * by_layer[x] for x in xs],
                marker="o",
                linestyle=style,
                color=colour[split],
                label=label,
            )
    ax.set_xlabel("exit layer")
    ax.set_ylabel("WER (%)")
    ax.set_xticks(sorted(layers))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if splits:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
