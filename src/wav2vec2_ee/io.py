"""Atomic file writing, the one writer of the package: a crash or Ctrl-C leaves either the old file or the
new one, never a half-written one; and :func:`exclusive_lock`, which keeps two runs out of one folder."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _file_mode() -> int:
    """The mode a new file gets from ``open()`` here: 0o666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries (a rename in it), to disk; a no-op where that is not possible."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file (a unique name) beside ``path``; it replaces ``path`` only when the block
    ends normally: the data is flushed to disk, the file gets the mode the umask gives new files, the
    rename is atomic and the folder is synced after it, so a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; a result file follows the umask
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block, or raise a
    :class:`~wav2vec2_ee.errors.UserError` with the message ``busy`` at once when another holder has it,
    ``{pid}`` in ``busy`` replaced with the holder's process id (which it writes into the file; ``?``
    when unknown).

    The lock is ``flock``'s, which belongs to the open file: another open of the file conflicts even in
    this process, and the kernel drops it when the holder ends in whatever way (SIGKILL, out of memory),
    so a lock file left behind by a dead run never blocks. The file is not removed on release: removing
    it would let a third run lock a new file while a second still holds the old one. Without ``fcntl``
    (Windows) nothing is locked.
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() does
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise UserError(busy.replace("{pid}", holder if holder.isdigit() else "?")) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            yield
        finally:
            os.ftruncate(fd, 0)  # no pid of a run that is over
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children that share the open file
    finally:
        os.close(fd)


def move_into_place(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished file over ``target`` in one atomic rename (same file system): ``target`` is the old
    file or the new one, never a mix. Used to publish a folder's files in a chosen order."""
    os.replace(source, target)


class AppendFile:
    """The append-and-flush writer: text appended to a file that a run writes as it goes (one line per
    finished item), :meth:`sync` flushing it to disk (``fsync``), so an interrupted run keeps every line
    synced before it stopped.

    Opening cuts a partial last line (a run killed in the middle of a write) off the file, so that
    appended lines start on a line of their own; the reader of such a file ignores that partial line
    anyway. A new file gets the mode the umask gives, and its folder is synced once it exists.
    """

    def __init__(self, path: str | os.PathLike, encoding: str = "utf-8"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._file = open(self.path, "a+b")  # noqa: SIM115 - closed by close() / the context
        try:
            self._cut_partial_line()
        except BaseException:
            self._file.close()
            raise
        self.encoding = encoding
        if new:
            fsync_path(self.path.parent)

    def _cut_partial_line(self) -> None:
        f = self._file
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end, block = size, 65536
        keep = 0
        while end > 0:  # the last newline, read backwards
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())

    @property
    def empty(self) -> bool:
        return self._file.seek(0, os.SEEK_END) == 0

    def write(self, text: str) -> None:
        self._file.write(text.encode(self.encoding))

    def sync(self) -> None:
        """Flush what was written to disk."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
