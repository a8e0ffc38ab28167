"""Reliability, bad input: every kind of bad item is fed to data preparation, the dataset and a training run.

Policy under test: at preparation each bad item is reported once (path and reason), skipped and counted;
``strict`` turns skipping into an error; a file that passes the header check but fails to decode is
replaced at training time by the next readable item and counted; nothing but the bad item is lost.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.configuration import Wav2Vec2EEConfig
from wav2vec2_ee.data import (
    BadItemError,
    DataCollatorCTCWithPadding,
    SpeechDataset,
    load_split,
    prepare_utterances,
)
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.vocab import build_processor

from helpers_audio import TINY_MODEL, write_bad_corpus, write_model_json

PROCESSOR = build_processor()
FRAMES = Wav2Vec2EEForCTC(Wav2Vec2EEConfig(**TINY_MODEL))._get_feat_extract_output_lengths


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: tiny models gain nothing from more, and a busy CI machine makes them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
