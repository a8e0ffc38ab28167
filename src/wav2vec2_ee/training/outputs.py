"""The output folder of `wav2vec2-ee train`: which run it belongs to, what in it is ours, the final save.

* ``run_settings.json`` (:data:`RUN_SETTINGS_NAME`) records the settings that define a run
  (:func:`run_settings`). The folder's copy, written when training starts, marks the folder as a run of
  ours and lists the ``checkpoint-*`` folders this run (and the runs it resumes) wrote; every checkpoint
  gets its own copy, so ``--resume`` continues only a checkpoint of the same run
  (``training.run.resume_checkpoint``).
* :func:`check_output_dir`: a fresh run refuses a non-empty folder that is not a run of ours, one of a
  run with other settings, or one of a finished run (its final model and ``run_summary.json``: the same
  command run again), unless ``--overwrite-output-dir``.
* :class:`RunFolder`: the checkpoint folders this run owns; ``--save-total-limit`` deletes only those
  (:class:`~.callbacks.RotateOwnCheckpoints`), never a folder this run did not write.
* :func:`save_final_model`: the final model files appear together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from safetensors import safe_open
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.conditions import CONDITIONS
from ..errors import UserError
from ..io import atomic_write_json, fsync_path, move_into_place
from .arguments import RunArguments

logger = logging.getLogger(__name__)

RUN_SETTINGS_NAME = "run_settings.json"
FORMAT = 1

# may differ when resuming: continuing a run for more (or fewer) steps is still the same run
LENGTH_KEYS = ("max_steps", "num_train_epochs")

# the final model: config.json marks a complete model, run_summary.json a finished run
CONFIG_NAME = "config.json"
SUMMARY_NAME = "run_summary.json"
FINAL_TMP_PREFIX = ".final-tmp-"
_WEIGHTS_FIRST = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# --------------------------------------------------------------------------------------------------
# the settings that define a run
def _source(value: str | None) -> str | None:
    """A local path made absolute (so ``out/ee`` and ``./out/ee`` agree); a hub id as given."""
    if value is None:
        return None
    path = Path(value)
    return str(path.resolve()) if path.exists() else str(value)


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def run_settings(model_args, data_args, objective_args, training_args) -> dict:
    """The settings that define a run, as plain JSON values.

    In: the objective and its weights, the model it starts from and its shape (exit layers, ...), the
    training data and its splits, length limits, sample cap and speed perturbation, the optimizer, the
    learning rate and its schedule, ``max_steps`` / ``num_train_epochs``, the batch size per device and
    the gradient accumulation, the seeds and the sampling strategy. Out: what may change when a run is
    resumed without changing the run: the output folder, logging, saving and evaluation, the data loader
    workers and caching, ``--pad-to-multiple-of`` (a speed setting: padding is masked), the time budget,
    precision and the number of processes.
    """
    t = training_args
    settings = {
        "objective": objective_args.objective,
        "ee_alpha": objective_args.ee_alpha,
        "num_exits": objective_args.num_exits,
        "inverse_confidence": objective_args.inverse_confidence,
        "teacher": _source(objective_args.teacher),
        "model": _source(model_args.model),
        "num_hidden_layers": model_args.num_hidden_layers,
        "exit_layers": model_args.exit_layers,
        "share_exit_heads": model_args.share_exit_heads,
        "reinit_encoder": model_args.reinit_encoder,
        "freeze_feature_encoder": model_args.freeze_feature_encoder,
        "config_overrides": model_args.config_overrides,
        "data": _source(data_args.data),
        "train_splits": data_args.train_splits,
        "max_duration": data_args.max_duration,
        "min_duration": data_args.min_duration,
        "max_train_samples": data_args.max_train_samples,
        "speed_perturbation": data_args.speed_perturbation,
        "noise": [data_args.noise_prob, data_args.noise_snr_db] if data_args.noise_prob else None,
        "reverb": [data_args.reverb_prob, data_args.reverb_rt60] if data_args.reverb_prob else None,
        "conditions": _conditions_setting(data_args),
        "optim": t.optim,
        "optim_args": t.optim_args,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "lr_scheduler_kwargs": t.lr_scheduler_kwargs,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "max_grad_norm": t.max_grad_norm,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_steps": t.max_steps,
        "num_train_epochs": t.num_train_epochs,
        "seed": t.seed,
        "data_seed": t.data_seed,
        "train_sampling_strategy": t.train_sampling_strategy,
    }
    return json.loads(json.dumps({k: _plain(v) for k, v in settings.items()}, default=str))


def _conditions_setting(data_args) -> dict | None:
    """The recording conditions that are on, with their ranges (``None`` when all are off)."""
    on = {
        name: getattr(data_args, f"{name}_prob") for name in CONDITIONS if getattr(data_args, f"{name}_prob")
    }
    if not on:
        return None
    if "voice" in on:
        on["voice_range"] = data_args.voice_range
    if "tempo" in on:
        on["tempo_range"] = data_args.tempo_range
    if "babble" in on:
        on["babble_snr_db"] = data_args.babble_snr_db
    if "silence" in on:
        on["silence_floor_db"] = data_args.silence_floor_db
    return on


def settings_differences(recorded: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: <recorded> recorded, <current> now"`` for each key whose values differ (keys missing on one
    side count as ``None``), except ``ignore``."""
    keys = sorted((set(recorded) | set(current)) - set(ignore))
    return [
        f"{k}: {recorded.get(k)!r} recorded, {current.get(k)!r} now"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


def read_settings(folder: str | os.PathLike) -> dict | None:
    """The ``run_settings.json`` of ``folder`` (``settings`` and, in the output folder, ``checkpoints``),
    or ``None`` when there is none or it does not parse."""
    path = Path(folder, RUN_SETTINGS_NAME)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return None
    return record


def checkpoint_step(path: Path) -> int | None:
    """``N`` of a ``checkpoint-N`` folder name, else ``None``."""
    prefix, _, step = path.name.rpartition("-")
    return int(step) if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit() else None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, by step."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=checkpoint_step)


# --------------------------------------------------------------------------------------------------
# what in the folder is ours
@dataclass
class RunFolder:
    """The output folder of one run and the checkpoint folders the run owns.

    A checkpoint folder is the run's when the run wrote it: listed in the folder's ``run_settings.json``
    by the run it resumes (or by an earlier run with the same settings), or created by this run. A
    ``checkpoint-*`` folder that was there when training began and is not listed is never the run's,
    even if the run writes a checkpoint of the same step into it (with ``--overwrite-output-dir``), so
    rotation never deletes it.

    Args:
        path: the output folder.
        settings: the run's :func:`run_settings` (``None``: nothing is recorded, e.g. a trainer built
            outside ``run_training``).
        owned: names of the checkpoint folders the run owns.
    """

    path: Path
    settings: dict | None = None
    owned: set[str] = field(default_factory=set)
    foreign: set[str] = field(default_factory=set)

    def begin(self) -> None:
        """When training begins: every checkpoint folder there that the run does not own stays foreign."""
        self.foreign = {p.name for p in checkpoint_folders(self.path)} - self.owned

    def claim(self, name: str) -> bool:
        """Own the checkpoint folder ``name`` unless it was there, foreign, before training began;
        returns whether it is the run's."""
        if name in self.foreign:
            return False
        self.owned.add(name)
        return True

    def write_record(self) -> None:
        """Write the folder's ``run_settings.json`` (settings and owned checkpoints), atomically."""
        if self.settings is None:
            return
        atomic_write_json(
            self.path / RUN_SETTINGS_NAME,
            {"format": FORMAT, "settings": self.settings, "checkpoints": sorted(self.owned)},
        )

    def write_settings_into(self, checkpoint: str | os.PathLike) -> None:
        """Record the run's settings in ``checkpoint`` (what ``--resume`` compares)."""
        if self.settings is not None:
            atomic_write_json(
                Path(checkpoint, RUN_SETTINGS_NAME), {"format": FORMAT, "settings": self.settings}
            )

    def rotate(self, limit: int | None, keep: set[str], keep_newest: bool = True) -> list[str]:
        """``--save-total-limit`` over the run's own checkpoints: delete the oldest of them beyond
        ``limit``, never one in ``keep`` (the one just saved, the best), the newest (with
        ``keep_newest``), nor a folder the run does not own. Returns the names deleted."""
        if not limit or limit <= 0:
            return []
        ours = [p for p in checkpoint_folders(self.path) if p.name in self.owned]
        protected = {p.name for p in ours if p.name in keep}
        if ours and keep_newest:
            protected.add(ours[-1].name)
        remaining, deleted = len(ours), []
        for path in ours:
            if remaining <= max(limit, len(protected)):
                break
            if path.name in protected:
                continue
            logger.info("deleting %s (--save-total-limit %d)", path, limit)
            shutil.rmtree(path, ignore_errors=True)
            self.owned.discard(path.name)
            deleted.append(path.name)
            remaining -= 1
        return deleted

    def remove_stale_temporary_folders(self) -> None:
        """Remove ``.final-tmp-<pid>`` folders of final saves whose process is gone (killed mid-save)."""
        for path in self.path.glob(f"{FINAL_TMP_PREFIX}*"):
            pid = path.name[len(FINAL_TMP_PREFIX) :]
            if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier save of this process, interrupted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, another user's
    return True


def _listing(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_output_dir(output_dir: str | os.PathLike, settings: dict, overwrite: bool) -> RunFolder:
    """A fresh run's output folder (no checkpoint to resume): refuse one that holds what is not ours.

    Accepted: a missing or empty folder (hidden files and a ``run_settings.json`` alone do not count), a
    folder of an unfinished run of ours with the same settings (its checkpoints stay the run's, so
    rotation may delete them), and, with ``overwrite``, any folder (files of the same names are
    overwritten; folders already there are never deleted). Refused with ``ValueError``: a folder of a run
    with other settings, naming them, a folder of a finished run (:func:`is_finished_run`: rerunning the
    same command would silently train over its model and leave its other files, an ``eval/`` folder,
    beside the new one), and a non-empty folder without our ``run_settings.json``.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: a file, not a folder")
    folder = RunFolder(out, settings)
    contents = sorted(p.name for p in (out.iterdir() if out.is_dir() else ()) if not p.name.startswith("."))
    contents = [name for name in contents if name != RUN_SETTINGS_NAME]
    if not contents:
        return folder
    record = read_settings(out)
    if record is None:
        if overwrite:
            logger.warning(
                "--overwrite-output-dir: training into %s, which holds %s; files of the same names are "
                "overwritten, folders already there are never deleted",
                out,
                _listing(contents),
            )
            return folder
        raise UserError(
            f"--output-dir {out} is not empty ({_listing(contents)}) and is not a run of wav2vec2-ee train "
            f"(no {RUN_SETTINGS_NAME}): choose another folder, or pass --overwrite-output-dir to train into "
            "it anyway (files of the same names are overwritten; folders this run did not write, "
            "checkpoint-* included, are never deleted)"
        )
    differences = settings_differences(record["settings"], settings)
    if not differences and is_finished_run(out):
        if not overwrite:
            raise UserError(
                f"--output-dir {out} holds a finished run (its final model and {SUMMARY_NAME}): pass "
                "--overwrite-output-dir to train it again there, or choose another folder"
            )
        kept = [name for name in contents if (out / name).is_dir() and checkpoint_step(out / name) is None]
        logger.warning(
            "--overwrite-output-dir: training again in %s over its finished run%s",
            out,
            f"; its folders {_listing(kept)} are kept and describe the previous model" if kept else "",
        )
    if not differences:
        folder.owned = {str(name) for name in record.get("checkpoints", [])}
        return folder
    if overwrite:
        logger.warning(
            "--overwrite-output-dir: starting a new run in %s, which holds a run with other settings (%s); "
            "its checkpoints are kept",
            out,
            "; ".join(differences),
        )
        return folder
    raise UserError(
        f"--output-dir {out} holds a run with other settings ({'; '.join(differences)}): --resume continues "
        "that run with its settings; choose another folder, or pass --overwrite-output-dir to start this "
        "run there anyway (its checkpoints are kept, its final model is overwritten)"
    )


def is_finished_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished run: its final model (``config.json`` beside the weights) and
    ``run_summary.json`` (written last, :func:`save_final_model`)."""
    folder = Path(folder)
    return (
        (folder / CONFIG_NAME).is_file()
        and (folder / SUMMARY_NAME).is_file()
        and any((folder / name).is_file() for name in _WEIGHTS_FIRST)
    )


# --------------------------------------------------------------------------------------------------
# the final model
def _commit_order(names: list[str]) -> list[str]:
    """Weights first, then the other files, ``config.json``, and ``run_summary.json`` last."""
    rank = {name: i for i, name in enumerate(_WEIGHTS_FIRST)}
    rest = [n for n in names if n not in (CONFIG_NAME, SUMMARY_NAME)]
    ordered = sorted(rest, key=lambda n: (rank.get(n, len(rank)), n))
    return ordered + [n for n in (CONFIG_NAME, SUMMARY_NAME) if n in names]


def save_final_model(output_dir: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write the final model into ``output_dir`` so that its files appear together or not at all.

    ``write(folder)`` writes every final file (``config.json``, the weights, the processor files,
    ``run_summary.json``, ...) into ``folder``: a temporary folder ``.final-tmp-<pid>`` inside
    ``output_dir`` (the same file system, so the moves below are renames), whose files are then flushed
    to disk. The output folder also holds the ``checkpoint-*`` folders, so the model cannot arrive as one
    renamed folder; instead ``config.json`` is the mark of a complete model and ``run_summary.json``
    that of a finished run, and the files move in this order:

    1. the old ``run_summary.json`` and ``config.json`` are removed (the folder now holds no model that
       any loader accepts: no config);
    2. the weights, then every other new file, replace theirs (``os.replace``, each atomic);
    3. ``config.json``, then ``run_summary.json``.

    So a loader never sees a ``config.json`` beside weights or processor files of another save, and a
    ``run_summary.json`` only beside the complete model it describes: a kill leaves the old final model,
    or no model (no ``config.json``; ``load_model`` refuses the folder, and the next run's final save
    replaces the leftovers), or the new one. A temporary folder left by a kill is removed by the next
    run in the folder (:meth:`RunFolder.remove_stale_temporary_folders`); on an exception it is removed
    at once.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{FINAL_TMP_PREFIX}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        subfolders = [n for n in names if (tmp / n).is_dir()]
        if subfolders:
            raise RuntimeError(f"final model save: unexpected folders {subfolders} (files only)")
        for name in names:
            fsync_path(tmp / name)
        fsync_path(tmp)
        for name in (SUMMARY_NAME, CONFIG_NAME):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        fsync_path(out)
        for name in _commit_order(names):
            if name in (CONFIG_NAME, SUMMARY_NAME):
                fsync_path(out)  # the files before it are in place first
            move_into_place(tmp / name, out / name)
        fsync_path(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# complete checkpoints and the one --resume continues


def _checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` is not a complete checkpoint, or ``None`` when it is.

    ``Trainer._save_checkpoint`` (transformers 5.x) writes the weights, then optimizer.pt,
    scheduler.pt and rng_state*.pth, and ``trainer_state.json`` last (``EarlyExitTrainer`` adds a
    barrier so that, with several processes, every process's files come before it; the skip counts
    come first, from :class:`~.callbacks.SaveSkipCounts`). A complete
    checkpoint therefore has a ``trainer_state.json`` that parses and names the folder's step. The
    other files are checked too, cheaply, in case the file system lost unsynced data: safetensors
    headers must open and every torch pickle (a zip archive) must have its end-of-archive record.
    """
    state_file = ckpt / TRAINER_STATE_NAME
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME} (the Trainer writes it last)"
    try:
        step = json.loads(state_file.read_text(encoding="utf-8")).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"{TRAINER_STATE_NAME} is cut short"
    if str(step) != ckpt.name.split("-")[-1]:
        return f"{TRAINER_STATE_NAME} names step {step}"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights and not any(ckpt.glob("pytorch_model*.bin")):
        return "no model weights"
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own error types
            return f"{path.name} is unreadable ({err})"
    for path in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]:
        if not zipfile.is_zipfile(path):
            return f"{path.name} is cut short"
    return None


def complete_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """The ``checkpoint-N`` folders whose save finished (see :func:`_checkpoint_problem`), newest first.

    A crash while saving leaves a partial folder; it is passed over (with a warning).
    """
    complete = []
    for ckpt in reversed(checkpoint_folders(output_dir)):
        problem = _checkpoint_problem(ckpt)
        if problem is None:
            complete.append(str(ckpt))
        else:
            logger.warning("%s is incomplete (interrupted save?): %s; passed over", ckpt, problem)
    return complete


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` folder whose save finished (see :func:`_checkpoint_problem`).

    A crash while saving leaves a partial folder; it is passed over (with a warning) so the previous
    checkpoint is used.
    """
    complete = complete_checkpoints(output_dir)
    return complete[0] if complete else None


def resume_checkpoint(
    output_dir: str | os.PathLike, settings: dict, ignore_settings: bool = False
) -> str | None:
    """The checkpoint ``--resume`` continues: the newest complete one written with ``settings``.

    Every checkpoint records the settings of its run (``run_settings.json``); they must equal
    ``settings`` except :data:`~.outputs.LENGTH_KEYS` (a run may be continued for more steps). Newer
    complete checkpoints of another run (a run started in the same folder with ``--overwrite-output-dir``)
    are passed over with a warning; when no complete checkpoint is the run's, ``ValueError`` names the
    settings in which the newest differs. ``ignore_settings`` (``--resume-ignore-settings``): the newest
    complete checkpoint, whatever its settings. ``None``: no complete checkpoint.
    """
    complete = complete_checkpoints(output_dir)
    if not complete:
        return None
    problems: list[tuple[str, str]] = []
    for ckpt in complete:
        record = read_settings(ckpt)
        if record is None:
            why = "it records no run settings (written by an older version of wav2vec2-ee or another program)"
        else:
            differences = settings_differences(record["settings"], settings, ignore=LENGTH_KEYS)
            if not differences:
                break
            why = "it was written with other settings (" + "; ".join(differences) + ")"
        if ignore_settings:
            logger.warning("--resume-ignore-settings: resuming %s although %s", ckpt, why)
            return ckpt
        problems.append((ckpt, why))
    else:
        newest, why = problems[0]
        raise UserError(
            f"--resume: {newest} is not this run's: {why}; resume with that run's settings, start a new "
            "run without --resume, or pass --resume-ignore-settings to continue it with these settings"
        )
    for passed, why in problems:
        logger.warning(
            "--resume: %s passed over: %s (this run writes its own checkpoint of that step over it)",
            passed,
            why,
        )
    return ckpt


def prepare_output_dir(
    output_dir: str | os.PathLike, settings: dict, run_args: RunArguments
) -> tuple[RunFolder, str | None]:
    """Step 1b: the run's output folder and the checkpoint to resume (``None``: start fresh).

    With ``--resume`` and a checkpoint of this run (:func:`resume_checkpoint`), the run continues it and
    the checkpoints the folder's ``run_settings.json`` lists stay the run's. Otherwise the run starts
    fresh, into a folder :func:`~.outputs.check_output_dir` accepts (``--overwrite-output-dir``).
    Raises ``ValueError`` before any work is done.
    """
    checkpoint = None
    if run_args.resume:
        checkpoint = resume_checkpoint(output_dir, settings, run_args.resume_ignore_settings)
    if checkpoint is None:
        return check_output_dir(output_dir, settings, run_args.overwrite_output_dir), None
    folder = RunFolder(Path(output_dir), settings)
    record = read_settings(output_dir)
    if record is not None and (
        run_args.resume_ignore_settings
        or not settings_differences(record["settings"], settings, ignore=LENGTH_KEYS)
    ):
        folder.owned = {str(name) for name in record.get("checkpoints", [])}
    return folder, checkpoint
