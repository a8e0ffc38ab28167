"""Throughput of ``wav2vec2-ee evaluate`` against the seed's per-utterance loop, in one run.

Both read the same FLAC files with the same mid-size random model (hidden 192, 6 layers, exits after
layers 2/4/6, layer-norm CNN: the cpu-calibration config) and produce greedy transcripts at every
exit:

* ``seed loop``: what the seed's ``eval.py`` did: one utterance at a time (batch size 1, no length
  grouping), one forward pass of the ``transformers`` encoder with ``output_hidden_states=True`` (its
  own CNN and layers, plain ``nn.Linear``: PyTorch's BLAS), every exit head applied to its layer's
  hidden states, then each exit decoded separately with the processor (``argmax`` + ``batch_decode``).
* ``ours``: :func:`wav2vec2_ee.evaluation.evaluate_checkpoint` with its defaults on ``--device cpu``:
  length-grouped batches with attention masks, the CPU layer that ``evaluate`` applies on a CPU
  (:func:`wav2vec2_ee.accel.optimize_for_cpu_inference`: the time-major CNN, oneDNN matrix products, the
  FFT positional convolution), ``torch.inference_mode``, one vectorised argmax
  over all exits, this process and a forked child per further core, each running one thread
  (``--processes``), jiwer scoring
  and the result files (the plot is left out: it is a constant ~0.3 s).

On a shared machine, OpenMP's default busy-waiting makes every parallel region slow when the cores are
also used by other processes, which penalises the batch-1 loop (about 25x more, smaller parallel
regions) far more than batched evaluation; run with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``)
to measure the pipelines rather than that contention. The script prints the policy and the load.

The two are timed alternately (``--rounds`` times each; the best round counts, which damps noise from
other processes) and the script prints the throughput in audio seconds per wall second, the speedup and
whether the hypotheses are identical.

    python benchmarks/bench_evaluation.py [--utterances 100] [--batch-size 16] [--rounds 2]
    python benchmarks/bench_evaluation.py --utterances 40 --min-seconds 5 --max-seconds 15  # LibriSpeech-length
    python benchmarks/bench_evaluation.py --checkpoint demo_out/ee --data demo_out/corpus --rounds 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf
import torch

from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.data import load_audio
from wav2vec2_ee.evaluation import evaluate_checkpoint, normalize_transcript
from wav2vec2_ee.loading import load_model
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.results import parse_split_results
from wav2vec2_ee.vocab import build_processor

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse, refuse_counts_below_one, refuse_nothing_measured  # noqa: E402

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


def librispeech_items(data: Path, split: str) -> list[tuple[Path, str]]:
    """``(flac file, utterance id)`` of every transcript line of the LibriSpeech-layout ``data/split``
    (what the seed's loop read; none for a manifest or another layout)."""
    return [
        (trans.parent / f"{line.split(' ', 1)[0]}.flac", line.split(" ", 1)[0])
        for trans in sorted((data / split).glob("*/*/*.trans.txt"))
        for line in trans.read_text().splitlines()
        if line.strip()
    ]


def seed_loop(checkpoint: Path, data: Path, split: str) -> tuple[dict[str, list[str]], float]:
    """The seed's evaluation: batch size 1, every exit decoded separately with the processor."""
    processor = build_processor(checkpoint)
    model = load_model(str(checkpoint)).eval()  # plain transformers modules (PyTorch's BLAS), as the seed
    items = librispeech_items(data, split)
    hyps: dict[str, list[str]] = {}
    seconds = 0.0
    layers = model.config.exit_layers
    final_norm = model.wav2vec2.encoder.layer_norm
    for path, utt_id in items:
        audio = load_audio(path)
        seconds += len(audio) / 16_000
        inputs = processor(audio, sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            # transformers' Wav2Vec2Model forward: its CNN, every layer's output (transformers 5 records
            # them before the pre-LN encoder's final LayerNorm, which each exit applies, as ours do)
            hidden = model.wav2vec2(inputs.input_values, output_hidden_states=True).hidden_states
            exit_logits = [model.head(k)(final_norm(hidden[layer])) for k, layer in enumerate(layers)]
        hyps[utt_id] = []
        for logits in exit_logits:
            predicted_ids = torch.argmax(logits, dim=-1)
            hyps[utt_id].append(normalize_transcript(processor.batch_decode(predicted_ids)[0]))
    return hyps, seconds


def ours(
    checkpoint: Path,
    data: Path,
    split: str,
    out: Path,
    batch_size: int,
    processes: int | None,
    dtype: str = "float32",
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Our hypotheses per utterance (one per exit) and the references, from the written result file."""
    evaluate_checkpoint(
        checkpoint,
        out,
        data=data,
        splits=[split],
        batch_size=batch_size,
        processes=processes,
        dtype=dtype,
        device="cpu",
        overwrite=True,
        progress=False,
        plot=False,
    )
    items = parse_split_results((out / f"{split}_results.txt").read_text())
    return {it["file"]: list(it["hypotheses"].values()) for it in items}, {
        it["file"]: it["expected"] for it in items
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=8, help="ours: utterances per batch (the default)")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="ours: worker processes (default: evaluate's, one per core)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", help="a trained checkpoint instead of the random model")
    parser.add_argument("--data", help="with --checkpoint: a LibriSpeech-layout folder")
    parser.add_argument("--split", default="test", help="the split of --data (default: test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="ours: precision of the forward pass (evaluate --dtype; the seed loop stays float32)",
    )
    args = parser.parse_args()
    check_data(parser, args)
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.checkpoint:
            model, data = Path(args.checkpoint), Path(args.data)
            described = f"{args.checkpoint} on {args.data}/{args.split}"
        else:
            torch.manual_seed(0)
            model = tmp / "model"
            Wav2Vec2EEForCTC(bench_config()).save_pretrained(model)
            data = make_data(tmp / "data", args.utterances, args.min_seconds, args.max_seconds)
            described = (
                f"random model (hidden 192, 6 layers, exits 2/4/6, layer-norm CNN) on {args.utterances} "
                f"synthetic utterances of {args.min_seconds}-{args.max_seconds} s"
            )
        ours(model, data, args.split, tmp / "warmup", args.batch_size, args.processes, args.dtype)  # warm-up

        seed_times, our_times = [], []  # (wall, CPU including child processes) seconds per round
        for _ in range(args.rounds):
            wall, cpu = time.perf_counter(), cpu_seconds()
            seed_hyps, seconds = seed_loop(model, data, args.split)
            seed_times.append((time.perf_counter() - wall, cpu_seconds() - cpu))
            wall, cpu = time.perf_counter(), cpu_seconds()
            our_hyps, refs = ours(
                model, data, args.split, tmp / "out", args.batch_size, args.processes, args.dtype
            )
            our_times.append((time.perf_counter() - wall, cpu_seconds() - cpu))

    check_measured(seed_hyps, our_hyps)
    (seed_wall, seed_cpu), (our_wall, our_cpu) = min(seed_times), min(our_times)
    print(
        f"machine: {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(f"data: {len(seed_hyps)} utterances, {seconds:.1f} s of audio; {described}")
    print(
        f"seed loop (batch 1, transformers forward, per-exit decode): {seconds / seed_wall:7.1f} audio s / wall s "
        f"({seed_wall:.2f} s wall, {seed_cpu:.2f} s CPU)"
    )
    print(
        f"ours (batch {args.batch_size}, length-grouped, processes {args.processes or 'auto'}, {args.dtype}): "
        f"{seconds / our_wall:7.1f} audio s / wall s ({our_wall:.2f} s wall, {our_cpu:.2f} s CPU)"
    )
    print(
        f"speedup: {seed_wall / our_wall:.2f}x wall, {seed_cpu / our_cpu:.2f}x CPU time (best of {args.rounds} "
        f"rounds; all rounds, wall: seed {[round(w, 2) for w, _ in seed_times]}, "
        f"ours {[round(w, 2) for w, _ in our_times]})"
    )
    differ = sum(
        seed_hyps[u][k] != our_hyps.get(u, [None] * len(h))[k]
        for u, h in seed_hyps.items()
        for k in range(len(h))
    )
    total = sum(len(h) for h in seed_hyps.values())
    print(f"hypotheses identical at every exit: {seed_hyps == our_hyps} ({differ} of {total} differ)")
    if differ:
        ids = sorted(refs)
        for name, hyps in (("seed loop", seed_hyps), ("ours", our_hyps)):
            wers = [
                100 * jiwer.wer([refs[u] for u in ids], [hyps[u][k] or "" for u in ids])
                for k in range(len(hyps[ids[0]]))
            ]
            print(f"WER (%) by exit, {name}: " + " / ".join(f"{w:.2f}" for w in wers))


def check_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--checkpoint`` and ``--data`` go together, and ``--data`` must hold LibriSpeech-layout
    transcripts of ``--split`` (the seed loop reads nothing else: with a manifest it measured nothing)."""
    if args.checkpoint and not args.data:
        parser.error("--checkpoint needs --data (a LibriSpeech-layout folder)")
    if args.data and not args.checkpoint:
        parser.error("--data needs --checkpoint (without it, the random model runs on synthetic data)")
    if args.data and not librispeech_items(Path(args.data), args.split):
        parser.error(
            f"--data {args.data}: no LibriSpeech-layout transcripts in {Path(args.data, args.split)}"
            "/*/*/*.trans.txt (the seed loop reads LibriSpeech folders only, not a manifest)"
        )
    refuse_counts_below_one(parser, args, "utterances", "rounds", "batch_size")


def check_measured(seed_hyps: dict[str, list[str]], our_hyps: dict[str, list[str]]) -> None:
    """Refuse ratios of nothing, or of different work: both pipelines must have measured the same
    utterances, at least one."""
    refuse_nothing_measured(len(seed_hyps), "utterances", "the seed loop read none")
    if set(seed_hyps) != set(our_hyps):
        only_seed, only_ours = sorted(set(seed_hyps) - set(our_hyps)), sorted(set(our_hyps) - set(seed_hyps))
        refuse(
            f"the seed loop and ours measured different utterances ({len(seed_hyps)} and {len(our_hyps)}; "
            f"only the seed loop's: {only_seed[:3]}, only ours: {only_ours[:3]}): no speedup to compare"
        )


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the forked workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
