"""What every subcommand's parser shares with the others: one command-line language.

The subcommand modules (``training/cli.py``, ``evaluation/cli.py``, ...) import it; the dispatcher
(:mod:`wav2vec2_ee.cli`) sits above them all and imports none of this module's users at import time.

The language (the transformers example scripts' style):

* long flags are dashed (``--num-threads``); the underscore spelling (``--num_threads``) is accepted
  too, as ``HfArgumentParser`` does, but not shown in ``--help``;
* one name and unit per idea: ``--num-threads`` (torch CPU threads), ``--num-workers`` (worker
  processes), ``--splits`` (one or more), ``--output-dir`` (a command's output folder, shown required
  where it is), ``--output`` (a results file), ``--policy`` (an exit policy's name), ``--policy-file``
  (a saved exit policy's file), ``--lm`` / ``--lm-order`` / ``--lm-weight`` / ``--lm-word-score`` /
  ``--lm-beam-size`` (the word n-gram model of a lexicon decoder), ``--batch-size`` (16 utterances by
  default on a CPU), ``--time-budget-minutes``, ``--progress / --no-progress``, ``--device`` / ``--dtype``;
* every default is printed once, and ``--no-x`` says "do not ..." of ``--x``;
* the spellings of the previous release keep working for one release, with one line on stderr
  (``wav2vec2-ee sweep: --split is deprecated, use --splits``): :data:`DEPRECATED_FLAGS`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from .errors import UserError


def _spellings(table: dict[str, str]) -> dict[str, str]:
    """``table`` with the underscore spelling of each dashed old flag beside it (both are accepted)."""
    out = dict(table)
    for old, new in table.items():
        out.setdefault("--" + old[2:].replace("-", "_"), new)
    return out


#: The word n-gram model of the scored lexicon decoder of ``sweep`` / ``calibrate`` (``--score-lm-*``
#: until this release): the ``--lm-*`` flags, as in ``evaluate``.
_SCORE_LM = {
    "--score-lm-order": "--lm-order",
    "--score-lm-weight": "--lm-weight",
    "--score-word-score": "--lm-word-score",
    "--score-beam-size": "--lm-beam-size",
}

#: ``command -> {old flag: new flag}``; both spellings of an old flag (dash, underscore) are listed.
#: ``train --time-budget`` keeps its unit (seconds) for this release; the new flag counts minutes.
DEPRECATED_FLAGS: dict[str, dict[str, str]] = {
    "train": {"--time-budget": "--time-budget-minutes", "--time_budget": "--time-budget-minutes"},
    "evaluate": _spellings(
        {
            "--processes": "--num-processes",
            "--lexicon-lm": "--lm",
            "--lexicon-lm-order": "--lm-order",
            "--lexicon-lm-weight": "--lm-weight",
            "--lm-alpha": "--kenlm-weight",
            "--lm-beta": "--kenlm-word-score",
        }
    ),
    "sweep": _spellings({"--split": "--splits", **_SCORE_LM}),
    "calibrate": _spellings({"--split": "--splits", "--output": "--policy-file", **_SCORE_LM}),
    "make-corpus": {"--workers": "--num-workers"},
    "demo": {
        "--threads": "--num-threads",
        "--time-budget": "--time-budget-minutes",
        "--time_budget": "--time-budget-minutes",
    },
    "export": {"--policy": "--policy-file"},
}
#: Old spellings that stay as they are on the command line (their flag keeps an old unit for one
#: release), only announced: ``train --time-budget`` (seconds).
_KEPT_DEPRECATED = {("train", "--time-budget"), ("train", "--time_budget")}


def deprecation(command: str, old: str, new: str) -> None:
    """The one line on stderr for a used old spelling."""
    print(f"wav2vec2-ee {command}: {old} is deprecated, use {new}", file=sys.stderr)


def rewrite_deprecated(command: str, argv: list[str]) -> list[str]:
    """``argv`` with the old spellings of :data:`DEPRECATED_FLAGS` replaced by the new ones (up to a
    ``--``), one deprecation line per old spelling used."""
    table = DEPRECATED_FLAGS.get(command, {})
    out: list[str] = []
    said: set[str] = set()
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        flag, eq, value = arg.partition("=")
        if flag in table:
            if flag not in said:
                unit = " (seconds)" if (command, flag) in _KEPT_DEPRECATED else ""
                deprecation(command, flag + unit, table[flag])
                said.add(flag)
            if (command, flag) not in _KEPT_DEPRECATED:
                arg = table[flag] + eq + value
        out.append(arg)
    return out


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` in one style: dashed spellings only, each default shown once (not where the help text
    already states it, nor ``None`` / ``False``), and a flag the command requires (``shown_required``,
    e.g. ``--output-dir``, which a deprecated positional may still give) outside brackets in the usage."""

    def _format_usage(self, usage, actions, groups, prefix):
        shown = [a for a in actions if getattr(a, "shown_required", False) and not a.required]
        for action in shown:
            action.required = True
        try:
            return super()._format_usage(usage, actions, groups, prefix)
        finally:
            for action in shown:
                action.required = False

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text.lower()
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or action.default == []
            or action.nargs == 0  # --no-x, store_true
        ):
            return text
        if text.endswith("."):
            return f"{text[:-1]} (default: %(default)s)."
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        strings = action.option_strings
        hidden = getattr(action, "deprecated_options", ())
        shown = [s for s in strings if "_" not in s and s not in hidden] or strings[:1]
        action.option_strings = shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = strings


def _dashed(option: str) -> str:
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


def _do_not(text: str) -> str:
    """``"show progress bars"`` -> ``"do not show progress bars"``."""
    text = text.strip()
    if not text:
        return "do not"
    lower = text[0].lower() + text[1:] if not text[1:2].isupper() else text
    return ("Do not " if text[0].isupper() else "do not ") + lower


def finish_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """Apply the command-line language to ``parser`` (built by ``HfArgumentParser`` or ``argparse``):
    dashed spellings first (underscore ones accepted), ``--progress / --no-progress`` pairs, ``--no-x``
    help texts, the help formatter, and the deprecated spellings of :data:`DEPRECATED_FLAGS` rewritten
    (with their deprecation line) whenever the parser parses."""
    parser.formatter_class = HelpFormatter
    old = DEPRECATED_FLAGS.get(command, {})
    by_dest: dict[str, argparse.Action] = {}
    for action in list(parser._actions):
        if not action.option_strings:
            continue
        for option in list(action.option_strings):
            twins = (_dashed(option), option.replace("-", "_").replace("__", "--", 1))
            for twin in twins if option.startswith("--") else ():
                if twin not in parser._option_string_actions:
                    parser._option_string_actions[twin] = action
                    action.option_strings.append(twin)
        order = list(action.option_strings)
        action.option_strings[:] = sorted(order, key=lambda s: (s in old, "_" in s, order.index(s)))
        action.deprecated_options = [s for s in order if s in old]  # type: ignore[attr-defined]
        if action.nargs == 0 and action.const is False and action.dest in by_dest:  # --no-x
            positive = by_dest[action.dest]
            action.help = _do_not(positive.help or "") if positive.help != argparse.SUPPRESS else action.help
        else:
            by_dest.setdefault(action.dest, action)
    progress = by_dest.get("progress")
    if progress is not None and "--no-progress" not in parser._option_string_actions:
        group = next((g for g in parser._action_groups if progress in g._group_actions), parser)
        group.add_argument(
            "--no-progress", "--no_progress", action="store_false", dest="progress",
            help=_do_not(progress.help or "show progress bars"),
        )  # fmt: skip

    parse_known_args = parser.parse_known_args

    def parse_known_args_rewritten(args=None, namespace=None):
        args = rewrite_deprecated(command, list(sys.argv[1:] if args is None else args))
        return parse_known_args(args, namespace)

    parser.parse_known_args = parse_known_args_rewritten  # type: ignore[method-assign]
    return parser


def add_output_dir(parser: argparse.ArgumentParser, help_: str) -> None:
    """``--output-dir`` of a command whose output folder was positional in the previous release (still
    accepted after the other positionals, with a deprecation line: :func:`output_dir_of`). The command
    requires one of them: ``--output-dir`` is shown as required (outside brackets in the usage), and
    :func:`output_dir_of` refuses neither."""
    required = f"{help_[:-1]} (required)." if help_.endswith(".") else f"{help_} (required)"
    action = parser.add_argument(
        "--output-dir", "--output_dir", dest="output_dir", type=str, default=None, help=required
    )
    action.shown_required = True  # type: ignore[attr-defined]
    parser.add_argument("deprecated_output_dir", nargs="?", default=None, help=argparse.SUPPRESS)


def output_dir_of(command: str, namespace: argparse.Namespace) -> str:
    """The output folder of :func:`add_output_dir`'s flags: ``--output-dir``, or the deprecated
    positional one (announced on stderr); neither, or two different ones, is a :class:`UserError`."""
    positional = getattr(namespace, "deprecated_output_dir", None)
    flag = getattr(namespace, "output_dir", None)
    if positional is not None:
        if flag is not None and flag != positional:
            raise UserError(
                f"two output folders: {positional} (positional) and --output-dir {flag}; give only --output-dir"
            )
        deprecation(command, "the positional output folder", "--output-dir")
        return positional
    if flag is None:
        raise UserError(f"the following arguments are required: --output-dir (wav2vec2-ee {command} --help)")
    return flag


@contextlib.contextmanager
def parsing_flags() -> Iterator[None]:
    """The one boundary where a command parses its command line (argparse, ``HfArgumentParser``, the
    option dataclasses' ``__post_init__``, transformers' ``TrainingArguments``): a ``ValueError`` raised
    there is about the flags the user gave, so it leaves as a :class:`UserError` (one line)."""
    try:
        yield
    except UserError:
        raise
    except ValueError as err:
        raise UserError(str(err)) from err
