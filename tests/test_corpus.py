"""Tests of the synthetic eSpeak NG corpus (wav2vec2_ee.corpus)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wav2vec2_ee.corpus import (
    TRANSCRIPT_CHARS,
    BackendUnavailableError,
    ESpeakSynthesizer,
    build_corpus,
    generate_utterances,
    load_grammar,
    plan_corpus,
    speakers_by_split,
)
from wav2vec2_ee.corpus import espeak as espeak_module
from wav2vec2_ee.corpus.voices import DEV_VARIANTS, TEST_VARIANTS

SIZES = {"num_train": 12, "num_dev": 4, "num_test": 4}
UTT_RE = re.compile(r"^(\d+)-(\d+)-(\d{4})$")


def _read_corpus(root: Path) -> dict[str, dict[str, tuple[str, Path]]]:
    """``{split: {utt_id: (transcript, flac_path)}}`` read from a LibriSpeech-style folder."""
    result: dict[str, dict[str, tuple[str, Path]]] = {}
    for split in ("train", "dev", "test"):
        entries: dict[str, tuple[str, Path]] = {}
        for trans in sorted((root / split).glob("*/*/*.trans.txt")):
            for line in trans.read_text(encoding="utf-8").splitlines():
                utt_id, text = line.split(" ", 1)
                entries[utt_id] = (text, trans.parent / f"{utt_id}.flac")
        result[split] = entries
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "tiny"
    summary = build_corpus(root, **SIZES, seed=0, workers=2, progress=False)
    assert not summary.cached
    assert summary.num_utterances == {"train": 12, "dev": 4, "test": 4}
    return root


def test_layout_audio_and_transcripts(corpus: Path) -> None:
    data = _read_corpus(corpus)
    assert {k: len(v) for k, v in data.items()} == {"train": 12, "dev": 4, "test": 4}
    all_flacs = {p.resolve() for p in corpus.glob("*/*/*/*.flac")}
    assert all_flacs == {path.resolve() for entries in data.values() for _, path in entries.values()}
    for split, entries in data.items():
        for utt_id, (text, path) in entries.items():
            speaker, chapter, _ = UTT_RE.match(utt_id).groups()
            assert path.parent == corpus / split / speaker / chapter
            assert (path.parent / f"{speaker}-{chapter}.trans.txt").is_file()
            assert text == text.upper() and text.strip() == text and "  " not in text
            assert set(text.replace(" ", "")) <= TRANSCRIPT_CHARS
            audio, sample_rate = sf.read(path, dtype="float32")
            info = sf.info(path)
            assert sample_rate == 16000 and audio.ndim == 1 and info.channels == 1
            assert info.format == "FLAC" and info.subtype == "PCM_16"
            assert float(np.sqrt(np.mean(audio**2))) > 1e-3, "silent audio"
            seconds, words = audio.size / sample_rate, len(text.split())
            assert 0.08 * words < seconds < 0.3 + 1.2 * words, (utt_id, text, seconds)
    summary = (corpus / "corpus.json").read_text(encoding="utf-8")
    assert '"num_train": 12' in summary and '"hours"' in summary


def test_dev_and_test_speakers_unseen_in_train(corpus: Path) -> None:
    dirs = {split: {p.name for p in (corpus / split).iterdir()} for split in ("train", "dev", "test")}
    assert dirs["train"].isdisjoint(dirs["dev"]) and dirs["train"].isdisjoint(dirs["test"])
    assert dirs["dev"].isdisjoint(dirs["test"])
    lines = (corpus / "SPEAKERS.txt").read_text(encoding="utf-8").splitlines()
    table = {
        int(line.split("|")[0]): line.split("|")[1].strip() for line in lines if not line.startswith(";")
    }
    assert {str(sid) for sid, split in table.items() if split == "train"} == dirs["train"]
    # the full speaker inventory: disjoint ids and voices, held-out variants never in train
    splits = speakers_by_split()
    voices = {split: {s.voice for s in members} for split, members in splits.items()}
    assert voices["train"].isdisjoint(voices["dev"] | voices["test"]) and voices["dev"].isdisjoint(
        voices["test"]
    )
    train_variants = {s.variant for s in splits["train"]}
    assert train_variants.isdisjoint(DEV_VARIANTS) and train_variants.isdisjoint(TEST_VARIANTS)


def test_deterministic_rebuild_and_seed(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_corpus(again, **SIZES, seed=0, workers=1, progress=False)  # serial: same bytes as 2 workers
    first, second = _read_corpus(corpus), _read_corpus(again)
    for split in first:
        assert first[split].keys() == second[split].keys()
        for utt_id, (text, path) in first[split].items():
            assert second[split][utt_id][0] == text
            assert path.read_bytes() == second[split][utt_id][1].read_bytes(), utt_id
    texts = [u.text for u in plan_corpus(12, 4, 4, seed=0)]
    assert texts == [u.text for u in plan_corpus(12, 4, 4, seed=0)]
    assert texts != [u.text for u in plan_corpus(12, 4, 4, seed=1)]


def test_cached_second_call_does_nothing(corpus: Path) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    summary = build_corpus(corpus, **SIZES, seed=0, progress=False)
    assert summary.cached and summary.num_utterances["train"] == 12
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == mtimes


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    root = tmp_path / "c"
    build_corpus(root, num_train=3, num_dev=1, num_test=1, progress=False)
    summary = build_corpus(root, num_train=2, num_dev=1, num_test=1, progress=False)
    assert not summary.cached
    assert len(list(root.glob("*/*/*/*.flac"))) == 4 and not (root / ".corpus_incomplete").exists()


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileExistsError):
        build_corpus(tmp_path, num_train=2, num_dev=1, num_test=1, progress=False)


def test_text_generator() -> None:
    grammar = load_grammar()
    assert len(grammar.words) > 300
    assert all(re.fullmatch(r"[a-z']+", w) for w in grammar.words)
    texts = generate_utterances(500, seed=3)
    assert texts == generate_utterances(500, seed=3) != generate_utterances(500, seed=4)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= 1 and max(lengths) <= 8
    assert sum(2 <= n <= 5 for n in lengths) > 0.6 * len(lengths)


def test_synthesis_is_independent_of_history() -> None:
    synth = ESpeakSynthesizer()
    first = synth.synthesize("go left", "en-us+m1", 160, 40, seed=5)
    synth.synthesize("something else entirely", "en-gb-x-rp+f3", 200, 70, seed=9)
    assert np.array_equal(first, synth.synthesize("go left", "en-us+m1", 160, 40, seed=5))
    assert first.dtype == np.float32 and 0.2 < first.size / 16000 < 2.0


def test_clear_error_without_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(espeak_module, "_loader_paths", lambda: None)
    monkeypatch.setattr(espeak_module.shutil, "which", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="pip install espeakng-loader") as info:
        ESpeakSynthesizer()
    assert "apt-get install espeak-ng" in str(info.value) and isinstance(info.value, RuntimeError)
    with pytest.raises(RuntimeError, match="espeak"):
        build_corpus(tmp_path / "none", num_train=2, num_dev=1, num_test=1, progress=False)
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="uses a POSIX shebang script")
def test_binary_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "espeak-ng"  # stands in for the system binary: writes a 22050 Hz WAV to stdout
    fake.write_text(
        f"#!{sys.executable}\n"
        "import io, sys, numpy as np, soundfile as sf\n"
        "t = np.arange(22050) / 22050\n"
        "buf = io.BytesIO(); sf.write(buf, 0.5 * np.sin(2 * np.pi * 200 * t), 22050, format='WAV')\n"
        "sys.stdout.buffer.write(buf.getvalue())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(espeak_module, "_loader_paths", lambda: None)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    synth = ESpeakSynthesizer()
    assert synth.backend == "binary"
    audio = synth.synthesize("hello", "en-us+m1", 150, 50)
    assert audio.dtype == np.float32 and abs(audio.size - 16000) < 100
