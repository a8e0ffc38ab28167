"""Which splits a command reads, and one split loaded and checked for a model.

* :func:`resolve_splits`: ``(name, split)`` pairs from ``--data`` and ``--splits`` (a manifest is one
  split; a LibriSpeech folder defaults to ``test-clean test-other``, as the seed evaluated);
* :func:`load_prepared_split`: the usable utterances of one split (transcripts normalised, durations
  read, unusable items reported once);
* :func:`read_texts`: the transcripts of splits of ``--data`` or of manifest files (a lexicon's or a
  language model's training text).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .dataset import PreparationReport, PreparedUtterance, prepare_utterances
from .sources import load_split, report_skipped, source_kind

logger = logging.getLogger(__name__)

DEFAULT_LIBRISPEECH_SPLITS = ("test-clean", "test-other")


def resolve_splits(data: str | os.PathLike, splits: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``(name, split)`` pairs to read: the name labels result files, ``split`` goes to ``load_split``.

    A manifest is one split (named after the file unless one name is given); a LibriSpeech folder
    defaults to ``test-clean`` and ``test-other`` (the seed's); a Hugging Face dataset folder without
    ``splits`` is read whole.
    """
    kind = source_kind(data)
    splits = list(splits or [])
    if kind == "manifest":
        if len(splits) > 1:
            raise UserError(f"{data} is a manifest (one split): give at most one --splits name, got {splits}")
        pairs = [(splits[0] if splits else Path(data).stem, None)]
    elif not splits and kind == "librispeech":
        pairs = [(s, s) for s in DEFAULT_LIBRISPEECH_SPLITS]
    elif not splits:
        pairs = [(Path(data).name, None)]
    else:
        pairs = [(Path(s).name, s) for s in splits]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UserError(f"split names must be unique, got {names}")
    return pairs


def read_texts(data: str | os.PathLike | None, sources: Sequence[str], strict: bool = False) -> list[str]:
    """Transcripts of ``sources``: each an existing manifest file, or a split of ``data``.

    Bad rows and repeated ids are left out and reported (``strict``: :class:`BadItemError` at the first).
    """
    texts: list[str] = []
    for source in sources:
        if Path(source).is_file():
            utterances = load_split(source, None, strict=strict)
        elif data is None:
            raise FileNotFoundError(f"{source}: no such manifest file (and no --data to find a split in)")
        else:
            utterances = load_split(data, [source], strict=strict)
        report_skipped(utterances.skipped, strict=strict, log=logger)
        texts += [u.text for u in utterances]
    return texts


def load_prepared_split(
    data: str | os.PathLike,
    name: str,
    split: str | None,
    tokenizer,
    min_duration: float,
    progress: bool = True,
    strict: bool = False,
) -> tuple[list[PreparedUtterance], PreparationReport]:
    """The usable utterances of ``split`` of ``data`` (named ``name`` in messages), with references:
    transcripts normalised to the vocabulary, durations read from the headers, audio shorter than
    ``min_duration`` seconds (too short for one CTC frame) and unusable items (bad rows of the source
    and repeated ids included, each named ``file:line``) reported, counted in the report and left out.
    Raises ``ValueError`` when none is usable; with ``strict``, :class:`BadItemError` at the first
    unusable item."""
    utterances = load_split(data, [split] if split is not None else None)
    prepared, report = prepare_utterances(
        utterances,
        tokenizer,
        require_text=True,
        min_duration=min_duration,
        strict=strict,
        progress=progress,
        desc=f"checking {name}",
        tokenize=False,
    )
    if not prepared:
        raise UserError(f"{name}: no usable utterance ({report.summary()})")
    logger.info("%s: %s", name, report.summary())
    return prepared, report
