"""What the server's tests share: a tiny checkpoint, audio with pauses, a synthetic calibration, the app
built as ``wav2vec2-ee serve`` builds it, and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from wav2vec2_ee.inference.calibrate import calibrate_table, saved_policy
from wav2vec2_ee.inference.table import ExitTable, write_exit_table
from wav2vec2_ee.options import DeviceArguments
from wav2vec2_ee.policy_core import write_saved_policy
from wav2vec2_ee.serving.app import create_app
from wav2vec2_ee.serving.arguments import ServeArguments
from wav2vec2_ee.serving.cli import build_service

from conftest import sharpened_model

SR = 16_000
#: a pre-LN model with layer-normalised CNN features: a padded batch answers as each utterance alone
LAYER_NORM = {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}


def tiny_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    sharpened_model(exit_layers=[1, 2, 3, 4], **LAYER_NORM).save_pretrained(folder)
    return folder


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Tone bursts (0.4-1.2 s) between pauses (0.3-0.9 s) of faint noise: something to split at its pauses."""
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < seconds * SR:
        burst = int(rng.uniform(0.4, 1.2) * SR)
        t = np.arange(burst) / SR
        out.append(0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.05 * rng.standard_normal(burst))
        pause = int(rng.uniform(0.3, 0.9) * SR)
        out.append(1e-3 * rng.standard_normal(pause))
        total += burst + pause
    return np.concatenate(out)[: int(seconds * SR)].astype(np.float32)


def write_audio(path: Path, seconds: float, seed: int = 0) -> Path:
    sf.write(path, speech_like(seconds, seed), SR)
    return path


def synthetic_calibration(folder: Path, exit_layers=(1, 2, 3, 4), budget: float = 0.5) -> Path:
    """``calibration_entropy.json`` and ``dev_exit_table.jsonl`` as ``calibrate --output-dir`` writes them,
    from a table where utterance i needs depth ``i % 4`` (fewer errors and lower entropy deeper): a
    frontier of several points within the budget."""
    layers = list(exit_layers)
    n = 16
    difficulty = [i % len(layers) for i in range(n)]
    errors = [[max(0, d - k) for d in difficulty] for k in range(len(layers))]
    entropy = [
        [0.2 + 0.5 * max(0, d - k) + 0.01 * i for i, d in enumerate(difficulty)] for k in range(len(layers))
    ]
    table = ExitTable(
        ids=[f"u{i}" for i in range(n)],
        references=["the cat sat on the mat"] * n,
        layers=layers,
        hypotheses=[["the cat sat on the mat" + " x" * e for e in row] for row in errors],
        stats={"entropy": torch.tensor(entropy, dtype=torch.float32)},
        errors=torch.tensor(errors) + 1,  # the last exit makes one error per utterance too
        reference_words=torch.tensor([6] * n),
    )
    result = calibrate_table(table, "entropy", budget)
    result.splits["dev"] = "dev"
    folder.mkdir(parents=True, exist_ok=True)
    write_exit_table(table, folder / "dev_exit_table.jsonl")
    write_saved_policy(folder / "calibration_entropy.json", saved_policy(result))
    return folder


def build(model: Path, **flags):
    """``(service, app)`` as ``wav2vec2-ee serve MODEL --flag value ...`` builds them (model loaded, not
    yet warm: the app's startup warms it up)."""
    args = ServeArguments(**flags)
    service, _ = build_service(args, DeviceArguments(device="cpu"), str(model))
    return service, create_app(service, args.resolved_api_key(), warm_up=args.warm_up)


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server did not get ready"
        time.sleep(0.02)


@contextlib.contextmanager
def released(gate: threading.Event) -> Iterator[None]:
    """Set ``gate`` on the way out, also when an assertion failed first (a worker held at the gate would
    keep the server from stopping)."""
    try:
        yield
    finally:
        gate.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """The app under a real uvicorn server in a thread, on a free loopback port: its base URL."""
    import httpx
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
