"""Data sources, text normalisation, preparation, collator and length grouping."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from wav2vec2_ee.data import (
    BadItemError,
    DataCollatorCTCWithPadding,
    DataError,
    SpeechDataset,
    load_audio,
    load_split,
    prepare_utterances,
    read_texts,
    source_kind,
)
from wav2vec2_ee.vocab import TextNormalizer, build_feature_extractor, build_tokenizer


def _tone(seconds: float, sr: int = 16000, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def make_librispeech(root, split="train", speakers=(("19", "198"), ("26", "495")), per_chapter=2):
    for spk, chap in speakers:
        folder = root / split / spk / chap
        folder.mkdir(parents=True)
        lines = []
        for i in range(per_chapter):
            utt = f"{spk}-{chap}-{i:04d}"
            sf.write(folder / f"{utt}.flac", _tone(0.5 + 0.25 * i), 16000)
            lines.append(f"{utt} HELLO WORLD NUMBER {i}")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_splits_join(tmp_path):
    make_librispeech(tmp_path, "train-clean-100")
    make_librispeech(tmp_path, "train-other-500", speakers=(("7", "1"),), per_chapter=3)
    utts = load_split(tmp_path, ["train-clean-100", "train-other-500"])
    assert len(utts) == 7
    assert utts[0].id == "19-198-0000" and utts[0].text == "HELLO WORLD NUMBER 0"
    assert source_kind(tmp_path) == "librispeech"
    with pytest.raises(DataError, match="no such LibriSpeech split.*train-clean-100"):
        load_split(tmp_path, ["dev-clean"])
    with pytest.raises(DataError, match="no such data folder"):
        load_split(tmp_path / "missing", ["x"])


def test_manifest_jsonl_and_csv(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(0.4), 16000)
    sf.write(tmp_path / "b.flac", _tone(0.6, sr=44100, channels=2), 44100)
    rows = [
        {"audio": "a.wav", "text": "Hello, World!"},
        {"audio": "b.flac", "text": "it's ok", "id": "bee", "duration": 0.6},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    utts = load_split(tmp_path / "m.jsonl", None)
    assert [u.id for u in utts] == ["a", "bee"] and utts[1].duration == 0.6
    assert utts[0].audio == str(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("audio,text\na.wav,one two\n")
    assert load_split(tmp_path / "m.csv", None)[0].text == "one two"
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav"}\n')
    with pytest.raises(DataError, match="bad.jsonl.*'text'"):
        load_split(tmp_path / "bad.jsonl", None)


def test_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    sf.write(tmp_path / "a.flac", _tone(0.5), 16000)
    ds = datasets.Dataset.from_dict({"audio": [str(tmp_path / "a.flac")], "text": ["good day"]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    assert source_kind(tmp_path / "hf") == "hf_dataset"
    utts = load_split(tmp_path / "hf", "test")
    assert utts[0].text == "good day"
    with pytest.raises(DataError, match="choose a split"):
        load_split(tmp_path / "hf", "train")
    prepared, _ = prepare_utterances(utts, build_tokenizer(), progress=False)
    assert prepared[0].text == "GOOD DAY" and prepared[0].duration == pytest.approx(0.5, abs=0.01)


def test_audio_is_resampled_and_mixed_to_mono(tmp_path):
    stereo = _tone(1.0, sr=44100, channels=2)
    sf.write(tmp_path / "s.wav", stereo, 44100)
    audio = load_audio(tmp_path / "s.wav")
    assert audio.ndim == 1 and abs(len(audio) - 16000) <= 1
    ref = _tone(1.0)
    assert np.corrcoef(audio[200:-200], ref[200:-200])[0, 1] > 0.99


def test_text_normalizer_reports_dropped_characters():
    norm = TextNormalizer(build_tokenizer())
    assert norm("Hello,  wörld! it's 3-way") == "HELLO WRLD IT'S WAY"
    assert norm.dropped == {",": 1, "Ö": 1, "!": 1, "3": 1, "-": 1}
    assert "'Ö': 1" in norm.report()


def test_prepare_collate_and_group_by_length(tmp_path):
    make_librispeech(tmp_path, per_chapter=3)
    tok = build_tokenizer()
    prepared, report = prepare_utterances(
        load_split(tmp_path, "train"), tok, max_duration=0.9, progress=False
    )
    assert report.kept == 4 and report.counts() == {"too long": 2}
    assert prepared[0].text == "HELLO WORLD NUMBER"  # the digit is outside the vocabulary
    assert prepared[0].labels == tok("HELLO|WORLD|NUMBER").input_ids
    # evaluation: the same items without tokenising, unless the CTC length check needs the labels
    untokenized, _ = prepare_utterances(
        load_split(tmp_path, "train"), tok, max_duration=0.9, progress=False, tokenize=False
    )
    assert [(u.id, u.text, u.duration, u.labels) for u in untokenized] == [
        (u.id, u.text, u.duration, []) for u in prepared
    ]
    checked, _ = prepare_utterances(
        load_split(tmp_path, "train"), tok, frames_for_samples=lambda n: n, progress=False, tokenize=False
    )
    assert checked[0].labels == prepared[0].labels
    fe = build_feature_extractor()
    ds = SpeechDataset(prepared, fe)
    assert ds.lengths == [8000, 12000, 8000, 12000]
    batch = DataCollatorCTCWithPadding(fe)([ds[0], ds[1]])
    assert batch["input_values"].shape == (2, 12000)
    assert batch["attention_mask"].sum(-1).tolist() == [8000, 12000]
    n = len(prepared[0].labels)
    assert batch["labels"][0, :n].tolist() == prepared[0].labels
    assert (batch["labels"][0, n:] == -100).all()
    assert batch["utt_index"].tolist() == [0, 1]
    # normalised input: zero mean, unit variance per utterance over its real samples
    x = batch["input_values"][0, :8000]
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert torch.all(batch["input_values"][0, 8000:] == 0)
    # --pad-to-multiple-of: the batch is padded further, the masks still mark the real samples
    padded = DataCollatorCTCWithPadding(fe, pad_to_multiple_of=1600)([ds[0], ds[1]])
    assert padded["input_values"].shape == (2, 12800)
    assert padded["attention_mask"].sum(-1).tolist() == [8000, 12000]
    assert torch.equal(padded["input_values"][:, :12000], batch["input_values"])


def test_bad_rows_travel_with_the_utterances(tmp_path, caplog):
    """The rows a reader leaves out ride on its result (``skipped``), survive slicing, can be
    collected in a list, and reach the report of whoever consumes them (here :func:`read_texts`)."""
    sf.write(tmp_path / "a.wav", _tone(0.4), 16000)
    rows = [{"audio": "a.wav", "text": "one two"}, {"audio": "a.wav", "text": ["a", "b"], "id": "x"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    collected: list = []
    utts = load_split(tmp_path / "m.jsonl", None, skipped=collected)
    assert [u.text for u in utts] == ["one two"]
    where = f"{tmp_path / 'm.jsonl'}:2"
    assert utts.skipped == collected == [(where, "bad row: 'text' must be a string, got list ['a', 'b']")]
    assert utts[:1].skipped == utts.skipped and utts[0].id == "a"
    with caplog.at_level(logging.WARNING):
        assert read_texts(None, [str(tmp_path / "m.jsonl")]) == ["one two"]
    assert [r.getMessage() for r in caplog.records] == [f"skipping {where}: {collected[0][1]}"]
    with pytest.raises(BadItemError, match=re.escape(f"{where}: bad row: 'text'")):
        read_texts(None, [str(tmp_path / "m.jsonl")], strict=True)
    # a manifest with rows but none usable is an error that names the first bad row
    (tmp_path / "all_bad.jsonl").write_text('{"audio": null, "text": "x"}\n[1]\n')
    with pytest.raises(
        DataError, match=r"all_bad\.jsonl: no usable row \(2 bad, the first .*all_bad\.jsonl:1"
    ):
        load_split(tmp_path / "all_bad.jsonl", None)


def test_hf_dataset_bad_rows_and_repeated_ids(tmp_path):
    datasets = pytest.importorskip("datasets")
    sf.write(tmp_path / "a.flac", _tone(0.5), 16000)
    ds = datasets.Dataset.from_dict(
        {
            "audio": [str(tmp_path / "a.flac")] * 3,
            "text": ["good day", "again", "late"],
            "id": ["u", "u", "v"],
        }
    )
    ds.cast_column("audio", datasets.Audio(decode=False)).save_to_disk(str(tmp_path / "hf"))
    utts = load_split(tmp_path / "hf", None)
    assert [(u.id, u.text) for u in utts] == [("u", "good day"), ("v", "late")]
    assert utts.skipped == [
        (f"{tmp_path / 'hf'} row 1", f"duplicate id: u (first at {tmp_path / 'hf'} row 0)")
    ]
    with pytest.raises(BadItemError, match="row 1: duplicate id: u"):
        load_split(tmp_path / "hf", None, strict=True)
