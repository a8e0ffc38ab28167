"""Reliability of ``evaluate``: forked workers end with their parent (SIGKILL, out-of-memory kill), the
overview files keep the splits finished by earlier runs into the same folder, and two runs on one
folder at once are refused (a lock file) instead of the last writer winning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_evaluation import make_librispeech, save_ee_checkpoint
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.evaluation import evaluate as evaluate_module
from wav2vec2_ee.evaluation import evaluate_checkpoint
from wav2vec2_ee.io import exclusive_lock
from wav2vec2_ee.results import parse_wer_results

needs_fork = pytest.mark.skipif(sys.platform == "win32", reason="forked workers need the 'fork' start method")
needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="the output folder is locked with flock")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability_eval")
    return {
        "data": make_librispeech(root / "LibriSpeech", {"test-clean": 3, "test-other": 2, "dev-clean": 2}),
        "ee": save_ee_checkpoint(root / "ee"),
    }


def run_quiet(**kwargs) -> dict:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("plot", False)
    return evaluate_checkpoint(**kwargs)


# --------------------------------------------------------------------------------------------------
# 6. forked workers die with their parent

# Runs run_forked(processes=3) in a process of its own, which prints its two children's pids at the
# first result and then sleeps, waiting for the test's SIGKILL. One child then sleeps in the last task
# (busy in ``fn``); the other returns 200 kB per task until the results pipe is full and, after its
# last task, blocks at exit flushing them into the pipe that nobody reads any more (the hang of the
# issue). With "poll", prctl is not used: the fallback of other platforms (watching os.getppid()) must
# end them.
KILLED_PARENT = r"""
import json, multiprocessing as mp, os, sys, time
from wav2vec2_ee.accel import processes

if sys.argv[1] == "poll":
    processes._set_parent_death_signal = lambda: False
parent, last = os.getpid(), 40

def task(i):
    # a child sleeps in the first task it claims: it cannot run out of tasks and end by itself before the
    # kill (a child whose results the parent drained between its own tasks did, under load: flaky)
    if os.getpid() != parent:
        time.sleep(600)
    return bytes(200_000)

for _ in processes.run_forked(task, list(range(last + 1)), processes=3):
    print(json.dumps([c.pid for c in mp.active_children()]), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused pid of another user
        return True
    return True


def _describe(pid: int) -> str:
    """State, parent and wait channel of a process, for a failure message."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as err:
        return repr(err)
    return (
        " ".join(line for line in status if line.startswith(("State", "PPid", "Threads"))) + f" wchan {wchan}"
    )


@needs_fork
@pytest.mark.parametrize("mechanism", ["prctl", "poll"])
def test_workers_exit_when_the_parent_is_killed(mechanism, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:  # a file: surviving children must not block on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_PARENT, mechanism],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    children: list[int] = []
    try:
        line = proc.stdout.readline()
        assert line, f"the script ended early (exit code {proc.wait()}):\n{stderr.read_text()[-3000:]}"
        children = json.loads(line)
        assert len(children) == 2 and all(_alive(pid) for pid in children), children
        time.sleep(1.0)  # the children are now sleeping in a task
        assert all(_alive(pid) for pid in children), {pid: _describe(pid) for pid in children}
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 5.0
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = {pid: _describe(pid) for pid in children if _alive(pid)}
        assert not survivors, f"forked workers outlived their SIGKILLed parent: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:  # leave nothing behind when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()


@needs_fork
def test_worker_started_after_its_parent_died_exits_at_once():
    """The parent may die between ``fork`` and ``prctl`` (no signal comes then): the worker checks
    ``getppid`` right after and ends; while the parent lives, it goes on."""
    from wav2vec2_ee.accel import processes

    for parent, expected in ((lambda: os.getppid() + 1_000_000, processes._ORPHANED), (os.getppid, 0)):
        pid = os.fork()
        if pid == 0:  # the worker: "parent" is the pid it was forked by, as run_forked passes it
            try:
                processes._exit_with_parent(parent())
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == expected


# --------------------------------------------------------------------------------------------------
# 7. the overview files merge the finished splits already in the folder


def test_overview_keeps_splits_of_earlier_runs(assets, tmp_path):
    common = dict(checkpoint=assets["ee"], output_dir=tmp_path, data=assets["data"])
    run_quiet(**common, splits=["test-clean"])
    first = parse_wer_results((tmp_path / "wer_results.txt").read_text())
    overview = run_quiet(**common, splits=["dev-clean"], plot=True)
    wers = parse_wer_results((tmp_path / "wer_results.txt").read_text())
    assert list(wers) == ["test-clean", "dev-clean"]
    assert wers["test-clean"] == first["test-clean"]  # read back from its summary, not recomputed
    saved = json.loads((tmp_path / "wer_results.json").read_text())
    assert saved == json.loads(json.dumps(overview)) and list(saved["splits"]) == ["test-clean", "dev-clean"]
    assert (tmp_path / "wer_by_exit.png").is_file()

    # a rerun of one split keeps the others, in their places
    run_quiet(**common, splits=["test-other", "test-clean"])
    wers = parse_wer_results((tmp_path / "wer_results.txt").read_text())
    assert list(wers) == ["test-clean", "dev-clean", "test-other"]


def test_overview_leaves_out_splits_of_other_settings(assets, tmp_path, caplog):
    common = dict(checkpoint=assets["ee"], output_dir=tmp_path, data=assets["data"])
    (tmp_path / "run_summary.json").write_text(json.dumps({"steps": 3}))  # training's: not a split
    run_quiet(**common, splits=["test-clean"], exits=[2, 4])
    run_quiet(**common, splits=["test-other"], exit_stats=["entropy"])  # extra statistics: still merged
    assert list(parse_wer_results((tmp_path / "wer_results.txt").read_text())) == ["test-other"]
    left_out = [r.getMessage() for r in caplog.records if "left out of wer_results" in r.getMessage()]
    assert len(left_out) == 1 and left_out[0].startswith("test-clean: ")  # said why: other exits
    assert left_out[0].endswith("(evaluated with other settings: labels, layers)")
    run_quiet(**common, splits=["dev-clean"])
    wers = parse_wer_results((tmp_path / "wer_results.txt").read_text())
    assert list(wers) == ["test-other", "dev-clean"]
    assert list(wers["dev-clean"]) == ["layer_1", "layer_2", "layer_3", "layer_4"]

    # a finished split whose files are gone, or whose summary is broken, is left out too
    (tmp_path / "test-other_results.txt").unlink()
    (tmp_path / "test-clean_summary.json").write_text("{not json")
    run_quiet(**common, splits=["dev-clean"])
    assert list(parse_wer_results((tmp_path / "wer_results.txt").read_text())) == ["dev-clean"]

    # another checkpoint's splits are not merged
    other = save_ee_checkpoint(tmp_path.parent / "other_ckpt")
    run_quiet(checkpoint=other, output_dir=tmp_path, data=assets["data"], splits=["test-other"])
    assert list(parse_wer_results((tmp_path / "wer_results.txt").read_text())) == ["test-other"]


# --------------------------------------------------------------------------------------------------
# 8. one evaluate run per output folder at a time

HOLDER = r"""
import sys
from wav2vec2_ee.io import exclusive_lock

with exclusive_lock(sys.argv[1], "busy"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@needs_flock
def test_a_second_run_on_a_locked_folder_is_refused(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    common = dict(checkpoint=assets["ee"], output_dir=out, data=assets["data"], splits=["test-other"])
    # another process evaluates into the folder
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out / ".evaluate.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"

        def fail(*args, **kwargs):
            raise AssertionError("a locked folder was written")

        monkeypatch.setattr(evaluate_module, "decode_split", fail)
        message = f"{out} is being written by another evaluate run (pid {holder.pid}); wait for it"
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run_quiet(**common)
        assert sorted(p.name for p in out.iterdir()) == [".evaluate.lock"]  # nothing written or removed
        capsys.readouterr()
        rc = cli_main(["evaluate", str(assets["ee"]), "--output-dir", str(out), "--data", str(assets["data"]),
                       "--splits", "test-other", "--no-progress"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"(pid {holder.pid})" in err
        monkeypatch.undo()
    finally:
        # killed without a chance to clean up: its lock file stays, and must not block
        holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    assert (out / ".evaluate.lock").is_file()
    run_quiet(**common)
    assert (out / "test-other_summary.json").is_file()


@needs_flock
def test_the_lock_is_released_on_errors_and_held_while_running(assets, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = dict(checkpoint=assets["ee"], output_dir=out, data=assets["data"], splits=["test-other"])
    with pytest.raises(ValueError, match="exits at layers"):
        run_quiet(**common, exits=[7])
    assert not out.exists()  # a refused run leaves no folder it created (issue 29, row 15)
    out.mkdir()
    (out / ".evaluate.lock").touch()  # an earlier run's lock file: the refused run keeps it, unlocked
    with pytest.raises(ValueError, match="exits at layers"):
        run_quiet(**common, exits=[7])
    with exclusive_lock(out / ".evaluate.lock", "still locked"):  # released by the failed run
        pass

    # while a run decodes, the folder is locked (the same process locking again is refused too)
    seen = []
    decode_split = evaluate_module.decode_split

    def decode_and_try_the_lock(*args, **kwargs):
        with pytest.raises(ValueError, match="being written by another evaluate run") as info:
            run_quiet(**common, overwrite=True)
        seen.append(str(info.value))
        return decode_split(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "decode_split", decode_and_try_the_lock)
    run_quiet(**common)
    assert len(seen) == 1 and f"(pid {os.getpid()})" in seen[0]
    monkeypatch.undo()
    run_quiet(**common, overwrite=True)  # released after a successful run
