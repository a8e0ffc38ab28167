"""The deployment table, in one run: PyTorch (with the CPU layer) against ONNX Runtime float32 and int8.

The checkpoint is exported (float and int8 segments, ``wav2vec2_ee.export``); the entropy threshold is
calibrated on the dev split with the PyTorch model (``calibrate``'s rule, 5 % relative WER); then on the
test split, for each backend, the same early-exit engine (``run_early_exit``) runs over the same
padded, length-grouped batches (audio decoded beforehand):

* WER of every fixed exit (greedy transcripts, jiwer over the split);
* wall seconds per audio second at full depth and at the calibrated entropy point (fastest of
  ``--repeats`` interleaved rounds), and the point's mean exit layer;
* the size of the weights on disk (``model.safetensors``; the exported segment files).

    python benchmarks/bench_export.py demo_out/ee --data demo_out/corpus [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import torch

from wav2vec2_ee.evaluation import load_evaluation_model
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.export.source import OnnxExitSource
from wav2vec2_ee.inference import Decoders, EntropyThreshold, FixedExit, run_early_exit
from wav2vec2_ee.inference.calibrate import calibrate_table
from wav2vec2_ee.inference.table import compute_exit_table, load_prepared_split
from wav2vec2_ee.inference.timing import load_batches
from wav2vec2_ee.loading import load_model
from wav2vec2_ee.vocab import build_processor, normalize_transcript

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse_counts_below_one, refuse_shared_utterances  # noqa: E402


def run(source, batches, policy, decoders) -> tuple[float, dict[str, str], dict[str, int]]:
    """Wall seconds, transcripts and exit layers of one pass over the batches."""
    texts, layers = {}, {}
    start = time.perf_counter()
    for b in batches:
        out = run_early_exit(source, b.input_values, b.attention_mask, policy, decoders)
        texts.update(zip(b.ids, out.transcripts))
        layers.update(zip(b.ids, out.exit_layer))
    return time.perf_counter() - start, texts, layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--dev-split", default="dev")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of every backend (default: torch's)"
    )
    args = parser.parse_args()
    refuse_counts_below_one(parser, args, "repeats", "batch_size")
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()  # every backend gets as many (onnxruntime's own default may differ)
    em = load_evaluation_model(args.checkpoint, device="cpu")  # with the CPU layer, as the commands
    decoders = Decoders(em.tokenizer)
    _, dev_utts = load_prepared_split(em, args.data, args.dev_split, progress=False)
    _, test_utts = load_prepared_split(em, args.data, args.test_split, progress=False)
    # calibrated on dev, reported on test: never on its own test data (a manifest is one split)
    refuse_shared_utterances(
        args.data, (f"--dev-split {args.dev_split}", dev_utts), (f"--test-split {args.test_split}", test_utts)
    )
    dev = compute_exit_table(em, dev_utts, progress=False)
    threshold = calibrate_table(dev, "entropy").value
    refs = {u.id: normalize_transcript(u.text) for u in test_utts}
    batches = load_batches(test_utts, em.feature_extractor, args.batch_size)
    audio = sum(u.duration for u in test_utts)
    layers = list(em.model.config.exit_layers)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_model(
            load_model(args.checkpoint).eval(), folder, processor=build_processor(args.checkpoint), int8=True
        )
        onnx_sizes = {
            p: sum(f.stat().st_size for f in folder.glob("*.onnx") if (".int8." in f.name) == (p == "int8"))
            for p in ("float", "int8")
        }
        # the int8 set = int8 blocks and heads + the float input stage
        onnx_sizes["int8"] += (folder / "input_stage.onnx").stat().st_size
        backends = {
            "PyTorch + CPU layer": (em.model, Path(args.checkpoint, "model.safetensors").stat().st_size),
            "ONNX Runtime float32": (
                OnnxExitSource(folder, "float", num_threads=threads),
                onnx_sizes["float"],
            ),
            "ONNX Runtime int8": (OnnxExitSource(folder, "int8", num_threads=threads), onnx_sizes["int8"]),
        }
        policies = {"full": FixedExit(), "entropy": EntropyThreshold(threshold)}
        for source, _ in backends.values():  # warm-up
            run(source, batches[:1], FixedExit(), decoders)
        wall: dict[tuple[str, str], float] = {}
        depth: dict[tuple[str, str], float] = {}
        for _ in range(args.repeats):
            for name, (source, _) in backends.items():
                for pname, policy in policies.items():
                    seconds, _, exits = run(source, batches, policy, decoders)
                    key = (name, pname)
                    wall[key] = min(wall.get(key, float("inf")), seconds)
                    depth[key] = sum(exits.values()) / len(exits)
        print(
            f"{args.checkpoint} on {args.test_split}: {len(refs)} utterances, {audio:.0f} s of audio; "
            f"{torch.get_num_threads()} torch threads; entropy threshold {threshold:g} calibrated on "
            f"{args.dev_split} (PyTorch)"
        )
        print(
            "| backend | WER per exit (" + " / ".join(f"L{layer}" for layer in layers) + ") | "
            "wall per audio s, full depth | wall per audio s, entropy point (mean layer) | size |"
        )
        print("|---|---|---|---|---|")
        for name, (source, size) in backends.items():
            wers = []
            for layer in layers:
                _, texts, _ = run(source, batches, FixedExit(layer), decoders)
                ids = sorted(texts)
                wers.append(100 * jiwer.wer([refs[i] for i in ids], [texts[i] or "" for i in ids]))
            full, point = wall[(name, "full")] / audio, wall[(name, "entropy")] / audio
            print(
                f"| {name} | " + " / ".join(f"{w:.2f} %" for w in wers) + f" | {1000 * full:.2f} ms | "
                f"{1000 * point:.2f} ms ({depth[(name, 'entropy')]:.2f}) | {size / 1e6:.2f} MB |"
            )
        f32 = wall[("ONNX Runtime float32", "full")]
        print(
            f"int8 / float32 speed at full depth: {f32 / wall[('ONNX Runtime int8', 'full')]:.2f}x; "
            f"ONNX float32 / PyTorch: {wall[('PyTorch + CPU layer', 'full')] / f32:.2f}x; wall/full at the entropy "
            + ", ".join(f"{n}: {wall[(n, 'entropy')] / wall[(n, 'full')]:.3f}" for n in backends)
        )


if __name__ == "__main__":
    main()
