"""Does training in bfloat16 on a CPU reach the loss float32 reaches? 1000 steps each, two seeds each.

Trains the demo base's model (``wav2vec2-ee demo --build-base``'s recipe, from scratch or ``--model``)
with the real ``train`` command for ``--steps`` steps, in float32 and with ``--bf16 true``, for each
``--seeds`` (the seed sets the initial weights, the data order and the augmentation), and prints each
run's training loss averaged over its last ``--tail`` logged steps. bfloat16 matches float32 when the
gap between the precisions' means is within the spread between seeds (run-to-run noise).

    python benchmarks/check_bf16_loss.py --corpus demo_out/base/corpus [--steps 1000] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from wav2vec2_ee.device import cpu_description


def run(config: dict, folder: Path, bf16: bool, tail: int) -> tuple[float, float, list[float]]:
    """Train ``config``; (mean loss over the tail, seconds, every logged loss)."""
    from wav2vec2_ee.training.cli import parse_args
    from wav2vec2_ee.training.run import run_training

    file = folder / "train.json"
    file.write_text(json.dumps({**config, "output_dir": str(folder / "run"), "overwrite_output_dir": True}))
    start = time.perf_counter()
    trainer = run_training(*parse_args([str(file), "--bf16", "true" if bf16 else "false"]))
    seconds = time.perf_counter() - start
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return statistics.fmean(losses[-tail:]), seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--splits", nargs="+", default=["train"])
    parser.add_argument("--model", default=None, help="start from this checkpoint (default: from scratch)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tail", type=int, default=10, help="logged losses (every 10 steps) averaged")
    parser.add_argument("--output", default=None, help="a JSON file for the losses")
    args = parser.parse_args()

    from wav2vec2_ee.demo.presets import BASE_PRESETS, base_train_config

    preset = BASE_PRESETS["default"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model.json").write_text(json.dumps(preset.model))
        config = base_train_config(preset, args.model or folder / "model.json", args.corpus)
        config.update(
            train_splits=args.splits, max_steps=args.steps, save_strategy="no", resume=False, logging_steps=10,
            progress=False, report_to="none", warmup_steps=min(500, args.steps // 5),
        )  # fmt: skip
        for seed in args.seeds:
            for bf16 in (False, True):
                name = f"{'bfloat16' if bf16 else 'float32'} seed {seed}"
                tail, seconds, losses = run({**config, "seed": seed}, folder, bf16, args.tail)
                results[name] = {"tail_loss": tail, "seconds": seconds, "losses": losses}
                print(
                    f"{name}: loss {tail:.4f} (mean of the last {args.tail} logs), {seconds:.0f} s",
                    flush=True,
                )
    f32 = [r["tail_loss"] for n, r in results.items() if n.startswith("float32")]
    b16 = [r["tail_loss"] for n, r in results.items() if n.startswith("bfloat16")]
    spread = max(max(f32) - min(f32), max(b16) - min(b16))
    gap = abs(statistics.fmean(b16) - statistics.fmean(f32))
    print(f"CPU: {cpu_description()}; {args.steps} steps per run")
    print(f"float32 {statistics.fmean(f32):.4f}, bfloat16 {statistics.fmean(b16):.4f}: gap {gap:.4f}, "
          f"seed-to-seed spread {spread:.4f} -> {'within' if gap <= spread else 'OUTSIDE'} run-to-run noise")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
