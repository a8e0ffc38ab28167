"""Reliability of what the commands leave on disk (issue 29, rows 14 and 15).

14. A full disk (``[Errno 28]``) while a result file is written: the one line the command prints names
    that file (not a temporary one, not no file at all), and no partial file is left.
15. A refused ``evaluate`` (bad exits, split or checkpoint found once the output folder was locked)
    leaves no folder or lock file it created; removing a held lock file never lets two runs in.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import types
from pathlib import Path

import pytest

from test_evaluation import make_librispeech, save_ee_checkpoint
from wav2vec2_ee import io as io_module
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.io import AppendFile, atomic_write_text, exclusive_lock, locked_output_folder

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="the output folder is locked with flock")

FULL = "No space left on device (the disk is full)"


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("WAV2VEC2_EE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability_io")
    data = make_librispeech(root / "LibriSpeech", {"test-other": 2})
    return {
        "data": data,
        "ee": save_ee_checkpoint(root / "ee"),
        "audio": sorted(data.glob("test-other/*/*/*.flac")),
    }


def _error_lines(capsys) -> list[str]:
    """The ``error:`` lines the command printed (progress bars and log lines left out)."""
    return [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("wav2vec2-ee ") and ": error: " in line
    ]


def _disk_full(monkeypatch, *names: str) -> None:
    """The operating-system calls ``names`` (``write``, ``fsync``) of :mod:`wav2vec2_ee.io` fail as on a
    full disk (an ``OSError`` naming no file, as the kernel's), the rest of ``os`` as it is."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    for name in names:
        setattr(fake, name, full)
    monkeypatch.setattr(io_module, "os", fake)


def _evaluate(assets, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(assets["ee"]), "--output-dir", str(out), "--data", str(assets["data"]),
            "--splits", "test-other", "--no-progress", "--num-processes", "1", "--plot", "false", *extra]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# 14. a full disk names the file


def test_a_full_disk_in_evaluate_names_the_result_file_and_leaves_nothing(
    assets, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "eval"
    _disk_full(monkeypatch, "fsync")
    assert cli_main(_evaluate(assets, out)) == 2
    lines = _error_lines(capsys)
    assert lines == [f"wav2vec2-ee evaluate: error: {out / 'test-other_results.txt'}: {FULL}"]
    assert not out.exists()  # no partial or temporary file, and no folder the failed run created

    out.mkdir()  # a folder with an earlier run's results keeps them, and gets no temporary file
    (out / "notes.txt").write_text("mine\n")
    assert cli_main(_evaluate(assets, out)) == 2
    assert _error_lines(capsys) == lines
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_full_disk_in_transcribe_names_the_output_and_leaves_no_partial_row(
    assets, tmp_path, monkeypatch, capsys, failing
):
    output = tmp_path / "rows.jsonl"
    argv = ["transcribe", str(assets["ee"]), *map(str, assets["audio"]), "--output", str(output),
            "--batch-size", "1"]  # fmt: skip
    with monkeypatch.context() as patch:
        _disk_full(patch, failing)
        assert cli_main(argv) == 2
    assert _error_lines(capsys) == [f"wav2vec2-ee transcribe: error: {output}: {FULL}"]
    assert not output.exists()  # a new file that never got a row is removed

    # --resume on a file with rows: the rows stay, no partial one is added
    assert cli_main([*argv[:3], "--output", str(output)]) == 0  # the first file only
    before = output.read_bytes()
    assert before.endswith(b"\n") and len(before.splitlines()) == 1
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _disk_full(patch, failing)
        assert cli_main([*argv, "--resume"]) == 2
    assert _error_lines(capsys)[-1] == f"wav2vec2-ee transcribe: error: {output}: {FULL}"
    assert output.read_bytes() == before


def test_the_atomic_writer_names_the_file_when_a_write_fails(tmp_path, monkeypatch):
    """A write inside the block (the kernel's ENOSPC names no file) is named after the target, not the
    temporary file, and the temporary file is gone; errors that are not the system's stay as they are."""
    target = tmp_path / "sub" / "result.txt"
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fake = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake.fdopen = lambda *args, **kwargs: Full(real_fdopen(*args, **kwargs))
    monkeypatch.setattr(io_module, "os", fake)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "text")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.undo()

    # raised with a message only: left alone
    with pytest.raises(FileNotFoundError) as info, io_module.atomic_open(target) as f:
        f.write("x")
        raise FileNotFoundError("manifest.jsonl: no such manifest")
    assert info.value.filename is None and str(info.value) == "manifest.jsonl: no such manifest"


def test_append_file_cut_back_to_its_last_sync_on_a_failed_sync(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = AppendFile(path)
    log.write('{"a": 1}\n')
    log.sync()
    log.write('{"a": 2}\n')
    monkeypatch.setattr(io_module.os, "fsync", _raise_enospc)  # the data reaches the file, not the disk
    with pytest.raises(OSError) as info:
        log.sync()
    monkeypatch.undo()
    assert info.value.filename == str(path) and info.value.errno == errno.ENOSPC
    assert path.read_text() == '{"a": 1}\n'
    log.close()  # closed by the failure: nothing more is written
    assert path.read_text() == '{"a": 1}\n'
    with pytest.raises(ValueError, match="closed"):
        log.write("more\n")


def test_append_file_that_fails_to_open_keeps_the_rows_it_had(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a')  # a partial last line: cut, then synced, when opened
    monkeypatch.setattr(io_module.os, "fsync", _raise_enospc)
    with pytest.raises(OSError) as info:
        AppendFile(path)
    monkeypatch.undo()
    assert info.value.filename == str(path)
    assert path.read_text() == '{"a": 1}\n'  # the complete rows stay


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------------------------------
# 15. a refused evaluate leaves nothing


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--exits", "7"], "exits at layers"),
        (["--splits", "no-such-split"], "no-such-split"),
        (["--checkpoint-instead"], "config.json"),
    ],
    ids=["exits", "split", "checkpoint"],
)
def test_a_refused_evaluate_leaves_no_folder(assets, tmp_path, capsys, extra, expected):
    out = tmp_path / "runs" / "eval"  # two folders the run would create
    argv = _evaluate(assets, out)
    if extra == ["--checkpoint-instead"]:
        (tmp_path / "not_a_checkpoint").mkdir()
        argv[1] = str(tmp_path / "not_a_checkpoint")
    else:
        argv += extra
    assert cli_main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("wav2vec2-ee evaluate: error: ") and expected in lines[0]
    mine = ["not_a_checkpoint"] if argv[1] != str(assets["ee"]) else []
    assert sorted(p.name for p in tmp_path.iterdir()) == mine  # no runs/ nor runs/eval

    # a folder that was there keeps what it had and gets no lock file
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    assert cli_main(argv) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_evaluate_that_ran_keeps_its_folder_and_lock_file(assets, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(_evaluate(assets, out)) == 0
    assert (out / ".evaluate.lock").is_file() and (out / "test-other_summary.json").is_file()
    summary = json.loads((out / "test-other_summary.json").read_text())
    assert summary["utterances"] == 2


@needs_flock
def test_locked_output_folder_keeps_what_it_did_not_create(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), locked_output_folder(out, ".lock", "busy") as folder:
        assert folder == out and (out / ".lock").is_file()
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []

    # something written: kept, with its folders; the lock file goes
    with pytest.raises(RuntimeError), locked_output_folder(out, ".lock", "busy"):
        (out / "written.txt").write_text("x")
        raise RuntimeError("failed later")
    assert sorted(p.name for p in out.iterdir()) == ["written.txt"]

    with exclusive_lock(out / ".lock", "busy (pid {pid})"):  # another run holds the folder
        refused = pytest.raises(ValueError, match=f"busy \\(pid {os.getpid()}\\)")
        with refused, locked_output_folder(out, ".lock", "busy (pid {pid})"):
            raise AssertionError("not reached")
        assert (out / ".lock").is_file()  # the holder's lock file is not removed by a refused run


@needs_flock
def test_a_lock_file_removed_by_its_holder_is_not_locked_instead_of_the_one_there(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder removed it (and ended) must not count
    that removed file as the lock: it locks the file now at the path, which a third run then sees."""
    path = tmp_path / ".lock"
    real_flock = io_module.fcntl.flock
    calls = []

    def flock_after_the_holder_removed_it(fd, operation):
        if operation & io_module.fcntl.LOCK_EX and not calls:
            calls.append(fd)
            path.unlink()  # the holder removes it (and releases its lock) between our open and flock
        return real_flock(fd, operation)

    monkeypatch.setattr(io_module.fcntl, "flock", flock_after_the_holder_removed_it)
    with exclusive_lock(path, "busy"):
        assert path.is_file() and path.read_text() == f"{os.getpid()}\n"
        monkeypatch.undo()
        # a third run: refused, the lock is the file there
        with pytest.raises(ValueError, match="busy"), exclusive_lock(path, "busy"):
            pass
    assert len(calls) == 1
