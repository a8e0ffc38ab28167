"""`wav2vec2-ee <command>`: a thin dispatcher over the library's command modules.

Each command lives in the module that owns its concept and exposes ``main(argv) -> int``. Errors of
bad input (a :class:`~wav2vec2_ee.errors.UserError`: a bad argument, flag combination or file content,
an optional extra that is not installed; an ``OSError`` such as a missing or unwritable file or an
output folder that is a file; a corrupt ``.safetensors`` file; a config field of the wrong type;
``--num-threads`` below 1) print one line ``wav2vec2-ee <command>: error: <message>`` naming the file,
argument or extra and exit with status 2; ``-v`` / ``--debug`` (anywhere on the command line) or
``WAV2VEC2_EE_DEBUG=1`` show the traceback instead. Any other exception (a plain ``ValueError``
included) is a bug: its traceback is shown.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Iterator

from .errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("wav2vec2_ee.training.cli", "fine-tune or train an early-exit model (ee, kd, dkd, confidence)"),
    "evaluate": ("wav2vec2_ee.evaluation.cli", "layer-wise WER of a checkpoint, in the seed's result files"),
    "transcribe": ("wav2vec2_ee.inference.cli:transcribe_main", "transcribe audio files with an exit policy"),
    "sweep": (
        "wav2vec2_ee.inference.cli:sweep_main",
        "WER / compute trade-off of exit policies over thresholds",
    ),
    "calibrate": (
        "wav2vec2_ee.inference.cli:calibrate_main",
        "pick an exit policy's threshold on a dev split",
    ),
    "make-corpus": ("wav2vec2_ee.corpus.cli", "synthesise the embedded speech corpus with eSpeak NG"),
    "demo": ("wav2vec2_ee.demo.cli", "build the corpus, train, evaluate and print the WER-by-exit table"),
    "export": ("wav2vec2_ee.export.cli", "write a checkpoint as ONNX segments (input stage, blocks, heads)"),
}


#: How to build each command's parser without running the command (``--help`` and the consistency test).
PARSERS: dict[str, str] = {
    "train": "wav2vec2_ee.training.cli:build_parser",
    "evaluate": "wav2vec2_ee.evaluation.cli:build_parser",
    "transcribe": "wav2vec2_ee.inference.cli:transcribe_parser",
    "sweep": "wav2vec2_ee.inference.cli:sweep_parser",
    "calibrate": "wav2vec2_ee.inference.cli:calibrate_parser",
    "make-corpus": "wav2vec2_ee.corpus.cli:build_parser",
    "demo": "wav2vec2_ee.demo.cli:build_parser",
    "export": "wav2vec2_ee.export.cli:build_parser",
}


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``wav2vec2-ee <command>``, built without running the command."""
    module_name, _, func = PARSERS[command].partition(":")
    return getattr(importlib.import_module(module_name), func)()


# --------------------------------------------------------------------------------------------------
# One command-line language (the transformers example scripts' style):
#
# * long flags are dashed (``--num-threads``); the underscore spelling (``--num_threads``) is accepted
#   too, as ``HfArgumentParser`` does, but not shown in ``--help``;
# * one name and unit per idea: ``--num-threads`` (torch CPU threads), ``--num-workers`` (worker
#   processes), ``--splits`` (one or more), ``--output-dir``, ``--time-budget-minutes``,
#   ``--progress / --no-progress``, ``--device`` / ``--dtype``;
# * every default is printed once, and ``--no-x`` says "do not ..." of ``--x``;
# * the spellings of the previous release keep working for one release, with one line on stderr
#   (``wav2vec2-ee sweep: --split is deprecated, use --splits``): :data:`DEPRECATED_FLAGS`.

#: ``command -> {old flag: new flag}``; both spellings of an old flag (dash, underscore) are listed.
#: ``train --time-budget`` keeps its unit (seconds) for this release; the new flag counts minutes.
DEPRECATED_FLAGS: dict[str, dict[str, str]] = {
    "train": {"--time-budget": "--time-budget-minutes", "--time_budget": "--time-budget-minutes"},
    "evaluate": {"--processes": "--num-processes"},
    "sweep": {"--split": "--splits"},
    "calibrate": {"--split": "--splits"},
    "make-corpus": {"--workers": "--num-workers"},
    "demo": {
        "--threads": "--num-threads",
        "--time-budget": "--time-budget-minutes",
        "--time_budget": "--time-budget-minutes",
    },
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
    already states it, nor ``None`` / ``False``)."""

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
    accepted after the other positionals, with a deprecation line: :func:`output_dir_of`)."""
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", type=str, default=None, help=help_)
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


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: wav2vec2-ee [-v | --debug] <command> [options]   (wav2vec2-ee <command> --help for its options)",
        "",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "  -v, --debug  show the full traceback of an error (also WAV2VEC2_EE_DEBUG=1)"]
    return "\n".join(lines)


#: Flags that show tracebacks; accepted anywhere before or after the command (and removed from argv).
DEBUG_FLAGS = ("-v", "--debug")
#: ``train``'s own ``--debug`` (``TrainingArguments.debug``) takes one of these values: left alone then.
_TRAINER_DEBUG_VALUES = ("underflow_overflow", "tpu_metrics_debug")


def _take_debug_flags(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``-v`` / ``--debug`` (up to a ``--``), and whether one was there. A ``--debug``
    followed by a value of the Trainer's ``--debug`` option (``train --debug underflow_overflow``)
    belongs to that option and stays."""
    out: list[str] = []
    debug = False
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in DEBUG_FLAGS and not (
            arg == "--debug" and any(v in following for v in _TRAINER_DEBUG_VALUES)
        ):
            debug = True
            continue
        out.append(arg)
    return out, debug


def _env_debug() -> bool:
    return os.environ.get("WAV2VEC2_EE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _path_in_traceback(err: BaseException, suffixes: tuple[str, ...]) -> str | None:
    """The innermost local variable of ``err``'s traceback that is a path ending in ``suffixes``: the
    file an exception without a file name (a ``SafetensorError``) was about."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, str | os.PathLike) and str(value).endswith(suffixes):
                return str(value)
    return None


def _os_error_message(err: OSError) -> str:
    """``<file>: <reason>`` for an ``OSError`` of the operating system (a folder that is a file, no
    permission, a full disk); the message as it is for one raised with a message (transformers' invalid
    ``config.json``, our own ``FileNotFoundError`` s)."""
    if err.filename is None or not err.strerror:
        return str(err)
    where = str(err.filename) + (f" -> {err.filename2}" if err.filename2 is not None else "")
    hint = {
        errno.EEXIST: " (it is a file where a folder is needed)",
        errno.ENOTDIR: " (a part of the path is a file where a folder is needed)",
        errno.EISDIR: " (it is a folder where a file is needed)",
        errno.ENOSPC: " (the disk is full)",
        errno.EACCES: " (no permission: choose another path or fix its permissions)",
        errno.EROFS: " (a read-only file system)",
    }.get(err.errno or 0, "")
    return f"{where}: {err.strerror}{hint}"


def _error_message(err: BaseException) -> str | None:
    """One line naming the file or argument of a bad-input error; ``None`` for an error that is a bug
    (its traceback is shown)."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    if isinstance(err, UserError):  # bad input, a missing extra / program / voice (named with its package)
        return str(err)
    if isinstance(err, OSError):
        return _os_error_message(err)
    if isinstance(err, SafetensorError):
        where = _path_in_traceback(err, (".safetensors",)) or "a .safetensors weights file"
        return _one_line(
            f"{where}: not a readable safetensors file ({err}): it is truncated, empty or not safetensors; "
            "save or download the checkpoint again"
        )
    if isinstance(err, StrictDataclassError):  # transformers' configs: a field of the wrong type
        where = _path_in_traceback(err, (".json", ".yaml", ".yml"))
        return _one_line(f"{where}: {err}" if where else err)
    if isinstance(err, RuntimeError) and "set_num_threads" in str(err):
        return f"--num-threads must be an integer >= 1 ({_one_line(err)})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv, debug = _take_debug_flags(list(sys.argv[1:] if argv is None else argv))
    debug = debug or _env_debug()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wav2vec2-ee: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, _, func = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return int(getattr(module, func or "main")(rest) or 0)
    except Exception as err:
        # Bad input (a UserError: an argument, a file, a missing extra; an OSError ...): one line naming
        # it, exit 2; -v / --debug / WAV2VEC2_EE_DEBUG=1 show the traceback. Anything else (a plain
        # ValueError included) is a bug: its traceback is shown.
        message = _error_message(err)
        if debug or message is None:
            raise
        print(f"wav2vec2-ee {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
