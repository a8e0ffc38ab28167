"""The transcription server under open-loop load: full depth against load-adaptive early exits, on loopback.

Two servers are started in turn (``wav2vec2-ee serve``, a subprocess each, on a free 127.0.0.1 port):

* **full depth**: ``--policy fixed --no-adaptive`` (the last exit for every utterance; refusing only
  when its queue, ``--max-queue`` pieces, is full);
* **adaptive**: ``--calibration CAL`` (the operating points of ``calibrate --output-dir`` within its
  accuracy budget, stepped down and up with the queue delay; refusing what would miss
  ``--objective``).

First the capacity of full-depth serving is measured (closed loop: ``2 x --batch-size`` clients sending
back to back for ``--capacity-seconds``; completed requests per second). Then each server gets
open-loop Poisson arrivals of the test utterances (a corpus split or a manifest, ``--data`` /
``--split``; each request one utterance, drawn in a fixed shuffled order) at ``--loads`` x that capacity
(0.5, 1, 1.5, 3) for ``--seconds-per-load`` each; latency is measured from each request's scheduled
arrival (no coordinated omission). Between loads the server is left to drain and settle (its operating
point back at the most accurate one, at most ``--settle-seconds``). Per server and load: throughput
(answers per second), p50 / p95 / p99 latency of the answers, mean layers run (what was served; the
sampled accuracy check's extra layers beside), WER of what was served against the references (jiwer;
refused requests have none), the 503 count, and the server's live CER. A table is printed, and
``bench_serve.json`` (every request in ``bench_serve_requests.jsonl``) and ``bench_serve.png`` (p95
latency and mean layers against load) are written to ``--output-dir``.

``--malformed N``: N requests (``--concurrency`` in flight) with 10 % malformed ones interleaved
(random bytes, a truncated file, an empty file, a missing field, a bad response_format, text named .wav)
against the full-depth server after its loads (one depth: each file has one right transcript): every
valid request must be answered with the transcript the server gives that file alone, every malformed one
with a 4xx, nothing else but explicit 503s; the server's resident memory growth is reported (%).

Targets (issue 31): at 0.5x, adaptive WER within +2 % relative of full depth; up to 1x, median latency at
least 25 % below full depth; at 3x, adaptive p95 within the objective while full depth's grows; the WER
increase within the budget at every load. Calibrated on dev, measured on test: a benchmark split that
shares utterance ids with the calibration's exit table is refused.

    python benchmarks/bench_serve.py --model demo_out/ee --calibration demo_out/cal --data demo_out/corpus \\
        --split test --output-dir bench_serve_out [--seconds-per-load 60] [--objective 1.0] [--malformed 500] \
        [--server-cpus 1]
    python benchmarks/bench_serve.py --smoke --output-dir /tmp/bench_serve   # a tiny random model, < 2 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import jiwer
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _guards import refuse, refuse_counts_below_one, refuse_nothing_measured  # noqa: E402

URL = "/v1/audio/transcriptions"


@dataclass
class Utterance:
    id: str
    name: str
    audio: bytes
    text: str
    #: the multipart request body and its content type, encoded once (the load generator's CPU is scarce)
    body: bytes = b""
    content_type: str = ""

    def __post_init__(self) -> None:
        files = {"file": (self.name, self.audio)}
        data = {"response_format": "verbose_json", "model": "bench"}
        request = httpx.Request("POST", "http://127.0.0.1" + URL, files=files, data=data)
        self.body, self.content_type = request.read(), request.headers["content-type"]


@dataclass
class Answer:
    mode: str
    load: float
    id: str
    sent: float
    latency: float
    status: int
    text: str | None = None
    served_layers: float | None = None
    layers_computed: float | None = None
    points: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# the data


def load_utterances(data: str, split: str, most: int, seed: int) -> list[Utterance]:
    from wav2vec2_ee.data import load_split
    from wav2vec2_ee.vocab import normalize_transcript

    items = list(load_split(data, split))
    random.Random(seed).shuffle(items)
    out = []
    for u in items[:most]:
        if u.audio is None and u.audio_bytes is None:
            continue
        audio = u.audio_bytes if u.audio_bytes is not None else Path(u.audio).read_bytes()
        out.append(
            Utterance(
                u.id, Path(u.audio).name if u.audio else f"{u.id}.wav", audio, normalize_transcript(u.text)
            )
        )
    return out


def calibration_ids(calibration: str) -> set[str]:
    """The utterance ids of the calibration's dev exit table (what its points were chosen on)."""
    from wav2vec2_ee.serving.frontier import calibration_file

    file = calibration_file(calibration)
    dev = (json.loads(file.read_text()).get("splits") or {}).get("dev")
    table = file.parent / f"{dev}_exit_table.jsonl"
    if not table.is_file():
        return set()
    return {json.loads(line)["id"] for line in table.read_text().splitlines() if line.strip()}


# --------------------------------------------------------------------------------------------------
# a server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``wav2vec2-ee serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: str, flags: list[str], log: Path, cpus: list[int] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-m", "wav2vec2_ee", "serve", model, "--port", str(self.port), *flags]
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pin)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                refuse(f"the server did not start: {' '.join(command)}; see {log}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                refuse(f"the server was not ready within 300 s; see {log}")
            time.sleep(0.2)
        self.process = psutil.Process(self.proc.pid)

    def status(self) -> dict:
        return httpx.get(self.url + "/status", timeout=10).json()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def settle(self, most: float) -> None:
        """Wait until the queue is empty and the operating point is the most accurate (at most ``most`` s)."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            s = self.status()
            if s["queue"]["depth"] == 0 and not s["queue"]["running"] and s["controller"]["index"] == 0:
                return
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------------------------------
# load


def _client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0))


async def _ask(client, url, u: Utterance, mode: str, load: float, sent: float, t0: float) -> Answer:
    try:
        r = await client.post(url + URL, content=u.body, headers={"content-type": u.content_type})
        status = r.status_code
    except httpx.HTTPError:
        status = 0
    latency = time.perf_counter() - sent
    answer = Answer(mode, load, u.id, sent - t0, latency, status)
    if status == 200:
        body = r.json()
        ee = body.get("early_exit", {})
        answer.text = body["text"]
        answer.served_layers = ee.get("served_layers")
        answer.layers_computed = ee.get("layers_computed")
        answer.points = ee.get("operating_points", [])
    return answer


async def closed_loop(url: str, utts: list[Utterance], clients: int, seconds: float) -> float:
    """Answers per second with ``clients`` sending back to back for ``seconds``."""
    done = 0
    t0 = time.perf_counter()

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        async with _client() as client:
            while time.perf_counter() - t0 < seconds:
                a = await _ask(client, url, utts[i % len(utts)], "capacity", 0, time.perf_counter(), t0)
                done += a.status == 200
                i += clients

    await asyncio.gather(*(worker(k) for k in range(clients)))
    return done / (time.perf_counter() - t0)


async def open_loop(
    url: str, utts: list[Utterance], rate: float, seconds: float, mode: str, load: float, seed: int
):
    """Poisson arrivals at ``rate`` per second for ``seconds``; latency from each scheduled arrival."""
    rng = np.random.default_rng(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.exponential(1.0 / rate)
        if t > seconds:
            break
        arrivals.append(t)
    async with _client() as client:
        t0 = time.perf_counter()
        tasks = []
        for i, at in enumerate(arrivals):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_ask(client, url, utts[i % len(utts)], mode, load, t0 + at, t0)))
        return await asyncio.gather(*tasks), time.perf_counter() - t0


def summarise(answers: list[Answer], refs: dict[str, str], window: float, live_cer: float | None) -> dict:
    ok = [a for a in answers if a.status == 200]
    lat = np.array([a.latency for a in ok]) if ok else np.array([float("nan")])
    wer = jiwer.wer([refs[a.id] for a in ok], [a.text or "" for a in ok]) if ok else float("nan")
    return {
        "requests": len(answers),
        "answered": len(ok),
        "throughput": len(ok) / window,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "served_layers": float(np.mean([a.served_layers for a in ok])) if ok else float("nan"),
        "layers_run": float(np.mean([a.layers_computed for a in ok])) if ok else float("nan"),
        "wer": float(wer),
        "shed_503": sum(a.status == 503 for a in answers),
        "other_errors": sum(a.status not in (200, 503) for a in answers),
        "points": sorted({p for a in ok for p in a.points}),
        "live_cer": live_cer,
    }


def live_cer(metrics: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith("wav2vec2_ee_live_cer "):
            value = float(line.split()[1])
            return None if math.isnan(value) else value
    return None


# --------------------------------------------------------------------------------------------------
# malformed requests


def malformed(u: Utterance, kind: int) -> tuple[dict, dict]:
    """``(files, data)`` of a malformed request of kind ``kind``."""
    rng = random.Random(kind)
    if kind % 6 == 0:
        return {"file": ("noise.wav", bytes(rng.getrandbits(8) for _ in range(4000)))}, {}
    if kind % 6 == 1:
        return {"file": (u.name, u.audio[: max(64, len(u.audio) // 3)])}, {}
    if kind % 6 == 2:
        return {"file": ("empty.wav", b"")}, {}
    if kind % 6 == 3:
        return {}, {"model": "bench"}  # no file
    if kind % 6 == 4:
        return {"file": (u.name, u.audio)}, {"response_format": "mp3"}
    return {"file": ("notes.wav", b"this is text, not audio\n" * 40)}, {}


async def malformed_run(server: Server, utts: list[Utterance], n: int, concurrency: int, seed: int) -> dict:
    async with _client() as client:
        alone = {}
        for u in utts:  # each file's transcript when it is alone
            r = await client.post(
                server.url + URL, files={"file": (u.name, u.audio)}, data={"response_format": "json"}
            )
            alone[u.id] = r.json()["text"]
        rss_before = server.process.memory_info().rss
        rng = random.Random(seed)
        plan = [(i, rng.random() < 0.1) for i in range(n)]
        results: list[tuple[bool, int, bool]] = []
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int, bad: bool) -> None:
            u = utts[i % len(utts)]
            files, data = (
                malformed(u, i) if bad else ({"file": (u.name, u.audio)}, {"response_format": "json"})
            )
            async with semaphore:
                try:
                    r = await client.post(server.url + URL, files=files, data=data)
                    status, right = (
                        r.status_code,
                        (not bad and r.status_code == 200 and r.json()["text"] == alone[u.id]),
                    )
                except httpx.HTTPError:
                    status, right = 0, False
            results.append((bad, status, right))

        await asyncio.gather(*(one(i, bad) for i, bad in plan))
        rss_after = server.process.memory_info().rss
    valid = [r for r in results if not r[0]]
    bad = [r for r in results if r[0]]
    return {
        "requests": n,
        "malformed": len(bad),
        "valid_answered_right": sum(r[2] for r in valid),
        "valid": len(valid),
        "valid_503": sum(r[1] == 503 for r in valid),
        "valid_wrong_or_failed": sum(not r[2] and r[1] != 503 for r in valid),
        "malformed_statuses": sorted({r[1] for r in bad}),
        "malformed_not_4xx": sum(not (400 <= r[1] < 500) and r[1] != 503 for r in bad),
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_growth_percent": 100 * (rss_after - rss_before) / rss_before,
        "server_alive": server.proc.poll() is None,
    }


# --------------------------------------------------------------------------------------------------
# the smoke configuration


def smoke_assets(root: Path) -> tuple[str, str, str, str]:
    """A tiny random model, a synthetic corpus (tones; dev and test), and its calibration."""
    import soundfile as sf
    import torch

    from wav2vec2_ee.cli import main as cli_main
    from wav2vec2_ee.configuration import Wav2Vec2EEConfig
    from wav2vec2_ee.modeling import Wav2Vec2EEForCTC

    torch.manual_seed(0)
    config = Wav2Vec2EEConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=True, feat_extract_norm="layer",
        pad_token_id=0, exit_layers=[1, 2, 3, 4],
    )  # fmt: skip
    model = Wav2Vec2EEForCTC(config).eval()
    with torch.no_grad():
        for k in range(config.num_exits):
            model.head(k).weight.mul_(40.0)
    model.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    for split, first in (("dev", 100), ("test", 200)):  # other speakers: other ids
        for speaker in range(first, first + 24):
            folder = root / "corpus" / split / str(speaker) / "1"
            folder.mkdir(parents=True, exist_ok=True)
            seconds = rng.uniform(0.8, 2.5)
            t = np.arange(int(seconds * 16_000)) / 16_000
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(folder / f"{speaker}-1-0000.flac", x.astype(np.float32), 16_000)
            text = " ".join(rng.choice(words, 4)).upper()
            (folder / f"{speaker}-1.trans.txt").write_text(f"{speaker}-1-0000 {text}\n")
    cal = root / "cal"
    argv = ["calibrate", str(root / "model"), "--data", str(root / "corpus"), "--splits", "dev",
            "--policy", "entropy", "--max-wer-increase", "0.5", "--output-dir", str(cal), "--no-progress"]  # fmt: skip
    if cli_main(argv) != 0:
        refuse("the smoke calibration failed")
    return str(root / "model"), str(cal), str(root / "corpus"), "test"


# --------------------------------------------------------------------------------------------------


def plot(results: dict, loads: list[float], objective: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker, color in (("full", "o", "tab:blue"), ("adaptive", "s", "tab:orange")):
        rows = [results[mode][str(load)] for load in loads]
        left.plot(loads, [r["p95"] for r in rows], marker + "-", color=color, label=f"{mode} p95")
        left.plot(loads, [r["p50"] for r in rows], marker + ":", color=color, alpha=0.6, label=f"{mode} p50")
        right.plot(loads, [r["served_layers"] for r in rows], marker + "-", color=color, label=mode)
    left.axhline(objective, color="grey", linestyle="--", label="objective")
    left.set(xlabel="load (x full-depth capacity)", ylabel="latency (s)", yscale="log", title="latency")
    right.set(xlabel="load (x full-depth capacity)", ylabel="mean layers served", title="depth")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def targets(
    results: dict, loads: list[float], objective: float, budget: float
) -> list[tuple[str, bool, str]]:
    full, adaptive = results["full"], results["adaptive"]
    out = []
    if 0.5 in loads:
        f, a = full["0.5"]["wer"], adaptive["0.5"]["wer"]
        out.append(
            (
                "0.5x: adaptive WER within +2 % relative of full depth",
                a <= f * 1.02 + 1e-12,
                f"{a:.4f} vs {f:.4f}",
            )
        )
    light = [load for load in loads if load <= 1.0]
    if light:
        ok = all(adaptive[str(x)]["p50"] <= 0.75 * full[str(x)]["p50"] for x in light)
        detail = ", ".join(
            f"{x}x: {adaptive[str(x)]['p50']:.3f} vs {full[str(x)]['p50']:.3f} s" for x in light
        )
        out.append(("up to 1x: adaptive median latency >= 25 % below full depth", ok, detail))
    if 3.0 in loads:
        a, f = adaptive["3.0"]["p95"], full["3.0"]["p95"]
        lowest = full[str(min(loads))]["p95"]
        out.append(
            ("3x: adaptive p95 within the objective, full depth's grows", a <= objective and f > lowest,
             f"adaptive {a:.3f} s (objective {objective:g}), full {f:.3f} s (at {min(loads)}x {lowest:.3f} s)")
        )  # fmt: skip
    ok = all(adaptive[str(x)]["wer"] <= full[str(x)]["wer"] * (1 + budget) + 1e-12 for x in loads)
    out.append((f"every load: adaptive WER increase within the budget (+{100 * budget:g} %)", ok,
                ", ".join(f"{x}x: {adaptive[str(x)]['wer']:.4f}/{full[str(x)]['wer']:.4f}" for x in loads)))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint or export folder")
    parser.add_argument("--calibration", help="calibrate --output-dir (on a dev split)")
    parser.add_argument("--data", help="corpus folder or manifest of the test utterances")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 1.5, 3.0])
    parser.add_argument("--seconds-per-load", type=float, default=60.0)
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--objective", type=float, default=2.0, help="the adaptive server's p95 objective (s)"
    )
    parser.add_argument("--max-utterances", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--feedback-fraction", type=float, default=0.05)
    parser.add_argument("--num-threads", type=int, default=None, help="the server's torch threads")
    parser.add_argument(
        "--malformed", type=int, default=0, help="also the malformed-requests run, N requests"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="--malformed: requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random model and synthetic data, < 2 min"
    )
    parser.add_argument("--server-flags", default="", help="more `serve` flags for both servers, one string")
    parser.add_argument(
        "--server-cpus", type=int, nargs="+", default=None,
        help="pin the servers to these CPUs and this load generator to the others (on a small machine the "
        "generator's own work otherwise delays the server's: e.g. --server-cpus 1 on 2 cores)",
    )  # fmt: skip
    args = parser.parse_args()
    refuse_counts_below_one(parser, args, "max_utterances", "batch_size")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from wav2vec2_ee.device import cpu_description
    from wav2vec2_ee.serving.frontier import calibration_file

    tmp = tempfile.TemporaryDirectory()
    if args.smoke:
        args.model, args.calibration, args.data, args.split = smoke_assets(Path(tmp.name))
        args.seconds_per_load = min(args.seconds_per_load, 2.0)
        args.capacity_seconds = min(args.capacity_seconds, 2.0)
        args.settle_seconds = min(args.settle_seconds, 1.0)
        args.malformed = args.malformed or 40
    if not (args.model and args.calibration and args.data):
        parser.error("--model, --calibration and --data are needed (or --smoke)")
    budget = json.loads(calibration_file(args.calibration).read_text()).get("max_wer_increase", 0.05)
    utts = load_utterances(args.data, args.split, args.max_utterances, args.seed)
    refuse_nothing_measured(len(utts), "utterances", f"{args.data} {args.split}")
    shared = calibration_ids(args.calibration) & {u.id for u in utts}
    if shared:
        refuse(f"{len(shared)} utterances of --split {args.split} are in the calibration's dev exit table: "
               "the benchmark would report on its calibration data")  # fmt: skip
    refs = {u.id: u.text for u in utts}
    if args.server_cpus:
        others = sorted(set(os.sched_getaffinity(0)) - set(args.server_cpus))
        if not others:
            parser.error(f"--server-cpus {args.server_cpus} leaves no CPU for the load generator")
        os.sched_setaffinity(0, others)
        if not args.num_threads:
            args.num_threads = len(args.server_cpus)
    print(
        f"CPU: {cpu_description()}"
        + (f"; servers on CPUs {args.server_cpus}, load generator on the others" if args.server_cpus else "")
    )
    print(f"{args.model}: {len(utts)} utterances of {args.data} {args.split}, "
          f"{sum(len(u.audio) for u in utts) / 2**20:.1f} MB; calibration {args.calibration} (budget +{100 * budget:g} %)")  # fmt: skip
    common = ["--batch-size", str(args.batch_size), "--max-queue", str(args.max_queue), "--log-level", "warning",
              "--feedback-fraction", str(args.feedback_fraction), *args.server_flags.split()]  # fmt: skip
    if args.num_threads:
        common += ["--num-threads", str(args.num_threads)]
    modes = {
        "full": ["--policy", "fixed", "--no-adaptive", *common],
        "adaptive": ["--calibration", args.calibration, "--latency-objective", str(args.objective), *common],
    }
    results: dict = {"cpu": cpu_description(), "settings": vars(args), "full": {}, "adaptive": {}}
    answers: list[Answer] = []
    capacity = None
    for mode, flags in modes.items():
        server = Server(args.model, flags, out / f"server_{mode}.log", args.server_cpus)
        try:
            if capacity is None:
                capacity = asyncio.run(
                    closed_loop(server.url, utts, 2 * args.batch_size, args.capacity_seconds)
                )
                refuse_nothing_measured(round(capacity * 1000), "answers", "capacity measurement")
                results["capacity_rps"] = capacity
                print(f"full-depth capacity: {capacity:.2f} requests/s")
                server.settle(args.settle_seconds)
            for k, load in enumerate(args.loads):
                got, window = asyncio.run(
                    open_loop(
                        server.url, utts, load * capacity, args.seconds_per_load, mode, load, args.seed + k
                    )
                )
                answers += got
                results[mode][str(load)] = summarise(got, refs, window, live_cer(server.metrics()))
                r = results[mode][str(load)]
                print(f"  {mode:8s} {load:4g}x: {r['throughput']:.2f} rps, p50 {r['p50']:.3f} s, p95 {r['p95']:.3f} s, "
                      f"{r['served_layers']:.2f} layers, WER {100 * r['wer']:.2f} %, 503 x{r['shed_503']}")  # fmt: skip
                server.settle(args.settle_seconds)
            results[mode]["status"] = server.status()
            if mode == "full" and args.malformed:  # a fixed depth: each file has one right transcript
                results["malformed"] = asyncio.run(
                    malformed_run(server, utts, args.malformed, args.concurrency, args.seed)
                )
        finally:
            server.stop()
    # the table
    print(
        "\n| server | load | offered rps | throughput | p50 s | p95 s | p99 s | layers served | layers run | WER | 503 | live CER |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for load in args.loads:
            r = results[mode][str(load)]
            cer = "-" if r["live_cer"] is None else f"{100 * r['live_cer']:.2f} %"
            print(f"| {mode} | {load:g}x | {load * capacity:.2f} | {r['throughput']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | "
                  f"{r['p99']:.3f} | {r['served_layers']:.2f} | {r['layers_run']:.2f} | {100 * r['wer']:.2f} % | "
                  f"{r['shed_503']} | {cer} |")  # fmt: skip
    checks = targets(results, args.loads, args.objective, budget)
    results["targets"] = [{"target": t, "met": ok, "detail": d} for t, ok, d in checks]
    print()
    for t, ok, detail in checks:
        print(f"{'MET    ' if ok else 'NOT MET'} {t}: {detail}")
    if "malformed" in results:
        m = results["malformed"]
        print(f"\nmalformed: {m['requests']} requests, {m['malformed']} malformed (answered {m['malformed_statuses']}); "
              f"{m['valid_answered_right']}/{m['valid']} valid answered with their transcript, {m['valid_503']} 503, "
              f"{m['valid_wrong_or_failed']} wrong or failed; resident memory {m['rss_before_mb']:.0f} -> "
              f"{m['rss_after_mb']:.0f} MB ({m['rss_growth_percent']:+.1f} %); server alive: {m['server_alive']}")  # fmt: skip
    from wav2vec2_ee.io import atomic_write_json, atomic_write_text

    results["settings"] = {k: v for k, v in vars(args).items()}
    atomic_write_json(out / "bench_serve.json", results)
    atomic_write_text(
        out / "bench_serve_requests.jsonl", "".join(json.dumps(asdict(a)) + "\n" for a in answers)
    )
    plot(results, args.loads, args.objective, out / "bench_serve.png")
    print(
        f"\nwrote {out / 'bench_serve.json'}, {out / 'bench_serve_requests.jsonl'}, {out / 'bench_serve.png'}"
    )
    tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
