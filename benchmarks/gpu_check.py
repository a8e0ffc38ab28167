"""GPU check, in one run: the same transcripts on CPU and GPU, and evaluation speed of a
wav2vec2-base-shaped model on each.

1. **Agreement.** A tiny random early-exit model (its exit heads sharpened, so that near-ties between
   tokens are rare) is evaluated with ``wav2vec2-ee evaluate``'s library function on each device of
   ``--devices`` (default ``cpu cuda``); the script compares the hypotheses at every exit and the
   largest logit difference, and fails (exit 1) when more than ``--max-differ`` of them differ.
2. **Speed.** A random model shaped like ``facebook/wav2vec2-base`` (12 layers, hidden 768, the 512-channel
   group-norm CNN; exits after layers 2, 4, ..., 12) evaluates ``--base-utterances`` synthetic
   utterances of 5-15 s (LibriSpeech length) greedily at every exit on each device (``--dtype`` on the
   GPU as well), after an untimed warm-up; it prints audio seconds per wall second and the ratio.

    python benchmarks/gpu_check.py                       # on a machine with a GPU
    python benchmarks/gpu_check.py --devices cpu cpu --skip-base   # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.ctc.engine import forward_exits
from wav2vec2_ee.evaluation import evaluate_checkpoint, load_evaluation_model
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.results import parse_split_results

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluation import make_data  # noqa: E402


def tiny_config() -> Wav2Vec2EEConfig:
    return Wav2Vec2EEConfig(
        vocab_size=32,
        pad_token_id=0,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        exit_layers=[2, 4],
    )


def hypotheses(
    checkpoint: Path, data: Path, out: Path, device: str, dtype: str = "float32"
) -> tuple[dict, float]:
    """Hypotheses by utterance id (one per exit) from ``evaluate`` on ``device``, and its wall seconds."""
    start = time.perf_counter()
    evaluate_checkpoint(
        checkpoint,
        out,
        data=data,
        splits=["test"],
        device=device,
        dtype=dtype,
        overwrite=True,
        progress=False,
        plot=False,
    )
    wall = time.perf_counter() - start
    items = parse_split_results((out / "test_results.txt").read_text())
    return {it["file"]: list(it["hypotheses"].values()) for it in items}, wall


def max_logit_difference(checkpoint: Path, devices: list[str]) -> float:
    """The largest difference of exit logits between the devices on one padded batch."""
    torch.manual_seed(1)
    x = torch.randn(3, 24_000)
    mask = torch.ones_like(x, dtype=torch.long)
    mask[1, 16_000:] = 0
    mask[2, 9_000:] = 0
    outs = []
    for device in devices:
        em = load_evaluation_model(checkpoint, device=device)
        with torch.inference_mode():
            logits, lengths = forward_exits(em.model, x.to(em.device), mask.to(em.device))
        outs.append(([z.float().cpu() for z in logits], lengths.cpu()))
    (first, lengths), (second, _) = outs[0], outs[-1]
    return max(
        float((a[b, : int(n)] - c[b, : int(n)]).abs().max())
        for a, c in zip(first, second)
        for b, n in enumerate(lengths.tolist())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs=2, default=["cpu", "cuda"], help="the two devices compared")
    parser.add_argument("--utterances", type=int, default=60, help="utterances of the agreement check")
    parser.add_argument(
        "--max-differ", type=float, default=0.01, help="share of hypotheses allowed to differ"
    )
    parser.add_argument("--base-utterances", type=int, default=24)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--skip-base", action="store_true", help="only the agreement check")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if "cuda" in " ".join(args.devices) and not torch.cuda.is_available():
        print("no CUDA device here: run this on a machine with a GPU (or --devices cpu cpu for a smoke run)")
        return 2
    if torch.cuda.is_available():
        print(
            f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
        )
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. agreement
        torch.manual_seed(0)
        model = Wav2Vec2EEForCTC(tiny_config())
        with torch.no_grad():
            for k in range(model.config.num_exits):
                model.head(k).weight.mul_(30.0)
        model.save_pretrained(tmp / "tiny")
        data = make_data(tmp / "data", args.utterances, 1.0, 4.0)
        runs = [hypotheses(tmp / "tiny", data, tmp / f"eval{i}", d) for i, d in enumerate(args.devices)]
        (h0, _), (h1, _) = runs
        total = sum(len(h) for h in h0.values())
        differ = sum(a != b for u in h0 for a, b in zip(h0[u], h1.get(u, [None] * len(h0[u]))))
        diff = max_logit_difference(tmp / "tiny", args.devices)
        ok = differ <= args.max_differ * total and set(h0) == set(h1)
        print(
            f"agreement {args.devices[0]} vs {args.devices[1]}: {total - differ} of {total} hypotheses identical "
            f"({len(h0)} utterances x {total // max(1, len(h0))} exits), max logit difference {diff:.2e}: "
            f"{'OK' if ok else 'FAILED'}"
        )
        if args.skip_base:
            return 0 if ok else 1
        # 2. speed of a wav2vec2-base-shaped model
        torch.manual_seed(0)
        Wav2Vec2EEForCTC(Wav2Vec2EEConfig(vocab_size=32, pad_token_id=0)).save_pretrained(tmp / "base")
        base_data = make_data(tmp / "base_data", args.base_utterances, 5.0, 15.0, seed=1)
        speeds = {}
        for device in dict.fromkeys(args.devices):
            dtype = args.dtype if device != "cpu" else "float32"
            hypotheses(tmp / "base", base_data, tmp / "warm", device, dtype)  # warm-up (kernels, caches)
            _, wall = hypotheses(tmp / "base", base_data, tmp / f"base_{device}", device, dtype)
            summary = json.loads((tmp / f"base_{device}" / "test_summary.json").read_text())
            audio = summary["audio_seconds"]
            speeds[device] = audio / wall
            print(
                f"wav2vec2-base-shaped model, {args.base_utterances} utterances ({audio:.0f} s of audio), "
                f"{device} {dtype}: {wall:.2f} s wall, {audio / wall:.1f} audio s / wall s"
            )
        if len(speeds) == 2:
            a, b = args.devices
            print(f"{b} / {a}: {speeds[b] / speeds[a]:.1f}x the throughput")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
