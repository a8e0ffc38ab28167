"""Transcription for real use: folders and manifests, lazy batches, ``--output`` written as files finish
with ``--resume``, a progress bar, and long recordings in overlapping windows (bounded memory)."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wav2vec2_ee.inference.transcriber as transcriber_module
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.inference import Transcriber, build_policy, chunking
from wav2vec2_ee.inference.inputs import find_audio_files
from wav2vec2_ee.io import AppendFile
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.transcripts import TranscriptionLog

from conftest import tiny_config
from helpers_audio import write_good, write_not_audio

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

SR = 16_000


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("transcribe")
    torch.manual_seed(0)
    checkpoint = root / "model"
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(checkpoint)
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    paths = [audio / "a.wav", audio / "sub" / "B.FLAC", audio / "c.Wav"]
    for seed, (path, seconds) in enumerate(zip(paths, [0.6, 0.9, 0.4])):
        write_good(path, seconds=seconds, seed=seed)
    (audio / "notes.txt").write_text("not audio, not walked")
    (audio / ".hidden.wav").write_bytes(b"")
    long = root / "long.wav"
    write_good(long, seconds=9.0, seed=5)
    return {"root": root, "checkpoint": checkpoint, "audio": audio, "paths": paths, "long": long}


def test_folders_are_walked_for_audio_files_of_any_case(files):
    found = find_audio_files(files["audio"])
    assert found == sorted(found) and set(found) == {str(p) for p in files["paths"]}
    t = Transcriber.from_pretrained(files["checkpoint"], device="cpu")
    by_folder = t.transcribe(str(files["audio"]))  # a folder: a list, even for one argument
    one_by_one = [t.transcribe(p) for p in found]
    assert [r.source for r in by_folder] == found
    assert [(r.text, r.exit_layer) for r in by_folder] == [(r.text, r.exit_layer) for r in one_by_one]
    # a manifest (the data/sources.py format, paths relative to it) and a folder without audio
    manifest = files["root"] / "list.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"audio": str(Path(p).relative_to(files["root"])), "text": ""}) + "\n"
            for p in found[:2]
        )
    )
    empty = files["root"] / "empty"
    empty.mkdir(exist_ok=True)
    results = t.transcribe([str(manifest), str(empty), np.zeros(8000, dtype=np.float32)])
    assert [r.source for r in results[:2]] == [
        str(files["root"] / Path(p).relative_to(files["root"])) for p in found[:2]
    ]
    assert [r.text for r in results[:2]] == [r.text for r in one_by_one[:2]]
    assert "no audio files" in results[2].error and results[3].source == "<array 2>" and results[3].ok


def test_audio_is_decoded_batch_by_batch(files, monkeypatch):
    decoded = []
    real = transcriber_module.load_audio

    def spy(path, source=None):
        decoded.append(str(path))
        return real(path, source)

    monkeypatch.setattr(transcriber_module, "load_audio", spy)
    t = Transcriber.from_pretrained(files["checkpoint"], device="cpu", batch_size=1)
    batches = t.transcribe_batches(str(files["audio"]))
    first = next(batches)
    assert len(first) == 1 and decoded == [first[0].source]  # only the running batch was decoded
    assert first[0].source == str(files["paths"][1])  # longest first (0.9 s), from the headers
    rest = list(batches)
    assert len(rest) == 2 and len(decoded) == 3


def _rows(path: Path) -> list[dict]:
    return TranscriptionLog(path).rows()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_output_is_written_as_files_finish_and_resume_skips_them(files, tmp_path, capsys, suffix):
    bad = tmp_path / "bad.wav"
    write_not_audio(bad)
    out = tmp_path / f"results{suffix}"
    argv = ["transcribe", str(files["checkpoint"]), str(files["audio"]), str(bad), "--output", str(out)]
    argv += ["--batch-size", "1"]
    assert cli_main(argv) == 1  # the bad file fails; the others are transcribed
    capsys.readouterr()
    rows = _rows(out)
    # rows in input order (issue 30: they came in processing order, the refused file first)
    in_order = [*find_audio_files(files["audio"]), str(bad)]
    assert [r["source"] for r in rows] == in_order
    by_source = {r["source"]: r for r in rows}
    assert "audio" in by_source[str(bad)]["error"] and by_source[str(bad)]["exit_layer"] is None
    good = by_source[str(files["paths"][0])]
    assert good["error"] is None and int(good["exit_layer"]) == 4 and float(good["seconds"]) > 0
    assert {"text", "layers_computed", "audio_seconds", "chunks", "segments", "latency_seconds"} <= set(good)

    # an existing output without --resume is a usage error
    assert cli_main(argv) == 2
    assert "--resume" in capsys.readouterr().err

    # killed mid-write: two complete rows (CSV: the header and one row) and half a line
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    kept = _rows(out)
    assert len(kept) == (1 if suffix == ".csv" else 2)  # the partial line is not a row
    assert [r["source"] for r in kept] == in_order[: len(kept)]  # the first inputs
    done = [r for r in kept if r["error"] is None]
    assert cli_main([*argv, "--resume"]) == 1  # the rest, the bad file included: it fails again
    captured = capsys.readouterr()
    assert f"resuming: {len(done)} file(s)" in captured.err and "retried" not in captured.err
    redone = [line.split("\t")[0] for line in captured.out.strip().splitlines()]
    assert redone == [s for s in in_order[len(kept) :] if s != str(bad)]  # in input order, finished skipped
    final = _rows(out)
    assert [r["source"] for r in final] == in_order  # each once, in input order
    text = out.read_text()
    assert text.endswith("\n") and (suffix == ".csv" or all(json.loads(line) for line in text.splitlines()))
    # --resume with only the failed file left: it alone is retried (issue 29 row 7), its new row replacing
    # the old one
    assert cli_main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "resuming: 3 file(s)" in err and "1 that failed retried" in err
    assert len(out.read_text().splitlines()) == len(final) + (suffix == ".csv")


def test_append_file_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2')
    with AppendFile(path) as f:
        f.write('{"a": 3}\n')
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'
    path.write_bytes(b"no newline at all")
    with AppendFile(path) as f:
        assert f.empty


def test_progress_bar_on_stderr_with_more_than_one_batch(files, tmp_path, capsys):
    argv = ["transcribe", str(files["checkpoint"]), str(files["audio"])]
    assert cli_main([*argv, "--batch-size", "1"]) == 0
    assert "transcribing: 100%" in capsys.readouterr().err
    assert cli_main(argv) == 0  # one batch: no bar
    assert "transcribing" not in capsys.readouterr().err
    assert cli_main([*argv, "--batch-size", "1", "--no-progress"]) == 0
    assert "transcribing" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# long recordings


def test_windows_cover_the_audio_like_transformers_chunk_iter():
    windows = list(chunking.windows(100, chunk=30, stride=5))
    assert windows[0] == (0, 30, 0, 5) and windows[-1][3] == 0 and windows[-1][1] == 100
    kept = [(start + left, end - right) for start, end, left, right in windows]
    assert kept[0][0] == 0 and kept[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(kept, kept[1:]))  # central parts tile the audio exactly
    assert list(chunking.windows(20, chunk=30, stride=5)) == [(0, 20, 0, 0)]


def test_pieces_of_an_array_and_of_its_file_are_the_same_and_tile_it(files):
    """The chunking module alone (no model): pieces carry their offsets in the recording; the central
    parts put together are the recording; a file read window by window gives the array's pieces."""
    array = sf.read(files["long"], dtype="float32")[0]
    pieces = list(chunking.array_pieces(array, 2.0, 0.5))
    assert len(pieces) == chunking.window_count(len(array) / SR, 2.0, 0.5) == 8
    assert [(p.start, p.end) for p in pieces[:2]] == [(0, 2 * SR), (SR, 3 * SR)]
    central = [p.audio[p.left : len(p.audio) - p.right] for p in pieces]
    assert np.array_equal(np.concatenate(central), array)
    assert sum(p.central_samples for p in pieces) == len(array)
    from_file = list(chunking.file_pieces(files["long"], "long.wav", 2.0, 0.5))
    assert [(p.start, p.end, p.left, p.right) for p in from_file] == [
        (p.start, p.end, p.left, p.right) for p in pieces
    ]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(from_file, pieces))
    assert chunking.central_frames(100, 32_000, 8_000, 0) == (25, 100)


def test_a_chunk_covering_the_file_equals_the_unchunked_transcript(files):
    policy = build_policy("entropy", threshold=3.3)
    plain = Transcriber.from_pretrained(files["checkpoint"], policy, device="cpu")
    chunked = Transcriber(plain.model, policy, plain.processor, chunk_seconds=30)
    for path in files["paths"]:
        expected = plain.transcribe(str(path))
        # forced through the windowed path: one window, no strides
        item = Transcriber.expand([str(path)])[0]
        chunked._measure(item)
        got = chunked._transcribe_chunked(item, transcriber_module._NoBar())
        assert got.chunks == 1 and got.text == expected.text and got.exit_layer == expected.exit_layer
        assert got.audio_seconds == pytest.approx(expected.audio_seconds)
        assert chunked.transcribe(str(path)).text == expected.text  # shorter than the window: one pass


def test_long_files_are_chunked_instead_of_refused(files, capsys):
    t = Transcriber.from_pretrained(files["checkpoint"], build_policy("entropy", threshold=3.3), device="cpu")
    windowed = Transcriber(t.model, t.policy, t.processor, max_seconds=5, chunk_seconds=2, stride_seconds=0.5)
    result = windowed.transcribe(str(files["long"]))  # 9 s > --max-seconds 5: chunked, not refused
    assert result.ok and result.chunks == len(list(chunking.windows(9 * SR, 2 * SR, SR // 2))) == 8
    assert result.audio_seconds == pytest.approx(9.0)
    assert result.exit_layer in (2, 4) and 2 <= result.layers_computed <= result.exit_layer
    assert isinstance(result.layers_computed, float)
    array = sf.read(files["long"], dtype="float32")[0]
    assert windowed.transcribe(array).text == result.text  # an array is windowed the same way
    with pytest.raises(ValueError, match="longer than the limit of 5 s"):  # splitting off: refused (issue 30:
        # the API splits long inputs at their pauses by default, as the command does; split=None turns it off)
        Transcriber(t.model, max_seconds=5, split=None).transcribe(str(files["long"]))
    argv = ["transcribe", str(files["checkpoint"]), str(files["long"]), "--max-seconds", "5", "--json"]
    assert cli_main([*argv, "--chunk-seconds", "0"]) == 1  # windowing off: the limit refuses it
    capsys.readouterr()
    assert cli_main(argv) == 0  # the default: files beyond 20 s split at their pauses; a 9 s file runs whole
    printed = capsys.readouterr()
    assert json.loads(printed.out)[0]["chunks"] == 1
    # --json keeps its list for one release, and says what replaces it (lite's --json is --format jsonl)
    assert "--json (one JSON list at the end) is deprecated, use --format jsonl" in printed.err
    assert cli_main([*argv, "--format", "tsv"]) == 2
    assert cli_main([*argv, "--chunk-seconds", "2"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["chunks"] == len(list(chunking.windows(9 * SR, 2 * SR, round(SR / 3)))) == 7  # stride: 2/6 s
    assert row["error"] is None
    for bad in (["--chunk-seconds", "-1"], ["--chunk-seconds", "2", "--stride-seconds", "1"]):
        assert cli_main([*argv, *bad]) == 2


@pytest.mark.slow
def test_an_hour_long_file_runs_in_bounded_memory(files, tmp_path):
    path = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(60):  # a minute at a time: low noise with some silence
            block = (rng.standard_normal(60 * SR) * 300).astype(np.int16)
            block[: 10 * SR] = 0
            f.write(block)
    t = Transcriber.from_pretrained(files["checkpoint"], build_policy("entropy", threshold=3.3), device="cpu")
    t = Transcriber(t.model, t.policy, t.processor, chunk_seconds=30, batch_size=4, max_batch_seconds=120)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = t.transcribe(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    whole = 3600 * SR * 4  # the decoded file as float32: 230 MB
    print(f"1 h file: {elapsed:.1f} s, traced peak {peak / 2**20:.1f} MiB, {result.chunks} windows")
    assert result.ok and result.audio_seconds == pytest.approx(3600.0)
    assert result.chunks == len(list(chunking.windows(3600 * SR, 30 * SR, 5 * SR)))
    assert peak < whole / 4  # bounded: a few windows at a time, never the whole file
    shutil.rmtree(tmp_path, ignore_errors=True)
