"""Training step cost of the early-exit objectives, measured in one run on the same batches.

Prints: EE step / plain ``Wav2Vec2ForCTC`` step (same encoder), and KD step / EE step, both with the
teacher's pseudo-labels cached (every epoch after the first) and uncached (the first epoch).

    python benchmarks/bench_training.py [--steps 8] [--batch 8] [--seconds 2.0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from wav2vec2_ee import Wav2Vec2EEConfig, Wav2Vec2EEForCTC, build_objective
from wav2vec2_ee.training.trainer import TeacherLabels

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
    for _ in range(n):
        samples = int(seconds * 16000)
        lengths = torch.randint(int(samples * 0.7), samples + 1, (batch,), generator=g)
        mask = (torch.arange(samples)[None] < lengths[:, None]).long()
        labels = torch.randint(5, 32, (batch, int(seconds * 12)), generator=g)
        out.append(
            {
                "input_values": torch.randn(batch, samples, generator=g) * mask,
                "attention_mask": mask,
                "labels": labels,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="variants alternate this many times")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length per utterance")
    args = parser.parse_args()
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
    for i, b in enumerate(batches):
        b["utt_index"] = torch.arange(i * args.batch, (i + 1) * args.batch)
    teacher_labels = TeacherLabels(teacher, blank_id=0, word_delimiter_id=4)
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
        teacher_labels.cache.clear()
        return teacher_labels(b)

    variants = {
        "plain Wav2Vec2ForCTC": step_plain,
        "ee": lambda b: step_objective(ee, b),
        "kd (cached pseudo-labels)": lambda b: step_objective(kd, b, teacher_labels),
        "kd (first epoch, teacher forward)": lambda b: step_objective(kd, b, uncached),
    }
    for b in batches[:2]:  # warm-up, and fills the teacher cache for the cached variant
        for fn in variants.values():
            fn(b)
    for b in batches:
        teacher_labels(b)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            for b in batches:
                t0 = time.perf_counter()
                fn(b)
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"torch threads: {torch.get_num_threads()}, batch {args.batch} x {args.seconds:.1f} s, exits {ee_config.exit_layers}"
    )
    for name, t in med.items():
        print(f"  {name:36s} {t * 1000:8.1f} ms/step (median of {len(times[name])})")
    print(
        f"EE step / plain step:               {med['ee'] / med['plain Wav2Vec2ForCTC']:.3f}  (target <= 1.05)"
    )
    print(
        f"KD step / EE step (cached labels):  {med['kd (cached pseudo-labels)'] / med['ee']:.3f}  (target <= 1.15)"
    )
    print(f"KD step / EE step (first epoch):    {med['kd (first epoch, teacher forward)'] / med['ee']:.3f}")


if __name__ == "__main__":
    main()
