"""``python -m wav2vec2_ee.lite`` on par with ``wav2vec2-ee transcribe`` (issue 30, item 4): long recordings
split at their pauses and read block by block (bounded memory), folders, a bad file among good ones, the
``--output`` log and ``--resume``, the output formats, results in input order as they are done, Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wav2vec2_ee import lite
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.export.exporter import export_model
from wav2vec2_ee.segmentation import SplitOptions, split_at_pauses
from wav2vec2_ee.transcripts import ROW_FIELDS, TSV_COLUMNS, TranscriptionLog

from conftest import sharpened_model

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000
PROG = "python -m wav2vec2_ee.lite: "
#: a long input is split above 2 s here (the tiny model makes 200 frames a second: pieces stay small)
SPLIT = SplitOptions(max_seconds=2.0, vad="energy")
FLAGS = ["--vad", "energy", "--max-segment-seconds", "2"]


def _talk(seconds: float, seed: int) -> np.ndarray:
    """A voiced buzz with syllables (as tests/test_segmentation.py's): speech-like energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    f0 = 110 + 60 * rng.random()
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    return (0.3 * envelope * voice / 2 + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def _recording(count: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``count`` utterances of 0.6-1.6 s joined by pauses of 0.5-1.2 s; the audio and each one's samples."""
    rng = np.random.default_rng(seed)
    parts, bounds, t = [], [], 0
    for i in range(count):
        gap = np.zeros(int(rng.uniform(0.5, 1.2) * SR), np.float32)
        speech = _talk(rng.uniform(0.6, 1.6), seed=seed * 1000 + i)
        parts += [gap, speech]
        bounds.append((t + gap.size, t + gap.size + speech.size))
        t += gap.size + speech.size
    parts.append(np.zeros(int(0.6 * SR), np.float32))
    return np.concatenate(parts), bounds


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lite-long-export")
    export_model(sharpened_model(), out, check=False)
    return out


@pytest.fixture(scope="module")
def long_audio() -> tuple[np.ndarray, list[tuple[int, int]]]:
    return _recording(7)


@pytest.fixture
def recordings(tmp_path, long_audio) -> Path:
    """A folder: a.wav (short), b.wav (bad: not audio), c.wav (short), sub/d.wav (long, split)."""
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "a.wav", _talk(0.8, seed=1), SR, subtype="FLOAT")
    (audio / "b.wav").write_bytes(b"not audio at all")
    sf.write(audio / "c.wav", _talk(1.3, seed=2), SR, subtype="FLOAT")
    sf.write(audio / "sub" / "d.wav", long_audio[0], SR, subtype="FLOAT")
    return audio


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = lite.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


UNTIMED = ("seconds", "latency_seconds")


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in UNTIMED}


# --------------------------------------------------------------------------------------------------
# long recordings


def test_a_long_recording_gives_its_utterances_texts(folder, long_audio, tmp_path, monkeypatch):
    """Seven utterances joined by pauses, 14 s: seven segments, one per utterance (edges within 0.3 s),
    each the transcript of its piece run alone; the text is theirs joined. The file, read in 1-second
    blocks, gives the same as the array."""
    audio, bounds = long_audio
    pieces = split_at_pauses(audio, SPLIT)
    assert len(pieces) == len(bounds) == 7
    alone = lite.LiteTranscriber(folder, split=None).transcribe([p.audio for p in pieces])

    result = lite.LiteTranscriber(folder, split=SPLIT).transcribe(audio)
    assert [s.text for s in result.segments] == [r.text for r in alone]
    assert any(s.text for s in result.segments)
    assert result.text == " ".join(r.text for r in alone if r.text)
    assert [(s.start, s.end) for s in result.segments] == [
        (round(p.start / SR, 3), round(p.end / SR, 3)) for p in pieces
    ]
    for segment, (start, end) in zip(result.segments, bounds):
        assert abs(segment.start - start / SR) <= 0.3 and abs(segment.end - end / SR) <= 0.3
    assert [s.exit_layer for s in result.segments] == [r.exit_layer for r in alone]
    assert result.exit_layer == max(r.exit_layer for r in alone) and result.chunks == 7
    assert result.audio_seconds == pytest.approx(len(audio) / SR)

    path = tmp_path / "long.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    monkeypatch.setattr(lite, "_BLOCK_SECONDS", 1.0)
    from_file = lite.LiteTranscriber(folder, split=SPLIT, batch_size=2).transcribe(path)
    assert [(s.start, s.end, s.text) for s in from_file.segments] == [
        (s.start, s.end, s.text) for s in result.segments
    ]
    assert from_file.path == os.path.realpath(path) and result.path is None


def test_short_inputs_run_whole_and_words_are_timed_inside_their_segments(folder, long_audio):
    audio, _ = long_audio
    transcriber = lite.LiteTranscriber(folder, split=SPLIT, word_timestamps=True)
    short = transcriber.transcribe(audio[: int(1.9 * SR)])  # under 2 s: one pass
    assert short.chunks == 1 and len(short.segments) == 1
    assert (short.segments[0].start, short.segments[0].end) == (0.0, 1.9)
    assert short.text == lite.LiteTranscriber(folder, split=None).transcribe(audio[: int(1.9 * SR)]).text

    result = transcriber.transcribe(audio)
    timed = 0
    for segment in result.segments:
        assert " ".join(w.text for w in segment.words) == segment.text
        for word in segment.words:
            assert segment.start - 1e-3 <= word.start < word.end <= segment.end + 0.01
            timed += 1
    assert timed >= 7
    assert "words" in result.to_dict()["segments"][0]


def test_splitting_off_refuses_what_is_too_long(folder, long_audio):
    audio, _ = long_audio
    transcriber = lite.LiteTranscriber(folder, split=None, max_seconds=5)
    with pytest.raises(lite.LiteError, match=r"<array 0>: 14\.2 s of audio is longer than the limit of 5 s"):
        transcriber.transcribe(audio)
    (result,) = transcriber.transcribe([audio], raise_errors=False)
    assert result.error and "--max-seconds" in result.error and result.exit_layer is None


#: The child's peak resident memory: VmHWM, its own address space's (``ru_maxrss`` would keep the
#: parent's peak, pytest's, across the fork and exec).
_PEAK = """
import contextlib, io, sys
from wav2vec2_ee import lite
with contextlib.redirect_stdout(io.StringIO()):
    code = lite.main(sys.argv[1:])
peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(code, peak)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_memory_does_not_grow_with_the_length(folder, tmp_path):
    """The peak memory of a 10 times longer file stays within half again of the shorter one's (a pass over
    the whole file grows with the square of its length: the old lite runtime, 1.4 GB at 60 s of
    wav2vec2-base, was killed at 24 GB on 5 minutes), measured in a fresh interpreter each."""
    peaks = {}
    for seconds in (20, 200):
        path = tmp_path / f"talk{seconds}.wav"
        with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
            written, seed = 0, 0
            while written < seconds * SR:
                block, _ = _recording(10, seed=seed)
                f.write(block)
                written, seed = written + block.size, seed + 1
        flags = [*FLAGS, "--max-batch-seconds", "4", "--batch-size", "2"]
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(folder), str(path), *flags],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            check=True,
        )
        code, peak_kb = out.stdout.split()
        assert code == "0", out.stderr
        peaks[seconds] = int(peak_kb) / 1024
    print(peaks)
    assert peaks[200] < 1.5 * peaks[20], peaks


# --------------------------------------------------------------------------------------------------
# the command: folders, errors, order


def test_a_folder_with_a_bad_file_gives_every_good_file_and_exit_1(folder, recordings, capsys):
    code, out, err = _run(capsys, folder, recordings, *FLAGS, "--format", "jsonl")
    rows = _jsonl(out)
    names = ["a.wav", "b.wav", "c.wav", "sub/d.wav"]
    assert code == 1
    assert [r["source"] for r in rows] == [str(recordings / n) for n in names]  # input order
    assert [list(r) for r in rows] == [list(ROW_FIELDS)] * 4
    bad = rows[1]
    assert bad["error"].startswith(f"{recordings / 'b.wav'}: cannot read audio header")
    assert (bad["text"], bad["exit_layer"], bad["segments"], bad["chunks"]) == ("", None, [], 0)
    good = [rows[i] for i in (0, 2, 3)]
    assert all(r["error"] is None and r["decoder"] == "greedy" for r in good)
    assert [r["chunks"] for r in good] == [1, 1, 7] and len(good[2]["segments"]) == 7
    assert err == [f"{PROG}error: {bad['error']}", f"{PROG}1 of 4 file(s) could not be transcribed"]

    api = lite.LiteTranscriber(folder, split=SPLIT).transcribe(recordings, raise_errors=False)
    assert [_untimed(r.to_dict()) for r in api] == [_untimed(r) for r in rows]

    code, out, _ = _run(capsys, folder, recordings, *FLAGS)  # text: a line per good file
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(line[0], line[1], line[-1]) for line in lines] == [
        (r["source"], f"layer {r['exit_layer']}/4", r["text"]) for r in good
    ]


def test_a_missing_path_is_a_usage_error(folder, recordings, capsys):
    code, out, err = _run(capsys, folder, recordings / "a.wav", recordings / "nope.wav")
    assert (code, out) == (2, "")
    assert err == [f"{PROG}error: {recordings / 'nope.wav'}: no such file"]


def test_results_come_in_input_order_as_soon_as_they_are_done(folder, recordings, monkeypatch):
    """The short file before a long one is given before the long one is read."""
    calls = []
    original = lite.LiteTranscriber._transcribe_split
    monkeypatch.setattr(
        lite.LiteTranscriber,
        "_transcribe_split",
        lambda self, item: calls.append(item) or original(self, item),
    )
    transcriber = lite.LiteTranscriber(folder, split=SPLIT)
    inputs = [recordings / "a.wav", recordings / "sub" / "d.wav", recordings / "c.wav"]
    stream = transcriber.transcribe_stream(inputs)
    assert stream.total == 3
    first = next(stream)
    assert first.source == str(inputs[0]) and calls == []
    rest = list(stream)
    assert [r.source for r in rest] == [str(p) for p in inputs[1:]] and len(calls) == 1


# --------------------------------------------------------------------------------------------------
# --output, --resume, Ctrl-C


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_and_resume_retry_the_failed_file(folder, recordings, tmp_path, capsys, suffix):
    output = tmp_path / f"results{suffix}"
    argv = [folder, recordings, *FLAGS, "--output", output]
    code, out, _ = _run(capsys, *argv)
    assert code == 1
    rows = TranscriptionLog(output).rows()
    assert len(rows) == 4 and [bool(r["error"]) for r in rows] == [False, True, False, False]
    assert rows[3]["path"] == os.path.realpath(recordings / "sub" / "d.wav")

    code, _, err = _run(capsys, *argv)  # an existing output needs --resume
    assert code == 2 and "exists: pass --resume" in err[-1]

    sf.write(recordings / "b.wav", _talk(1.0, seed=9), SR)  # the bad file mended
    code, out, err = _run(capsys, *argv, "--resume", "--format", "jsonl")
    assert code == 0
    assert err == [f"{PROG}resuming: 3 file(s) of {output} skipped, 1 that failed retried"]
    assert [r["source"] for r in _jsonl(out)] == [str(recordings / "b.wav")]
    log = TranscriptionLog(output)
    rows = log.rows()
    assert len(rows) == 4 and not any(r["error"] for r in rows)
    assert len(log._all_rows()) == 4  # compacted: one row per file
    segments = rows[3]["segments"]
    segments = json.loads(segments) if isinstance(segments, str) else segments
    assert len(segments) == 7 and {"start", "end", "text", "exit_layer"} <= set(segments[0])


def test_a_file_named_twice_has_one_row_and_only_a_log_is_continued(folder, recordings, tmp_path, capsys):
    output = tmp_path / "results.jsonl"
    relative = os.path.relpath(recordings / "a.wav")
    code, _, _ = _run(capsys, folder, recordings / "a.wav", relative, *FLAGS, "--output", output)
    assert code == 0 and len(TranscriptionLog(output).rows()) == 1
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"audio": "x.wav", "text": "hello"}) + "\n")
    code, _, err = _run(capsys, folder, recordings / "a.wav", "--output", manifest, "--resume")
    assert code == 2 and "not a file written by wav2vec2-ee transcribe --output" in err[-1]
    assert manifest.read_text() == json.dumps({"audio": "x.wav", "text": "hello"}) + "\n"


def test_ctrl_c_keeps_what_was_written(folder, recordings, tmp_path, capsys, monkeypatch):
    output = tmp_path / "results.jsonl"
    original = lite.LiteTranscriber._transcribe_split

    def interrupted(self, item):
        raise KeyboardInterrupt

    monkeypatch.setattr(lite.LiteTranscriber, "_transcribe_split", interrupted)
    argv = [folder, recordings, *FLAGS, "--output", output]
    code, _, err = _run(capsys, *argv)
    assert code == 130
    assert err[-1] == f"{PROG}interrupted: 3 of 4 files written to {output} (--resume continues)"
    assert [r["source"] for r in TranscriptionLog(output).rows()] == [
        str(recordings / n) for n in ("a.wav", "b.wav", "c.wav")
    ]
    monkeypatch.setattr(lite.LiteTranscriber, "_transcribe_split", original)
    code, out, err = _run(capsys, *argv, "--resume")
    assert code == 1 and err[0] == f"{PROG}resuming: 2 file(s) of {output} skipped, 1 that failed retried"
    assert len(TranscriptionLog(output).rows()) == 4


def test_a_full_disk_names_the_output_and_leaves_no_partial_row(
    folder, recordings, tmp_path, capsys, monkeypatch
):
    import errno
    import types

    from wav2vec2_ee import io as io_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake.fsync = full
    output = tmp_path / "rows.jsonl"
    argv = [folder, recordings / "a.wav", recordings / "c.wav", *FLAGS, "--output", output]
    with monkeypatch.context() as patch:
        patch.setattr(io_module, "os", fake)
        code, _, err = _run(capsys, *argv)
    assert code == 2 and err[-1] == f"{PROG}error: {output}: No space left on device (the disk is full)"
    assert not output.exists()  # a new file that never got a row is removed
    code, _, _ = _run(capsys, *argv)
    assert code == 0 and len(TranscriptionLog(output).rows()) == 2


# --------------------------------------------------------------------------------------------------
# formats


def test_formats(folder, recordings, tmp_path, capsys):
    long = recordings / "sub" / "d.wav"
    code, out, _ = _run(capsys, folder, long, *FLAGS, "--format", "jsonl")
    (row,) = _jsonl(out)

    code, out, _ = _run(capsys, folder, recordings / "a.wav", long, *FLAGS, "--format", "tsv")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "\t".join(TSV_COLUMNS) and len(lines) == 3
    cells = dict(zip(TSV_COLUMNS, lines[2].split("\t")))
    assert (cells["source"], cells["text"], cells["chunks"]) == (str(long), row["text"], "7")

    code, out, _ = _run(capsys, folder, long, *FLAGS, "--format", "srt")
    cues = out.strip().split("\n\n")
    spoken = [s for s in row["segments"] if s["text"]]
    assert code == 0 and len(cues) == len(spoken)
    first = spoken[0]
    millis = round(first["start"] * 1000)
    start = f"00:00:{millis // 1000:02d},{millis % 1000:03d}"
    assert cues[0].splitlines()[0] == "1" and cues[0].splitlines()[1].startswith(start)
    assert cues[0].splitlines()[2] == first["text"]

    code, out, _ = _run(capsys, folder, long, *FLAGS, "--format", "vtt")
    assert out.startswith("WEBVTT\n\n") and out.count(" --> ") == len(spoken)

    code, out, _ = _run(capsys, folder, long, *FLAGS, "--format", "ctm")  # word times on by itself
    words = [line.split() for line in out.splitlines()]
    assert code == 0 and all(w[:2] == ["d", "1"] for w in words)
    assert " ".join(w[4] for w in words) == " ".join(s["text"] for s in spoken)
    assert float(words[0][2]) >= first["start"] - 1e-3 and float(words[-1][2]) <= spoken[-1]["end"]

    code, out, err = _run(capsys, folder, recordings / "a.wav", long, *FLAGS, "--format", "vtt")
    assert (code, out) == (2, "") and "--output-dir" in err[-1]
    subtitles = tmp_path / "subtitles"
    argv = [folder, recordings / "a.wav", long, *FLAGS, "--format", "srt", "--output-dir", subtitles]
    code, out, _ = _run(capsys, *argv)
    assert (code, out) == (0, "") and sorted(p.name for p in subtitles.iterdir()) == ["a.srt", "d.srt"]
    assert (subtitles / "d.srt").read_text().count(" --> ") == len(spoken)


def test_json_is_a_deprecated_spelling_of_jsonl(folder, recordings, capsys):
    inputs = [folder, recordings / "a.wav", recordings / "c.wav", *FLAGS]
    code, jsonl, err = _run(capsys, *inputs, "--format", "jsonl")
    assert code == 0 and err == []
    code, out, err = _run(capsys, *inputs, "--json")
    assert code == 0 and err == [f"{PROG}warning: --json is deprecated: use --format jsonl"]
    assert [_untimed(r) for r in _jsonl(out)] == [_untimed(r) for r in _jsonl(jsonl)]
    code, out, err = _run(capsys, *inputs, "--json", "--format", "tsv")
    assert (code, out) == (2, "") and err == [
        f"{PROG}error: --json is --format jsonl: it does not go with --format tsv"
    ]


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-segment-seconds", "0.5"],
        ["--vad-threshold", "1.5"],
        ["--max-segment-seconds", "0", "--max-seconds", "0"],
        ["--resume"],
        ["--output", "results.txt"],
    ],
)
def test_the_new_flags_are_refused_as_transcribe_refuses_them(folder, recordings, capsys, flags) -> None:
    audio = str(recordings / "a.wav")
    assert lite.main([str(folder), audio, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG}error: ")
    assert cli_main(["transcribe", str(folder), audio, "--backend", "onnxruntime", *flags]) == 2
    theirs = capsys.readouterr().err.strip().splitlines()
    assert theirs == [f"wav2vec2-ee transcribe: error: {err[0][len(PROG) + len('error: ') :]}"]
