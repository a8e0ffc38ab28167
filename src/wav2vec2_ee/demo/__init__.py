"""`wav2vec2-ee demo`: the embedded default, end to end on a laptop CPU (see :mod:`.cli`).

Modules, each importing only those before it (no cycle):

* :mod:`.presets`: the preset dataclasses and values, the train configs they make;
* :mod:`.runs`: one run (:class:`RunSpec`): its training, its evaluation, the WER-by-exit table, and
  :func:`say`, the demo's progress printer;
* :mod:`.reproduce`: ``--reproduce``, the seed's result table re-run on the synthetic corpus;
* :mod:`.cli`: the command (:class:`DemoArguments`, :func:`main`).
"""

from .cli import DemoArguments, build_demo_corpus, busy_cores, idle_threads, main
from .presets import (
    DEMO_FINETUNE,
    DEMO_MODEL,
    DEMO_TRAINING,
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
    "DEMO_FINETUNE",
    "DEMO_MODEL",
    "DEMO_TRAINING",
    "PRESETS",
    "RUN_DEFAULTS",
    "TRAIN_SPLITS",
    "Decoding",
    "DemoArguments",
    "DemoPreset",
    "RunResult",
    "RunSpec",
    "build_demo_corpus",
    "busy_cores",
    "dkd_alphas",
    "ee_run",
    "evaluate_run",
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
