"""int8 variants of an exported model, in one run: speed at full depth against float32, greedy WER per exit.

Torch-free timing (onnxruntime sessions and numpy only, as the ``lite`` runtime runs them), on the
test split's padded batches (audio decoded beforehand), best of ``--repeats`` interleaved rounds:

* ``float``: the float32 export;
* ``dyn``: what ``export --int8`` writes (dynamic int8 weights of the blocks' and heads' matrix
  products, per tensor; the input stage in float);
* ``dyn_pc``: the same with per-channel weight scales;
* ``dyn_conv``: the input stage's convolutions quantized too (``ConvInteger``, uint8 weights);
* ``dyn_pos``: only the positional convolution of the input stage quantized;
* ``static``: static QDQ quantization of every matrix product (activations too), calibrated on
  ``--calibration`` dev utterances.

    python benchmarks/bench_int8_variants.py demo_out/ee --data demo_out/corpus --work /tmp/int8 \\
        [--threads 1] [--variants float,dyn,static] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

from wav2vec2_ee.evaluation import load_evaluation_model
from wav2vec2_ee.export.exporter import export_model, record_files
from wav2vec2_ee.export.runtime import OnnxSegments, load_segments, read_manifest
from wav2vec2_ee.inference.table import load_prepared_split
from wav2vec2_ee.inference.timing import load_batches
from wav2vec2_ee.loading import load_model
from wav2vec2_ee.vocab import build_processor, normalize_transcript

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse_counts_below_one, refuse_shared_utterances  # noqa: E402

VARIANTS = ("float", "dyn", "dyn_pc", "dyn_conv", "dyn_pos", "static")
POS_CONV = "/pos_conv_embed/conv/Conv"


def segment_files(manifest: dict) -> list[str]:
    return [manifest["input_stage"]["file"], *(s["file"] for s in manifest["blocks"] + manifest["heads"])]


def calibration_feeds(segments: OnnxSegments, batches) -> dict[str, list[dict]]:
    """Each segment file's inputs over ``batches`` (the float chain's), for static calibration."""
    manifest = segments.manifest
    feeds: dict[str, list[dict]] = {name: [] for name in segment_files(manifest)}
    for b in batches:
        inputs = {
            "input_values": b.input_values.numpy(),
            "attention_mask": b.attention_mask.numpy().astype(np.int64),
        }
        feeds[manifest["input_stage"]["file"]].append(inputs)
        hidden, frame_mask = segments.input_stage.run(None, inputs)
        for k, block in enumerate(segments.blocks):
            feeds[manifest["blocks"][k]["file"]].append({"hidden_states": hidden, "frame_mask": frame_mask})
            (hidden,) = block.run(None, {"hidden_states": hidden, "frame_mask": frame_mask})
            feeds[manifest["heads"][k]["file"]].append({"hidden_states": hidden})
    return feeds


def make_variant(name: str, base: Path, work: Path, feeds) -> Path:
    """``work/<name>``: ``base`` with its segment files replaced by the variant's."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    manifest = read_manifest(base)
    for file in segment_files(manifest):
        src, dst = str(base / file), str(out / file)
        if name == "float":
            continue
        if file == manifest["input_stage"]["file"]:
            if name == "dyn_conv":
                quantize_dynamic(src, dst, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
            elif name == "dyn_pos":
                quantize_dynamic(
                    src,
                    dst,
                    weight_type=QuantType.QUInt8,
                    op_types_to_quantize=["Conv"],
                    nodes_to_quantize=[POS_CONV],
                )
            continue
        if name == "static":
            quantize_static(
                src,
                dst,
                Reader(feeds[file]),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        else:
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=name == "dyn_pc",
            )
    record_files(out)  # the variant's files replace the export's on purpose: recorded again
    return out


def run_chain(segments: OnnxSegments, batches, tokenizer=None) -> tuple[float, list[dict[str, str]]]:
    """Wall seconds at full depth (every block, the last head); with ``tokenizer``, every head's greedy
    transcripts too (untimed use)."""
    exits = len(segments.blocks)
    texts: list[dict[str, str]] = [{} for _ in range(exits)]
    start = time.perf_counter()
    for b in batches:
        inputs = {
            "input_values": b.input_values.numpy(),
            "attention_mask": b.attention_mask.numpy().astype(np.int64),
        }
        hidden, frame_mask = segments.input_stage.run(None, inputs)
        lengths = frame_mask.sum(-1)
        for k, block in enumerate(segments.blocks):
            (hidden,) = block.run(None, {"hidden_states": hidden, "frame_mask": frame_mask})
            if tokenizer is None and k < exits - 1:
                continue
            (logits,) = segments.heads[k].run(None, {"hidden_states": hidden})
            if tokenizer is not None:
                ids = logits.argmax(-1)
                for i, uid in enumerate(b.ids):
                    texts[k][uid] = normalize_transcript(tokenizer.decode(ids[i, : lengths[i]].tolist()))
    return time.perf_counter() - start, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True, help="folder for the exported variants")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="float,dyn,dyn_pc,dyn_conv,dyn_pos,static")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=64, help="dev utterances for static calibration")
    args = parser.parse_args()
    refuse_counts_below_one(parser, args, "repeats", "threads", "calibration")
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "float" not in names:
        raise SystemExit(f"--variants: choose from {VARIANTS}, float included (got {names})")
    logging.disable(logging.WARNING)
    em = load_evaluation_model(args.checkpoint, device="cpu")
    _, test = load_prepared_split(em, args.data, "test", progress=False)
    _, dev = load_prepared_split(em, args.data, "dev", progress=False)
    if "static" in names:  # its activation scales come from dev: never from the test data it is timed on
        refuse_shared_utterances(args.data, ("dev (static calibration)", dev), ("test", test))
    work = Path(args.work)
    base = work / "export"
    shutil.rmtree(base, ignore_errors=True)
    export_model(load_model(args.checkpoint).eval(), base, processor=build_processor(args.checkpoint))
    refs = {u.id: normalize_transcript(u.text) for u in test}
    batches = load_batches(test, em.feature_extractor, 16)
    audio = sum(u.duration for u in test)
    feeds = calibration_feeds(
        load_segments(base, "float", num_threads=args.threads),
        load_batches(dev[: args.calibration], em.feature_extractor, 16),
    )
    # a variant keeps the float file names (its segments replace them), so it opens as "float"
    segments = {
        n: load_segments(make_variant(n, base, work, feeds), "float", num_threads=args.threads) for n in names
    }
    wers = {}
    for name, segs in segments.items():
        _, texts = run_chain(segs, batches, em.tokenizer)
        wers[name] = [
            100 * jiwer.wer([refs[i] for i in sorted(t)], [t[i] or "" for i in sorted(t)]) for t in texts
        ]
    wall = dict.fromkeys(names, float("inf"))
    for _ in range(args.repeats):
        for name, segs in segments.items():
            wall[name] = min(wall[name], run_chain(segs, batches)[0])
    print(f"{args.checkpoint}: {len(test)} test utterances, {audio:.0f} s of audio; {args.threads} threads")
    print("| variant | wall per audio s, full depth | speed vs float | WER per exit | size |")
    print("|---|---|---|---|---|")
    files = segment_files(read_manifest(base))
    for name in names:
        size = sum((work / name / f).stat().st_size for f in files) / 1e6
        print(
            f"| {name} | {1000 * wall[name] / audio:.2f} ms | {wall['float'] / wall[name]:.2f}x | "
            + " / ".join(f"{w:.2f} %" for w in wers[name])
            + f" | {size:.2f} MB |"
        )


if __name__ == "__main__":
    main()
