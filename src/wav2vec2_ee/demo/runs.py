"""One demo run: its spec, its training with the library's trainer, its evaluation, the progress printer.

Every run is skipped when a previous one finished it (``demo_run.json`` in its folder), and every
evaluation when its result files exist, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.evaluate import evaluate_checkpoint
from ..inference.word_times import write_word_times
from ..io import atomic_write_text
from ..training.cli import parse_args
from ..training.run import run_training
from .presets import TRAIN_SPLITS, Decoding, DemoPreset, train_config


@dataclass
class RunSpec:
    """One training run: its folder name, the table row it fills and its train-command arguments."""

    name: str
    label: str
    train: dict
    depends_on: str | None = None


def say(message: str) -> None:
    """Print one progress line of the demo (``[demo] ...``, flushed at once). The demo is a command:
    its progress lines and tables (:func:`show`) are its output on stdout."""
    print(f"[demo] {message}", flush=True)


def show(text: str) -> None:
    """Print a block of the demo's output (a table) as it is, flushed at once."""
    print(text, flush=True)


def ee_run(preset: DemoPreset, base: Path, corpus: Path, max_steps: int | None) -> RunSpec:
    """The main run: EE fine-tuning of the base model folder ``base`` with the preset's exits."""
    train = train_config(preset, base, corpus)
    if max_steps is not None:
        train["max_steps"] = max_steps
    steps = train["max_steps"]
    return RunSpec("ee", f"EE fine-tuning of the base (sum of exit CTC losses), {steps} steps", train)


def _model_is_complete(run_dir: Path, train_config: dict) -> bool:
    """Whether ``run_dir`` holds the final model of a finished run with exactly ``train_config``."""
    marker = run_dir / "demo_run.json"
    if not (marker.is_file() and (run_dir / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("train") == train_config
    except json.JSONDecodeError:
        return False


def train_run(
    spec: RunSpec, out: Path, overwrite: bool = False, time_budget: float | None = None, progress: bool = True
) -> dict:
    """Train ``spec`` into ``out/<name>`` with the library's ``run_training`` unless it is already done.

    The train config is written to ``out/configs/<name>.json`` first (``wav2vec2-ee train <file>``
    reruns it by hand); ``demo_run.json`` in the run folder, written last, marks the run complete.
    ``time_budget`` (seconds, ``train --time-budget``) and ``progress`` (``False``: the Trainer's
    ``disable_tqdm``) are not part of what makes a finished run reusable.
    Returns ``{"seconds", "train_runtime", "steps", "seconds_per_step", "precision", "cached"}``
    (``precision``: ``"bfloat16"`` where ``--auto-bf16`` chose it).
    """
    run_dir = out / spec.name
    # the demo owns its run folders: a rerun with other settings retrains there
    config = {**spec.train, "output_dir": str(run_dir), "overwrite_output_dir": True}
    marker = run_dir / "demo_run.json"
    if not overwrite and _model_is_complete(run_dir, config):
        record = json.loads(marker.read_text(encoding="utf-8"))
        say(f"{spec.name}: already trained in {run_dir} ({record['seconds']:.0f} s), skipped")
        return {**record["timing"], "cached": True}
    config_file = out / "configs" / f"{spec.name}.json"
    budgeted = {**config, "time_budget": round(time_budget, 1)} if time_budget else dict(config)
    if not progress:
        budgeted["disable_tqdm"] = True
    atomic_write_text(config_file, json.dumps(budgeted, indent=2) + "\n")
    say(f"{spec.name}: training ({spec.label}); config {config_file}")
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    trainer = run_training(*parse_args([str(config_file)]))
    seconds = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    train_seconds = float(trainer.state.log_history[-1].get("train_runtime", seconds)) if steps else seconds
    timing = {
        "seconds": round(seconds, 1),
        "train_runtime": round(train_seconds, 1),
        "steps": steps,
        "seconds_per_step": round(train_seconds / max(steps, 1), 3),
        "precision": "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else "float32",
    }
    if time_budget:
        timing["time_budget"] = round(time_budget, 1)
    atomic_write_text(
        marker, json.dumps({"train": config, "seconds": seconds, "timing": timing}, indent=2) + "\n"
    )
    del trainer
    planned = int(config["max_steps"])
    cut = f", {planned - steps} fewer than planned to fit the time budget" if steps < planned else ""
    say(
        f"{spec.name}: {steps} steps in {seconds:.0f} s "
        f"({timing['seconds_per_step']:.2f} s/step in {timing['precision']}{cut})"
    )
    return {**timing, "cached": False}


def write_training_word_times(base: Path, corpus: Path, splits: list[str]) -> dict:
    """The word times of the training ``splits`` of ``corpus`` (``words.ctm``, where the training's pauses
    go) by the greedy alignment of ``base``, where missing; ``{"seconds"}``."""
    begin = time.perf_counter()
    for split in splits:
        say(f"word times of {corpus}/{split} (where the training's pauses go): "
            f"{write_word_times(base, corpus, split)}")  # fmt: skip
    return {"seconds": round(time.perf_counter() - begin, 1)}


def _wer_by_layer(result: dict, key: str) -> dict[str, dict[int, float]]:
    """``{split: {layer: wer}}`` of the evaluation overview ``result``'s column ``key``."""
    return {
        split: {int(e["layer"]): float(e["wer"]) for e in data[key].values()}
        for split, data in result["splits"].items()
        if key in data
    }


def _lexicon_options(decoding: Decoding) -> dict:
    """The evaluation suite's options of the lexicon-constrained beam search (empty: greedy only)."""
    if not decoding.lexicon_beam_size:
        return {}
    return {
        "exit_stats": ["posterior"],
        "train_splits": list(TRAIN_SPLITS),
        "lexicon_beam_size": int(decoding.lexicon_beam_size),
        "nbest": 1,
    }


def evaluate_run(
    model_dir: Path,
    eval_dir: Path,
    corpus: Path,
    splits: tuple[str, ...],
    decoding: Decoding | None = None,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str = "float32",
    exits: list[int] | None = None,
) -> dict:
    """Layer-wise WER of ``model_dir`` on ``splits`` with the evaluation suite (the demo prints its own
    table), on ``device`` in ``dtype`` (:class:`~wav2vec2_ee.device.DeviceArguments`); ``exits``: the
    layers evaluated (default: the checkpoint's exits; a plain CTC checkpoint's read through its final
    head).

    Greedy decoding always; with ``decoding.lexicon_beam_size`` also flashlight's lexicon-constrained
    beam search (no language model, as the seed) over the words of the corpus's training transcripts (the
    evaluation suite's ``posterior`` exit statistic, whose best hypothesis it scores); with
    ``decoding.lm_order`` too, the same search with a Kneser-Ney word n-gram model of those transcripts
    (in ``<eval_dir>/lm``).

    Returns ``{"seconds", "greedy": {split: {layer: wer}}, "lexicon": {...}, "lexicon_lm": {...},
    "utterances": {split: n}}`` with WER as a fraction (empty dicts for the columns not asked for).
    """
    decoding = decoding or Decoding()
    start = time.perf_counter()
    lexicon = _lexicon_options(decoding)
    overview = evaluate_checkpoint(
        str(model_dir),
        str(eval_dir),
        data=str(corpus),
        splits=list(splits),
        progress=False,
        overwrite=overwrite,
        device=device,
        dtype=dtype,
        exits=exits,
        **lexicon,
    )
    with_lm = None
    if lexicon and decoding.lm_order:
        with_lm = evaluate_checkpoint(
            str(model_dir),
            str(eval_dir / "lm"),
            data=str(corpus),
            splits=list(splits),
            progress=False,
            overwrite=overwrite,
            plot=False,
            **{**lexicon, "word_score": decoding.lm_word_score},
            lexicon_lm_order=int(decoding.lm_order),
            lexicon_lm_weight=decoding.lm_weight,
            device=device,
            dtype=dtype,
            exits=exits,
        )
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "greedy": _wer_by_layer(overview, "exits"),
        "lexicon": _wer_by_layer(overview, "lexicon_beam") if lexicon else {},
        "lexicon_lm": _wer_by_layer(with_lm, "lexicon_beam") if with_lm else {},
        "utterances": {split: int(data.get("utterances", 0)) for split, data in overview["splits"].items()},
    }


def format_wer_by_exit(columns: dict[str, dict[int, float]]) -> str:
    """The WER-by-exit table: one row per exit layer, one column per entry of ``columns``, in percent."""
    names = list(columns)
    layers = sorted({layer for by_layer in columns.values() for layer in by_layer})
    width = [max(9, len(n)) for n in names]
    lines = ["exit layer" + "".join(f"  {n:>{w}}" for n, w in zip(names, width))]
    for layer in layers:
        cells = "".join(
            f"  {100 * columns[n][layer]:>{w - 2}.1f} %" if layer in columns[n] else f"  {'-':>{w}}"
            for n, w in zip(names, width)
        )
        lines.append(f"{layer:>10}" + cells)
    return "\n".join(lines)
