"""``wav2vec2-ee transcribe`` and ``python -m wav2vec2_ee.lite``'s results: the ``--output`` log of one
row per file, appended as files finish and continued by ``--resume``.

The standard library and the package's torch-free writers only: the PyTorch command and the torch-free
runtime write the same rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import UserError
from .io import AppendFile, atomic_write_text, exclusive_lock

logger = logging.getLogger(__name__)


#: The columns of a transcription log, in file order (``Transcription.to_dict`` keys). ``path`` (the
#: resolved path, what identifies a row's recording) is the last: logs written before it was a column
#: read and resume the same (their rows are keyed by their resolved ``source``).
TRANSCRIPTION_FIELDS = (
    "source",
    "text",
    "exit_layer",
    "layers_computed",
    "num_layers",
    "chunks",
    "seconds",
    "audio_seconds",
    "error",
    "path",
)

#: The columns that mark a file as a transcription log: a JSONL log's first row has these keys, a CSV
#: log's header names these columns (those of every version of the log). ``--output --resume`` refuses
#: any other file (a manifest, another command's result), so nothing is appended to it.
TRANSCRIPTION_MARK = frozenset(
    {"source", "text", "exit_layer", "layers_computed", "num_layers", "seconds", "audio_seconds", "error"}
)

#: How a JSONL log's rows start (``json.dumps`` of a row, ``source`` first): a file holding only a
#: partial first line (a run killed while writing it) is a log when the line is a prefix of this.
_JSONL_ROW_START = '{"source": '


def row_key(row: Mapping) -> str:
    """What identifies a log row's recording: its ``path`` (the resolved path the run recorded), else its
    ``source`` resolved (``os.path.realpath``: rows of logs written before ``path`` was a column)."""
    return row.get("path") or os.path.realpath(row["source"])


class TranscriptionLog:
    """``--output results.jsonl`` (one JSON object per line) or ``results.csv`` (a header, then one row
    per file; empty ``exit_layer`` / ``error`` / ``path`` cells are ``None``): one row per finished file,
    appended and synced to disk batch by batch (:class:`~wav2vec2_ee.io.AppendFile`), so an interrupted run
    keeps what it finished. A partial last line (a run killed mid-write) is not a row, and is cut off
    when the log is opened to append.

    Rows are keyed by the recording's resolved path (:func:`row_key`): ``.`` and an absolute path are one
    file. :meth:`finished` is what ``--resume`` skips: the recordings whose row has no error (a failed
    file is retried, its new row superseding the old one); :meth:`rows` gives each recording's latest
    row; :meth:`compact` rewrites the file with only those. :meth:`lock` keeps a second run out while one
    writes the file (a lock file beside it, ``.<name>.lock``). Only a file this command wrote is read or
    appended to (:data:`TRANSCRIPTION_MARK`); any other is refused with a
    :class:`~wav2vec2_ee.errors.UserError` naming it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self.columns: tuple[str, ...] = TRANSCRIPTION_FIELDS  # a CSV log's own header, once read
        self._file: AppendFile | None = None

    # ----------------------------------------------------------------------------------------------
    # what the file is

    @property
    def lock_path(self) -> Path:
        """The lock file of the log (``.<name>.lock`` beside it)."""
        return self.path.with_name(f".{self.path.name}.lock")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the log's lock for the block (:func:`~wav2vec2_ee.io.exclusive_lock`): a second run on the
        same file fails at once with a :class:`~wav2vec2_ee.errors.UserError` naming it and the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create its folder ({err.strerror or err})") from None
        busy = (
            f"{self.path}: another wav2vec2-ee transcribe (pid {{pid}}) is writing it; wait until it ends "
            "or choose another --output"
        )
        with exclusive_lock(self.lock_path, busy):
            yield

    def check(self) -> None:
        """Refuse (a :class:`~wav2vec2_ee.errors.UserError` naming the file) anything but a missing or
        empty file or a log of this command: a CSV whose header has the :data:`TRANSCRIPTION_MARK`
        columns, a JSONL file whose first row has those keys. Reads only the first line; for a CSV log
        :attr:`columns` becomes its header."""
        if not os.path.exists(self.path):
            return
        if not self.path.is_file():
            raise self._refusal("it is not a regular file")
        first = self._first_line()
        if not first.strip():
            return  # empty (or blank): nothing to lose
        if not first.endswith("\n"):  # the only line, partial: what a run killed in its first write leaves
            if not self._starts_log(first):
                raise self._refusal("its only line is not the start of a transcription row")
            return
        if self.csv:
            header = next(csv.reader([first]), [])
            if not TRANSCRIPTION_MARK.issubset(header):
                raise self._refusal(f"its header has the columns {', '.join(header)}")
            self.columns = tuple(header)
            return
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            raise self._refusal("its first line is not a JSON object") from None
        if not isinstance(row, dict):
            raise self._refusal("its first line is not a JSON object")
        if not TRANSCRIPTION_MARK.issubset(row):
            raise self._refusal(f"its first row has the keys {', '.join(row)}")

    def _first_line(self) -> str:
        """The file's first line that is not blank (with its line break, if it has one)."""
        with open(self.path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", errors="replace")
                if line.strip():
                    return line
        return ""

    def _starts_log(self, fragment: str) -> bool:
        """Whether ``fragment`` is the start of what this command writes first into the log."""
        first = ",".join(TRANSCRIPTION_FIELDS) if self.csv else _JSONL_ROW_START
        return first.startswith(fragment) or (not self.csv and fragment.startswith(first))

    def _refusal(self, why: str) -> UserError:
        return UserError(
            f"{self.path}: not a file written by wav2vec2-ee transcribe --output ({why}); nothing is "
            "appended to it: choose another --output"
        )

    # ----------------------------------------------------------------------------------------------
    # reading

    def _all_rows(self) -> list[dict]:
        """Every complete row in the file, in file order (none when it does not exist)."""
        self.check()
        if not self.path.is_file():
            return []
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        text = text[: text.rfind("\n") + 1]  # a partial last line is not a row
        if self.csv:
            return [
                {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                for row in csv.DictReader(io.StringIO(text))
                if row.get("source")
            ]
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: not a JSON row, ignored", self.path, lineno)
                continue
            if isinstance(row, dict) and isinstance(row.get("source"), str):
                out.append(row)
        return out

    @staticmethod
    def _latest(rows: Sequence[dict]) -> dict[str, dict]:
        """Each recording's latest row (:func:`row_key`), at the place of its first row."""
        latest: dict[str, dict] = {}
        for row in rows:
            latest[row_key(row)] = row
        return latest

    def rows(self) -> list[dict]:
        """Each recording's latest row in the file (a retried file's new row supersedes its error row),
        in the order of their first rows; none when the file does not exist."""
        return list(self._latest(self._all_rows()).values())

    def finished(self, rows: Sequence[dict] | None = None) -> set[str]:
        """The resolved paths (:func:`row_key`) of the recordings whose latest row has no error:
        ``--resume`` skips them and retries the others. ``rows``: those :meth:`rows` returned (not read
        again)."""
        return {row_key(row) for row in (self.rows() if rows is None else rows) if not row.get("error")}

    # ----------------------------------------------------------------------------------------------
    # writing

    def open(self) -> TranscriptionLog:
        """Open the log to append (created if missing; refused when it is not a log, :meth:`check`)."""
        self.check()
        self._file = AppendFile(self.path)
        if self.csv and self._file.empty:
            self.columns = TRANSCRIPTION_FIELDS
            self._file.write(self._format_csv(self.columns))
        return self

    def _format_csv(self, values: Sequence) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def _format_row(self, record: Mapping, keys: Sequence[str]) -> str:
        """One line of the log: ``record``'s ``keys`` (CSV: one physical line, a line break inside a
        message becomes a space; ``None`` is an empty cell)."""
        if self.csv:
            return self._format_csv(["" if record.get(k) is None else _one_line(record.get(k)) for k in keys])
        return json.dumps({k: record.get(k) for k in keys}, ensure_ascii=False) + "\n"

    def write(self, records: Sequence[Mapping]) -> None:
        """Append rows (``Transcription.to_dict()``) and sync them to disk."""
        if self._file is None:
            raise RuntimeError("TranscriptionLog.write before open()")
        keys = self.columns if self.csv else TRANSCRIPTION_FIELDS
        for record in records:
            self._file.write(self._format_row(record, keys))
        self._file.sync()

    def compact(self) -> bool:
        """Rewrite the file atomically with one row per recording (:meth:`rows`) when some rows were
        superseded (a retried file's error row; rows that runs before rows were keyed by path repeated);
        returns whether it did. Call it with the log closed, holding :meth:`lock`."""
        rows = self._all_rows()
        latest = self._latest(rows)
        if len(latest) == len(rows):
            return False
        lines = [self._format_csv(self.columns)] if self.csv else []
        lines += [self._format_row(row, self.columns if self.csv else list(row)) for row in latest.values()]
        atomic_write_text(self.path, "".join(lines))
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TranscriptionLog:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _one_line(value):
    return (
        value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ") if isinstance(value, str) else value
    )
