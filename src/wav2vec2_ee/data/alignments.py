"""Word times of a corpus (NIST CTM files) and the gaps between words they give.

A split of the LibriSpeech layout may carry ``words.ctm`` beside its speaker folders: one line per word,
``<utterance id> <channel> <start s> <duration s> <word> [<confidence>]`` (the format of NIST sclite,
Kaldi and the Montreal Forced Aligner's exports; ``wav2vec2-ee transcribe --format ctm`` writes it).
Training uses the gaps between consecutive words to put the pauses of ``--silence-prob`` where a talker
pauses (:func:`~.conditions.add_silence`); ``benchmarks/check_conditions.py`` does the same for its pause
check. Without the file, pauses go to the audio's quietest moments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..audio import SAMPLING_RATE
from .sources import DataError

logger = logging.getLogger(__name__)

#: The word-time file of a LibriSpeech-layout split (``<data>/<split>/words.ctm``).
CTM_NAME = "words.ctm"


def read_ctm(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """``{utterance id: [(start, end) seconds of each word, in time order]}`` of the CTM file ``path``.

    Blank lines and ``;;`` comments are skipped; a line with fewer than five fields, a time that is not a
    number or a negative duration is a :class:`~.sources.DataError` naming ``file:line``."""
    words: dict[str, list[tuple[float, float]]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the word times ({err})") from err
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;"):
            continue
        if len(fields) < 5:
            raise DataError(
                f"{path}:{lineno}: a CTM line has 5 fields (id channel start duration word), got {line!r}"
            )
        try:
            start, duration = float(fields[2]), float(fields[3])
        except ValueError:
            raise DataError(f"{path}:{lineno}: start and duration must be numbers, got {line!r}") from None
        if not (start >= 0 and duration >= 0):
            raise DataError(f"{path}:{lineno}: start and duration must be >= 0, got {line!r}")
        words.setdefault(fields[0], []).append((start, start + duration))
    return {utt: sorted(spans) for utt, spans in words.items()}


def word_gaps(
    spans: Sequence[tuple[float, float]], sampling_rate: int = SAMPLING_RATE
) -> list[tuple[int, int]]:
    """``(start, end)`` samples between each pair of consecutive words of ``spans`` (seconds, time order):
    from the end of one word to the start of the next (a one-sample gap where they touch or overlap)."""
    gaps = []
    for (_, end), (start, _) in zip(spans, spans[1:]):
        a, b = sorted((int(round(end * sampling_rate)), int(round(start * sampling_rate))))
        gaps.append((a, max(b, a + 1)))
    return gaps


def load_word_gaps(data: str | os.PathLike, splits: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
    """``{utterance id: word gaps in samples}`` from the ``words.ctm`` of each split of the
    LibriSpeech-layout corpus ``data`` that has one (other sources and splits without it: none)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for split in splits:
        path = Path(data, split, CTM_NAME)
        if not path.is_file():
            continue
        spans = read_ctm(path)
        out.update({utt: word_gaps(s) for utt, s in spans.items()})
        logger.info("%s: word times of %d utterances (pauses go between words)", path, len(spans))
    return out
