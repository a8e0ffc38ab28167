"""Where one step of the demo base's training goes: the real ``train`` command, every part timed.

Runs the base recipe (``wav2vec2-ee demo --build-base``'s model, batch and augmentation; or the stage
recipe of ``--build-base --continue`` with ``--stage``) through ``run_training`` on a corpus for
``--steps`` steps and prints, per step after ``--warmup`` steps: reading + normalising the audio (the
first epoch only: it is cached), speed perturbation, the other augmentation (noise, reverberation,
recording conditions), the time the training loop waited for its items (0 when they were prepared
ahead), collation, the model's forward, forward + loss + backward, gradient clipping + optimizer step,
and the rest (the Trainer's own work: logging, callbacks, scheduler). The data parts run in a
background thread when items are prepared ahead, so they overlap the model's time.

    python benchmarks/profile_training_step.py --corpus demo_out/base/corpus [--steps 60] [--stage] \\
        [--no-prefetch] [-- <train flags, e.g. --auto-bf16 true>]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from wav2vec2_ee.device import cpu_description


def _timed(table: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True, help="the base corpus (LibriSpeech layout)")
    parser.add_argument("--splits", nargs="+", default=["train"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--stage", action="store_true", help="the stage recipe (demo --build-base --continue)"
    )
    parser.add_argument("--no-prefetch", action="store_true", help="items prepared on demand (the old way)")
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: more train flags")
    args = parser.parse_args()

    from wav2vec2_ee.data import dataset as data
    from wav2vec2_ee.demo.presets import BASE_PRESETS, PACKAGED_BASE, base_stage_config, base_train_config
    from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
    from wav2vec2_ee.training.cli import parse_args
    from wav2vec2_ee.training.run import run_training
    from wav2vec2_ee.training.trainer import EarlyExitTrainer

    table: dict[str, float] = collections.defaultdict(float)
    patches = {
        (data.SpeechDataset, "audio"): "data: read + normalise (first epoch)",
        (data.SpeechDataset, "_perturb"): "data: speed perturbation",
        (data.SpeechDataset, "_augment"): "data: noise, reverberation, conditions",
        (data.SpeechDataset, "__getitem__"): "data: waiting for items",
        (data.DataCollatorCTCWithPadding, "__call__"): "collate",
        (Wav2Vec2EEForCTC, "forward"): "model forward",
        (EarlyExitTrainer, "training_step"): "forward + loss + backward",
    }
    for (cls, attr), name in patches.items():
        setattr(cls, attr, _timed(table, name, getattr(cls, attr)))
    if args.no_prefetch:
        data.SpeechDataset.schedule = lambda self, order: None
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                table.clear()
                marks["start"] = time.perf_counter()

        def on_pre_optimizer_step(self, a, state, control, **kw):
            marks["pre"] = time.perf_counter()

        def on_optimizer_step(self, a, state, control, **kw):
            table["clip + optimizer step"] += time.perf_counter() - marks["pre"]

        def on_train_end(self, a, state, control, **kw):
            marks["end"] = time.perf_counter()

    init = EarlyExitTrainer.__init__

    def init_with_clock(self, *a, **k):
        init(self, *a, **k)
        self.add_callback(Clock())

    EarlyExitTrainer.__init__ = init_with_clock
    preset = BASE_PRESETS["default"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.stage:
            config = base_stage_config(preset, PACKAGED_BASE, args.corpus)
        else:
            (out / "model.json").write_text(json.dumps(preset.model))
            config = base_train_config(preset, out / "model.json", args.corpus)
        config.update(
            train_splits=args.splits, max_steps=args.warmup + args.steps, save_strategy="no", resume=False,
            output_dir=str(out / "run"), overwrite_output_dir=True, logging_steps=1000, progress=False,
            max_train_samples=args.max_train_samples, report_to="none",
        )  # fmt: skip
        (out / "train.json").write_text(json.dumps(config))
        extra = [f for f in args.train_flags if f != "--"]
        run_training(*parse_args([str(out / "train.json"), *extra]))
    wall = marks["end"] - marks["start"]
    n = args.steps
    recipe = "stage recipe" if args.stage else "base recipe"
    prefetch = "on demand" if args.no_prefetch else "prepared ahead"
    print(f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}")
    print(
        f"{recipe}, items {prefetch}, flags {extra or 'none'}: {wall / n * 1000:.1f} ms per step ({n} steps)"
    )
    model = table["forward + loss + backward"] + table["clip + optimizer step"]
    waited = table["data: waiting for items"] + table["collate"]
    rows = [*patches.values(), "clip + optimizer step"]
    for name in rows:
        print(f"  {name:40s} {table[name] / n * 1000:8.1f} ms  {100 * table[name] / wall:5.1f} %")
    rest = wall - model - waited
    print(
        f"  {'rest (Trainer: logging, callbacks, ...)':40s} {rest / n * 1000:8.1f} ms  {100 * rest / wall:5.1f} %"
    )


if __name__ == "__main__":
    main()
