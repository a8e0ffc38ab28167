"""One command-line language: every subcommand's parser spells the shared ideas the same way.

The parsers are built without running their command (``wav2vec2_ee.cli.build_parser``)."""

from __future__ import annotations

import argparse

import pytest

from wav2vec2_ee import cli
from wav2vec2_ee.cli import COMMANDS, build_parser
from wav2vec2_ee.command_line import DEPRECATED_FLAGS, output_dir_of, rewrite_deprecated

#: flag -> (dest, type, nargs, commands that have it, a phrase of its help)
SHARED = {
    "--splits": ("splits", str, "+", {"evaluate", "sweep", "calibrate"}, "split"),
    "--output-dir": ("output_dir", str, None, set(COMMANDS) - {"transcribe", "serve"}, ""),
    "--progress": ("progress", None, "?", set(COMMANDS) - {"transcribe", "serve"}, "show"),
    "--num-threads": ("num_threads", int, None, {"transcribe", "sweep", "calibrate", "evaluate", "demo", "serve"}, "torch CPU threads"),
    "--device": ("device", str, None, {"transcribe", "sweep", "calibrate", "evaluate", "demo", "serve"}, "where the model runs"),
    "--dtype": ("dtype", str, None, {"transcribe", "sweep", "calibrate", "evaluate", "demo", "serve"}, "precision"),
    "--time-budget-minutes": ("time_budget_minutes", float, None, {"train", "demo"}, "minutes"),
    "--batch-size": ("batch_size", int, None, {"transcribe", "sweep", "calibrate", "evaluate"}, "utterances per"),
    "--num-workers": ("num_workers", int, None, {"evaluate", "make-corpus"}, "worker processes"),
}  # fmt: skip

PARSERS = {name: build_parser(name) for name in COMMANDS}
#: the required flags of each command, for parsing a command line without running it
REQUIRED = {c: ["--data", "d", "ckpt"] for c in ("evaluate", "sweep", "calibrate")}


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    return PARSERS[command].parse_known_args([*REQUIRED.get(command, []), *argv])[0]


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_is_dashed_and_accepts_underscores(command: str) -> None:
    parser = PARSERS[command]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        first = action.option_strings[0]
        assert "_" not in first, (command, action.option_strings)
        for option in action.option_strings:
            if option.startswith("--") and "-" in option[2:]:
                twin = "--" + option[2:].replace("-", "_")
                assert parser._option_string_actions.get(twin) is action, (command, option)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_has_a_description_and_each_default_once(command: str, capsys: pytest.CaptureFixture) -> None:
    parser = PARSERS[command]
    assert parser.description
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert " ".join(parser.description.split()[:4]) in " ".join(printed.split())
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action).lower()
        assert text.count("(default:") <= 1, (command, action.option_strings, text)
        if "default" in action.help.lower():  # the help states its default: not added again
            assert text.count("default") == action.help.lower().count("default"), (command, text)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_x_says_do_not(command: str) -> None:
    parser = PARSERS[command]
    for action in parser._actions:
        if action.nargs == 0 and action.const is False and action.option_strings[0].startswith("--no-"):
            assert action.help and action.help.lower().startswith("do not "), (command, action.option_strings)


@pytest.mark.parametrize("flag", list(SHARED))
def test_shared_flags_agree(flag: str) -> None:
    dest, kind, nargs, commands, phrase = SHARED[flag]
    for command in COMMANDS:
        action = _action(PARSERS[command], flag)
        if command not in commands:
            continue
        assert action is not None, f"wav2vec2-ee {command} has no {flag}"
        assert action.dest == dest, (command, flag, action.dest)
        if kind is not None:
            assert action.type is kind, (command, flag, action.type)
        assert action.nargs == nargs, (command, flag, action.nargs)
        assert phrase.lower() in (action.help or "").lower(), (command, flag, action.help)
        if flag == "--progress":
            negative = _action(PARSERS[command], "--no-progress")
            assert negative is not None and negative.dest == "progress", command
            assert _parse(command, ["--no-progress"]).progress is False


def test_no_command_keeps_an_old_spelling_visible() -> None:
    for command, table in DEPRECATED_FLAGS.items():
        help_text = PARSERS[command].format_help()
        for old in table:
            assert f"{old} " not in help_text.replace(f"{old}-", ""), (command, old)
    for command in COMMANDS:  # the spellings the issue named
        help_text = PARSERS[command].format_help()
        for old in ("--threads ", "--workers ", "--split ", "--processes "):
            assert old not in help_text, (command, old)


@pytest.mark.parametrize(
    ("command", "old", "new", "dest", "value"),
    [
        ("sweep", ["--split", "dev"], ["--splits", "dev"], "splits", ["dev"]),
        ("calibrate", ["--split=dev"], ["--splits", "dev"], "splits", ["dev"]),
        ("demo", ["--threads", "2"], ["--num-threads", "2"], "num_threads", 2),
        ("demo", ["--time-budget", "3"], ["--time-budget-minutes", "3"], "time_budget_minutes", 3.0),
        ("make-corpus", ["--workers", "2"], ["--num-workers", "2"], "num_workers", 2),
        ("evaluate", ["--processes", "2"], ["--num-processes", "2"], "processes", 2),
    ],
)
def test_old_spellings_work_with_one_deprecation_line(
    command, old, new, dest, value, capsys: pytest.CaptureFixture
) -> None:
    assert getattr(_parse(command, new), dest) == value
    assert capsys.readouterr().err == ""
    assert getattr(_parse(command, old + old), dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wav2vec2-ee {command}: {old[0].split('=')[0]} is deprecated, use {new[0]}"]


def test_train_time_budget_seconds_is_deprecated_but_keeps_its_unit(capsys: pytest.CaptureFixture) -> None:
    from wav2vec2_ee.training.cli import parse_args

    run = parse_args(["--output-dir", "out", "--time-budget", "90"])[3]
    assert run.time_budget == 90.0
    assert "--time-budget (seconds) is deprecated, use --time-budget-minutes" in capsys.readouterr().err
    run = parse_args(["--output_dir", "out", "--time-budget-minutes", "1.5"])[3]
    assert run.time_budget == 90.0 and run.time_budget_minutes == 1.5
    assert capsys.readouterr().err == ""


def test_train_no_progress_disables_the_trainers_bars() -> None:
    from wav2vec2_ee.training.cli import parse_args

    assert parse_args(["--output-dir", "out", "--no-progress"])[4].disable_tqdm is True


@pytest.mark.parametrize("flag", ["--resume_from_checkpoint", "--resume-from-checkpoint"])
def test_train_refuses_resume_from_checkpoint(flag: str) -> None:
    from wav2vec2_ee.training.cli import parse_args

    with pytest.raises(ValueError, match="use --resume"):
        parse_args(["--output-dir", "out", flag, "out/checkpoint-10"])


def test_resume_from_checkpoint_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--output-dir", "out", "--resume_from_checkpoint", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wav2vec2-ee train: error: --resume-from-checkpoint x")


def test_positional_output_dir_is_deprecated(capsys: pytest.CaptureFixture) -> None:
    for command in ("evaluate", "sweep", "make-corpus"):
        namespace = _parse(command, ["out"])
        assert output_dir_of(command, namespace) == "out"
        assert capsys.readouterr().err.strip() == (
            f"wav2vec2-ee {command}: the positional output folder is deprecated, use --output-dir"
        )
        namespace = _parse(command, ["--output-dir", "out"])
        assert output_dir_of(command, namespace) == "out"
        assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="--output-dir"):
        output_dir_of("sweep", argparse.Namespace(output_dir=None, deprecated_output_dir=None))
    with pytest.raises(ValueError, match="two output folders"):
        output_dir_of("sweep", argparse.Namespace(output_dir="a", deprecated_output_dir="b"))


def test_rewrite_leaves_values_and_the_rest_alone() -> None:
    argv = ["--data", "--split", "--split", "dev", "--", "--split"]
    assert rewrite_deprecated("sweep", argv)[-1] == "--split"
    assert rewrite_deprecated("evaluate", ["--splits", "a"]) == ["--splits", "a"]


def test_sweep_takes_one_split() -> None:
    from wav2vec2_ee.inference.arguments import SweepArguments

    assert SweepArguments(data="d", splits=["dev"]).split == "dev"
    assert SweepArguments(data="d", split="dev").splits == ["dev"]
    with pytest.raises(ValueError, match="one split"):
        SweepArguments(data="d", splits=["dev", "test"])


# --------------------------------------------------------------------------------------------------
# issue 30: one name per concept (policy file, LM options, --output), old spellings for one release


@pytest.mark.parametrize(
    ("command", "old", "new", "dest", "value"),
    [
        ("export", ["--policy", "p.json"], ["--policy-file", "p.json"], "policy", "p.json"),
        ("calibrate", ["--output", "x.json"], ["--policy-file", "x.json"], "output", "x.json"),
        ("evaluate", ["--lexicon-lm", "a.arpa"], ["--lm", "a.arpa"], "lexicon_lm", "a.arpa"),
        ("evaluate", ["--lexicon-lm-order", "3"], ["--lm-order", "3"], "lexicon_lm_order", 3),
        ("evaluate", ["--lexicon_lm_weight=0.5"], ["--lm-weight", "0.5"], "lexicon_lm_weight", 0.5),
        ("evaluate", ["--lm-alpha", "0.7"], ["--kenlm-weight", "0.7"], "lm_alpha", 0.7),
        ("evaluate", ["--lm-beta", "2"], ["--kenlm-word-score", "2"], "lm_beta", 2.0),
        ("sweep", ["--score-lm-order", "2"], ["--lm-order", "2"], "score_lm_order", 2),
        ("calibrate", ["--score-lm-weight", "0.5"], ["--lm-weight", "0.5"], "score_lm_weight", 0.5),
        ("sweep", ["--score_word_score", "2"], ["--lm-word-score", "2"], "score_word_score", 2.0),
        ("calibrate", ["--score-beam-size", "20"], ["--lm-beam-size", "20"], "score_beam_size", 20),
    ],
)
def test_renamed_flags_and_their_old_spellings(command, old, new, dest, value, capsys) -> None:
    assert getattr(_parse(command, new), dest) == value
    assert capsys.readouterr().err == ""
    assert getattr(_parse(command, old), dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wav2vec2-ee {command}: {old[0].split('=')[0]} is deprecated, use {new[0]}"]
    assert old[0].split("=")[0] in DEPRECATED_FLAGS[command]


#: one idea, one flag: flag -> (the commands that have it, a phrase of its help in each)
ONE_NAME = {
    "--policy-file": ({"export", "calibrate"}, "policy"),
    "--lm-order": ({"evaluate", "sweep", "calibrate"}, "n-gram model of this order"),
    "--lm-weight": ({"evaluate", "sweep", "calibrate"}, "weight"),
    "--output": ({"transcribe"}, "write one row per file"),
    "--policy": ({"transcribe", "calibrate"}, "learned"),
}


@pytest.mark.parametrize("flag", list(ONE_NAME))
def test_one_flag_per_idea(flag: str) -> None:
    commands, phrase = ONE_NAME[flag]
    for command in COMMANDS:
        action = _action(PARSERS[command], flag)
        if command in commands:
            assert action is not None, (command, flag)
        if action is None or flag in DEPRECATED_FLAGS.get(command, {}):
            continue  # absent, or an old spelling rewritten (with a deprecation line) before parsing
        # wherever the flag is, it is the same idea, and its shown spelling
        assert phrase in " ".join((action.help or "").split()), (command, flag, action.help)
        assert flag in action.option_strings[:1], (command, action.option_strings)


def test_export_and_calibrate_write_the_policy_file_by_its_new_name(tmp_path) -> None:
    from wav2vec2_ee.inference.arguments import CalibrateArguments

    args = PARSERS["calibrate"].parse_args_into_dataclasses(
        args=[
            "ckpt",
            "--data",
            "d",
            "--splits",
            "dev",
            "--save-policy",
            "--policy-file",
            str(tmp_path / "p.json"),
        ]
    )[0]
    assert isinstance(args, CalibrateArguments) and args.output == str(tmp_path / "p.json")
    with pytest.raises(ValueError, match="--policy-file is where --save-policy writes"):
        PARSERS["calibrate"].parse_args_into_dataclasses(
            args=["ckpt", "--data", "d", "--policy-file", str(tmp_path / "p.json")]
        )
    assert "--policy FILE" not in PARSERS["export"].format_help()
