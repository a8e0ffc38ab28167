"""`wav2vec2-ee demo`: the embedded default, end to end on a laptop CPU (see :mod:`.cli`).

Modules, each importing only those before it (no cycle):

* :mod:`.presets`: the preset dataclasses and values (the demo's and its base's), the train configs they make;
* :mod:`.runs`: one run (:class:`RunSpec`): its training, its evaluation, the WER-by-exit table, and
  :func:`say`, the demo's progress printer;
* :mod:`.base`: ``--build-base``, the pretrained CTC base the demo fine-tunes;
* :mod:`.reproduce`: ``--reproduce``, the seed's result table re-run on the synthetic corpus;
* :mod:`.arguments`: the options (:class:`DemoArguments`) and the parser, torch-free (``--help``);
* :mod:`.cli`: the command (:func:`main`).

The names are imported on first use (PEP 562), so that ``wav2vec2-ee demo --help`` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> its module in this package, imported on first use
_EXPORTS = {
    **dict.fromkeys(("build_base", "export_plain_ctc"), ".base"),
    "DemoArguments": ".arguments",
    **dict.fromkeys(("build_demo_corpus", "busy_cores", "idle_threads", "main"), ".cli"),
    **dict.fromkeys(
        ("BASE_PRESETS", "DEMO_FINETUNE", "DEMO_TRAINING", "PACKAGED_BASE", "PRESETS", "RUN_DEFAULTS",
         "TRAIN_SPLITS", "Decoding", "DemoPreset", "dkd_alphas", "train_config", "write_config_files"),
        ".presets",
    ),
    **dict.fromkeys(("RunResult", "format_reproduce_table", "reproduce_runs", "run_reproduce"), ".reproduce"),
    **dict.fromkeys(("RunSpec", "ee_run", "evaluate_run", "format_wer_by_exit", "say", "train_run"), ".runs"),
}  # fmt: skip

if TYPE_CHECKING:
    from .arguments import DemoArguments
    from .base import build_base, export_plain_ctc
    from .cli import build_demo_corpus, busy_cores, idle_threads, main
    from .presets import (
        BASE_PRESETS,
        DEMO_FINETUNE,
        DEMO_TRAINING,
        PACKAGED_BASE,
        PRESETS,
        RUN_DEFAULTS,
        TRAIN_SPLITS,
        Decoding,
        DemoPreset,
        dkd_alphas,
        train_config,
        write_config_files,
    )
    from .reproduce import RunResult, format_reproduce_table, reproduce_runs, run_reproduce
    from .runs import RunSpec, ee_run, evaluate_run, format_wer_by_exit, say, train_run

__all__ = [
    "BASE_PRESETS",
    "DEMO_FINETUNE",
    "DEMO_TRAINING",
    "PACKAGED_BASE",
    "PRESETS",
    "RUN_DEFAULTS",
    "TRAIN_SPLITS",
    "Decoding",
    "DemoArguments",
    "DemoPreset",
    "RunResult",
    "RunSpec",
    "build_demo_corpus",
    "build_base",
    "busy_cores",
    "dkd_alphas",
    "ee_run",
    "evaluate_run",
    "export_plain_ctc",
    "format_reproduce_table",
    "format_wer_by_exit",
    "idle_threads",
    "main",
    "reproduce_runs",
    "run_reproduce",
    "say",
    "train_config",
    "train_run",
    "write_config_files",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
