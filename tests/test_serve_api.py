"""The transcription server's HTTP API against a tiny random model (FastAPI's TestClient): what it serves
equals the Transcriber's, every response format parses, errors are JSON with the right status, the queue
refuses with 503 + Retry-After, the operator bounds a request's overrides, the API key, the metrics."""

from __future__ import annotations

import json
import re
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.inference import Transcriber, build_policy
from wav2vec2_ee.segmentation import SplitOptions
from wav2vec2_ee.serving.arguments import check_exposure, is_loopback
from wav2vec2_ee.serving.responses import RESPONSE_FORMATS

from helpers_audio import write_good, write_nan_wav, write_truncated_flac
from helpers_serve import build, released, synthetic_calibration, tiny_checkpoint, wait_ready, write_audio

pytestmark = pytest.mark.usefixtures("one_thread")

URL = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    model = tiny_checkpoint(root / "model")
    files = {}
    for name, seconds, seed in [("a", 0.8, 1), ("b", 1.6, 2), ("c", 1.1, 3), ("d", 0.5, 4)]:
        files[name] = root / f"{name}.wav"
        write_good(files[name], seconds=seconds, seed=seed)
    files["long"] = write_audio(root / "long.wav", seconds=26.0, seed=7)
    return {"root": root, "model": model, "files": files}


@pytest.fixture(scope="module")
def client(assets):
    """The last exit, no calibration, no sampling; refusing only when the queue is full (a busy test
    machine must not make it shed by its latency objective)."""
    service, app = build(assets["model"], feedback_fraction=0.0, vad="energy", adaptive=False)
    with TestClient(app) as c:
        wait_ready(c)
        c.service = service
        yield c


@pytest.fixture(scope="module")
def entropy_client(assets):
    """An entropy policy with request overrides bounded by the operator."""
    service, app = build(
        assets["model"],
        policy="entropy",
        threshold=2.0,
        max_layer=3,
        threshold_range=[1.0, 2.5],
        vad="energy",
        adaptive=False,
    )
    with TestClient(app) as c:
        wait_ready(c)
        c.service = service
        yield c


def post(client, path, **data):
    with open(path, "rb") as f:
        return client.post(URL, files={"file": (path.name, f, "audio/wav")}, data=data)


def transcriber(assets, policy=None) -> Transcriber:
    """The Transcriber on the same model; the energy detector finds the pauses (Silero hears no speech in
    tones), as the servers here are told (``vad="energy"``)."""
    split = SplitOptions(vad="energy")
    return Transcriber.from_pretrained(assets["model"], policy=policy, device="cpu", split=split)


# --------------------------------------------------------------------------------------------------
# what is served


def test_the_served_transcript_is_the_transcribers(client, assets):
    t = transcriber(assets)
    for name in ("a", "b", "long"):
        path = assets["files"][name]
        expected = t.transcribe(str(path))
        body = post(client, path, response_format="verbose_json").json()
        assert body["text"] == expected.text, name
        assert [(s["start"], s["end"], s["text"], s["exit_layer"]) for s in body["segments"]] == [
            (s.start, s.end, s.text, s.exit_layer) for s in expected.segments
        ]
        assert body["duration"] == pytest.approx(expected.audio_seconds, abs=1e-3)
    assert len(body["segments"]) > 1  # the long file was split at its pauses


def test_concurrent_requests_batch_together_and_each_gets_its_own_transcript(client, assets):
    names = ["a", "b", "c", "d", "long"]
    expected = {n: transcriber(assets).transcribe(str(assets["files"][n])).text for n in names}
    batches_before = client.service.scheduler.batches
    results: dict[str, set[str]] = {}

    def ask(name: str) -> None:
        response = post(client, assets["files"][name], response_format="json")
        results.setdefault(name, set()).add(response.json().get("text", f"status {response.status_code}"))

    threads = [threading.Thread(target=ask, args=(n,)) for n in names for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {name: {text} for name, text in expected.items()}
    pieces = 4 * 2 + 2 * len(client.service.prepare(assets["files"]["long"].read_bytes(), "x")[0])
    assert (
        client.service.scheduler.batches - batches_before < pieces
    )  # pieces of several requests shared batches


def test_every_response_format_parses(client, assets):
    path = assets["files"]["long"]
    text = post(client, path, response_format="json").json()["text"]
    assert post(client, path).json()["text"] == text  # json is the default
    plain = post(client, path, response_format="text")
    assert plain.headers["content-type"].startswith("text/plain") and plain.text == text + "\n"
    srt = post(client, path, response_format="srt").text
    cues = [c for c in srt.strip().split("\n\n") if c]
    assert cues and all(re.match(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", c) for c in cues)
    vtt = post(client, path, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT\n\n")
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt.text)
    verbose = post(client, path, response_format="verbose_json").json()
    assert verbose["task"] == "transcribe" and verbose["language"] == "english" and verbose["text"] == text
    for i, s in enumerate(verbose["segments"]):
        assert s["id"] == i and s["start"] < s["end"] and {"tokens", "temperature", "seek"} <= set(s)
        assert s["exit_layer"] == 4 and s["layers_computed"] == 4 and s["operating_point"] == "fixed=4"
    ee = verbose["early_exit"]
    assert ee["num_layers"] == 4 and ee["exit_layer"] == 4 and ee["layers_saved_fraction"] == 0.0
    assert set(RESPONSE_FORMATS) == {"json", "text", "verbose_json", "srt", "vtt"}


def test_word_timestamps_on_request(client, assets):
    body = post(
        client, assets["files"]["b"], response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    ).json()
    assert [w["word"] for w in body["words"]] == body["text"].split()
    assert all(w["start"] <= w["end"] for w in body["words"])
    refused = post(
        client, assets["files"]["b"], response_format="json", **{"timestamp_granularities[]": "word"}
    )
    assert refused.status_code == 400 and "verbose_json" in refused.json()["error"]["message"]


def test_every_exit_on_request(entropy_client, assets):
    path = assets["files"]["b"]
    plain = post(entropy_client, path, response_format="verbose_json").json()
    traced = post(entropy_client, path, response_format="verbose_json", all_exits="true").json()
    segment = traced["segments"][0]
    assert set(segment["exits"]) == {"1", "2", "3"}  # the operator's --max-layer 3
    assert segment["text"] == segment["exits"][str(segment["exit_layer"])] == plain["text"]
    assert segment["exit_layer"] == plain["segments"][0]["exit_layer"]
    assert segment["layers_computed"] == 3  # traced: run to the last allowed exit
    assert traced["early_exit"]["exits"] == {k: v for k, v in segment["exits"].items()}
    assert 0 <= traced["early_exit"]["exit_seconds"] <= traced["early_exit"]["full_seconds"]


# --------------------------------------------------------------------------------------------------
# a request's own policy, within the operator's limits


def test_a_requests_max_layer_is_bounded_by_the_operator(entropy_client, assets):
    path = assets["files"]["c"]
    body = post(entropy_client, path, response_format="verbose_json", max_layer="2").json()
    expected = transcriber(assets, build_policy("entropy", threshold=2.0, max_layer=2)).transcribe(str(path))
    assert body["text"] == expected.text and body["segments"][0]["exit_layer"] == expected.exit_layer <= 2
    assert body["segments"][0]["operating_point"] == "entropy=2@L3@L2 (request)"
    beyond = post(entropy_client, path, max_layer="4")
    assert beyond.status_code == 400
    assert beyond.json()["error"] == {
        "message": "max_layer 4: choose one of the exit layers this server allows, [1, 2, 3]",
        "type": "invalid_request_error",
        "param": "max_layer",
        "code": "invalid_max_layer",
    }
    assert post(entropy_client, path, max_layer="abc").status_code == 422


def test_a_requests_threshold_is_bounded_by_the_operator(entropy_client, assets):
    path = assets["files"]["a"]
    body = post(entropy_client, path, response_format="verbose_json", threshold="1.5").json()
    expected = transcriber(assets, build_policy("entropy", threshold=1.5, max_layer=3)).transcribe(str(path))
    assert body["text"] == expected.text and body["segments"][0]["exit_layer"] == expected.exit_layer
    assert body["segments"][0]["score"] is not None
    outside = post(entropy_client, path, threshold="3.0")
    assert outside.status_code == 400 and "[1, 2.5]" in outside.json()["error"]["message"]


def test_overrides_of_a_fixed_server(client, assets):
    refused = post(client, assets["files"]["a"], threshold="0.5")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "threshold_not_allowed"
    assert (
        post(client, assets["files"]["a"], max_layer="2", response_format="verbose_json").json()["segments"][
            0
        ]["exit_layer"]
        == 2
    )


# --------------------------------------------------------------------------------------------------
# errors


def test_bad_uploads_get_json_errors_naming_the_problem(client, assets, tmp_path):
    def error(response, status):
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    garbage = client.post(URL, files={"file": ("x.wav", b"not audio at all" * 50, "audio/wav")})
    assert (
        error(garbage, 415)["code"] == "unsupported_audio" and "x.wav" in garbage.json()["error"]["message"]
    )
    write_truncated_flac(tmp_path / "cut.flac", seconds=2.0)
    assert error(post(client, tmp_path / "cut.flac"), 400)["code"] == "corrupt_audio"
    write_nan_wav(tmp_path / "nan.wav")
    assert "NaN" in error(post(client, tmp_path / "nan.wav"), 400)["message"]
    sf.write(tmp_path / "short.wav", np.zeros(40, np.float32), 16_000)
    assert error(post(client, tmp_path / "short.wav"), 400)["code"] == "audio_too_short"
    empty = client.post(URL, files={"file": ("e.wav", b"", "audio/wav")})
    assert error(empty, 400)["code"] == "empty_file"
    missing = client.post(URL, data={"model": "x"})
    assert error(missing, 422) == {
        "message": "the form field 'file' is required",
        "type": "invalid_request_error",
        "param": "file",
        "code": "invalid_field",
    }
    assert error(post(client, assets["files"]["a"], response_format="mp4"), 400)["param"] == "response_format"
    assert error(client.get("/nowhere"), 404)["code"] == "not_found"
    assert error(client.get(URL), 405)["code"] == "method_not_allowed"
    # the server is still there
    assert post(client, assets["files"]["a"]).status_code == 200


def test_limits_on_size_and_duration(assets):
    service, app = build(assets["model"], max_upload_mb=0.02, max_audio_seconds=1.0, warm_up=False)
    with TestClient(app) as c:
        wait_ready(c)
        big = post(c, assets["files"]["b"])  # 1.6 s: 51 kB of WAV
        assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
        # under the size limit, over the duration limit
        sf.write(assets["root"] / "long8k.wav", np.zeros(12_000, np.float32), 8_000, subtype="PCM_U8")
        long = post(c, assets["root"] / "long8k.wav")
        assert (
            long.status_code == 400
            and "1.5 s of audio is longer than this server's limit of 1 s" in long.text
        )


def test_a_full_queue_answers_503_with_retry_after(assets):
    service, app = build(assets["model"], batch_size=1, max_queue=1, warm_up=False)
    gate, entered = threading.Event(), threading.Event()
    run = service.scheduler.run_batch

    def held(items, index):
        entered.set()
        gate.wait(30)
        return run(items, index)

    service.scheduler.run_batch = held
    with TestClient(app) as c, released(gate):
        wait_ready(c)
        codes = []
        first = threading.Thread(target=lambda: codes.append(post(c, assets["files"]["a"]).status_code))
        first.start()
        assert entered.wait(30)  # the worker holds the first request's batch
        second = threading.Thread(target=lambda: codes.append(post(c, assets["files"]["c"]).status_code))
        second.start()
        while service.scheduler.depth < 1:
            threading.Event().wait(0.01)
        refused = post(c, assets["files"]["d"])
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        gate.set()
        first.join(30)
        second.join(30)
        assert codes == [200, 200]
        metrics = c.get("/metrics").text
        assert 'wav2vec2_ee_shed_requests_total{reason="queue_full"} 1.0' in metrics


def test_a_request_the_objective_cannot_be_kept_for_is_refused_before_its_upload_is_read(assets):
    service, app = build(assets["model"], latency_objective=1.0, warm_up=False)
    with TestClient(app) as c:
        wait_ready(c)
        assert post(c, assets["files"]["a"]).status_code == 200
        assert service.preparing_audio == 0  # what was admitted is accounted for once queued
        read = []
        real = service.prepare
        service.prepare = lambda data, name: read.append(name) or real(data, name)
        service.controller.record_batch(seconds=1e4, audio_layers=1.0)  # a model this slow misses 1 s
        refused = post(c, assets["files"]["b"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "objective"
        assert int(refused.headers["retry-after"]) >= 1 and read == []  # refused unread
        assert service.preparing_audio == 0
        assert 'wav2vec2_ee_shed_requests_total{reason="objective"} 1.0' in c.get("/metrics").text
        assert c.get("/status").json()["loop_lag"] >= 0


def test_a_drain_answers_a_request_admitted_while_its_upload_was_read_and_refuses_new_ones(assets):
    """SIGTERM between a request's admission and its queueing (its upload still being read) must not
    turn it into a 503: it is in flight. A request that comes after the drain began is refused."""
    service, app = build(assets["model"], warm_up=False, vad="energy", adaptive=False)
    gate, entered = threading.Event(), threading.Event()
    real = service.prepare

    def held(data, name):  # the upload is read, the drain begins before the audio is queued
        entered.set()
        gate.wait(30)
        return real(data, name)

    service.prepare = held
    with TestClient(app) as c, released(gate):
        wait_ready(c)
        codes = []
        first = threading.Thread(target=lambda: codes.append(post(c, assets["files"]["a"]).status_code))
        first.start()
        assert entered.wait(30)
        status = c.get("/status").json()
        assert status["requests_in_flight"] == 1
        assert "wav2vec2_ee_requests_in_flight 1.0" in c.get("/metrics").text
        service.drain()
        refused = post(c, assets["files"]["d"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        gate.set()
        first.join(30)
        assert codes == [200]
        assert c.get("/status").json()["requests_in_flight"] == 0


# --------------------------------------------------------------------------------------------------
# the other routes


def test_models_probes_and_metrics(client, assets):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "model"
    assert models["data"][0]["exit_layers"] == [1, 2, 3, 4]
    assert client.get("/v1/models/model").json()["id"] == "model"
    assert client.get("/v1/models/whisper-1").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    post(client, assets["files"]["a"])
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for series in (
        'wav2vec2_ee_requests_total{endpoint="/v1/audio/transcriptions",status="200"}',
        "wav2vec2_ee_request_latency_seconds_bucket",
        "wav2vec2_ee_queue_depth",
        "wav2vec2_ee_queue_delay_seconds_bucket",
        "wav2vec2_ee_audio_seconds_total",
        "wav2vec2_ee_layers_run_bucket",
        "wav2vec2_ee_operating_point ",
        'wav2vec2_ee_operating_point_info{label="fixed=4"} 1.0',
        'wav2vec2_ee_shed_requests_total{reason="objective"}',
        "wav2vec2_ee_live_cer",
        "wav2vec2_ee_ready 1.0",
        "wav2vec2_ee_batch_size_bucket",
    ):
        assert series in metrics.text, series
    status = client.get("/status").json()
    assert status["ready"] and status["controller"]["point"]["label"] == "fixed=4"
    page = client.get("/")
    assert (
        page.status_code == 200
        and "<title>wav2vec2-ee" in page.text
        and "/v1/audio/transcriptions" in page.text
    )


def test_the_api_key(assets, monkeypatch):
    service, app = build(assets["model"], api_key="s3cret", warm_up=False)
    with TestClient(app) as c:
        wait_ready(c)
        refused = c.get("/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert post(c, assets["files"]["a"]).status_code == 401
        for open_route in ("/health", "/ready", "/metrics", "/status", "/"):
            assert c.get(open_route).status_code == 200, open_route
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", "key")
    with pytest.raises(ValueError, match="API key"):
        check_exposure("0.0.0.0", None)


def test_the_command_refuses_in_one_line(assets, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("WAV2VEC2_EE_API_KEY", raising=False)
    assert cli_main(["serve", str(assets["model"]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key" in err and err.startswith("wav2vec2-ee serve: error:")
    assert cli_main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such model folder" in err
    (tmp_path / "empty").mkdir()
    assert cli_main(["serve", str(tmp_path / "empty"), "--port", "0"]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert cli_main(["serve", str(assets["model"]), "--calibration", str(tmp_path), "--port", "0"]) == 2
    assert "calibration_<policy>.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # the [serve] extra not installed
    assert cli_main(["serve", str(assets["model"]), "--port", "0"]) == 2
    assert "pip install 'wav2vec2-ee[serve]'" in capsys.readouterr().err


def test_a_model_that_fails_at_startup_fails_the_probes(assets):
    service, app = build(assets["model"])

    def broken() -> float:
        raise RuntimeError("out of memory")

    service.engine.warm_up = broken
    with TestClient(app) as c:
        while service.failed is None:
            threading.Event().wait(0.01)
        health = c.get("/health")
        assert health.status_code == 503 and "out of memory" in health.json()["error"]
        assert c.get("/ready").status_code == 503
        refused = post(c, assets["files"]["a"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "failed"


# --------------------------------------------------------------------------------------------------
# a calibrated, adaptive server


def test_a_calibrated_server_serves_its_frontier_and_steps_down_under_load(assets):
    calibration = synthetic_calibration(assets["root"] / "cal")
    objective = 30.0  # a busy test machine must not make it shed; observe(10.0) below is over a quarter of it
    service, app = build(
        assets["model"],
        calibration=str(calibration),
        feedback_fraction=1.0,
        vad="energy",
        latency_objective=objective,
    )
    points = service.points
    assert len(points) >= 3 and points[0].mean_layers > points[-1].mean_layers
    limit = json.loads((calibration / "calibration_entropy.json").read_text())["wer_limit"]
    assert all(p.dev_wer <= limit + 1e-12 for p in points) and all(p.dev_cer is not None for p in points)
    path = assets["files"]["b"]
    with TestClient(app) as c:
        wait_ready(c)
        light = post(c, path, response_format="verbose_json").json()
        assert light["segments"][0]["operating_point"] == points[0].label
        expected = transcriber(assets, build_policy("entropy", threshold=points[0].value)).transcribe(
            str(path)
        )
        assert light["text"] == expected.text  # sampled for the accuracy check, served as any other
        # a queue delay far over the objective: the controller steps down the frontier
        later = service.controller.clock()
        for _ in range(len(points)):
            later += 100
            service.controller.observe(10.0, later)
        assert service.controller.index == len(points) - 1
        heavy = post(c, path, response_format="verbose_json").json()
        assert heavy["segments"][0]["operating_point"] == points[-1].label
        assert heavy["segments"][0]["exit_layer"] <= light["segments"][0]["exit_layer"]
        metrics = c.get("/metrics").text
        assert f"wav2vec2_ee_operating_point {float(len(points) - 1)}" in metrics
        assert "wav2vec2_ee_feedback_samples_total 2.0" in metrics
        assert re.search(r"^wav2vec2_ee_live_cer \d", metrics, re.M)
        status = c.get("/status").json()
        assert status["accuracy"]["samples"] == 2 and len(status["controller"]["points"]) == len(points)
