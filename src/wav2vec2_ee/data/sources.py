"""Data sources: a LibriSpeech folder, a JSONL/CSV manifest, a Hugging Face dataset on disk.

Each source yields :class:`Utterance` records (an id, an audio path or encoded bytes, the raw
transcript and, where known up front, the duration).

A bad row or line of a source (a byte that is not UTF-8, a row that is not an object, an ``audio``
that is not a path, a ``text`` that is not a string, a ``duration`` that is not a number of seconds
between 0 and 24 h) and a repeated utterance id (the first occurrence is kept) are left out, each
named by its file and line. The readers return an :class:`Utterances` list whose ``skipped`` holds
them as ``(where, reason)``; whoever consumes the list reports them
(:func:`~wav2vec2_ee.data.prepare_utterances` counts them with the bad audio in its report).
With ``strict`` the readers raise :class:`BadItemError` at the first one instead.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger(__name__)

# the longest duration a manifest may declare: anything longer is a broken row, not audio
MAX_DECLARED_DURATION = 24 * 3600.0
# reason prefixes (``PreparationReport.counts`` groups by the text before the first colon)
BAD_ROW = "bad row"
NOT_UTF8 = "not UTF-8"
DUPLICATE_ID = "duplicate id"
_SHOWN_DUPLICATES = 5


class DataError(UserError):
    """A data source that cannot be read; the message names the path and the problem."""


class BadItemError(UserError):
    """Raised in ``strict`` mode for the first unusable item (a bad row or line, a repeated id, bad audio)."""


def strict_error(where: str, reason: str) -> BadItemError:
    """The :class:`BadItemError` that ``strict`` raises for the item at ``where``."""
    return BadItemError(f"{where}: {reason} (--strict stops at the first bad item)")


@dataclass
class Utterance:
    """One item of a corpus.

    Args:
        id: unique utterance id (LibriSpeech: ``<speaker>-<chapter>-<index>``).
        audio: path of the audio file, or ``None`` when ``audio_bytes`` holds it.
        text: the transcript as found in the source (not yet normalised).
        duration: seconds, when known.
        audio_bytes: encoded audio (from a Hugging Face dataset), when there is no file.
    """

    id: str
    audio: str | None
    text: str
    duration: float | None = None
    audio_bytes: bytes | None = None


class Utterances(list):
    """A list of :class:`Utterance` plus ``skipped``: the ``(where, reason)`` of each row or line that
    the reader left out (``where`` is ``file:line``), in file order, not yet reported.

    A slice keeps ``skipped`` (so ``utterances[:n]`` still reports the bad rows).
    """

    def __init__(self, items: Iterable[Utterance] = (), skipped: Iterable[tuple[str, str]] = ()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Utterances(super().__getitem__(index), self.skipped)
        return super().__getitem__(index)


def report_skipped(
    skipped: Sequence[tuple[str, str]], strict: bool = False, log: logging.Logger = logger
) -> None:
    """Report rows a reader left out: with ``strict`` raise :class:`BadItemError` for the first;
    otherwise one warning per bad row or line and one warning for all repeated ids (a few of them
    with their places, then a count)."""
    if not skipped:
        return
    if strict:
        raise strict_error(*skipped[0])
    duplicates = []
    for where, reason in skipped:
        if reason.startswith(f"{DUPLICATE_ID}:"):
            duplicates.append((where, reason))
        else:
            log.warning("skipping %s: %s", where, reason)
    if duplicates:
        shown = []
        for where, reason in duplicates[:_SHOWN_DUPLICATES]:
            utt_id, _, first = reason[len(DUPLICATE_ID) + 2 :].rpartition(" (first at ")
            shown.append(f"{utt_id} ({where}, first at {first[:-1]})" if utt_id else f"{where}: {reason}")
        more = len(duplicates) - len(shown)
        log.warning(
            "skipping %d %s with an utterance id seen before (the first of each is kept): %s%s",
            len(duplicates),
            "item" if len(duplicates) == 1 else "items",
            ", ".join(shown),
            f" and {more} more" if more else "",
        )


class _Rows:
    """Collects the bad rows of one read: ``strict`` raises at the first."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.skipped: list[tuple[str, str]] = []

    def bad(self, where: str, reason: str) -> None:
        if self.strict:
            raise strict_error(where, reason)
        self.skipped.append((where, reason))

    def unique(self, items: Iterable[tuple[Utterance, str]]) -> Utterances:
        """The utterances of ``(utterance, where)`` pairs, each id once (the first kept)."""
        seen: dict[str, str] = {}
        out = Utterances()
        for utt, where in items:
            first = seen.get(utt.id)
            if first is not None:
                self.bad(where, f"{DUPLICATE_ID}: {utt.id} (first at {first})")
                continue
            seen[utt.id] = where
            out.append(utt)
        out.skipped = self.skipped
        return out


class _BadRow(ValueError):
    """The reason a row of a source is unusable."""


def _lines(path: Path, rows: _Rows) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of ``path`` (line ends kept), decoded as UTF-8 one line
    at a time: a line that is not UTF-8 is reported and left out, the others are kept."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.bad(f"{path}:{lineno}", f"{NOT_UTF8}: byte 0x{raw[err.start]:02x} at column {err.start + 1}")


def _show(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _declared_duration(value: object) -> float | None:
    """Seconds from a ``duration`` field (``None`` when absent or empty), or :class:`_BadRow`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _BadRow(f"{BAD_ROW}: 'duration' must be a number of seconds, got {_show(value)}")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise _BadRow(f"{BAD_ROW}: 'duration' must be a number of seconds, got {_show(value)}") from None
    if not math.isfinite(seconds):
        raise _BadRow(f"{BAD_ROW}: 'duration' must be a finite number of seconds, got {_show(value)}")
    if seconds < 0:
        raise _BadRow(f"{BAD_ROW}: 'duration' is negative ({seconds:g} s)")
    if seconds > MAX_DECLARED_DURATION:
        raise _BadRow(f"{BAD_ROW}: 'duration' {seconds:g} s is longer than 24 h")
    return seconds


def _row_utterance(row: object, base: Path) -> Utterance:
    """The utterance of one manifest row (JSONL object or CSV record), or :class:`_BadRow`."""
    if not isinstance(row, dict):
        raise _BadRow(f"{BAD_ROW}: not a JSON object (got {_show(row)})")
    missing = [field for field in ("audio", "text") if field not in row]
    if missing:
        raise _BadRow(
            f"{BAD_ROW}: lacks the {' and '.join(repr(f) for f in missing)} field (has {sorted(map(str, row))})"
        )
    audio, text, utt_id = row["audio"], row["text"], row.get("id")
    if audio is None:
        raise _BadRow(f"{BAD_ROW}: 'audio' is null")
    if not isinstance(audio, str):
        raise _BadRow(f"{BAD_ROW}: 'audio' must be a path, got {_show(audio)}")
    if not audio.strip():
        raise _BadRow(f"{BAD_ROW}: 'audio' is empty")
    if text is not None and not isinstance(text, str):
        raise _BadRow(f"{BAD_ROW}: 'text' must be a string, got {_show(text)}")
    if utt_id is not None and (isinstance(utt_id, bool) or not isinstance(utt_id, (str, int))):
        raise _BadRow(f"{BAD_ROW}: 'id' must be a string, got {_show(utt_id)}")
    duration = _declared_duration(row.get("duration"))
    path = Path(audio)
    path = path if path.is_absolute() else base / path
    return Utterance(str(utt_id) if utt_id not in (None, "") else path.stem, str(path), text or "", duration)


def _librispeech_rows(root: str | os.PathLike, split: str, rows: _Rows) -> Iterator[tuple[Utterance, str]]:
    folder = Path(root, split) if not Path(split).is_absolute() else Path(split)
    if not folder.is_dir():
        available = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DataError(
            f"{folder}: no such LibriSpeech split folder"
            + (f" (splits in {root}: {', '.join(available)})" if available else "")
        )
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise DataError(f"{folder}: no */*/*.trans.txt transcripts found (expected the LibriSpeech layout)")
    found = 0
    for trans in transcripts:
        for lineno, line in _lines(trans, rows):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = None
            for ext in (".flac", ".wav"):
                candidate = trans.parent / f"{utt_id}{ext}"
                if candidate.exists():
                    audio = str(candidate)
                    break
            found += 1
            yield (
                Utterance(utt_id, audio or str(trans.parent / f"{utt_id}.flac"), text.strip()),
                f"{trans}:{lineno}",
            )
    if not found:
        raise DataError(f"{folder}: no usable transcript line ({_first_bad(rows)})")


def _first_bad(rows: _Rows) -> str:
    if not rows.skipped:
        return "the transcripts are empty"
    where, reason = rows.skipped[0]
    return f"{len(rows.skipped)} bad, the first {where}: {reason}"


def read_librispeech(
    root: str | os.PathLike, split: str, *, strict: bool = False, skipped: list | None = None
) -> Utterances:
    """Utterances of ``<root>/<split>/<speaker>/<chapter>/*.flac`` with their ``*.trans.txt``.

    ``split`` may also be a path to the split folder itself. A transcript line that is not UTF-8
    and a repeated utterance id are left out and listed in the result's ``skipped`` (and appended to
    ``skipped`` when given); ``strict`` raises :class:`BadItemError` at the first instead.
    """
    rows = _Rows(strict)
    out = rows.unique(_librispeech_rows(root, split, rows))
    if skipped is not None:
        skipped.extend(out.skipped)
    return out


def _manifest_rows(path: Path, rows: _Rows) -> Iterator[tuple[Utterance, str]]:
    base = path.parent
    found = 0
    if path.suffix.lower() == ".csv":
        records = _csv_records(path, rows)
    else:
        records = _jsonl_records(path, rows)
    for lineno, record in records:
        where = f"{path}:{lineno}"
        try:
            utt = _row_utterance(record, base)
        except _BadRow as err:
            rows.bad(where, str(err))
            continue
        found += 1
        yield utt, where
    if not found and rows.skipped:
        raise DataError(f"{path}: no usable row ({_first_bad(rows)})")


def _jsonl_records(path: Path, rows: _Rows) -> Iterator[tuple[int, object]]:
    for lineno, line in _lines(path, rows):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as err:
            rows.bad(f"{path}:{lineno}", f"{BAD_ROW}: not JSON ({err.msg} at column {err.colno})")


def _csv_records(path: Path, rows: _Rows) -> Iterator[tuple[int, dict]]:
    """``(line number, {column: value})`` of each CSV record (its first line when it spans several)."""
    consumed: list[int] = []

    def lines() -> Iterator[str]:
        for lineno, line in _lines(path, rows):
            consumed.append(lineno)
            yield line

    reader = csv.reader(lines())
    header = next(reader, None)
    if header is None:
        return
    if consumed[0] != 1:
        raise DataError(f"{path}:1: the header line is not UTF-8")
    header = [h.strip() for h in header]
    missing = [field for field in ("audio", "text") if field not in header]
    if missing:
        raise DataError(
            f"{path}: the header lacks the {' and '.join(repr(f) for f in missing)} column (has {header})"
        )
    consumed.clear()
    for values in reader:
        start = consumed[0]
        consumed.clear()
        if not values:
            continue
        if len(values) != len(header):
            rows.bad(f"{path}:{start}", f"{BAD_ROW}: {len(values)} fields, the header has {len(header)}")
            continue
        yield start, dict(zip(header, values))


def read_manifest(
    path: str | os.PathLike, *, strict: bool = False, skipped: list | None = None
) -> Utterances:
    """Utterances of a JSONL or CSV manifest with fields ``audio``, ``text``, optional ``duration``, ``id``.

    Relative audio paths are resolved against the manifest's folder. A bad row (see the module's
    docstring) and a repeated id are left out and listed in the result's ``skipped`` (and appended to
    ``skipped`` when given); ``strict`` raises :class:`BadItemError` at the first instead. A manifest
    with rows but none usable, and a CSV whose header lacks ``audio`` or ``text``, raise
    :class:`DataError`.
    """
    rows = _Rows(strict)
    out = rows.unique(_manifest_rows(Path(path), rows))
    if skipped is not None:
        skipped.extend(out.skipped)
    return out


def _hf_rows(path: str | os.PathLike, split: str | None, rows: _Rows) -> Iterator[tuple[Utterance, str]]:
    try:
        from datasets import Audio, DatasetDict, load_from_disk
    except ImportError as err:  # pragma: no cover - optional dependency
        raise DataError(f"{path}: reading a Hugging Face dataset needs `pip install datasets`") from err
    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split is None or split not in ds:
            raise DataError(f"{path}: choose a split of this dataset: {', '.join(ds)} (got {split!r})")
        ds = ds[split]
    text_col = next(
        (c for c in ("text", "sentence", "transcription", "transcript") if c in ds.column_names), None
    )
    if "audio" not in ds.column_names or text_col is None:
        raise DataError(f"{path}: the dataset needs 'audio' and 'text' columns, has {ds.column_names}")
    ds = ds.cast_column("audio", Audio(decode=False))
    label = f"{path} [{split}]" if split is not None else str(path)
    for i, row in enumerate(ds):
        where = f"{label} row {i}"
        audio = row["audio"] or {}
        text = row[text_col]
        if text is not None and not isinstance(text, str):
            rows.bad(where, f"{BAD_ROW}: '{text_col}' must be a string, got {_show(text)}")
            continue
        if not audio.get("path") and audio.get("bytes") is None:
            rows.bad(where, f"{BAD_ROW}: 'audio' has neither a path nor bytes")
            continue
        utt_id = str(row.get("id") or Path(audio.get("path") or f"{i:08d}").stem)
        yield Utterance(utt_id, audio.get("path"), text or "", None, audio_bytes=audio.get("bytes")), where


def read_hf_dataset(
    path: str | os.PathLike, split: str | None = None, *, strict: bool = False, skipped: list | None = None
) -> Utterances:
    """Utterances of a Hugging Face dataset saved with ``save_to_disk`` (``audio`` and ``text`` columns).

    Audio is read as encoded bytes (no decoding backend of ``datasets`` is needed) and decoded later
    with soundfile. ``split`` picks a split of a ``DatasetDict``. Rows without audio or with a text
    that is not a string, and repeated ids, are left out as in :func:`read_manifest`.
    """
    rows = _Rows(strict)
    out = rows.unique(_hf_rows(path, split, rows))
    if skipped is not None:
        skipped.extend(out.skipped)
    return out


def source_kind(data: str | os.PathLike) -> str:
    """``"manifest"``, ``"hf_dataset"`` or ``"librispeech"`` for a data path."""
    path = Path(data)
    if path.is_file():
        return "manifest"
    if not path.exists():
        raise DataError(f"{path}: no such data folder or manifest file")
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return "hf_dataset"
    return "librispeech"


def load_split(
    data: str | os.PathLike,
    splits: Sequence[str] | str | None,
    *,
    strict: bool = False,
    skipped: list | None = None,
) -> Utterances:
    """All utterances of ``splits`` (joined, as the seed joined train-clean-100 + 360 + other-500).

    Bad rows or lines and repeated ids (over all the splits joined; the first is kept) are left out
    and listed, as ``(file:line, reason)``, in the result's ``skipped`` (and appended to ``skipped``
    when given), for :func:`~wav2vec2_ee.data.prepare_utterances` to report and count;
    ``strict`` raises :class:`BadItemError` at the first instead.
    """
    kind = source_kind(data)
    if isinstance(splits, str):
        splits = [splits]
    rows = _Rows(strict)
    if kind == "manifest":
        items: Iterable[tuple[Utterance, str]] = _manifest_rows(Path(data), rows)
    elif not splits:
        if kind != "hf_dataset":
            raise DataError(f"{data}: name the LibriSpeech split(s) to read (e.g. train-clean-100)")
        items = _hf_rows(data, None, rows)
    else:
        reader = _hf_rows if kind == "hf_dataset" else _librispeech_rows
        items = (pair for split in splits for pair in reader(data, split, rows))
    out = rows.unique(items)
    if skipped is not None:
        skipped.extend(out.skipped)
    return out
