"""`wav2vec2-ee train`: flags or one JSON/YAML file, then the library does the work.

wav2vec2-ee train --objective ee --model <hub id | dir> --data <root | manifest> --output-dir out/ee
wav2vec2-ee train configs/finetune_kd.json [--any-flag value ...]
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from ..command_line import HelpFormatter, finish_parser, parsing_flags
from ..errors import UserError
from .arguments import DataArguments, ModelArguments, ObjectiveArguments, RunArguments
from .precision import cpu_only_machine
from .run import run_training

logger = logging.getLogger(__name__)

ALL_ARGS = (ModelArguments, DataArguments, ObjectiveArguments, RunArguments, TrainingArguments)


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of argument names to values")
    return data


def _raise_user_error(message: str):
    """argparse's error hook: ``wav2vec2-ee`` prints a :class:`~wav2vec2_ee.errors.UserError` as one
    ``error:`` line (exit 2)."""
    raise UserError(f"{message} (wav2vec2-ee train --help lists the options)")


def _check_value_types(path: str, values: dict, actions: dict) -> None:
    """A config file's numbers must have the type of their flag (argparse converts flags, not defaults):
    ``max_steps: 2.5`` is refused naming the file and the key, before it fails deep in the Trainer."""
    for key, value in values.items():
        kind = getattr(actions.get(key), "type", None)
        if value is None or kind not in (int, float) or isinstance(value, list):
            continue
        ok = (
            isinstance(value, int) and not isinstance(value, bool)
            if kind is int
            else (isinstance(value, int | float) and not isinstance(value, bool))
        )
        if not ok:
            expected = "an integer" if kind is int else "a number"
            raise UserError(f"{path}: {key} must be {expected}, got {type(value).__name__} {value!r}")


#: ``--report-to`` integrations whose package comes with an extra of ours.
REPORTING_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard")}


def check_reporting_extras(report_to) -> None:
    """Refuse a ``--report-to`` integration whose package is not installed, naming the extra to install
    (instead of the Trainer's traceback when it starts logging)."""
    wanted = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in wanted:
        if name in REPORTING_EXTRAS:
            module, extra = REPORTING_EXTRAS[name]
            if importlib.util.find_spec(module) is None:
                raise UserError(
                    f"--report-to {name} needs the {module} package: pip install wav2vec2-ee[{extra}]"
                )


def build_parser() -> HfArgumentParser:
    """The parser of ``wav2vec2-ee train`` (our dataclasses and transformers' ``TrainingArguments``)."""
    parser = HfArgumentParser(
        ALL_ARGS,
        prog="wav2vec2-ee train",
        description="Fine-tune or train an early-exit wav2vec2 model (objectives ee, kd, dkd, confidence) "
        "with the Hugging Face Trainer: flags, or a JSON/YAML file of them first and flags overriding it.",
        formatter_class=HelpFormatter,
    )
    parser.error = _raise_user_error  # one line naming the argument, not the full usage text
    return finish_parser(parser, "train")


def _check_unsupported(training_args: TrainingArguments) -> None:
    """``TrainingArguments`` flags that ``wav2vec2-ee train`` does not honour are refused, not ignored."""
    if training_args.resume_from_checkpoint is not None:
        raise UserError(
            f"--resume-from-checkpoint {training_args.resume_from_checkpoint}: not supported by wav2vec2-ee "
            "train; use --resume (continues the last complete checkpoint in --output-dir after checking "
            "that it was written with this run's settings)"
        )


def parse_args(argv: list[str]):
    """Parse ``argv``: an optional leading JSON/YAML file gives defaults, flags override them. A
    ``ValueError`` raised meanwhile (ours, ``HfArgumentParser``'s, ``TrainingArguments``') is about the
    user's flags: it leaves as a :class:`~wav2vec2_ee.errors.UserError`."""
    with parsing_flags():
        return _parse_args(argv)


def _parse_args(argv: list[str]):
    parser = build_parser()
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        values = _read_config_file(argv[0])
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{argv[0]}: unknown argument(s) {', '.join(unknown)}")
        _check_value_types(argv[0], values, {a.dest: a for a in parser._actions})
        parser.set_defaults(**values)
        argv = argv[1:]
    if cpu_only_machine():
        # transformers refuses --bf16 without a GPU unless --use-cpu is set: on a machine that has no
        # accelerator the CPU is the only device, so --bf16 true means bfloat16 autocast on the CPU
        parser.set_defaults(use_cpu=True)
    *args, training_args = parser.parse_args_into_dataclasses(args=argv)
    _check_unsupported(training_args)
    run_args = args[ALL_ARGS.index(RunArguments)]
    if not run_args.progress:
        training_args.disable_tqdm = True
    return (*args, training_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if int(os.environ.get("LOCAL_RANK", "0")) == 0 else logging.WARNING,
    )
    cpu_processes_need_cpu_backend()
    args = parse_args(argv)
    check_reporting_extras(args[-1].report_to)
    run_training(*args)
    finish_distributed()
    return 0


def finish_distributed() -> None:
    """End the process group of a ``torchrun`` / ``accelerate launch`` job once training has succeeded
    in every process (after a barrier). Left to the interpreter's shutdown, gloo's worker threads can
    abort a process with ``terminate called without an active exception`` (SIGABRT) after all the work
    is done, failing the whole job. Not called after an error: the other processes may still be in a
    collective, where a barrier would hang. A no-op outside a distributed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cpu_processes_need_cpu_backend() -> bool:
    """Under ``torchrun`` / ``accelerate launch`` on a machine without CUDA, make the processes one DDP
    job on CPU (gloo) rather than N independent runs that each see all the data and overwrite each
    other's output (what the ``Trainer`` does without ``--use-cpu``). Returns whether it did."""
    import torch

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU") is None:
        os.environ["ACCELERATE_USE_CPU"] = "true"
        logging.getLogger(__name__).info(
            "%s processes without CUDA: distributed training on CPU (gloo), as with --use-cpu",
            os.environ["WORLD_SIZE"],
        )
        return True
    return False


if __name__ == "__main__":
    sys.exit(main())
