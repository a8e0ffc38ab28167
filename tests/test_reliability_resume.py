"""Reliability, interrupted work: a run killed with SIGKILL resumes from its last complete checkpoint and
reaches the same weights as an uninterrupted run, bit for bit (CPU); a checkpoint cut short by a crash
while saving is passed over.
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

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.training.run import last_complete_checkpoint

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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: tiny models gain nothing from more, and a busy CI machine makes them spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
