"""The server over real HTTP (uvicorn on a free loopback port): the official ``openai`` client unchanged, a
slow client timed out without holding others, a client that disconnects frees its work, an oversized
upload refused from its Content-Length, and SIGTERM draining the requests in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from wav2vec2_ee.inference import Transcriber
from wav2vec2_ee.segmentation import SplitOptions

from helpers_audio import write_good
from helpers_serve import build, free_port, released, running_server, tiny_checkpoint, write_audio

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve_http")
    model = tiny_checkpoint(root / "model")
    a, b = root / "a.wav", root / "b.wav"
    write_good(a, seconds=0.9, seed=1)
    write_good(b, seconds=1.3, seed=2)
    return {
        "root": root,
        "model": model,
        "a": a,
        "b": b,
        "long": write_audio(root / "long.wav", 24.0, seed=3),
    }


def _multipart(path: Path) -> tuple[bytes, str]:
    boundary = "----wav2vec2eeTest"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


def _raw_request(port: int, body: bytes, boundary: str, length: int | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    headers = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )
    s.sendall(headers.encode() + body)
    return s


def _read_response(s: socket.socket) -> str:
    """A whole HTTP response from a raw socket: its head, then Content-Length bytes of body."""
    s.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_the_openai_client_works_unchanged(assets):
    openai = pytest.importorskip("openai")
    _, app = build(assets["model"], api_key="test-key", vad="energy", feedback_fraction=0.0)
    split = SplitOptions(vad="energy")
    expected = Transcriber.from_pretrained(assets["model"], device="cpu", split=split).transcribe(
        [str(assets["a"]), str(assets["long"])]
    )
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0)
        assert [m.id for m in client.models.list()] == ["model"]
        with open(assets["a"], "rb") as f:
            result = client.audio.transcriptions.create(model="model", file=f, language="en")
        assert result.text == expected[0].text
        with open(assets["long"], "rb") as f:
            verbose = client.audio.transcriptions.create(
                model="model", file=f, response_format="verbose_json"
            )
        assert verbose.text == expected[1].text and verbose.duration == pytest.approx(24.0, abs=1e-3)
        assert [s.model_extra["exit_layer"] for s in verbose.segments] == [
            s.exit_layer for s in expected[1].segments
        ]
        assert [(s.start, s.end, s.text) for s in verbose.segments] == [
            (s.start, s.end, s.text) for s in expected[1].segments
        ]
        with open(assets["a"], "rb") as f:
            srt = client.audio.transcriptions.create(model="model", file=f, response_format="srt")
        assert srt.startswith("1\n00:00:00,000 --> 00:00:00,900\n")
        with open(assets["a"], "rb") as f:
            text = client.audio.transcriptions.create(model="model", file=f, response_format="text")
        assert text.strip() == expected[0].text
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError), open(assets["a"], "rb") as f:
            wrong.audio.transcriptions.create(model="model", file=f)


def test_a_slow_client_times_out_without_holding_the_others(assets):
    service, app = build(assets["model"], request_timeout=1.0, warm_up=False)
    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        body, boundary = _multipart(assets["a"])
        slow = _raw_request(port, body[:100], boundary, length=len(body))  # the rest never comes
        started = time.monotonic()
        with open(assets["b"], "rb") as f:
            other = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("b.wav", f)}, timeout=30)
        assert other.status_code == 200 and time.monotonic() - started < 1.0  # not held by the slow one
        answer = _read_response(slow)
        assert answer.startswith("HTTP/1.1 408") and '"request_timeout"' in answer
        assert time.monotonic() - started < 5


def test_an_upload_over_the_limit_is_refused_from_its_content_length(assets):
    _, app = build(assets["model"], max_upload_mb=1.0, warm_up=False)
    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        s = _raw_request(port, b"", "x", length=50 * 1024 * 1024)  # nothing of the 50 MB is sent
        answer = _read_response(s)
        assert answer.startswith("HTTP/1.1 413") and "file_too_large" in answer


def test_a_client_that_disconnects_frees_its_work(assets):
    service, app = build(assets["model"], batch_size=1, warm_up=False, feedback_fraction=0.0, vad="energy")
    gate, entered = threading.Event(), threading.Event()
    run = service.scheduler.run_batch
    ran: list[float] = []

    def held(items, index):
        entered.set()
        gate.wait(30)
        ran.extend(item.seconds for item in items)
        return run(items, index)

    service.scheduler.run_batch = held
    with running_server(app) as url, released(gate):
        port = int(url.rsplit(":", 1)[1])
        first: list[int] = []
        thread = threading.Thread(
            target=lambda: first.append(
                httpx.post(
                    url + "/v1/audio/transcriptions",
                    files={"file": ("a.wav", assets["a"].read_bytes())},
                    timeout=60,
                ).status_code
            )
        )
        thread.start()
        assert entered.wait(30)
        body, boundary = _multipart(assets["long"])  # two pieces queued behind the held batch
        gone = _raw_request(port, body, boundary)
        deadline = time.monotonic() + 30
        while service.scheduler.depth == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gone.close()  # the client goes away
        time.sleep(0.5)
        gate.set()
        thread.join(30)
        assert first == [200]
        time.sleep(0.3)
        assert ran == [pytest.approx(0.9)]  # the long request's pieces never ran
        assert service.scheduler.depth == 0


_DRAIN_SCRIPT = """
import sys, time
from wav2vec2_ee.serving import cli
from wav2vec2_ee.serving.arguments import ServeArguments
from wav2vec2_ee.options import DeviceArguments

model, port = sys.argv[1], int(sys.argv[2])
args = ServeArguments(port=port, batch_size=1, drain_seconds=20, warm_up=False, log_level="info", vad="energy")
service, frontier = cli.build_service(args, DeviceArguments(device="cpu"), model)
run = service.scheduler.run_batch
def slow(items, index):  # a slow model: each batch takes 0.4 s
    time.sleep(0.4)
    return run(items, index)
service.scheduler.run_batch = slow
sys.exit(cli.run(service, frontier, args, None, cli.bind("127.0.0.1", port)))
"""


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_and_refuses_new_ones(assets):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRAIN_SCRIPT, str(assets["model"]), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.poll() else ""
            )
            time.sleep(0.1)
        answers: list[tuple[int, str]] = []

        def ask() -> None:
            with open(assets["long"], "rb") as f:  # two pieces: two batches of 0.4 s
                r = httpx.post(url + "/v1/audio/transcriptions", files={"file": f}, timeout=60)
            answers.append((r.status_code, r.text))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        # both admitted (their uploads may still be read: a drain answers them too)
        while json.loads(httpx.get(url + "/status", timeout=5).text)["requests_in_flight"] < 2:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):  # no longer accepting connections
            httpx.get(url + "/health", timeout=2)
        for t in threads:
            t.join(60)
        assert [code for code, _ in answers] == [200, 200]
        # uvicorn re-raises the signal once drained: the process ends as SIGTERM asked (143 in a shell)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert "Shutting down" in log or "Finished server process" in log
