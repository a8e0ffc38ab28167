"""``--help`` of every command without torch (issue 30, item 5): what it imports, what it shows.

Timing under load is meaningless, so the speed is checked structurally: building every command's parser,
and ``wav2vec2-ee <command> --help`` itself, import neither torch nor transformers' heavy modules (each
in a fresh interpreter). ``train``'s parser needs transformers' ``TrainingArguments`` (torch): its help is
the text generated from that parser and kept in the package, checked here to be up to date.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wav2vec2_ee.cli import COMMANDS, HELP_TEXTS, PARSERS, wants_help
from wav2vec2_ee.cli import main as cli_main

#: Modules whose import makes --help slow (seconds): torch and what pulls it in.
HEAVY = ("torch", "transformers.training_args", "transformers.modeling_utils", "transformers.trainer")

_PROBE = """
import json, sys
from wav2vec2_ee import cli
mode, command = sys.argv[1], sys.argv[2]
if mode == "parser":
    cli.build_parser(command).format_help()
else:
    try:
        cli.main([command, "--help"])
    except SystemExit as stop:
        assert stop.code == 0, stop.code
heavy = [m for m in json.loads(sys.argv[3]) if m in sys.modules]
print(json.dumps(heavy))
"""


def _heavy_imports(mode: str, command: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, command, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in HELP_TEXTS])
def test_building_the_parser_imports_no_torch(command: str) -> None:
    assert _heavy_imports("parser", command) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_imports_no_torch(command: str) -> None:
    assert _heavy_imports("help", command) == []


def test_every_command_has_a_parser_and_only_train_needs_a_kept_text() -> None:
    assert set(PARSERS) == set(COMMANDS)
    assert set(HELP_TEXTS) == {"train"}


def test_the_kept_train_help_is_the_parsers() -> None:
    from wav2vec2_ee.training import help_text

    generated = help_text.generate()
    assert help_text.stored() is not None, "the kept text was generated with other versions"
    assert help_text._path().read_text(encoding="utf-8") == generated, (
        "src/wav2vec2_ee/resources/train_help.txt is out of date: python -m wav2vec2_ee.training.help_text --write"
    )
    assert help_text.help_text() == generated.partition("\n")[2]


def test_train_help_prints_the_kept_text(capsys: pytest.CaptureFixture) -> None:
    from wav2vec2_ee.training import help_text

    with pytest.raises(SystemExit) as stop:
        cli_main(["train", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert (
        out == help_text.help_text()
        and "--overwrite-output-dir" in out
        and "--per-device-train-batch-size" in out
    )


def test_a_kept_text_of_other_versions_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from wav2vec2_ee.training import help_text

    monkeypatch.setattr(help_text, "versions", lambda: "transformers 0.0.0, Python 2.7")
    assert help_text.stored() is None
    assert "--per-device-train-batch-size" in help_text.help_text()  # built from the parser instead


def test_train_help_with_a_config_file_shows_its_values(tmp_path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"learning_rate": 0.123}))
    with pytest.raises(SystemExit):
        cli_main(["train", str(config), "--help"])
    assert "0.123" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], True), (["x", "-h"], True), (["--data", "d"], False), (["--", "--help"], False)],
)
def test_wants_help(argv: list[str], expected: bool) -> None:
    assert wants_help(argv) is expected


@pytest.mark.parametrize("command", ["evaluate", "sweep", "make-corpus"])
def test_a_required_output_dir_is_shown_required(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    text = capsys.readouterr().out
    usage = " ".join(text.split("\n\n")[0].split())
    assert "--output-dir OUTPUT_DIR" in usage and "[--output-dir" not in usage
    assert "(required)" in " ".join(text.split())


def test_one_default_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 utterances per batch on a CPU for evaluate, transcribe and sweep (and calibrate)."""
    from wav2vec2_ee.evaluation.arguments import EvaluationArguments
    from wav2vec2_ee.inference.arguments import SweepArguments, TranscribeArguments

    assert TranscribeArguments().batch_size == 16
    for cls in (EvaluationArguments, SweepArguments):
        help_ = next(f for f in cls.__dataclass_fields__.values() if f.name == "batch_size").metadata["help"]
        assert "16 on CPU" in help_, cls
    # evaluate resolves its default to 16 on a CPU, as sweep and calibrate do
    from wav2vec2_ee.evaluation import evaluate as evaluate_module

    seen = []
    real = evaluate_module.default_batching
    monkeypatch.setattr(
        evaluate_module, "default_batching", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )
    monkeypatch.setattr(evaluate_module, "load_evaluation_model", lambda *a, **k: _Model())
    monkeypatch.setattr(evaluate_module, "_base_settings", lambda *a: {})
    monkeypatch.setattr(evaluate_module, "merge_finished_splits", lambda *a: {})
    monkeypatch.setattr(evaluate_module, "write_overview", lambda *a: {"splits": {}, "decoder": "greedy"})
    evaluate_module._evaluate_locked("ckpt", None, EvaluationArguments(data="d", plot=False), _Device(), [])
    assert seen == [(16, 320.0)]


class _Device:
    device = "cpu"
    dtype = "float32"


class _Model:
    device = "cpu"
    tokenizer = None
    has_exits = True
    layers = [2]
    labels = ["layer_2"]
