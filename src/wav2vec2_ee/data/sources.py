"""Data sources: a LibriSpeech folder, a JSONL/CSV manifest, a Hugging Face dataset on disk.

Each source yields :class:`Utterance` records (an id, an audio path or encoded bytes, the raw
transcript and, where known up front, the duration).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A data source that cannot be read; the message names the path and the problem."""


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


def read_librispeech(root: str | os.PathLike, split: str) -> list[Utterance]:
    """Utterances of ``<root>/<split>/<speaker>/<chapter>/*.flac`` with their ``*.trans.txt``.

    ``split`` may also be a path to the split folder itself.
    """
    folder = Path(root, split) if not Path(split).is_absolute() else Path(split)
    if not folder.is_dir():
        available = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DataError(
            f"{folder}: no such LibriSpeech split folder"
            + (f" (splits in {root}: {', '.join(available)})" if available else "")
        )
    utterances: list[Utterance] = []
    for trans in sorted(folder.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = None
            for ext in (".flac", ".wav"):
                candidate = trans.parent / f"{utt_id}{ext}"
                if candidate.exists():
                    audio = str(candidate)
                    break
            utterances.append(Utterance(utt_id, audio or str(trans.parent / f"{utt_id}.flac"), text))
    if not utterances:
        raise DataError(f"{folder}: no */*/*.trans.txt transcripts found (expected the LibriSpeech layout)")
    return utterances


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Utterances of a JSONL or CSV manifest with fields ``audio``, ``text``, optional ``duration``, ``id``.

    Relative audio paths are resolved against the manifest's folder.
    """
    path = Path(path)
    base = path.parent
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not a JSON object ({err.msg})") from err
    utterances = []
    for i, row in enumerate(rows):
        if "audio" not in row or "text" not in row:
            raise DataError(f"{path}: row {i + 1} lacks the 'audio' or 'text' field (has {sorted(row)})")
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else base / audio
        duration = row.get("duration")
        utterances.append(
            Utterance(
                str(row.get("id") or audio.stem),
                str(audio),
                str(row["text"] or ""),
                float(duration) if duration not in (None, "") else None,
            )
        )
    return utterances


def read_hf_dataset(path: str | os.PathLike, split: str | None = None) -> list[Utterance]:
    """Utterances of a Hugging Face dataset saved with ``save_to_disk`` (``audio`` and ``text`` columns).

    Audio is read as encoded bytes (no decoding backend of ``datasets`` is needed) and decoded later
    with soundfile. ``split`` picks a split of a ``DatasetDict``.
    """
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
    utterances = []
    for i, row in enumerate(ds):
        audio = row["audio"] or {}
        utt_id = str(row.get("id") or Path(audio.get("path") or f"{i:08d}").stem)
        utterances.append(
            Utterance(utt_id, audio.get("path"), row[text_col] or "", None, audio_bytes=audio.get("bytes"))
        )
    return utterances


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


def load_split(data: str | os.PathLike, splits: Sequence[str] | str | None) -> list[Utterance]:
    """All utterances of ``splits`` (joined, as the seed joined train-clean-100 + 360 + other-500)."""
    kind = source_kind(data)
    if isinstance(splits, str):
        splits = [splits]
    if kind == "manifest":
        return read_manifest(data)
    if not splits:
        if kind == "hf_dataset":
            return read_hf_dataset(data, None)
        raise DataError(f"{data}: name the LibriSpeech split(s) to read (e.g. train-clean-100)")
    reader = read_hf_dataset if kind == "hf_dataset" else read_librispeech
    out: list[Utterance] = []
    for split in splits:
        out.extend(reader(data, split))
    return out
