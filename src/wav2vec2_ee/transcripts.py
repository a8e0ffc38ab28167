"""``wav2vec2-ee transcribe`` and ``python -m wav2vec2_ee.lite``'s results: the row of one file, the
``--output`` log of one row per file (appended in input order as files finish, continued by
``--resume``), and the ``--format`` each prints them in.

The row (:data:`ROW_FIELDS`, in this order: :data:`TRANSCRIPTION_FIELDS`, the columns every log has had,
then :data:`ROW_EXTRA_FIELDS`; ``Transcription.to_dict()`` of the PyTorch transcriber, the same keys from
the lite runtime; a key a writer lacks is ``None``):

==================  ==================================================================================
``source``          the input as named (a path; ``<array i>`` for an array)
``text``            the transcript (lower case, single spaces; the ``decoder``'s); empty on an error
``exit_layer``      the layer of the exit that answered (split or windowed: the deepest over the
                    pieces); ``None`` on an error or when no piece had speech
``layers_computed`` transformer layers run (pieces: their mean weighted by their audio, a float)
``num_layers``      the model's full depth
``chunks``          the pieces it ran as (1: whole; split at pauses or windowed: how many; 0: none)
``seconds``         its share of the compute of the batches it ran in (each batch's time split in
                    proportion to audio x layers run, plus its own decoder search), so that the column
                    sums to the run's compute time; audio decoding excluded
``audio_seconds``   duration of its audio
``error``           why it was not transcribed (``None``: it was); names the input
``path``            its resolved absolute path (links resolved): the row's key (:func:`row_key`)
``latency_seconds`` seconds from the start of its first batch until its answer was ready (what a caller
                    waiting for this file sees; for a split file, reading and splitting included)
``decoder``         what gave ``text``: ``greedy`` (best path of the answering exit), ``lexicon``
                    (lexicon beam search) or ``lexicon-lm`` (with a word n-gram model)
``segments``        a list, one object per piece run (a whole file: one): ``start`` / ``end`` (seconds
                    in the recording), ``text``, ``exit_layer``, ``layers`` (run for the piece) and,
                    with ``--word-timestamps``, ``words`` (``text``, ``start``, ``end`` each, timed
                    from the CTC alignment: :mod:`wav2vec2_ee.timestamps`); in a CSV log the cell holds
                    the list as JSON
==================  ==================================================================================

The standard library and the package's torch-free modules only: the PyTorch command and the torch-free
runtime write the same rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from .errors import UserError
from .io import AppendFile, atomic_write_text, exclusive_lock
from .timestamps import Segment, Word, format_srt, format_vtt

logger = logging.getLogger(__name__)


#: The first columns of a transcription log, in file order (``Transcription.to_dict`` keys; the module
#: docstring says what each holds). ``path`` (the resolved path, what identifies a row's recording) is
#: the last of them: logs written before it was a column read and resume the same (their rows are keyed
#: by their resolved ``source``).
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

#: The columns after :data:`TRANSCRIPTION_FIELDS` (issue 30): the time until the answer, the text's
#: decoder and the segments. Logs written before them read and resume the same (a CSV log keeps its own
#: header's columns).
ROW_EXTRA_FIELDS = ("latency_seconds", "decoder", "segments")

#: Every column of a row, in file order: what ``--output`` writes (a new CSV log's header).
ROW_FIELDS = TRANSCRIPTION_FIELDS + ROW_EXTRA_FIELDS

#: The columns that mark a file as a transcription log: a JSONL log's first row has these keys, a CSV
#: log's header names these columns (those of every version of the log). ``--output --resume`` refuses
#: any other file (a manifest, another command's result), so nothing is appended to it.
TRANSCRIPTION_MARK = frozenset(
    {"source", "text", "exit_layer", "layers_computed", "num_layers", "seconds", "audio_seconds", "error"}
)

#: How a JSONL log's rows start (``json.dumps`` of a row, ``source`` first): a file holding only a
#: partial first line (a run killed while writing it) is a log when the line is a prefix of this.
_JSONL_ROW_START = '{"source": '


class ResultRow:
    """What the two result rows share, the PyTorch transcriber's ``Transcription`` and the lite runtime's
    ``LiteResult`` (dataclasses that hold the fields of :data:`ROW_FIELDS`; this mixin holds none)."""

    error: str | None
    segments: list[Segment]

    @property
    def ok(self) -> bool:
        """Whether the input was transcribed (``error`` is ``None``)."""
        return self.error is None

    def to_dict(self) -> dict:
        """The row: :data:`ROW_FIELDS` in their order, ``segments`` as a list of JSON objects."""
        values = {name: getattr(self, name, None) for name in ROW_FIELDS}
        values["segments"] = [segment.to_dict() for segment in self.segments]
        return values


Result = TypeVar("Result", bound=ResultRow)


class ResultStream(Generic[Result]):
    """Results in input order, each as soon as it and every input before it are done (an iterator; a
    context manager that closes it, so that a caller's error stops the work and its progress bar at once).

    Attributes:
        total: how many inputs it transcribes (folders and manifests expanded, skipped ones left out).
        done: how many results it has given so far.
    """

    def __init__(self, total: int, results: Iterator[Result]):
        self.total = total
        self.done = 0
        self._results = results

    def __iter__(self) -> ResultStream[Result]:
        return self

    def __next__(self) -> Result:
        result = next(self._results)
        self.done += 1
        return result

    def close(self) -> None:
        """Stop: the work not done is abandoned, the progress bar closed (a ``with`` block closes it)."""
        self._results.close()  # type: ignore[attr-defined]

    def __enter__(self) -> ResultStream[Result]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        self.columns: tuple[str, ...] = ROW_FIELDS  # a CSV log's own header, once read
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
        first = ",".join(ROW_FIELDS) if self.csv else _JSONL_ROW_START
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
            self.columns = ROW_FIELDS
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
            return self._format_csv(["" if record.get(k) is None else _cell(record.get(k)) for k in keys])
        return json.dumps({k: record.get(k) for k in keys}, ensure_ascii=False) + "\n"

    def write(self, records: Sequence[Mapping]) -> None:
        """Append rows (``Transcription.to_dict()``) and sync them to disk."""
        if self._file is None:
            raise RuntimeError("TranscriptionLog.write before open()")
        keys = self.columns if self.csv else ROW_FIELDS
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


def _cell(value):
    """A CSV cell: a list or an object (``segments``) as JSON, a string on one line."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return _one_line(value)


# --------------------------------------------------------------------------------------------------
# rows in input order


class InputOrder:
    """Results that finish in any order released in input order: :meth:`add` the result at ``position``
    (0, 1, 2, ... of the inputs), get back every result now ready with all those before it (a list,
    maybe empty). What ``transcribe`` prints and appends to ``--output``: each file's row as soon as it
    and all before it are done."""

    def __init__(self, start: int = 0):
        self.next = start
        self._waiting: dict[int, object] = {}

    def add(self, position: int, result) -> list:
        self._waiting[position] = result
        ready = []
        while self.next in self._waiting:
            ready.append(self._waiting.pop(self.next))
            self.next += 1
        return ready

    @property
    def pending(self) -> int:
        """Results held back, waiting for an earlier one."""
        return len(self._waiting)


# --------------------------------------------------------------------------------------------------
# what transcribe prints (--format)

#: ``transcribe --format`` (and lite's): ``text`` one line per file (its source, exit layer, seconds and
#: transcript, tab-separated); ``tsv`` a header line then one row per file (:data:`TSV_COLUMNS`);
#: ``jsonl`` one row (:data:`ROW_FIELDS`) per line; ``srt`` / ``vtt`` subtitles of its segments; ``ctm``
#: a NIST CTM line per word (:func:`ctm_lines`; word times are turned on for it).
OUTPUT_FORMATS = ("text", "tsv", "jsonl", "srt", "vtt", "ctm")

#: Subtitle formats: one document per input (printed for one input, else a file per input).
SUBTITLE_FORMATS = ("srt", "vtt")

#: The columns of ``--format tsv`` (its header line): the log's, but ``segments`` (``--format jsonl`` has
#: them).
TSV_COLUMNS = tuple(f for f in ROW_FIELDS if f != "segments")


def _number(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not float(value).is_integer():
        return f"{value:.{digits}f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def text_line(row: Mapping) -> str:
    """``--format text``: ``source<TAB>layer L/N<TAB>S s (answer after A s)<TAB>transcript`` (``-`` for
    the layer of a file without speech), no line break."""
    layer = "-" if row.get("exit_layer") is None else row["exit_layer"]
    seconds, latency = float(row.get("seconds") or 0.0), row.get("latency_seconds")
    timing = f"{seconds:.3f} s" + ("" if latency is None else f" (answer after {float(latency):.3f} s)")
    return f"{row['source']}\tlayer {layer}/{row.get('num_layers')}\t{timing}\t{row.get('text') or ''}"


def tsv_header() -> str:
    """``--format tsv``'s header line (:data:`TSV_COLUMNS`), no line break."""
    return "\t".join(TSV_COLUMNS)


def tsv_line(row: Mapping) -> str:
    """One ``--format tsv`` row (empty cells for ``None``; tabs and line breaks in a cell become spaces)."""
    cells = []
    for column in TSV_COLUMNS:
        value = row.get(column)
        if column in ("seconds", "latency_seconds", "audio_seconds", "layers_computed"):
            cells.append(_number(value))
        elif isinstance(value, list | dict):
            cells.append(json.dumps(value, ensure_ascii=False))
        else:
            cells.append("" if value is None else " ".join(str(value).split("\t")).replace("\n", " "))
    return "\t".join(cells)


def jsonl_line(row: Mapping) -> str:
    """One ``--format jsonl`` line: the row as JSON (:data:`ROW_FIELDS`), no line break."""
    return json.dumps({k: row.get(k) for k in ROW_FIELDS}, ensure_ascii=False)


def row_segments(row: Mapping) -> list[Segment]:
    """The :class:`~wav2vec2_ee.timestamps.Segment` s of a row (its ``segments``: a list, or JSON text as
    a CSV log holds it)."""
    value = row.get("segments") or []
    if isinstance(value, str):
        value = json.loads(value)
    out = []
    for item in value:
        words = item.get("words")
        if words is not None:
            words = [Word(w["text"], float(w["start"]), float(w["end"])) for w in words]
        start, end = float(item["start"]), float(item["end"])
        out.append(
            Segment(start, end, item.get("text", ""), words, item.get("exit_layer"), item.get("layers"))
        )
    return out


def ctm_lines(row: Mapping, utterance_id: str | None = None) -> list[str]:
    """``--format ctm``: a NIST CTM line per word of the row, ``<id> 1 <start> <duration> <word>`` (seconds,
    3 decimals; the id is ``utterance_id``, by default the file's name without its extension, as
    LibriSpeech names utterances), the format of sclite, Kaldi and forced aligners
    (:func:`~wav2vec2_ee.data.alignments.read_ctm` reads it). A ``ValueError`` when the row's segments
    have no word times."""
    utt = utterance_id or "_".join((Path(str(row["source"])).stem or "audio").split())
    lines = []
    for segment in row_segments(row):
        if segment.text and segment.words is None:
            raise ValueError(f"{row['source']}: --format ctm needs word times (--word-timestamps)")
        for word in segment.words or []:
            lines.append(f"{utt} 1 {word.start:.3f} {max(word.end - word.start, 0.0):.3f} {word.text}")
    return lines


def subtitles(row: Mapping, fmt: str) -> str:
    """``--format srt`` or ``vtt``: the row's segments as SubRip or WebVTT (a cue per segment with text)."""
    if fmt not in SUBTITLE_FORMATS:
        raise ValueError(f"not a subtitle format: {fmt!r}")
    segments = row_segments(row)
    return format_srt(segments) if fmt == "srt" else format_vtt(segments)


class FormatWriter:
    """Each file's row in ``--format``'s form as it comes, for ``transcribe`` and ``lite`` alike: text,
    tsv (its header first, :meth:`start`) and jsonl as lines given to ``out``; srt / vtt documents given
    to ``out`` or, with ``output_dir``, written there as a file per input (``NAME.srt``; ``NAME-2.srt``,
    ... when a name repeats in the run). ``out`` prints (this module does not)."""

    def __init__(self, fmt: str, output_dir: str | os.PathLike | None, out: Callable[[str], None]):
        self.format = fmt
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._out = out
        self._names: set[str] = set()

    def start(self) -> None:
        if self.format == "tsv":
            self._out(tsv_header())

    def write(self, row: Mapping, source: str, ok: bool) -> None:
        """One file's row (``ok``: it was transcribed; text and subtitles show nothing for a failure)."""
        if self.format == "text":
            if ok:
                self._out(text_line(row))
        elif self.format == "tsv":
            self._out(tsv_line(row))
        elif self.format == "jsonl":
            self._out(jsonl_line(row))
        elif self.format == "ctm":
            for line in ctm_lines(row) if ok else []:
                self._out(line)
        elif ok:
            document = subtitles(row, self.format)
            if self.output_dir is None:
                self._out(document.rstrip("\n"))
            else:
                atomic_write_text(self._subtitle_file(source), document)

    def where(self) -> str:
        """Where the rows went: the subtitle folder, or stdout."""
        if self.format in SUBTITLE_FORMATS and self.output_dir is not None:
            return str(self.output_dir)
        return "stdout"

    def _subtitle_file(self, source: str) -> Path:
        stem = Path(source).stem or "audio"
        name, k = stem, 1
        while name in self._names:
            k += 1
            name = f"{stem}-{k}"
        self._names.add(name)
        assert self.output_dir is not None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir / f"{name}.{self.format}"
