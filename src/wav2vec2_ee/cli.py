"""`wav2vec2-ee <command>`: a thin dispatcher over the library's command modules.

Each command lives in the module that owns its concept and exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys

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
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: wav2vec2-ee <command> [options]   (wav2vec2-ee <command> --help for its options)", ""]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    module = importlib.import_module(module_name)
    try:
        return int(getattr(module, func or "main")(rest) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one line naming the problem; WAV2VEC2_EE_DEBUG=1 shows the traceback.
        if os.environ.get("WAV2VEC2_EE_DEBUG"):
            raise
        print(f"wav2vec2-ee {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
