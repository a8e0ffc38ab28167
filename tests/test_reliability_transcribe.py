"""Reliability of ``transcribe --output`` and of the audio readers (issue 29, rows 7-11): failed files are
retried on ``--resume``; one run at a time writes an output, whose rows are keyed by the file's resolved
path; only a file this command wrote is continued; named pipes are never opened by any reader; the lite
runtime bounds its batches in seconds of audio as ``transcribe`` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from test_evaluation import save_ee_checkpoint
from wav2vec2_ee import lite
from wav2vec2_ee.audio import AudioError, audio_duration, load_audio
from wav2vec2_ee.batching import DEFAULT_MAX_BATCH_SECONDS
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.evaluation import evaluate_checkpoint
from wav2vec2_ee.inference.chunking import file_pieces
from wav2vec2_ee.inference.inputs import find_audio_files
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.transcripts import TRANSCRIPTION_FIELDS, TranscriptionLog

from conftest import sharpened_model, tiny_config
from helpers_audio import write_empty, write_good

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost
needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="named pipes (mkfifo) and flock")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability_transcribe") / "model"
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(folder)
    return folder


def _folder(root: Path, n: int = 2) -> Path:
    """``root/audio`` with ``n`` good files ``a.wav``, ``b.wav``, ..."""
    audio = root / "audio"
    audio.mkdir()
    for i in range(n):
        write_good(audio / f"{'abcdef'[i]}.wav", seconds=0.4 + 0.1 * i, seed=i)
    return audio


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wav2vec2-ee transcribe: error: "), err
    return err[0]


# --------------------------------------------------------------------------------------------------
# row 7: rows with an error are retried on resume


def test_resume_retries_the_files_whose_row_is_an_error(model, tmp_path, capsys):
    audio = _folder(tmp_path, 1)
    write_empty(audio / "b.wav")
    out = tmp_path / "o.jsonl"
    argv = ["transcribe", str(model), str(audio), "--output", str(out), "--resume", "--batch-size", "1"]
    assert cli_main(argv) == 1
    capsys.readouterr()
    rows = {Path(r["source"]).name: r for r in TranscriptionLog(out).rows()}
    assert rows["b.wav"]["error"] and rows["a.wav"]["error"] is None

    write_good(audio / "b.wav", seconds=0.5)  # the file fixed
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert "resuming: 1 file(s)" in captured.err and "1 that failed retried" in captured.err
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(audio / "b.wav")]
    rows = TranscriptionLog(out).rows()
    assert sorted(Path(r["source"]).name for r in rows) == ["a.wav", "b.wav"]
    assert all(r["error"] is None for r in rows)
    assert len(_lines(out)) == 2  # the error row is gone from the file: one row per file


# --------------------------------------------------------------------------------------------------
# row 8: one writer at a time; rows keyed by the resolved path


@needs_posix
def test_a_second_run_on_the_same_output_is_refused(model, tmp_path, capsys):
    audio = _folder(tmp_path)
    out = tmp_path / "same.jsonl"
    argv = ["transcribe", str(model), str(audio), "--output", str(out), "--resume"]
    with TranscriptionLog(out).lock():  # a run writing it (flock: another open conflicts in-process too)
        assert cli_main(argv) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and f"another wav2vec2-ee transcribe (pid {os.getpid()})" in line
    assert not out.exists()
    assert cli_main(argv) == 0  # the lock is free once its holder ends
    assert cli_main(argv) == 0  # and again: released by the run that held it
    assert len(_lines(out)) == 2
    assert (tmp_path / ".same.jsonl.lock").is_file()


def test_rows_are_keyed_by_the_resolved_path(model, tmp_path, monkeypatch, capsys):
    audio = _folder(tmp_path)
    out = tmp_path / "o.jsonl"
    monkeypatch.chdir(audio)
    assert cli_main(["transcribe", str(model), ".", "--output", str(out), "--resume"]) == 0
    assert sorted(r["source"] for r in TranscriptionLog(out).rows()) == ["./a.wav", "./b.wav"]
    assert {json.loads(line)["path"] for line in _lines(out)} == {
        os.path.realpath(audio / "a.wav"),
        os.path.realpath(audio / "b.wav"),
    }
    capsys.readouterr()
    # the same files by absolute path: skipped, no second row
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resuming: 2 file(s)" in captured.err and captured.out == ""
    assert len(_lines(out)) == 2

    # one run naming the files twice writes (and prints) each once
    twice = tmp_path / "twice.csv"
    assert cli_main(["transcribe", str(model), ".", str(audio), "a.wav", "--output", str(twice)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert len(TranscriptionLog(twice).rows()) == 2 and len(_lines(twice)) == 3  # the header and 2 rows


def test_a_log_with_repeated_rows_reads_one_per_file_and_is_compacted(model, tmp_path, capsys):
    """What runs before the fix left: 4 rows for 2 files (``.`` then the absolute path)."""
    audio = _folder(tmp_path)
    out = tmp_path / "o.jsonl"
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in _lines(out)]
    old = [{k: v for k, v in r.items() if k != "path"} for r in rows]  # rows of the old format
    relative = [{**r, "source": os.path.relpath(r["source"])} for r in old]
    out.write_text("".join(json.dumps(r) + "\n" for r in old + relative))
    assert len(TranscriptionLog(out).rows()) == 2
    capsys.readouterr()
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out), "--resume"]) == 0
    assert "resuming: 2 file(s)" in capsys.readouterr().err
    assert [json.loads(line) for line in _lines(out)] == relative  # compacted: each file's latest row


# --------------------------------------------------------------------------------------------------
# row 9: only this command's own output is continued


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("list.jsonl", '{"audio": "a.wav", "text": "hello"}\n{"audio": "b.wav", "text": "world"}\n'),
        ("list.csv", "audio,text\na.wav,hello\nb.wav,world\n"),
        ("exit_table.jsonl", '{"id": "1-1-0", "layers": [2, 4]}\n'),
        ("notes.jsonl", "one line of notes, no newline at its end"),  # a partial line would be cut off
        ("notes.csv", "source,text\n"),  # a header that lacks the log's columns
        ("list.jsonl", "[1, 2]\n"),
        ("list.jsonl", '\n{"audio": "a.wav", "text": "hello"}\n'),  # blank lines first
    ],
)
def test_an_output_that_this_command_did_not_write_is_refused(model, tmp_path, capsys, name, content):
    audio = _folder(tmp_path, 1)
    out = tmp_path / name
    out.write_text(content)
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out), "--resume"]) == 2
    line = _one_error_line(capsys)  # refused before the model loads
    assert f"{out}: not a file written by wav2vec2-ee transcribe --output" in line
    assert out.read_text() == content  # nothing appended, nothing cut


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_logs_written_before_rows_had_a_path_are_continued(model, tmp_path, capsys, suffix):
    audio = _folder(tmp_path)
    a, b = str(audio / "a.wav"), str(audio / "b.wav")
    old_fields = [f for f in TRANSCRIPTION_FIELDS if f != "path"]
    row = {"source": a, "text": "x", "exit_layer": 4, "layers_computed": 4, "num_layers": 4, "chunks": 1}
    row |= {"seconds": 0.01, "audio_seconds": 0.4, "error": None}
    out = tmp_path / f"old{suffix}"
    if suffix == ".csv":
        out.write_text(",".join(old_fields) + "\n" + ",".join(str(row[f] or "") for f in old_fields) + "\n")
    else:
        out.write_text(json.dumps(row) + "\n")
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out), "--resume"]) == 0
    assert "resuming: 1 file(s)" in capsys.readouterr().err
    rows = TranscriptionLog(out).rows()
    assert [r["source"] for r in rows] == [a, b] and rows[1]["error"] is None
    if suffix == ".csv":  # appended in the file's own columns
        assert _lines(out)[0] == ",".join(old_fields) and list(rows[1]) == old_fields
    else:
        assert rows[1]["path"] == os.path.realpath(b)


def test_a_partial_first_row_of_a_log_is_redone(model, tmp_path):
    audio = _folder(tmp_path, 1)
    out = tmp_path / "o.jsonl"
    out.write_text('{"source": "' + str(audio / "a.wav")[:5])  # killed in its first write
    assert cli_main(["transcribe", str(model), str(audio), "--output", str(out), "--resume"]) == 0
    assert len(TranscriptionLog(out).rows()) == 1 and len(_lines(out)) == 1


# --------------------------------------------------------------------------------------------------
# row 10: named pipes are reported, never opened


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[list[str]]:
    """A named pipe at ``path``, watched: a reader that opens it (which blocks until a writer comes) is
    let through at once (the watcher opens it to write, then closes: the reader reads an empty file)
    and recorded in the list yielded, so that a test fails instead of hanging."""
    os.mkfifo(path)
    opened: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
            except OSError:
                stop.wait(0.005)
                continue
            opened.append(str(path))
            os.close(fd)
            stop.wait(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


@needs_posix
def test_the_audio_readers_refuse_a_named_pipe_without_opening_it(tmp_path):
    with fifo(tmp_path / "fifo.wav") as opened:
        windows = lambda path: list(file_pieces(path, str(path), 1.0, 0.1))  # noqa: E731 - long files
        for read in (load_audio, audio_duration, windows):
            with pytest.raises(AudioError, match=r"fifo\.wav: a named pipe \(FIFO\), not a regular file"):
                read(tmp_path / "fifo.wav")
        with pytest.raises(AudioError, match="a folder, not a regular file"):
            load_audio(tmp_path)
    assert opened == []


@needs_posix
def test_transcribe_reports_and_skips_a_named_pipe(model, tmp_path, capsys):
    audio = _folder(tmp_path)
    out = tmp_path / "o.jsonl"
    with fifo(audio / "fifo.wav") as opened, fifo(tmp_path / "named.flac") as named:
        assert find_audio_files(audio) == [str(audio / "a.wav"), str(audio / "b.wav")]
        argv = ["transcribe", str(model), str(audio), str(tmp_path / "named.flac"), "--output", str(out)]
        assert cli_main(argv) == 1
        # an --output that is a named pipe is refused, not opened
        argv = ["transcribe", str(model), str(audio), "--output", str(tmp_path / "named.flac.jsonl")]
        with fifo(tmp_path / "named.flac.jsonl") as output:
            assert cli_main([*argv, "--resume"]) == 2
    assert opened == named == output == []
    err = capsys.readouterr().err
    assert f"error: {audio / 'fifo.wav'}: a named pipe (FIFO), not a regular file" in err
    assert f"error: {tmp_path / 'named.flac'}: a named pipe (FIFO), not a regular file" in err
    assert (
        "named.flac.jsonl: not a file written by wav2vec2-ee transcribe --output (it is not a regular" in err
    )
    rows = {Path(r["source"]).name: r for r in TranscriptionLog(out).rows()}
    assert rows["a.wav"]["error"] is None and rows["b.wav"]["error"] is None
    assert "named pipe" in rows["fifo.wav"]["error"] and "named pipe" in rows["named.flac"]["error"]


@needs_posix
def test_evaluate_skips_a_manifest_row_naming_a_named_pipe(tmp_path, caplog):
    write_good(tmp_path / "a.flac", seconds=0.6)
    manifest = tmp_path / "dev.jsonl"
    rows = [{"audio": "a.flac", "text": "HELLO"}, {"audio": "fifo.flac", "text": "WORLD"}]
    rows.append({"audio": "fifo.flac", "text": "AGAIN", "duration": 1.0, "id": "with-duration"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = save_ee_checkpoint(tmp_path / "ee")
    caplog.set_level(logging.WARNING, logger="wav2vec2_ee")
    with fifo(tmp_path / "fifo.flac") as opened:
        evaluate_checkpoint(
            checkpoint=checkpoint,
            output_dir=tmp_path / "eval",
            data=str(manifest),
            progress=False,
            plot=False,
        )
    assert opened == []
    summary = json.loads((tmp_path / "eval" / "dev_summary.json").read_text())
    assert summary["utterances"] == 1
    assert [s["item"] for s in summary["skipped"]] == [str(tmp_path / "fifo.flac")] * 2
    # one checking the data (headers), one when its audio was to be read (its duration was given)
    warnings = [r.getMessage() for r in caplog.records if "fifo.flac" in r.getMessage()]
    assert len(warnings) == 2 and all("a named pipe (FIFO), not a regular file" in w for w in warnings)


# --------------------------------------------------------------------------------------------------
# rows 10 and 11: the lite runtime


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from wav2vec2_ee.export.exporter import export_model

    folder = tmp_path_factory.mktemp("reliability-lite-export")
    export_model(sharpened_model(), folder, check=False)
    return folder


@needs_posix
def test_lite_refuses_a_named_pipe_without_opening_it(exported, tmp_path, capsys):
    write_good(tmp_path / "a.wav", seconds=0.3)
    with fifo(tmp_path / "fifo.wav") as opened:
        with pytest.raises(lite.LiteError, match="a named pipe"):
            lite.LiteTranscriber(exported).transcribe([tmp_path / "a.wav", tmp_path / "fifo.wav"])
        capsys.readouterr()
        # issue 30: one unreadable file no longer ends the run (exit 2, nothing for the good file): it is
        # reported and the others are transcribed (exit 1), as transcribe does
        assert lite.main([str(exported), str(tmp_path / "a.wav"), str(tmp_path / "fifo.wav")]) == 1
    assert opened == []
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(tmp_path / "a.wav")]
    assert captured.err.strip().splitlines() == [
        f"python -m wav2vec2_ee.lite: error: {tmp_path / 'fifo.wav'}: a named pipe (FIFO), not a regular "
        "file: only regular files are read as audio",
        "python -m wav2vec2_ee.lite: 1 of 2 file(s) could not be transcribed",
    ]


def test_lite_batches_are_bounded_in_seconds_and_decoded_when_they_run(exported, tmp_path, monkeypatch):
    seconds = [0.3, 0.5, 0.4, 0.2, 0.6, 0.35, 0.45]
    paths = []
    for i, s in enumerate(seconds):
        write_good(tmp_path / f"u{i}.wav", seconds=s, seed=i)
        paths.append(tmp_path / f"u{i}.wav")
    transcriber = lite.LiteTranscriber(exported, "fixed", value=4)
    want = [r.text for r in transcriber.transcribe(paths)]
    events: list[tuple[str, float]] = []
    real_run, real_read = lite._exit_answers, lite.read_audio

    def run(segments, values, mask, policy, vocabulary, with_ids=False):
        events.append(("run", values.shape[0] * values.shape[1] / 16_000))
        return real_run(segments, values, mask, policy, vocabulary, with_ids)

    def read(path):
        events.append(("read", 0.0))
        return real_read(path)

    monkeypatch.setattr(lite, "_exit_answers", run)  # each batch's run (run_lite_early_exit's engine)
    monkeypatch.setattr(lite, "read_audio", read)
    bounded = lite.LiteTranscriber(exported, "fixed", value=4, batch_size=100_000, max_batch_seconds=1.0)
    assert [r.text for r in bounded.transcribe(paths)] == want  # the same answers
    runs = [s for kind, s in events if kind == "run"]
    assert len(runs) > 2 and max(runs) <= 1.0 + 1e-9  # padded seconds per batch within the bound
    # a batch's files are read just before it runs, not all up front
    kinds = [kind for kind, _ in events]
    assert kinds.count("read") == len(seconds) and kinds[:2] == ["read", "run"]  # the longest alone first
    # the default bound is transcribe's, from the command line too
    assert lite.LiteTranscriber(exported).max_batch_seconds == DEFAULT_MAX_BATCH_SECONDS == 160.0
    events.clear()
    argv = [str(exported), *map(str, paths), "--batch-size", "100000", "--max-batch-seconds", "1"]
    assert lite.main(argv) == 0
    assert max(s for kind, s in events if kind == "run") <= 1.0 + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
        ({"max_batch_seconds": 0.0}, "--max-batch-seconds must be a number > 0"),
        ({"max_batch_seconds": float("nan")}, "--max-batch-seconds must be a number > 0"),
    ],
)
def test_lite_refuses_bad_batch_bounds_as_transcribe_does(exported, kwargs, message):
    with pytest.raises(lite.LiteError, match=message):
        lite.LiteTranscriber(exported, **kwargs)


def test_lite_answers_do_not_depend_on_the_batch_bound(exported):
    rng = np.random.default_rng(1)
    arrays = [(0.3 * rng.standard_normal(int(s * 16_000))).astype(np.float32) for s in (0.2, 0.3, 0.25)]
    one = lite.LiteTranscriber(exported, "fixed", value=3, max_batch_seconds=0.01).transcribe(arrays)
    all_ = lite.LiteTranscriber(exported, "fixed", value=3, max_batch_seconds=None).transcribe(arrays)
    assert [r.text for r in one] == [r.text for r in all_] and [r.source for r in one] == [
        "<array 0>",
        "<array 1>",
        "<array 2>",
    ]
