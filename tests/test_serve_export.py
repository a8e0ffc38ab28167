"""The server on an export folder (``wav2vec2-ee export``): ONNX Runtime runs the segments, the answers are
``Transcriber.from_export``'s, and a calibration of the checkpoint applies to its export."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from wav2vec2_ee.inference import Transcriber, build_policy
from wav2vec2_ee.segmentation import SplitOptions

from helpers_audio import write_good
from helpers_serve import build, synthetic_calibration, tiny_checkpoint, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_an_export_folder_is_served_by_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from wav2vec2_ee.export.exporter import export_checkpoint

    checkpoint = tiny_checkpoint(tmp_path / "model")
    export_checkpoint(checkpoint, tmp_path / "onnx", check=False)
    audio = tmp_path / "a.wav"
    write_good(audio, seconds=1.2, seed=5)
    calibration = synthetic_calibration(tmp_path / "cal")
    service, app = build(tmp_path / "onnx", calibration=str(calibration), feedback_fraction=0.0, vad="energy")
    assert type(service.engine.t.model).__name__ == "OnnxExitSource"
    first = service.points[0]
    expected = Transcriber.from_export(
        tmp_path / "onnx", build_policy("entropy", threshold=first.value), split=SplitOptions(vad="energy")
    ).transcribe(str(audio))
    with TestClient(app) as client:
        wait_ready(client)
        with open(audio, "rb") as f:
            body = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", f)},
                data={"response_format": "verbose_json"},
            ).json()
    assert body["text"] == expected.text and body["segments"][0]["exit_layer"] == expected.exit_layer
    assert body["segments"][0]["operating_point"] == first.label
    with pytest.raises(ValueError, match="--backend onnxruntime"):
        build(tmp_path / "onnx", backend="torch")
    with pytest.raises(ValueError, match="export"):
        build(checkpoint, backend="onnxruntime")
