"""Import time, wall time and peak resident memory of transcribing one file, per runtime, in one run.

Each runtime runs in its own fresh Python process (so imports and memory are its own), one after the
other, ``--repeats`` times (the fastest import and transcription are kept; the memory is the largest):

* ``lite``: ``wav2vec2_ee.lite.LiteTranscriber`` on the exported folder (onnxruntime + numpy only);
* ``onnxruntime``: ``Transcriber.from_export`` (the package's engine with ONNX Runtime sessions);
* ``pytorch``: ``Transcriber.from_pretrained`` on the checkpoint (with the CPU acceleration layer).

Peak memory is the child's ``ru_maxrss`` (``os.wait4``): what the process held at its largest.

    python benchmarks/bench_runtime_footprint.py demo_out/ee demo_out/onnx recording.flac [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = {
    "lite": (
        "from wav2vec2_ee.lite import LiteTranscriber",
        "LiteTranscriber({export!r}).transcribe([{audio!r}])",
    ),
    "onnxruntime": (
        "from wav2vec2_ee import Transcriber",
        "Transcriber.from_export({export!r}).transcribe({audio!r})",
    ),
    "pytorch": (
        "from wav2vec2_ee import Transcriber",
        "Transcriber.from_pretrained({checkpoint!r}).transcribe({audio!r})",
    ),
}

SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{call}
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "transcribe_s": t2 - t1, "torch_loaded": "torch" in sys.modules}}))
"""


def measure(runtime: str, checkpoint: str, export: str, audio: str) -> dict:
    """One fresh process: its import and transcription seconds and its peak RSS in MB."""
    imports, call = CHILD[runtime]
    code = SCRIPT.format(imports=imports, call=call.format(checkpoint=checkpoint, export=export, audio=audio))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{runtime}: the child failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("export")
    parser.add_argument("audio")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for _ in range(args.repeats):  # interleaved rounds
        for runtime in CHILD:
            r = measure(runtime, args.checkpoint, args.export, args.audio)
            best = rows.setdefault(runtime, r)
            for key in ("import_s", "transcribe_s"):
                best[key] = min(best[key], r[key])
            best["peak_rss_mb"] = max(best["peak_rss_mb"], r["peak_rss_mb"])
    lite = rows["lite"]
    print(f"one file ({args.audio}), fastest of {args.repeats} fresh processes each")
    print("| runtime | import s | transcribe s | peak RSS MB | torch imported | import / lite | RSS / lite |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['import_s']:.2f} | {r['transcribe_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['torch_loaded']} | {r['import_s'] / lite['import_s']:.1f}x | "
            f"{r['peak_rss_mb'] / lite['peak_rss_mb']:.1f}x |"
        )


if __name__ == "__main__":
    main()
