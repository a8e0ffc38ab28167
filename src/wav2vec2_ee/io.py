"""Atomic file writing, the one writer of the package: a crash or Ctrl-C leaves either the old file or the
new one, never a half-written one; :func:`exclusive_lock`, which keeps two runs out of one folder, and
:func:`locked_output_folder`, which also takes away what a failed run created.

An ``OSError`` of the operating system raised while a file is written (a write, flush or ``fsync`` of an
open file: a full disk, ``[Errno 28]``) names that file (its ``filename``), so the command line's one
line says which file could not be written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def name_the_file(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` with ``path`` as its ``filename`` when it is an operating-system error that names no file
    (what a write or ``fsync`` of an open file raises); returned for a bare ``raise`` (same object,
    type and traceback). Errors raised with a message only (no ``errno``) are left as they are."""
    if err.filename is None and err.errno is not None:
        err.filename = os.fspath(path)
    return err


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
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            name_the_file(err, path)  # a full disk names the file written, not the temporary one
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
    so a lock file left behind by a dead run never blocks. The file is not removed on release; a holder
    may remove it *while it holds it* (:func:`locked_output_folder` does, for a failed run): a run that
    then locks the removed file (opened just before) finds it is no longer at ``path`` and locks the
    file there instead, so two runs never hold "the" lock at once. Without ``fcntl`` (Windows) nothing
    is locked.
    """
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = _lock_file_at(path, busy)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as err:
            name_the_file(err, path)
            raise
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the file may be gone (removed by the holder)
                os.ftruncate(fd, 0)  # no pid of a run that is over
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for forked children that share the open file
    finally:
        os.close(fd)


def _lock_file_at(path: Path, busy: str) -> int:
    """An open descriptor of the lock file at ``path``, locked (``flock``), or :class:`UserError`
    ``busy`` when another holder has it. Locking a file that its holder removed as it ended (no longer
    the file at ``path``) does not count: the file now at ``path`` is locked instead."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() does
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise UserError(busy.replace("{pid}", holder if holder.isdigit() else "?")) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_file_at(fd, path):
            return fd
        os.close(fd)  # a removed lock file: try the one at path now


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file that ``path`` names now."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


@contextlib.contextmanager
def locked_output_folder(folder: str | os.PathLike, lock_name: str, busy: str) -> Iterator[Path]:
    """An output folder for one run: ``folder`` is created (with its missing parents) and locked with
    :func:`exclusive_lock` (the file ``lock_name`` in it, ``busy`` its refusal) for the block, which gets
    the folder as a :class:`~pathlib.Path`.

    When the block raises (a refused run: bad arguments or data found once the folder was locked; or
    any other error), what this run created is taken away again, so a run that wrote nothing leaves
    nothing: the lock file, when this run created it (removed while still held), then the folders it
    created that are empty. Files the block wrote stay (and their folders), as do the lock file and the
    folder of another run that holds them (a refusal as busy). A run that ends normally keeps the lock
    file, as :func:`exclusive_lock` does.
    """
    folder = Path(folder)
    created = _missing_folders(folder)
    lock = folder / lock_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        new_lock = not lock.exists()
        with exclusive_lock(lock, busy):
            try:
                yield folder
            except BaseException:
                if new_lock:
                    with contextlib.suppress(OSError):
                        lock.unlink()
                raise
    except BaseException:
        _remove_empty_folders(created)
        raise


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty; stop at the first that is not (or that
    cannot be removed)."""
    for candidate in folders:
        try:
            candidate.rmdir()
        except OSError:
            return


def move_into_place(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a finished file over ``target`` in one atomic rename (same file system): ``target`` is the old
    file or the new one, never a mix. Used to publish a folder's files in a chosen order."""
    os.replace(source, target)


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``source`` in the place of ``target`` (beside it: the same file system),
    which is absent or a folder that is replaced whole. ``source``'s files are flushed to disk, ``target``
    is moved aside (to ``.<name>.replaced`` beside it, removed first if a killed run left one), ``source``
    renamed in and the old folder removed: each step is one rename, so ``target`` is the old folder, the
    new one or (killed between the two renames) absent, never a mix. The caller keeps other writers out
    (a lock)."""
    source, target = Path(source), Path(target)
    for root, _, files in os.walk(source):
        for name in files:
            fsync_path(Path(root, name))
    aside = target.with_name(f".{target.name}.replaced")
    if aside.exists():
        shutil.rmtree(aside)
    if target.exists():
        os.replace(target, aside)
    os.replace(source, target)
    fsync_path(target.parent)
    if aside.exists():
        shutil.rmtree(aside)


class AppendFile:
    """The append-and-flush writer: text appended to a file that a run writes as it goes (one line per
    finished item), :meth:`sync` writing what was appended since the last sync and flushing it to disk
    (``fsync``), so an interrupted run keeps every line synced before it stopped.

    Opening cuts a partial last line (a run killed in the middle of a write) off the file, so that
    appended lines start on a line of their own; the reader of such a file ignores that partial line
    anyway. A new file gets the mode the umask gives, and its folder is synced once it exists.

    A failed write or sync (a full disk) leaves the file as it was after the last sync, never a partial
    line; a new file that never got a line synced is removed. The ``OSError`` names the file, and the
    writer is closed.
    """

    def __init__(self, path: str | os.PathLike, encoding: str = "utf-8"):
        self.path = Path(path)
        self.encoding = encoding
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._new = not self.path.exists()
        self._pending = bytearray()  # appended since the last sync
        self._synced: int | None = None  # the file's size after the last sync (None: not known yet)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            self._synced = self._cut_partial_line()  # the size the file has after the last sync
        except BaseException as err:
            self._abandon()
            if isinstance(err, OSError):
                name_the_file(err, self.path)
            raise
        if self._new:
            fsync_path(self.path.parent)

    def _cut_partial_line(self) -> int:
        """Cut a partial last line off the file; returns its size after that."""
        fd = self._fd
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end, block = size, 65536
        keep = 0
        while end > 0:  # the last newline, read backwards
            start = max(0, end - block)
            at = os.pread(fd, end - start, start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return keep

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: the append writer is closed")
        return self._fd

    @property
    def empty(self) -> bool:
        """Whether nothing was written: none synced in the file, none appended since."""
        return os.fstat(self._descriptor()).st_size == 0 and not self._pending

    def write(self, text: str) -> None:
        """Append ``text`` (written to the file by the next :meth:`sync`)."""
        self._descriptor()
        self._pending += text.encode(self.encoding)

    def sync(self) -> None:
        """Write what was appended since the last sync and flush it to disk; on an ``OSError`` (naming
        the file) the file is cut back to what the last sync left and this writer is closed."""
        fd = self._descriptor()
        try:
            data = bytes(self._pending)
            while data:  # os.write may write less than it was given
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as err:
            self._abandon()
            name_the_file(err, self.path)
            raise
        self._synced = (self._synced or 0) + len(self._pending)
        self._pending.clear()

    def _abandon(self) -> None:
        """After a failed write: the file back to its size at the last sync (removed when it is new and
        got nothing; left as it is when the failure came before its size was known), the descriptor
        closed, what was pending dropped (best effort: the disk may be full or gone)."""
        fd, self._fd = self._fd, None
        self._pending.clear()
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if self._new and not self._synced:
                os.unlink(self.path)
            elif self._synced is not None:
                os.ftruncate(fd, self._synced)
        os.close(fd)

    def close(self) -> None:
        """Sync what is pending and close (a second close does nothing)."""
        if self._fd is None:
            return
        try:
            self.sync()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AppendFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
