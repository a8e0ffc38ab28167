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
import errno
import importlib
import os
import sys

from . import __version__
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
    "serve": ("wav2vec2_ee.serving.cli", "an OpenAI-compatible transcription server whose exits absorb load"),
}


#: How to build each command's parser without running the command (``--help`` and the consistency test).
#: Each but ``train``'s is built without importing torch (``tests/test_cli_help.py``).
PARSERS: dict[str, str] = {
    "train": "wav2vec2_ee.training.cli:build_parser",
    "evaluate": "wav2vec2_ee.evaluation.cli:build_parser",
    "transcribe": "wav2vec2_ee.inference.cli:transcribe_parser",
    "sweep": "wav2vec2_ee.inference.cli:sweep_parser",
    "calibrate": "wav2vec2_ee.inference.cli:calibrate_parser",
    "make-corpus": "wav2vec2_ee.corpus.cli:build_parser",
    "demo": "wav2vec2_ee.demo.arguments:build_parser",
    "export": "wav2vec2_ee.export.cli:build_parser",
    "serve": "wav2vec2_ee.serving.arguments:build_parser",
}

#: Commands whose parser needs torch (``train``: transformers' ``TrainingArguments``): ``--help`` prints
#: the text generated from the parser and kept in the package, when it matches the installed versions
#: (:mod:`wav2vec2_ee.training.help_text`).
HELP_TEXTS: dict[str, str] = {"train": "wav2vec2_ee.training.help_text:help_text"}


def _target(spec: str):
    module_name, _, func = spec.partition(":")
    return getattr(importlib.import_module(module_name), func)


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``wav2vec2-ee <command>``, built without running the command."""
    return _target(PARSERS[command])()


def wants_help(argv: list[str]) -> bool:
    """Whether a command's arguments ask for its help (``-h`` / ``--help`` before any ``--``)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


def print_help(command: str) -> None:
    """``wav2vec2-ee <command> --help``, without importing the command's module: the parser of
    :data:`PARSERS` (torch-free), or the kept text of :data:`HELP_TEXTS`. Exits with status 0, as
    argparse does."""
    if command in HELP_TEXTS:
        sys.stdout.write(_target(HELP_TEXTS[command])())
    else:
        build_parser(command).print_help()
    raise SystemExit(0)


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
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wav2vec2-ee: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, _, func = target.partition(":")
    # --help answers from the parser alone (under a second: no torch); `train CONFIG.json --help` shows
    # the file's values as the defaults, so its parser is built
    if wants_help(rest) and not (name == "train" and rest[0].endswith((".json", ".yaml", ".yml"))):
        print_help(name)
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
