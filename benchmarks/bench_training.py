"""Training cost, measured in one run: the objectives' step ratios, and the base recipe's throughput.

1. Objectives (synthetic batches, the same batches for every variant, variants alternating): EE step /
   plain ``Wav2Vec2ForCTC`` step (same encoder), and KD step / EE step with the teacher's pseudo-labels
   cached (every epoch after the first) and uncached (the first epoch: the teacher's forward too).
   The cached pseudo-labels have the length real ones have (a trained teacher's greedy output is about
   as long as the transcript; here: the transcript): a random teacher's labels are 3x longer, nearly
   one per frame, and CTC's cost grows with the label length (``--random-teacher-labels`` measures
   that case too).
2. ``--base-recipe``: the demo base's training (``wav2vec2-ee demo --build-base``: its model, batch 16,
   speed perturbation, noise and reverberation), run by the real ``train`` command on a corpus, as
   audio seconds trained per wall second, for the old pipeline (float32, items prepared on demand)
   and the new one (``--auto-bf16``, items prepared ahead in a background thread), same model and
   batch; and the stage recipe (``demo --build-base --continue``: no dropout, the recording
   conditions) on the new pipeline. Variants alternate ``--rounds`` times; the first
   ``--warmup-steps`` of each run are not timed.

    python benchmarks/bench_training.py [--steps 8] [--batch 8] [--seconds 2.0]
    python benchmarks/bench_training.py --base-recipe --corpus demo_out/base/corpus [--rounds 3]

Without ``--corpus``, ``--base-recipe`` builds a small eSpeak NG corpus in a temporary folder.
Every line names the CPU it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback, Wav2Vec2Config, Wav2Vec2ForCTC

from wav2vec2_ee import Wav2Vec2EEConfig, Wav2Vec2EEForCTC, build_objective
from wav2vec2_ee.device import cpu_description
from wav2vec2_ee.training.trainer import TeacherLabels

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse_counts_below_one  # noqa: E402

CPU_CONFIG = dict(
    vocab_size=32,
    hidden_size=192,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=768,
    conv_dim=(32, 64, 64, 64, 64, 128, 128),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    num_conv_pos_embeddings=64,
    num_conv_pos_embedding_groups=8,
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
    mask_time_prob=0.0,
    ctc_loss_reduction="mean",
)


def make_batches(n: int, batch: int, seconds: float, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        samples = int(seconds * 16000)
        lengths = torch.randint(int(samples * 0.7), samples + 1, (batch,), generator=g)
        mask = (torch.arange(samples)[None] < lengths[:, None]).long()
        labels = torch.randint(5, 32, (batch, int(seconds * 12)), generator=g)
        out.append(
            {
                "input_values": torch.randn(batch, samples, generator=g) * mask,
                "attention_mask": mask,
                "labels": labels,
                "utt_index": torch.arange(i * batch, (i + 1) * batch),
            }
        )
    return out


def bench_objectives(args: argparse.Namespace) -> None:
    """Part 1: the objectives' step ratios."""
    torch.manual_seed(0)
    ee_config = Wav2Vec2EEConfig(**CPU_CONFIG, exit_layers=[2, 4, 6])
    ee_model = Wav2Vec2EEForCTC(ee_config)
    plain = Wav2Vec2ForCTC(Wav2Vec2Config(**CPU_CONFIG))
    plain.wav2vec2.load_state_dict(ee_model.wav2vec2.state_dict())
    teacher = Wav2Vec2EEForCTC(ee_config).eval()
    for m in (ee_model, plain):
        m.freeze_feature_encoder()
        m.train()
    ee = build_objective("ee", ee_config)
    kd = build_objective("kd", ee_config, ee_alpha=0.3)
    batches = make_batches(args.steps, args.batch, args.seconds)
    # cached: labels of a trained teacher's length (the transcripts); the first epoch: a teacher forward
    cached = TeacherLabels(teacher, blank_id=0, word_delimiter_id=4)
    for b in batches:
        for index, row in zip(b["utt_index"].tolist(), b["labels"]):
            cached.cache[index] = row[row >= 0]
    random_labels = TeacherLabels(teacher, blank_id=0, word_delimiter_id=4)
    for b in batches:
        random_labels(b)  # the random teacher's own labels, cached
    first_epoch = TeacherLabels(teacher, blank_id=0, word_delimiter_id=4)
    opt_ee = torch.optim.AdamW([p for p in ee_model.parameters() if p.requires_grad], lr=1e-4)
    opt_plain = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)

    def step_plain(b):
        loss = plain(b["input_values"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        opt_plain.step()
        opt_plain.zero_grad()

    def step_objective(objective, b, labels_fn=None):
        y_hat = labels_fn(b) if labels_fn is not None else None
        out = ee_model(b["input_values"], attention_mask=b["attention_mask"])
        objective(out.exit_logits, out.output_lengths, b["labels"], y_hat).loss.backward()
        opt_ee.step()
        opt_ee.zero_grad()

    def uncached(b):
        first_epoch.cache.clear()  # its own cache: the cached variants keep theirs
        with torch.no_grad():
            teacher(b["input_values"], attention_mask=b["attention_mask"])  # the first epoch's teacher pass
        return cached(b)

    variants = {
        "plain Wav2Vec2ForCTC": step_plain,
        "ee": lambda b: step_objective(ee, b),
        "kd (cached pseudo-labels)": lambda b: step_objective(kd, b, cached),
        "kd (first epoch, teacher forward)": lambda b: step_objective(kd, b, uncached),
    }
    if args.random_teacher_labels:
        variants["kd (cached, random teacher's labels)"] = lambda b: step_objective(kd, b, random_labels)
    for b in batches[:2]:  # warm-up
        for fn in variants.values():
            fn(b)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            for b in batches:
                t0 = time.perf_counter()
                fn(b)
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"CPU: {cpu_description()}; torch threads: {torch.get_num_threads()}")
    print(f"batch {args.batch} x {args.seconds:.1f} s, exits {ee_config.exit_layers}")
    for name, t in med.items():
        print(f"  {name:40s} {t * 1000:8.1f} ms/step (median of {len(times[name])})")
    print(
        f"EE step / plain step:               {med['ee'] / med['plain Wav2Vec2ForCTC']:.3f}  (target <= 1.05)"
    )
    print(
        f"KD step / EE step (cached labels):  {med['kd (cached pseudo-labels)'] / med['ee']:.3f}  (target <= 1.15)"
    )
    print(f"KD step / EE step (first epoch):    {med['kd (first epoch, teacher forward)'] / med['ee']:.3f}")
    if args.random_teacher_labels:
        ratio = med["kd (cached, random teacher's labels)"] / med["ee"]
        print(f"KD step / EE step (cached, a random teacher's ~3x longer labels): {ratio:.3f}")


# --------------------------------------------------------------------------------------------------
# part 2: the base recipe's throughput through the real train command


class _Throughput(TrainerCallback):
    """Seconds of the timed steps (after ``warmup`` steps); their audio is counted by :func:`_counting`."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds, self.counted = warmup, None, 0.0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


@contextlib.contextmanager
def _counting(callback: _Throughput):
    """Count the real (unpadded) audio seconds of every timed step's batch into ``callback``."""
    from wav2vec2_ee.training.trainer import EarlyExitTrainer

    compute_loss, init = EarlyExitTrainer.compute_loss, EarlyExitTrainer.__init__

    def counted_loss(self, model, inputs, *a, **k):
        if model.training and self.state.global_step >= callback.warmup:
            callback.counted += float(inputs["attention_mask"].sum()) / 16000
        return compute_loss(self, model, inputs, *a, **k)

    def init_with_callback(self, *a, **k):
        init(self, *a, **k)
        self.add_callback(callback)

    EarlyExitTrainer.compute_loss = counted_loss
    EarlyExitTrainer.__init__ = init_with_callback
    try:
        yield
    finally:
        EarlyExitTrainer.compute_loss, EarlyExitTrainer.__init__ = compute_loss, init


def _recipe_run(config: dict, out: Path, steps: int, warmup: int, prefetch: bool) -> tuple[float, float]:
    """Train ``config`` for ``warmup + steps`` steps; (audio seconds per wall second, s/step) of the timed
    steps. ``prefetch=False``: items prepared on demand (the old pipeline)."""
    from wav2vec2_ee.data.dataset import SpeechDataset
    from wav2vec2_ee.training.cli import parse_args
    from wav2vec2_ee.training.run import run_training

    callback = _Throughput(warmup)
    file = out / "train.json"
    run = {
        **config,
        "max_steps": warmup + steps,
        "output_dir": str(out / "run"),
        "overwrite_output_dir": True,
    }
    file.write_text(json.dumps(run))
    schedule = SpeechDataset.schedule
    if not prefetch:
        SpeechDataset.schedule = lambda self, order: None
    try:
        with _counting(callback):
            run_training(*parse_args([str(file)]))
    finally:
        SpeechDataset.schedule = schedule
    return callback.counted / callback.seconds, callback.seconds / steps


def bench_base_recipe(args: argparse.Namespace) -> None:
    """Part 2: audio seconds per wall second of the base recipe, old and new pipeline."""
    from wav2vec2_ee.demo.presets import BASE_PRESETS, BASE_STAGE_TRAINING, base_train_config

    preset = BASE_PRESETS["default"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else _small_corpus(tmp_path / "corpus")
        model_file = tmp_path / "model.json"
        model_file.write_text(json.dumps(preset.model))
        base = base_train_config(preset, model_file, corpus)
        base.update(
            train_splits=["train"], save_strategy="no", resume=False, report_to="none", progress=False,
            logging_steps=1000, max_train_samples=args.max_train_samples,
        )  # fmt: skip
        stage_extra = {
            k: v for k, v in BASE_STAGE_TRAINING.items() if k not in ("max_steps", "learning_rate")
        }
        variants = {
            "old pipeline (float32, items on demand)": (base, False),
            "new pipeline (--auto-bf16, items prepared ahead)": ({**base, "auto_bf16": True}, True),
            "new pipeline + stage recipe (no dropout, recording conditions)": ({**base, **stage_extra}, True),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (config, prefetch) in variants.items():
                results[name].append(
                    _recipe_run(config, tmp_path, args.recipe_steps, args.warmup_steps, prefetch)
                )
    print(f"CPU: {cpu_description()}; torch threads: {torch.get_num_threads()}")
    print(
        f"base recipe: model {preset.model['num_hidden_layers']} layers x {preset.model['hidden_size']}, batch "
        f"{preset.training['per_device_train_batch_size']}, {args.recipe_steps} timed steps x {args.rounds} rounds"
    )
    old = statistics.median(r[0] for r in results[next(iter(results))])
    for name, runs in results.items():
        speed = statistics.median(r[0] for r in runs)
        step = statistics.median(r[1] for r in runs)
        print(f"  {name:64s} {speed:6.2f} audio s / wall s  {step:.3f} s/step  {speed / old:5.2f}x")


def _small_corpus(folder: Path) -> Path:
    from wav2vec2_ee.corpus import build_corpus

    build_corpus(folder, num_train=600, num_dev=10, num_test=10, seed=1, progress=False)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="variants alternate this many times")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length per utterance")
    parser.add_argument(
        "--random-teacher-labels", action="store_true", help="also KD with a random teacher's (long) labels"
    )
    parser.add_argument(
        "--base-recipe", action="store_true", help="measure the base recipe's throughput instead"
    )
    parser.add_argument("--corpus", help="--base-recipe: a corpus folder (default: a small one built here)")
    parser.add_argument("--recipe-steps", type=int, default=40, help="--base-recipe: timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=10, help="--base-recipe: untimed first steps")
    parser.add_argument("--max-train-samples", type=int, default=4000, help="--base-recipe: utterances read")
    args = parser.parse_args()
    refuse_counts_below_one(parser, args, "steps", "rounds", "batch", "recipe_steps", "max_train_samples")
    if args.base_recipe:
        bench_base_recipe(args)
    else:
        bench_objectives(args)


if __name__ == "__main__":
    main()
