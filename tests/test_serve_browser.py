"""The server's page in a real browser: Debian's ``chromium``, headless, driven over the DevTools protocol
on a pipe (no driver, no extra package). It opens the page, uploads a file, and reads the transcript, the
exits and the live panel the page renders. Skipped where chromium is not installed.

``WAV2VEC2_EE_SCREENSHOT=path.png`` also saves what the browser shows there."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from helpers_audio import write_good
from helpers_serve import build, running_server, synthetic_calibration, tiny_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BROWSER = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)


class Browser:
    """Headless chromium over ``--remote-debugging-pipe``: JSON messages ending in a NUL byte, commands on
    the child's fd 3, answers and events on its fd 4."""

    def __init__(self, executable: str, profile: Path):
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()

        def to_fds_3_and_4() -> None:
            a, b = os.dup(commands_r), os.dup(answers_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1360,1000",
                "about:blank",
            ],
            preexec_fn=to_fds_3_and_4,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_r)
        os.close(answers_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            assert time.monotonic() < deadline, "the browser did not answer"
            chunk = os.read(self._answers, 1 << 20)
            assert chunk, "the browser closed its pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(timeout)
            if answer.get("id") == self._id:
                assert "error" not in answer, answer
                return answer.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride", width=1360, height=1000, deviceScaleFactor=1, mobile=False
        )
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.getElementById('model').dataset.id")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def upload(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._answers)


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_uploads_a_file_and_shows_the_transcript_and_every_exit(tmp_path):
    model = tiny_checkpoint(tmp_path / "model")
    calibration = synthetic_calibration(tmp_path / "cal")
    audio = tmp_path / "hello.wav"
    write_good(audio, seconds=1.4, seed=3)
    service, app = build(model, calibration=str(calibration), vad="energy", feedback_fraction=0.0)
    with running_server(app) as url:
        with open(audio, "rb") as f:  # the answer the page should show
            expected = httpx.post(
                url + "/v1/audio/transcriptions",
                files={"file": ("hello.wav", f)},
                data={"response_format": "verbose_json", "all_exits": "true"},
                timeout=60,
            ).json()
        browser = Browser(BROWSER, tmp_path / "profile")
        try:
            browser.open(url + "/")
            assert browser.evaluate("document.getElementById('readiness').textContent") == "ready"
            browser.upload("#file", audio)
            browser.evaluate("document.getElementById('go').click()")
            shown = browser.wait_for(
                "(() => { const t = document.getElementById('transcript');"
                " return t.className === '' ? t.textContent : null; })()"
            )
            assert shown == (expected["text"] or "(no speech)")
            rows = browser.evaluate(
                "[...document.querySelectorAll('#exits tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
            )
            served = expected["segments"][0]["exit_layer"]
            assert [r[1] for r in rows] == list(expected["early_exit"]["exits"].values())
            assert [r[0] for r in rows if r[0].endswith("✓")] == [f"layer {served} ✓"]
            facts = browser.evaluate("document.getElementById('facts').textContent")
            assert f"{served}exit taken (of 4)" in facts and "layers saved" in facts and "time saved" in facts
            browser.wait_for("document.getElementById('live').textContent.includes('operating point 0 of')")
            points = browser.evaluate("document.querySelectorAll('#points li').length")
            assert points == len(service.points)
            browser.screenshot(tmp_path / "page.png")
            assert (tmp_path / "page.png").stat().st_size > 10_000
            target = os.environ.get("WAV2VEC2_EE_SCREENSHOT")
            if target:
                shutil.copyfile(tmp_path / "page.png", target)
        finally:
            browser.close()
