"""Throughput of ``wav2vec2-ee evaluate`` against the seed's per-utterance loop, in one run.

Both read the same FLAC files with the same mid-size random model (hidden 192, 6 layers, exits after
layers 2/4/6, layer-norm CNN: the cpu-calibration config) and produce greedy transcripts at every
exit:

* ``seed loop``: what the seed's ``eval.py`` did: one utterance at a time (batch size 1, no length
  grouping), one forward pass reading every exit, then each exit decoded separately with the
  processor (``argmax`` + ``batch_decode``).
* ``ours``: :func:`wav2vec2_ee.evaluation.evaluate_checkpoint`: length-grouped batches with attention
  masks, ``torch.inference_mode``, one vectorised argmax over all exits, jiwer scoring and the result
  files (the plot is left out: it is a constant ~0.3 s).

On a shared machine, OpenMP's default busy-waiting makes every parallel region slow when the cores are
also used by other processes, which penalises the batch-1 loop (about 25x more, smaller parallel
regions) far more than batched evaluation; run with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``)
to measure the pipelines rather than that contention. The script prints the policy and the load.

The two are timed alternately (``--rounds`` times each; the best round counts, which damps noise from
other processes) and the script prints the throughput in audio seconds per wall second, the speedup and
whether the hypotheses are identical.

    python benchmarks/bench_evaluation.py [--utterances 100] [--batch-size 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.data import load_audio
from wav2vec2_ee.evaluation import evaluate_checkpoint, normalize_transcript
from wav2vec2_ee.evaluation.results import parse_split_results
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC, load_model
from wav2vec2_ee.vocab import build_processor

WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "oh",
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "stop",
    "go",
    "on",
    "off",
]


def bench_config() -> Wav2Vec2EEConfig:
    """The cpu-calibration model (/work/shared/reference/cpu-calibration.md), 3.1 M parameters."""
    return Wav2Vec2EEConfig(
        vocab_size=32,
        pad_token_id=0,
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
        exit_layers=[2, 4, 6],
    )


def make_data(root: Path, n: int, min_s: float, max_s: float, seed: int = 0) -> Path:
    """A LibriSpeech-layout split ``root/test/1/1`` of ``n`` synthetic utterances (tones + noise)."""
    rng = np.random.default_rng(seed)
    folder = root / "test" / "1" / "1"
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        samples = int(16_000 * rng.uniform(min_s, max_s))
        t = np.arange(samples) / 16_000
        audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 600) * t * (1 + 0.2 * np.sin(3 * t)))
        audio += 0.05 * rng.standard_normal(samples)
        sf.write(folder / f"1-1-{i:04d}.flac", audio.astype(np.float32), 16_000)
        lines.append(f"1-1-{i:04d} " + " ".join(rng.choice(WORDS, size=rng.integers(1, 6))).upper())
    (folder / "1-1.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def seed_loop(checkpoint: Path, data: Path) -> tuple[dict[str, list[str]], float]:
    """The seed's evaluation: batch size 1, every exit decoded separately with the processor."""
    processor = build_processor(checkpoint)
    model = load_model(str(checkpoint)).eval()
    trans = next((data / "test").glob("*/*/*.trans.txt"))
    items = [line.split(" ", 1) for line in trans.read_text().splitlines()]
    hyps: dict[str, list[str]] = {}
    seconds = 0.0
    for utt_id, _text in items:
        audio = load_audio(trans.parent / f"{utt_id}.flac")
        seconds += len(audio) / 16_000
        inputs = processor(audio, sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            out = model(inputs.input_values)
        hyps[utt_id] = []
        for logits in out.exit_logits:
            predicted_ids = torch.argmax(logits, dim=-1)
            hyps[utt_id].append(normalize_transcript(processor.batch_decode(predicted_ids)[0]))
    return hyps, seconds


def ours(checkpoint: Path, data: Path, out: Path, batch_size: int) -> dict[str, list[str]]:
    evaluate_checkpoint(
        checkpoint,
        out,
        data,
        splits=["test"],
        batch_size=batch_size,
        overwrite=True,
        progress=False,
        plot=False,
    )
    items = parse_split_results((out / "test_results.txt").read_text())
    return {it["file"]: list(it["hypotheses"].values()) for it in items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=8, help="ours: utterances per batch (the default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        Wav2Vec2EEForCTC(bench_config()).save_pretrained(tmp / "model")
        data = make_data(tmp / "data", args.utterances, args.min_seconds, args.max_seconds)
        ours(tmp / "model", data, tmp / "warmup", args.batch_size)  # warm-up: imports, allocator, caches

        seed_times, our_times = [], []  # (wall, cpu) seconds per round
        for _ in range(args.rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            seed_hyps, seconds = seed_loop(tmp / "model", data)
            seed_times.append((time.perf_counter() - wall, time.process_time() - cpu))
            wall, cpu = time.perf_counter(), time.process_time()
            our_hyps = ours(tmp / "model", data, tmp / "out", args.batch_size)
            our_times.append((time.perf_counter() - wall, time.process_time() - cpu))

    (seed_wall, seed_cpu), (our_wall, our_cpu) = min(seed_times), min(our_times)
    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} CPU cores (load average {load:.1f}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(
        f"data: {args.utterances} utterances, {seconds:.1f} s of audio ({args.min_seconds}-{args.max_seconds} s each); "
        "model: hidden 192, 6 layers, exits 2/4/6, layer-norm CNN"
    )
    print(
        f"seed loop (batch 1, per-exit decode): {seconds / seed_wall:7.1f} audio s / wall s "
        f"({seed_wall:.2f} s wall, {seed_cpu:.2f} s CPU)"
    )
    print(
        f"ours (batch {args.batch_size}, length-grouped):      {seconds / our_wall:7.1f} audio s / wall s "
        f"({our_wall:.2f} s wall, {our_cpu:.2f} s CPU)"
    )
    print(
        f"speedup: {seed_wall / our_wall:.2f}x wall, {seed_cpu / our_cpu:.2f}x CPU time (best of {args.rounds} rounds; "
        f"all rounds, wall: seed {[round(w, 2) for w, _ in seed_times]}, ours {[round(w, 2) for w, _ in our_times]})"
    )
    print(f"hypotheses identical at every exit: {seed_hyps == our_hyps}")


if __name__ == "__main__":
    main()
