"""WER per exit under the recording conditions of real audio, beside the clean split: a table and a plot.

Builds a test split under each condition of ``wav2vec2_ee.evaluation.conditions.CONDITION_CHECKS``
(silence around and inside the speech, telephone band, MP3 / Ogg Vorbis, reverberation, clipping and
saturation, gain with DC offset, tempo 0.8x / 1.25x with the pitch kept, babble, noise; each at one
fixed setting of this script's own), evaluates the checkpoint on all of them (greedy, every exit) and
prints WER per exit with each condition's ratio to the clean WER at the last exit and its target
(silence-padded 1.1x, telephone band 2x, others 1.5x). Writes ``conditions.json``, ``conditions.txt``
and ``conditions.png`` into ``--output-dir``.

The pauses between words need the split's word times (``<split>/words.ctm``): written first when
missing, by the greedy alignment of ``--word-times-model`` (default: the packaged base, so that every
model is checked on the same audio).

    python benchmarks/check_conditions.py demo_out/ee --data demo_out/corpus --split test \\
        --output-dir demo_out/conditions [--conditions clean telephone ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wav2vec2_ee.demo.presets import PACKAGED_BASE
from wav2vec2_ee.device import cpu_description
from wav2vec2_ee.evaluation.conditions import (
    CONDITION_CHECKS,
    CONDITION_TARGETS,
    DEFAULT_TARGET,
    WORD_TIME_CHECKS,
    check_conditions,
    condition_ratios,
)
from wav2vec2_ee.inference.word_times import write_word_times
from wav2vec2_ee.io import atomic_write_text


def format_table(wer: dict[str, dict[int, float]]) -> str:
    """Conditions as rows, exit layers as columns (percent), then the last exit's ratio to clean and
    its target."""
    layers = sorted({layer for by_layer in wer.values() for layer in by_layer})
    last = layers[-1]
    ratios = condition_ratios(wer, last)
    lines = [f"{'condition':20s}" + "".join(f"  layer {k:>2}" for k in layers) + "   x clean  target"]
    for name, by_layer in wer.items():
        target = CONDITION_TARGETS.get(name, DEFAULT_TARGET)
        mark = "" if name == "clean" else ("  ok" if ratios[name] <= target else "  MISSED")
        cells = "".join(f"  {100 * by_layer[k]:6.1f} %" for k in layers)
        lines.append(f"{name:20s}{cells}   {ratios[name]:6.2f}x  {target:4.1f}x{mark}")
    return "\n".join(lines)


def plot(wer: dict[str, dict[int, float]], path: Path) -> None:
    """WER per condition, one line per exit layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(wer)
    layers = sorted({layer for by_layer in wer.values() for layer in by_layer})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for layer in layers:
        ax.plot(range(len(names)), [100 * wer[n][layer] for n in names], marker="o", label=f"layer {layer}")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_ylabel("greedy WER (%)")
    ax.set_title("WER under recording conditions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="a LibriSpeech-layout corpus (the demo's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--conditions", nargs="+", default=None, choices=list(CONDITION_CHECKS))
    parser.add_argument(
        "--exits", nargs="+", type=int, default=None, help="layers (default: the model's exits)"
    )
    parser.add_argument(
        "--word-times-model",
        default=str(PACKAGED_BASE),
        help="the CTC model whose greedy alignment writes <split>/words.ctm when it is missing (default: "
        "the packaged base); 'none': leave the pauses between words out without it",
    )
    args = parser.parse_args()
    names = args.conditions or list(CONDITION_CHECKS)
    if "clean" not in names:
        names = ["clean", *names]
    if any(n in WORD_TIME_CHECKS for n in names) and args.word_times_model != "none":
        print(f"word times: {write_word_times(args.word_times_model, args.data, args.split)}")
    elif args.conditions is None:
        names = None  # all there are (those needing word times only where the split has them)
    out = Path(args.output_dir)
    wer = check_conditions(args.checkpoint, args.data, args.split, out, names=names, exits=args.exits)
    text = f"{args.checkpoint} on {args.data} {args.split}; CPU: {cpu_description()}\n{format_table(wer)}"
    print(text)
    atomic_write_text(out / "conditions.txt", text + "\n")
    atomic_write_text(out / "conditions.json", json.dumps(wer, indent=2) + "\n")
    plot(wer, out / "conditions.png")


if __name__ == "__main__":
    main()
