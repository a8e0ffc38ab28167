"""Reliability, interrupted work: a run killed with SIGKILL resumes from its last complete checkpoint and
reaches the same weights as an uninterrupted run, bit for bit (CPU); a checkpoint cut short by a crash
while saving is passed over; a kill during the final save leaves the old final model or none, never half
of one; and `--resume` continues only a checkpoint of the same run (its recorded settings).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.loading import load_model
from wav2vec2_ee.training import outputs
from wav2vec2_ee.training.cli import parse_args
from wav2vec2_ee.training.outputs import last_complete_checkpoint

from helpers_audio import good_items, write_librispeech, write_model_json

# Runs `wav2vec2-ee train <args>` in this process, killing itself with SIGKILL either at the end of
# step N ("after-step") or while checkpoint-N is being written, after its weights, optimizer and
# scheduler but before its RNG state and trainer_state.json ("while-saving").
KILLER = r"""
import os, signal, sys
from transformers import TrainerCallback
import wav2vec2_ee.training.run as run
from wav2vec2_ee.cli import main

mode, step = sys.argv[1], int(sys.argv[2])

class Die(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if mode == "after-step" and state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

class Trainer(run.EarlyExitTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.add_callback(Die())

    def _save_rng_state(self, output_dir):
        if mode == "while-saving" and self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._save_rng_state(output_dir)

run.EarlyExitTrainer = Trainer
sys.exit(main(["train", *sys.argv[3:]]))
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    # 8 utterances of different lengths: 2 steps per epoch with batch 4, so steps 4+ are in later epochs
    write_librispeech(root, "train", good_items(8, seconds=0.5))
    return root


@pytest.fixture(scope="module")
def model_json(tmp_path_factory):
    return write_model_json(tmp_path_factory.mktemp("cfg") / "tiny.json", hidden_dropout=0.1)


def _args(model_json, corpus, out, *extra) -> list[str]:
    return ["--model", str(model_json), "--data", str(corpus), "--train-splits", "train", "--output-dir", str(out),
            "--per-device-train-batch-size", "4", "--save-steps", "3", "--learning-rate", "1e-3",
            "--weight-decay", "0.01", "--logging-steps", "1", "--report-to", "none", "--seed", "3",
            "--no-freeze-feature-encoder", "--disable-tqdm", "true", *extra]  # fmt: skip


def _losses(checkpoint: Path) -> list[tuple[int, float]]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampling", "max_steps", "mode", "kill_step", "augment"),
    [
        ("random", 6, "after-step", 4, []),
        ("group_by_length", 7, "while-saving", 6, ["--speed-perturbation", "0.9", "1.0", "1.1"]),
    ],
    ids=["sigkill_between_checkpoints", "sigkill_while_saving_group_by_length_speed_perturbed"],
)
def test_killed_run_resumes_to_the_same_weights(
    corpus, model_json, tmp_path, sampling, max_steps, mode, kill_step, augment
):
    extra = ["--max-steps", str(max_steps), "--train-sampling-strategy", sampling, *augment]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as in this process
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, mode, str(kill_step), *_args(model_json, corpus, killed, *extra)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (killed / "checkpoint-3").is_dir() and not (killed / "model.safetensors").exists()
    if mode == "while-saving":  # the checkpoint being written is left partial: weights, no trainer state
        partial = killed / f"checkpoint-{kill_step}"
        assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert last_complete_checkpoint(killed) == str(killed / "checkpoint-3")

    assert cli_main(["train", *_args(model_json, corpus, killed, *extra), "--resume"]) == 0
    reference = tmp_path / "reference"
    assert cli_main(["train", *_args(model_json, corpus, reference, *extra)]) == 0

    resumed_w = load_file(killed / "model.safetensors")
    reference_w = load_file(reference / "model.safetensors")
    assert resumed_w.keys() == reference_w.keys()
    different = [k for k in reference_w if not torch.equal(resumed_w[k], reference_w[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    # same batches in the same order: the per-step losses agree, before and after the resume
    final = f"checkpoint-{max_steps}"
    assert _losses(killed / final) == _losses(reference / final)
    assert [s for s, _ in _losses(killed / final)] == list(range(1, max_steps + 1))


# ---- checkpoint completeness --------------------------------------------------------------------
def _fake_checkpoint(folder: Path, step: int) -> Path:
    """The files Trainer._save_checkpoint writes, in its order (trainer_state.json last)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: (c / "trainer_state.json").unlink(),  # crash before the last file
        lambda c: _cut(c / "trainer_state.json"),  # crash while writing the last file
        lambda c: (c / "trainer_state.json").write_text('{"global_step": 2}'),  # another step's state
        lambda c: _cut(c / "optimizer.pt", 0.9),  # data lost (unsynced) in a pickle
        lambda c: _cut(c / "model.safetensors", 0.1),  # ... or in the weights
        lambda c: (c / "model.safetensors").unlink(),
    ],
    ids=["no_state", "state_cut", "state_of_other_step", "optimizer_cut", "weights_cut", "no_weights"],
)
def test_resume_passes_over_a_partial_checkpoint(tmp_path, damage, caplog):
    _fake_checkpoint(tmp_path / "checkpoint-2", 2)
    _fake_checkpoint(tmp_path / "checkpoint-10", 10)  # numeric order, not lexical
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    partial = _fake_checkpoint(tmp_path / "checkpoint-12", 12)
    damage(partial)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-12 is incomplete" in caplog.text
    (tmp_path / "checkpoint-14").mkdir()  # an empty folder (crash right after mkdir)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert zipfile.is_zipfile(tmp_path / "checkpoint-10" / "optimizer.pt")


def test_resume_without_any_checkpoint_starts_fresh(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    (tmp_path / "checkpoint-3").mkdir()
    assert last_complete_checkpoint(tmp_path) is None


# ---- the final save: all of its files or none ----------------------------------------------------
FINAL = ("model.safetensors", "tokenizer_config.json", "vocab.json", "training_args.bin", "config.json",
         "run_summary.json")  # fmt: skip


class Killed(Exception):
    """Stands for SIGKILL in the middle of a save."""


def _final_files(version: int, die_after: int | None = None):
    """A ``write`` for :func:`outputs.save_final_model`: every file of :data:`FINAL` says ``version``;
    raises :class:`Killed` after ``die_after`` files."""

    def write(folder: Path) -> None:
        for i, name in enumerate(FINAL):
            if i == die_after:
                raise Killed
            if name == "model.safetensors":
                save_file({"version": torch.full((2,), float(version))}, str(folder / name))
            else:
                (folder / name).write_text(json.dumps({"version": version}))

    return write


def _versions(folder: Path) -> dict[str, int]:
    found = {}
    for name in FINAL:
        if (folder / name).is_file():
            if name == "model.safetensors":
                found[name] = int(load_file(folder / name)["version"][0])
            else:
                found[name] = json.loads((folder / name).read_text())["version"]
    return found


@pytest.mark.parametrize(
    "kill",
    [("write", i) for i in range(len(FINAL))] + [("move", i) for i in range(len(FINAL))],
    ids=[f"while_writing_file_{i}" for i in range(len(FINAL))]
    + [f"before_move_{i}" for i in range(len(FINAL))],
)
def test_a_kill_during_the_final_save_leaves_the_old_model_or_none(tmp_path, monkeypatch, kill):
    out = tmp_path / "out"
    outputs.save_final_model(out, _final_files(1))
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    assert _versions(out) == dict.fromkeys(FINAL, 1)

    stage, at = kill
    moved = []
    real_move = outputs.move_into_place

    def move(source: Path, target: Path) -> None:
        if stage == "move" and len(moved) == at:
            raise Killed
        moved.append(target.name)
        real_move(source, target)

    monkeypatch.setattr(outputs, "move_into_place", move)
    with pytest.raises(Killed):
        outputs.save_final_model(out, _final_files(2, die_after=at if stage == "write" else None))
    found = _versions(out)
    if stage == "write":  # nothing moved yet: the old model, whole
        assert found == dict.fromkeys(FINAL, 1)
    elif at < FINAL.index("run_summary.json"):
        # config.json and run_summary.json are the last files in: none of the old ones is left, so no
        # config.json sits beside the files of another save; the files moved are the new ones
        assert "config.json" not in found and "run_summary.json" not in found, found
        assert moved == ["model.safetensors", "tokenizer_config.json", "training_args.bin", "vocab.json"][:at]
        assert all(found[name] == 2 for name in moved) and set(found.values()) <= {1, 2}
        with pytest.raises(FileNotFoundError, match="no config.json"):
            load_model(out)
    else:  # the new model, whole; only run_summary.json (the mark of a finished run) is missing
        assert found == {name: 2 for name in FINAL if name != "run_summary.json"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the temporary folder is gone
    assert (out / "checkpoint-1" / "trainer_state.json").read_text() == "{}"

    monkeypatch.setattr(outputs, "move_into_place", real_move)
    outputs.save_final_model(out, _final_files(3))  # the next save completes the folder
    assert _versions(out) == dict.fromkeys(FINAL, 3)


def test_a_temporary_folder_of_a_killed_save_is_removed_by_the_next_run(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f"{outputs.FINAL_TMP_PREFIX}{int(dead.stdout)}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f"{outputs.FINAL_TMP_PREFIX}1"  # pid 1 is alive: another process's save
    live.mkdir()
    outputs.RunFolder(tmp_path).remove_stale_temporary_folders()
    assert not stale.exists() and live.is_dir()


def test_a_run_killed_during_its_final_save_is_finished_by_resume(corpus, model_json, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = _args(
        model_json, corpus, out, "--max-steps", "1", "--save-steps", "1", "--lr-scheduler-type", "constant"
    )
    assert cli_main(["train", *first]) == 0
    old = load_file(out / "model.safetensors")

    real_move = outputs.move_into_place

    def die_after_the_weights(source: Path, target: Path) -> None:
        real_move(source, target)
        if target.name == "model.safetensors":
            raise Killed

    monkeypatch.setattr(outputs, "move_into_place", die_after_the_weights)
    resumed = [*first, "--max-steps", "2", "--resume"]
    with pytest.raises(Killed):
        from wav2vec2_ee.training.run import run_training

        run_training(*parse_args(resumed))
    # the new weights are in, but without config.json and run_summary.json: no model, not a mixed one
    assert not (out / "config.json").exists() and not (out / "run_summary.json").exists()
    assert not torch.equal(load_file(out / "model.safetensors")["lm_head.weight"], old["lm_head.weight"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(out)

    monkeypatch.setattr(outputs, "move_into_place", real_move)
    assert cli_main(["train", *resumed]) == 0
    model = load_model(out)
    final = load_file(out / "checkpoint-2" / "model.safetensors")
    assert torch.equal(model.state_dict()["lm_head.weight"], final["lm_head.weight"])
    assert json.loads((out / "run_summary.json").read_text())["train_metrics"]


# ---- --resume continues only the same run ---------------------------------------------------------
class Die(TrainerCallback):
    """Stands for a kill: raises :class:`Killed` at the end of step ``step``, after its checkpoint
    (``when="saved"``) or before it is written (``when="step"``)."""

    def __init__(self, step: int, when: str):
        self.step, self.when = step, when

    def on_step_end(self, args, state, control, **kwargs):
        if self.when == "step" and state.global_step == self.step:
            raise Killed

    def on_save(self, args, state, control, **kwargs):
        if self.when == "saved" and state.global_step == self.step:
            raise Killed


def _killed_run(monkeypatch, argv: list[str], step: int, when: str) -> None:
    import wav2vec2_ee.training.run as run

    class Trainer(run.EarlyExitTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(Die(step, when))

    with monkeypatch.context() as m:
        m.setattr(run, "EarlyExitTrainer", Trainer)
        with pytest.raises(Killed):
            run.run_training(*parse_args(argv))


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def finished_run_a(corpus, model_json, tmp_path):
    """Run A (learning rate 1e-3, seed 3), finished in ``tmp_path/run``: checkpoints 1 and 2, final model."""
    out = tmp_path / "run"
    argv = _args(model_json, corpus, out, "--max-steps", "2", "--save-steps", "1")
    assert cli_main(["train", *argv]) == 0
    return out, argv


def test_resume_never_continues_another_runs_checkpoint(finished_run_a, monkeypatch, capsys):
    out, run_a = finished_run_a
    a_weights = load_file(out / "model.safetensors")
    run_b = [*run_a, "--learning-rate", "5e-4", "--seed", "4"]  # the later flags win

    # B in A's folder without --resume: A's run is not overwritten without --overwrite-output-dir
    assert cli_main(["train", *run_b]) == 2
    line = _error(capsys)
    assert "holds a run with other settings" in line and "--overwrite-output-dir" in line
    assert "learning_rate: 0.001 recorded, 0.0005 now" in line and "seed: 3 recorded, 4 now" in line

    # B started anyway, killed before its first checkpoint: --resume must not continue A's
    _killed_run(monkeypatch, [*run_b, "--overwrite-output-dir"], step=1, when="step")
    assert cli_main(["train", *run_b, "--resume"]) == 2
    line = _error(capsys)
    assert "checkpoint-2 is not this run's" in line and "--resume-ignore-settings" in line
    assert "learning_rate: 0.001 recorded, 0.0005 now" in line and "seed: 3 recorded, 4 now" in line
    assert torch.equal(load_file(out / "model.safetensors")["lm_head.weight"], a_weights["lm_head.weight"])

    # other settings than any checkpoint's are refused too, naming them
    assert cli_main(["train", *run_a, "--weight-decay", "0.5", "--resume"]) == 2
    assert "weight_decay: 0.01 recorded, 0.5 now" in _error(capsys)


def test_resume_picks_the_checkpoint_of_its_own_run(finished_run_a, corpus, model_json, monkeypatch, caplog):
    out, run_a = finished_run_a
    run_b = [*run_a, "--learning-rate", "5e-4", "--seed", "4"]
    # B killed after its checkpoint-1 (written over A's); A's checkpoint-2 is newer
    _killed_run(monkeypatch, [*run_b, "--overwrite-output-dir"], step=1, when="saved")
    assert json.loads((out / "checkpoint-2" / "run_settings.json").read_text())["settings"]["seed"] == 3

    assert cli_main(["train", *run_b, "--resume"]) == 0
    assert "checkpoint-2 passed over" in caplog.text
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert json.loads((out / "checkpoint-2" / "run_settings.json").read_text())["settings"]["seed"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2]
    assert max(h["learning_rate"] for h in state["log_history"] if "loss" in h) <= 5e-4  # B's schedule
    # B's weights, not A's: the same as B run uninterrupted
    reference = out.parent / "reference"
    run_b_reference = _args(model_json, corpus, reference, "--max-steps", "2", "--save-steps", "1",
                            "--learning-rate", "5e-4", "--seed", "4")  # fmt: skip
    assert cli_main(["train", *run_b_reference]) == 0
    assert torch.equal(
        load_file(out / "model.safetensors")["lm_head.weight"],
        load_file(reference / "model.safetensors")["lm_head.weight"],
    )


def test_resume_ignore_settings_continues_the_newest_checkpoint(finished_run_a, caplog):
    out, run_a = finished_run_a
    argv = [*run_a, "--learning-rate", "5e-4", "--max-steps", "3", "--resume", "--resume-ignore-settings"]
    assert cli_main(["train", *argv]) == 0
    assert "resuming" in caplog.text and "learning_rate: 0.001 recorded, 0.0005 now" in caplog.text
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
