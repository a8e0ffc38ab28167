"""What to transcribe: the inputs a caller names, expanded to one item per recording.

An input is a path of an audio file, a folder (walked recursively for files with an audio extension
that soundfile reads, :data:`AUDIO_EXTENSIONS`, case-insensitive; sorted), a JSONL/CSV manifest (the
``audio`` column of the :func:`~wav2vec2_ee.data.read_manifest` format) or a 16 kHz mono waveform
(a 1-D array or tensor). :func:`expand_inputs` turns a list of them into :class:`AudioItem` s, in
order; nothing is decoded here.

Only regular files are read (:func:`~wav2vec2_ee.audio.check_regular_file`): a named pipe, socket or
device found in a folder is an item with its ``error`` set (reported like any unreadable file, never
opened: reading a named pipe blocks); named explicitly, reading it fails with that reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import (  # noqa: F401 (AUDIO_EXTENSIONS, find_audio_files: re-exported)
    AUDIO_EXTENSIONS,
    AudioError,
    check_regular_file,
    find_audio_files,
    is_special_file,
    walk_audio_files,
)
from ..data import read_manifest
from ..data.sources import DataError, report_skipped

logger = logging.getLogger(__name__)

#: One input: a path (an audio file, a folder, a manifest) or a ``(samples,)`` 16 kHz mono waveform.
AudioInput = str | os.PathLike | np.ndarray

#: Suffixes of a path read as a manifest (the ``audio`` column, :func:`~wav2vec2_ee.data.read_manifest`).
MANIFEST_EXTENSIONS = (".jsonl", ".csv")


@dataclass
class AudioItem:
    """One input after folders and manifests are expanded: a path or an array, and its source name.

    Args:
        source: the path, or ``<array i>`` for the i-th input, an array.
        path: the audio file (``None`` for an array or an error).
        array: the ``(samples,)`` float32 16 kHz waveform of an array input.
        error: why this input cannot be used (a folder without audio, a named pipe found in a folder,
            an unreadable manifest).
        seconds: its duration, once measured (the file header, or the array's length).
    """

    source: str
    path: str | os.PathLike | None = None
    array: np.ndarray | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def key(self) -> str:
        """What identifies the recording across runs: the resolved absolute path of a file (``.`` and an
        absolute path name the same file; links resolved), ``<array i>`` for an array, and for an
        input that is an error (a folder, a manifest) its resolved path."""
        if self.array is not None:
            return self.source
        return resolved_path(self.path if self.path is not None else self.source)


def resolved_path(path: str | os.PathLike) -> str:
    """``path`` absolute, normalised, with its links resolved (``os.path.realpath``): one name per file."""
    return os.path.realpath(path)


#: The folder walk lives in the torch-free :mod:`wav2vec2_ee.audio` (the lite runtime walks folders too).
_walk_audio_files = walk_audio_files
_is_special = is_special_file


def _file_item(path: str) -> AudioItem:
    """The item of a file found in a folder: to be read, or, for a named pipe, a socket or a device,
    an item whose ``error`` says what it is (reported like an unreadable file, never opened)."""
    if _is_special(path):
        try:
            check_regular_file(path)
        except AudioError as err:
            return AudioItem(path, error=str(err))
    return AudioItem(path, path=path)


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file read as a manifest (:data:`MANIFEST_EXTENSIONS`)."""
    return os.path.isfile(path) and os.path.splitext(str(path))[1].lower() in MANIFEST_EXTENSIONS


def _is_array(item: object) -> bool:
    return isinstance(item, np.ndarray | torch.Tensor)


def is_single_input(audio: AudioInput | Sequence[AudioInput]) -> bool:
    """Whether ``audio`` names one recording (an array, or a path that is neither a folder nor a
    manifest): one result, not a list."""
    return _is_array(audio) or (
        isinstance(audio, str | os.PathLike) and not os.path.isdir(audio) and not is_manifest(audio)
    )


def input_list(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    """``audio`` as a list of inputs (one path or array: a list of one)."""
    return [audio] if isinstance(audio, str | os.PathLike) or _is_array(audio) else list(audio)


def check_array_shapes(items: Sequence[AudioInput]) -> None:
    """Arrays must be 1-D ``(samples,)`` waveforms: another shape is the caller's mistake, raised for
    any input (a ``ValueError`` naming it, ``<array i>``)."""
    for i, item in enumerate(items):
        if _is_array(item) and item.ndim != 1:
            raise ValueError(
                f"<array {i}>: expected a 1-D 16 kHz mono waveform, got shape {tuple(item.shape)}"
            )


def expand_inputs(items: Sequence[AudioInput]) -> list[AudioItem]:
    """One :class:`AudioItem` per recording, in order: folders walked for audio files, manifests read
    (their bad rows warned about), arrays named ``<array i>`` by their position in ``items``. A folder
    without audio, a named pipe / socket / device in a folder or an unreadable manifest is an item with
    ``error`` set."""
    out: list[AudioItem] = []
    for i, item in enumerate(items):
        if _is_array(item):
            out.append(AudioItem(f"<array {i}>", array=np.asarray(item, dtype=np.float32)))
        elif os.path.isdir(item):
            found = [_file_item(path) for path in _walk_audio_files(item)]
            out.extend(found)
            if not found:
                out.append(AudioItem(str(item), error=f"{item}: no audio files in this folder"))
        elif is_manifest(item):
            try:
                rows = read_manifest(item)
            except DataError as err:
                out.append(AudioItem(str(item), error=str(err)))
                continue
            report_skipped(rows.skipped, log=logger)
            out.extend(AudioItem(str(row.audio), path=str(row.audio)) for row in rows)
        else:
            out.append(AudioItem(str(item), path=item))
    return out
