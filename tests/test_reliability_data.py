"""Reliability, bad input: every kind of bad item is fed to data preparation, the dataset and a training run.

Policy under test: at preparation each bad item is reported once (path and reason), skipped and counted;
``strict`` turns skipping into an error; a file that passes the header check but fails to decode is
replaced at training time by the next readable item and counted; nothing but the bad item is lost.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.data import (
    BadItemError,
    DataCollatorCTCWithPadding,
    DataError,
    SpeechDataset,
    load_prepared_split,
    load_split,
    prepare_utterances,
)
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.vocab import build_processor

from helpers_audio import (
    TINY_MODEL,
    good_items,
    write_bad_corpus,
    write_good,
    write_librispeech,
    write_model_json,
)

PROCESSOR = build_processor()
FRAMES = Wav2Vec2EEForCTC(Wav2Vec2EEConfig(**TINY_MODEL))._get_feat_extract_output_lengths


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_corpus")
    return root, write_bad_corpus(root, num_good=8)


def _prepare(root, **kwargs):
    return prepare_utterances(
        load_split(root, ["train"]), PROCESSOR.tokenizer, frames_for_samples=FRAMES, progress=False, **kwargs
    )


def _caught_at(expected: dict[str, str], where: str) -> set[str]:
    return {utt for utt, w in expected.items() if w == where}


@pytest.mark.parametrize("verify_audio", [False, True])
def test_preparation_reports_each_bad_item_once_and_keeps_the_rest(bad_corpus, caplog, verify_audio):
    root, expected = bad_corpus
    with caplog.at_level(logging.WARNING, logger="wav2vec2_ee.data.dataset"):
        kept, report = _prepare(root, verify_audio=verify_audio)
    skipped_here = _caught_at(expected, "prepare") | (
        _caught_at(expected, "train") if verify_audio else set()
    )
    kept_ids = {u.id for u in kept}
    assert kept_ids == {f"1-1-g{i:03d}" for i in range(8)} | (set(expected) - skipped_here)
    assert "1-1-b_stereo" in kept_ids  # stereo 44.1 kHz is accepted
    assert report.kept == len(kept) and len(report.skipped) == len(skipped_here)
    # each skipped item: reported once, with its path and the reason
    for utt in skipped_here:
        lines = [r.getMessage() for r in caplog.records if f"{utt}." in r.getMessage()]
        assert len(lines) == 1, (utt, lines)
        assert lines[0].startswith("skipping ") and str(root) in lines[0]
    reasons = {path.rsplit("/", 1)[-1].split(".")[0]: why for path, why in report.skipped}
    assert reasons["1-1-b_missing"] == "unreadable audio: no such file"
    assert reasons["1-1-b_empty"].startswith("unreadable audio")
    assert reasons["1-1-b_text"].startswith("unreadable audio")
    assert reasons["1-1-b_notext"].startswith("empty transcript")
    assert reasons["1-1-b_oov"].startswith("transcript mostly outside the vocabulary")
    assert reasons["1-1-b_short"].startswith("too short for its transcript")
    if verify_audio:
        assert "lost sync" in reasons["1-1-b_trunc"] or "decode" in reasons["1-1-b_trunc"]
        assert "NaN" in reasons["1-1-b_nan"]
    counts = report.counts()
    assert counts["unreadable audio"] == (5 if verify_audio else 3)
    assert "skipped" in report.summary()


def test_strict_stops_at_the_first_bad_item_naming_it(bad_corpus):
    root, _ = bad_corpus
    with pytest.raises(BadItemError, match=r"1-1-b_empty\.flac: unreadable audio"):
        _prepare(root, strict=True)


def test_stereo_44k_is_mixed_to_mono_and_resampled(bad_corpus):
    root, _ = bad_corpus
    kept, _ = _prepare(root)
    index = next(i for i, u in enumerate(kept) if u.id == "1-1-b_stereo")
    item = SpeechDataset(kept, PROCESSOR.feature_extractor)[index]
    assert item["utt_index"] == index and item["input_values"].ndim == 1
    assert abs(len(item["input_values"]) - 16_000) <= 16  # 1 s at 16 kHz
    assert abs(kept[index].duration - 1.0) < 1e-3


def test_dataset_replaces_unreadable_audio_and_reports_it(bad_corpus, caplog):
    root, expected = bad_corpus
    kept, _ = _prepare(root)
    dataset = SpeechDataset(kept, PROCESSOR.feature_extractor)
    bad = [i for i, u in enumerate(kept) if u.id in _caught_at(expected, "train")]
    assert len(bad) == 2
    with caplog.at_level(logging.WARNING, logger="wav2vec2_ee.data.dataset"):
        for _ in range(2):  # a second epoch reports nothing new
            for i in bad:
                item = dataset[i]
                assert item["utt_index"] not in bad and np.isfinite(item["input_values"]).all()
                assert item["skipped_audio"][0][0] == kept[i].audio
    assert set(dataset.bad_items) == {kept[i].audio for i in bad}
    assert len([r for r in caplog.records if "at training time" in r.getMessage()]) == 2
    # good items are untouched
    good = next(i for i in range(len(kept)) if i not in bad)
    assert dataset[good]["utt_index"] == good and "skipped_audio" not in dataset[good]
    with pytest.raises(BadItemError, match="b_trunc"):
        SpeechDataset(kept, PROCESSOR.feature_extractor, strict=True)[bad[0]]


def test_collator_carries_skipped_audio_out_of_worker_processes(bad_corpus):
    root, expected = bad_corpus
    kept, _ = _prepare(root)
    dataset = SpeechDataset(kept, PROCESSOR.feature_extractor)
    loader = DataLoader(
        dataset,
        batch_size=4,
        num_workers=1,
        collate_fn=DataCollatorCTCWithPadding(PROCESSOR.feature_extractor),
    )
    seen, skipped = [], []
    for batch in loader:
        seen += batch["utt_index"].tolist()
        skipped += batch.get("skipped_audio", [])
        assert torch.isfinite(batch["input_values"]).all()
    assert dataset.bad_items == {}  # the worker's copy recorded them, not this process's ...
    assert {s for s, _ in skipped} == {u.audio for u in kept if u.id in _caught_at(expected, "train")}
    assert len(seen) == len(kept)  # ... and every slot of the epoch still holds an utterance


def test_training_on_a_corpus_of_bad_items_loses_only_them(bad_corpus, tmp_path, monkeypatch):
    """End to end: `wav2vec2-ee train` on the bad corpus finishes, reports and counts every bad item,
    and every readable utterance is trained on in the epoch."""
    import wav2vec2_ee.training.run as run

    root, expected = bad_corpus
    seen: list[int] = []

    class Recording(DataCollatorCTCWithPadding):
        def __call__(self, features):
            seen.extend(f["utt_index"] for f in features)
            return super().__call__(features)

    monkeypatch.setattr(run, "DataCollatorCTCWithPadding", Recording)
    out = tmp_path / "run"
    argv = ["train", "--model", str(write_model_json(tmp_path / "tiny.json")), "--data", str(root),
            "--train-splits", "train", "--output-dir", str(out), "--max-steps", "3",
            "--per-device-train-batch-size", "4", "--report-to", "none", "--no-freeze-feature-encoder",
            "--save-strategy", "no", "--disable-tqdm", "true"]  # fmt: skip
    assert cli_main(argv) == 0
    summary = json.loads((out / "run_summary.json").read_text())
    kept, _ = _prepare(root)
    unreadable = {u.audio for u in kept if u.id in _caught_at(expected, "train")}
    assert summary["data"]["kept"] == len(kept) == 11
    assert len(summary["data"]["skipped"]) == len(_caught_at(expected, "prepare")) == 6
    assert set(summary["bad_items_at_training_time"]) == unreadable
    assert summary["skipped_nonfinite_batches"] == 0 and summary["skipped_updates"] == 0
    readable = {i for i, u in enumerate(kept) if u.audio not in unreadable}
    assert set(seen) == readable  # 3 steps x 4 = one epoch of 11 (+1): every readable item trained on


def test_strict_training_prints_one_line_naming_the_item(bad_corpus, tmp_path, capsys):
    root, _ = bad_corpus
    argv = ["train", "--model", str(write_model_json(tmp_path / "tiny.json")), "--data", str(root),
            "--train-splits", "train", "--output-dir", str(tmp_path / "o"), "--max-steps", "1",
            "--report-to", "none", "--disable-tqdm", "true", "--strict"]  # fmt: skip
    assert cli_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("wav2vec2-ee train: error: ")
    assert "1-1-b_empty.flac: unreadable audio" in err[0]


# ---- bad rows and lines of the sources, repeated ids ------------------------------------------------
def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _write_bad_jsonl(root) -> tuple[Path, dict[int, str]]:
    """A JSONL manifest of 3 good rows and one bad row of each kind; returns it and
    ``{line number: what the bad row's reason must name}``."""
    for name in ("g1", "g2", "g3", "dup"):
        write_good(root / f"{name}.wav", seed=len(name))
    good = {"audio": "g1.wav", "text": "HELLO WORLD", "id": "g1", "duration": 1.0}
    lines = [
        json.dumps(good),  # 1
        json.dumps({"audio": "g2.wav", "text": "EARLY EXIT", "duration": "abc"}),  # 2
        json.dumps({"audio": "g2.wav", "text": "EARLY EXIT", "duration": float("nan")}),  # 3: NaN
        json.dumps({"audio": "g2.wav", "text": "EARLY EXIT", "duration": -1}),  # 4
        json.dumps({"audio": "g2.wav", "text": "EARLY EXIT", "duration": 1e12}),  # 5
        json.dumps({"audio": 42, "text": "EARLY EXIT"}),  # 6
        json.dumps({"audio": None, "text": "EARLY EXIT"}),  # 7
        json.dumps([1, 2]),  # 8
        json.dumps({"audio": "g2.wav", "text": ["a", "b"]}),  # 9
        json.dumps({"audio": "dup.wav", "text": "SPEECH TEST", "id": "g1"}),  # 10: g1 again
        json.dumps({"audio": "g2.wav", "text": "EARLY EXIT"}),  # 11
        '{"audio": "g3.wav", "text": ',  # 12: cut short
        json.dumps({"audio": "g3.wav", "text": "GOOD AUDIO", "duration": "1.0"}),  # 13: a number in a string
    ]
    data = "\n".join(lines).encode() + b'\n{"audio": "g3.wav", "text": "CAF\xff"}\n'  # 14: not UTF-8
    path = root / "m.jsonl"
    path.write_bytes(data)
    expected = {
        2: "bad row: 'duration' must be a number of seconds, got str 'abc'",
        3: "bad row: 'duration' must be a finite number",
        4: "bad row: 'duration' is negative",
        5: "bad row: 'duration' 1e+12 s is longer than 24 h",
        6: "bad row: 'audio' must be a path, got int 42",
        7: "bad row: 'audio' is null",
        8: "bad row: not a JSON object (got list [1, 2])",
        9: "bad row: 'text' must be a string, got list ['a', 'b']",
        10: f"duplicate id: g1 (first at {path}:1)",
        12: "bad row: not JSON (Expecting value at column 29)",
        14: "not UTF-8: byte 0xff at column 33",
    }
    return path, expected


def test_bad_manifest_rows_are_skipped_named_by_line_and_counted(tmp_path, caplog):
    path, expected = _write_bad_jsonl(tmp_path)
    with caplog.at_level(logging.WARNING):
        kept, report = prepare_utterances(load_split(path, None), PROCESSOR.tokenizer, progress=False)
    # the good rows survive (the first of the repeated id, a duration written as a number in a string)
    assert [(u.id, u.audio, u.text) for u in kept] == [
        ("g1", str(tmp_path / "g1.wav"), "HELLO WORLD"),
        ("g2", str(tmp_path / "g2.wav"), "EARLY EXIT"),
        ("g3", str(tmp_path / "g3.wav"), "GOOD AUDIO"),
    ]
    assert kept[2].duration == 1.0
    # each bad row: named by file and line, with its reason, counted once
    assert [where for where, _ in report.skipped] == [f"{path}:{n}" for n in expected]
    for (_, reason), want in zip(report.skipped, expected.values()):
        assert reason.startswith(want), (reason, want)
    assert report.kept == 3 and report.counts() == {"bad row": 9, "duplicate id": 1, "not UTF-8": 1}
    assert "11 skipped" in report.summary()
    # ... and logged once: one line per bad row, one line for the repeated ids
    messages = _records(caplog)
    for n in expected:
        lines = [m for m in messages if f"{path}:{n}:" in m or f"{path}:{n}," in m]
        assert len(lines) == 1, (n, lines)
        assert lines[0].startswith("skipping ")
    (duplicates,) = [m for m in messages if "seen before" in m]
    assert f"g1 ({path}:10, first at {path}:1)" in duplicates
    assert not any("'a' 'b'" in u.text or u.text == "A B" for u in kept)  # a list is never a transcript


def test_bad_manifest_rows_strict_stops_at_the_first_naming_file_and_line(tmp_path):
    path, _ = _write_bad_jsonl(tmp_path)
    first = re.escape(f"{path}:2: bad row: 'duration' must be a number of seconds")
    with pytest.raises(BadItemError, match=first):  # reading with strict ...
        load_split(path, None, strict=True)
    with pytest.raises(BadItemError, match=first):  # ... or preparing with strict (`train --strict`)
        prepare_utterances(load_split(path, None), PROCESSOR.tokenizer, strict=True, progress=False)
    with pytest.raises(BadItemError, match=first):
        load_prepared_split(path, "m", None, PROCESSOR.tokenizer, 0.0, progress=False, strict=True)


def test_csv_manifest_gets_the_same_checks(tmp_path, caplog):
    for name in ("a", "b", "c"):
        write_good(tmp_path / f"{name}.wav")
    rows = [
        "audio,text,duration,id",  # 1
        "a.wav,HELLO WORLD,1.0,a",  # 2
        'b.wav,"EARLY',  # 3: a quoted transcript over two lines
        'EXIT",,b',  # 4
        "c.wav,SPEECH TEST,abc,c",  # 5
        "c.wav,SPEECH TEST,nan,c",  # 6
        "c.wav,SPEECH TEST,-1,c",  # 7
        "c.wav,SPEECH TEST,1e12,c",  # 8
        ",SPEECH TEST,,c",  # 9
        "c.wav,SPEECH TEST",  # 10
        "c.wav,SPEECH TEST,1.0,a",  # 11: a again
        "",  # 12
        "c.wav,SPEECH TEST,1.0,c",  # 13
    ]
    path = tmp_path / "m.csv"
    path.write_bytes("\n".join(rows).encode() + b"\nc.wav,SPEECH \xff,1.0,c\n")  # 14
    with caplog.at_level(logging.WARNING):
        kept, report = load_prepared_split(path, "m", None, PROCESSOR.tokenizer, 0.0, progress=False)
    assert [(u.id, u.text) for u in kept] == [("a", "HELLO WORLD"), ("b", "EARLY EXIT"), ("c", "SPEECH TEST")]
    assert [w for w, _ in report.skipped] == [f"{path}:{n}" for n in (5, 6, 7, 8, 9, 10, 11, 14)]
    reasons = [r for _, r in report.skipped]
    assert "'duration' must be a number of seconds, got str 'abc'" in reasons[0]
    assert "finite" in reasons[1] and "negative" in reasons[2] and "24 h" in reasons[3]
    assert reasons[4] == "bad row: 'audio' is empty"
    assert reasons[5] == "bad row: 2 fields, the header has 4"
    assert reasons[6] == f"duplicate id: a (first at {path}:2)"
    assert reasons[7].startswith("not UTF-8: byte 0xff")
    assert report.counts() == {"bad row": 6, "duplicate id": 1, "not UTF-8": 1}
    assert sum(f"{path}:5:" in m for m in _records(caplog)) == 1
    with pytest.raises(BadItemError, match=re.escape(f"{path}:5: bad row: 'duration'")):
        load_split(path, None, strict=True)
    # a header without the columns is a broken file, not a bad row
    (tmp_path / "h.csv").write_text("path,sentence\na.wav,HELLO\n")
    with pytest.raises(DataError, match=r"h\.csv: the header lacks the 'audio' and 'text' column"):
        load_split(tmp_path / "h.csv", None)


def test_trans_txt_line_that_is_not_utf8_is_skipped_alone(tmp_path, caplog):
    folder = write_librispeech(tmp_path, "train", good_items(3))
    trans = folder / "1-1.trans.txt"
    lines = trans.read_bytes().splitlines()
    lines[1] = b"1-1-g001 EARLY \xff EXIT"
    trans.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        kept, report = prepare_utterances(
            load_split(tmp_path, ["train"]), PROCESSOR.tokenizer, progress=False
        )
    assert [u.id for u in kept] == ["1-1-g000", "1-1-g002"]  # the lines around it are kept
    assert report.skipped == [(f"{trans}:2", "not UTF-8: byte 0xff at column 16")]
    assert [m for m in _records(caplog) if "not UTF-8" in m] == [
        f"skipping {trans}:2: not UTF-8: byte 0xff at column 16"
    ]
    with pytest.raises(BadItemError, match=re.escape(f"{trans}:2: not UTF-8")):
        load_split(tmp_path, ["train"], strict=True)
    with pytest.raises(BadItemError, match=re.escape(f"{trans}:2: not UTF-8")):
        _prepare(tmp_path, strict=True)


def test_repeated_ids_are_kept_once_and_reported_in_one_warning(tmp_path, caplog):
    """Evaluation would otherwise score a repeated utterance twice without a word."""
    write_good(tmp_path / "a.wav")
    rows = [{"audio": "a.wav", "text": "HELLO WORLD", "id": f"u{i}"} for i in range(7)]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + rows + rows[:1]) + "\n")
    with caplog.at_level(logging.WARNING):
        kept, report = load_prepared_split(path, "m", None, PROCESSOR.tokenizer, 0.0, progress=False)
    assert [u.id for u in kept] == [f"u{i}" for i in range(7)]  # each id once, the first row of each
    assert report.counts() == {"duplicate id": 8} and len(report.skipped) == 8
    assert report.skipped[0] == (f"{path}:8", f"duplicate id: u0 (first at {path}:1)")
    assert report.skipped[-1] == (f"{path}:15", f"duplicate id: u0 (first at {path}:1)")
    messages = [m for m in _records(caplog) if "u0" in m]
    assert len(messages) == 1  # one warning for all of them: a few ids with their places, then a count
    assert messages[0].startswith("skipping 8 items with an utterance id seen before")
    assert f"u0 ({path}:8, first at {path}:1)" in messages[0] and "u4 (" in messages[0]
    assert "u5 (" not in messages[0] and messages[0].endswith("and 3 more")
    with pytest.raises(BadItemError, match=re.escape(f"{path}:8: duplicate id: u0 (first at {path}:1)")):
        load_prepared_split(path, "m", None, PROCESSOR.tokenizer, 0.0, progress=False, strict=True)
    # across the joined LibriSpeech splits, too
    write_librispeech(tmp_path / "ls", "a", good_items(2))
    write_librispeech(tmp_path / "ls", "b", good_items(3))
    utterances = load_split(tmp_path / "ls", ["a", "b"])
    assert [u.id for u in utterances] == ["1-1-g000", "1-1-g001", "1-1-g002"]
    assert [w for w, _ in utterances.skipped] == [f"{tmp_path}/ls/b/1/1/1-1.trans.txt:{n}" for n in (1, 2)]


def test_bad_rows_reach_the_training_report_and_strict_training_names_them(tmp_path, capsys):
    path, expected = _write_bad_jsonl(tmp_path)

    def argv(out, *extra):
        return ["train", "--model", str(write_model_json(tmp_path / "tiny.json")), "--data", str(path),
                "--train-splits", "m", "--output-dir", str(out), "--max-steps", "1", "--report-to", "none",
                "--save-strategy", "no", "--disable-tqdm", "true", *extra]  # fmt: skip

    assert cli_main(argv(tmp_path / "run")) == 0
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["data"]["kept"] == 3
    assert [w for w, _ in summary["data"]["skipped"]] == [f"{path}:{n}" for n in expected]
    assert summary["data"]["skip_counts"] == {"bad row": 9, "duplicate id": 1, "not UTF-8": 1}
    capsys.readouterr()
    assert cli_main(argv(tmp_path / "strict", "--strict")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("wav2vec2-ee train: error: ")
    assert f"{path}:2: bad row: 'duration'" in err[0]
