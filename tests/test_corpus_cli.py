"""Tests of `wav2vec2-ee make-corpus` (wav2vec2_ee.corpus.cli) on a tiny corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wav2vec2_ee import cli
from wav2vec2_ee.corpus import cli as corpus_cli

TINY = ["--num-train", "6", "--num-dev", "2", "--num-test", "2", "--workers", "1", "--no-progress"]


def test_make_corpus_builds_prints_and_caches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "corpus"
    assert cli.main(["make-corpus", str(out), *TINY, "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "built in" in printed
    for split, count in (("train", 6), ("dev", 2), ("test", 2)):
        assert f"{split}" in printed
        assert len(list((out / split).glob("*/*/*.flac"))) == count
        assert sum(len(p.read_text().splitlines()) for p in (out / split).glob("*/*/*.trans.txt")) == count
    record = json.loads((out / "corpus.json").read_text())
    assert record["seed"] == 3 and record["num_utterances"] == {"train": 6, "dev": 2, "test": 2}

    # same parameters: nothing is rebuilt
    assert corpus_cli.main([str(out), *TINY, "--seed", "3"]) == 0
    assert "cached" in capsys.readouterr().out


def test_make_corpus_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        corpus_cli.main([str(tmp_path), "--size", "huge"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    # bad values are one-line errors through the dispatcher
    assert cli.main(["make-corpus", str(tmp_path / "c"), "--hours", "-1", "--no-progress"]) == 2
    assert "hours must be positive" in capsys.readouterr().err
    assert cli.main(["make-corpus", str(tmp_path / "c"), "--workers", "0"]) == 2


def test_make_corpus_refuses_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "keep.txt").write_text("not ours")
    assert cli.main(["make-corpus", str(tmp_path), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "train" / "keep.txt").exists()
