"""Every decoder's WER table (issue 30, item 3): ``evaluate`` prints, and writes in ``wer_results.txt`` and
the plot, the WER of each decoder that ran (greedy or beam; the lexicon decoder, with its LM if any), the
seed's greedy blocks first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.evaluation.plots import plot_wer_by_exit
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.results import (
    decoder_key,
    format_overview_table,
    format_wer_results,
    lexicon_decoder_name,
    main_decoder_name,
    parse_decoder_wer_results,
    parse_wer_results,
)

from conftest import tiny_config
from helpers_audio import good_items, write_librispeech

pytestmark = pytest.mark.usefixtures("one_thread")

#: the seed's wer_results.txt: blocks of a split line, WER lines, a blank line (tests/test_evaluation.py)
SEED_WER_RESULTS = re.compile(r"^(split: \S+\n((layer_\d+|predicted) WER: [-+.\deE]+(inf)?\n)+\n)+$")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint with exits at layers 2 and 4, a corpus with train, dev and test splits."""
    root = tmp_path_factory.mktemp("tables")
    torch.manual_seed(0)
    checkpoint = root / "model"
    Wav2Vec2EEForCTC(tiny_config(exit_layers=[2, 4])).save_pretrained(checkpoint)
    corpus = root / "corpus"
    write_librispeech(corpus, "train", good_items(7, seconds=0.5, prefix="t"))
    write_librispeech(corpus, "dev", good_items(3, seconds=0.5, prefix="d"))
    write_librispeech(corpus, "test", good_items(4, seconds=0.5, prefix="e"))
    return {"root": root, "checkpoint": checkpoint, "corpus": corpus}


def _evaluate(files: dict[str, Path], out: Path, *flags: str) -> int:
    argv = ["evaluate", str(files["checkpoint"]), "--output-dir", str(out), "--data", str(files["corpus"])]
    return cli_main([*argv, "--no-progress", "--batch-size", "2", *flags])


def test_evaluate_prints_and_writes_every_decoders_table(files, capsys: pytest.CaptureFixture) -> None:
    out = files["root"] / "lm"
    lexicon = ["--exit-stats", "posterior", "--train-splits", "train", "--lexicon-beam-size", "20"]
    assert _evaluate(files, out, "--splits", "test", *lexicon, "--lm-order", "2", "--word-score", "1") == 0
    printed = capsys.readouterr().out.strip()
    overview = json.loads((out / "wer_results.json").read_text())
    assert overview["decoder"] == "greedy"
    assert overview["splits"]["test"]["lexicon_decoder"] == "lexicon + 2-gram LM"

    # printed: the greedy table, then the lexicon + LM one, each naming its decoder
    greedy, with_lm = printed.split("\n\n")
    assert greedy.splitlines()[0].split() == ["WER", "(%)", "greedy", "layer_2", "layer_4"]
    assert with_lm.splitlines()[0].split() == [
        "WER",
        "(%)",
        "lexicon",
        "+",
        "2-gram",
        "LM",
        "layer_2",
        "layer_4",
    ]
    assert printed == format_overview_table(overview)
    for table, key in ((greedy, "exits"), (with_lm, "lexicon_beam")):
        row = table.splitlines()[1].split()
        wers = overview["splits"]["test"][key]
        assert row == ["test", *(f"{100 * wers[lb]['wer']:.2f}" for lb in ("layer_2", "layer_4"))]

    # wer_results.txt: the seed's greedy blocks first, then the lexicon decoder's, in the same format
    text = (out / "wer_results.txt").read_text()
    assert SEED_WER_RESULTS.match(text), text
    assert text.startswith("split: test\nlayer_2 WER: ") and "split: test[lexicon+2-gram-LM]\n" in text
    greedy_wers = {lb: v["wer"] for lb, v in overview["splits"]["test"]["exits"].items()}
    lexicon_wers = {lb: v["wer"] for lb, v in overview["splits"]["test"]["lexicon_beam"].items()}
    assert parse_wer_results(text) == {"test": greedy_wers}  # the seed's reader sees the greedy table
    assert parse_wer_results(text, "lexicon + 2-gram LM") == {"test": lexicon_wers}
    assert parse_decoder_wer_results(text) == {
        None: {"test": greedy_wers},
        "lexicon+2-gram-LM": {"test": lexicon_wers},
    }
    assert (out / "wer_by_exit.png").read_bytes()[:4] == b"\x89PNG"

    # another split in the same folder without the LM: each decoder keeps its own table
    assert _evaluate(files, out, "--splits", "dev", *lexicon) == 0
    printed = capsys.readouterr().out.strip()
    tables = parse_decoder_wer_results((out / "wer_results.txt").read_text())
    assert list(tables) == [None, "lexicon+2-gram-LM", "lexicon"]
    assert list(tables[None]) == ["test", "dev"] and list(tables["lexicon"]) == ["dev"]
    assert [t.splitlines()[0].split()[2] for t in printed.split("\n\n")] == ["greedy", "lexicon", "lexicon"]


def test_greedy_alone_keeps_the_seeds_table(files, capsys: pytest.CaptureFixture) -> None:
    out = files["root"] / "greedy"
    assert _evaluate(files, out, "--splits", "dev") == 0
    printed = capsys.readouterr().out.strip()
    assert printed.splitlines()[0].split() == ["WER", "(%)", "layer_2", "layer_4"] and "\n\n" not in printed
    text = (out / "wer_results.txt").read_text()
    assert SEED_WER_RESULTS.match(text) and "[" not in text
    assert list(parse_decoder_wer_results(text)) == [None]


def test_the_lexicon_decoder_without_lm_is_named_lexicon(files, capsys: pytest.CaptureFixture) -> None:
    out = files["root"] / "lexicon"
    flags = ["--exit-stats", "posterior", "--train-splits", "train", "--lexicon-beam-size", "20"]
    assert _evaluate(files, out, "--splits", "dev", *flags) == 0
    printed = capsys.readouterr().out.strip()
    assert [t.splitlines()[0].split()[2] for t in printed.split("\n\n")] == ["greedy", "lexicon"]
    assert "split: dev[lexicon]\n" in (out / "wer_results.txt").read_text()


def test_decoder_names() -> None:
    assert main_decoder_name({"decoder": "greedy"}) == "greedy"
    assert main_decoder_name({"decoder": "beam", "kenlm": None}) == "beam"
    assert main_decoder_name({"decoder": "beam", "kenlm": "lm.arpa"}) == "beam + LM"
    assert main_decoder_name({}) == "greedy"  # a summary of an earlier release
    assert lexicon_decoder_name({"lexicon": "file x"}) == "lexicon"
    assert lexicon_decoder_name({"lexicon_lm": "3-gram Kneser-Ney model of the transcripts of train"}) == (
        "lexicon + 3-gram LM"
    )
    assert lexicon_decoder_name({"lexicon_lm": "file /x/lm.arpa"}) == "lexicon + LM"
    assert decoder_key("lexicon + 3-gram LM") == "lexicon+3-gram-LM" and decoder_key("lexicon") == "lexicon"


def test_wer_results_round_trip_with_decoders() -> None:
    greedy = {"a": {"layer_2": 0.5, "layer_4": 0.25}, "b": {"layer_2": 0.75, "layer_4": 0.5}}
    others = {
        "lexicon": {"a": {"layer_2": 0.125, "layer_4": 0.0625}},
        "lexicon + LM": {"b": {"layer_2": 0.1}},
    }
    text = format_wer_results(greedy, others)
    assert SEED_WER_RESULTS.match(text)
    assert text.startswith(format_wer_results(greedy))  # the seed's blocks first, unchanged
    assert parse_wer_results(text) == greedy
    assert parse_wer_results(text, "lexicon") == others["lexicon"]
    assert parse_wer_results(text, "lexicon+LM") == others["lexicon + LM"]
    assert format_wer_results(greedy, {}) == format_wer_results(greedy)


def test_the_plot_draws_every_decoder(tmp_path: Path) -> None:
    path = tmp_path / "wer.png"
    plot_wer_by_exit(
        {"test": {2: 0.5, 4: 0.3}},
        path,
        "model",
        {"lexicon + 3-gram LM": {"test": {2: 0.1, 4: 0.05}}},
        "greedy",
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    plot_wer_by_exit({"test": {2: 0.5, 4: 0.3}}, tmp_path / "plain.png")  # the seed's plot, as before
    assert (tmp_path / "plain.png").is_file()
