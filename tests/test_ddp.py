"""Multi-process training: `torchrun --nproc_per_node 2` on CPU (gloo) with the EE objective and manual exit
activation (`--num-exits 1`: the upper layers get no gradient, so DDP must look for unused parameters).

Each process writes a hash of its own final weights; the processes must agree with each other and with
the model process 0 saved. Process 1 also gets one NaN loss: the batch is skipped there, the step still
applies process 0's gradient, and both processes take the same decision (no hang, no divergence).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from helpers_audio import good_items, write_librispeech, write_model_json

WORKER = r"""
import hashlib, json, os, sys
import wav2vec2_ee.training.run as run
from wav2vec2_ee.training.cli import parse_args

rank = int(os.environ["RANK"])
nan_call = int(os.environ["EE_TEST_NAN_CALL"])
real_build = run.build_objective

def build(*args, **kwargs):
    objective = real_build(*args, **kwargs)

    class NaNOnRank1:
        calls = 0

        def __getattr__(self, name):
            return getattr(objective, name)

        def __call__(self, *a, **k):
            out = objective(*a, **k)
            NaNOnRank1.calls += 1
            if rank == 1 and NaNOnRank1.calls == nan_call:
                out.loss = out.loss * float("nan")
            return out

    return NaNOnRank1()

run.build_objective = build
from wav2vec2_ee.training.cli import cpu_processes_need_cpu_backend, finish_distributed
cpu_processes_need_cpu_backend()  # what `wav2vec2-ee train` does: no --use-cpu needed without CUDA
trainer = run.run_training(*parse_args(sys.argv[1:]))
state = trainer.model.state_dict()
digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
report = {
    "digest": digest,
    "world_size": trainer.args.world_size,
    "find_unused_parameters": trainer.args.ddp_find_unused_parameters,
    "wrapper": type(trainer.model_wrapped).__name__,
    "counts": trainer.skip_counts(),
    "steps": trainer.state.global_step,
}
with open(os.path.join(trainer.args.output_dir, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
import torch.distributed as dist
assert dist.is_initialized()
finish_distributed()  # what `wav2vec2-ee train` does last
assert not dist.is_initialized()
"""


def _digest(state: dict) -> str:
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_agree_on_the_weights(tmp_path):
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(8, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           "--model", str(model_json), "--data", str(corpus), "--train-splits", "train", "--output-dir", str(out),
           "--objective", "ee", "--num-exits", "1", "--max-steps", "3", "--per-device-train-batch-size", "2",
           "--learning-rate", "1e-3", "--weight-decay", "0.01", "--save-steps", "2",
           "--report-to", "none", "--no-freeze-feature-encoder", "--disable-tqdm", "true",
           "--logging-steps", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EE_TEST_NAN_CALL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["wrapper"] == "DistributedDataParallel" and r["steps"] == 3
        assert r["find_unused_parameters"] is True  # set by run.py for --num-exits 1
    assert ranks[0]["digest"] == ranks[1]["digest"], "the two processes ended with different weights"
    assert _digest(load_file(out / "model.safetensors")) == ranks[0]["digest"]
    # it trained on after the checkpoint
    assert _digest(load_file(out / "checkpoint-2" / "model.safetensors")) != ranks[0]["digest"]
    # the NaN batch: skipped on process 1 only; no optimizer step was skipped (process 0's half applied)
    assert [r["counts"]["skipped_nonfinite_batches"] for r in ranks] == [0, 1]
    assert [r["counts"]["skipped_updates"] for r in ranks] == [0, 0]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["skipped_nonfinite_batches"] == 1  # gathered over both processes
    assert all((out / "checkpoint-2" / f"rng_state_{r}.pth").is_file() for r in (0, 1))
