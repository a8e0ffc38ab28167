"""Times in a transcript: words from the CTC alignment, segments, and the SRT / WebVTT subtitle formats.

A CTC model's greedy output says, frame by frame (20 ms for wav2vec2's CNN), which character it emits;
a word spans from the first frame of its first character to the last frame of its last one. CTC emits a
character as a short spike near where it is spoken, so word times are close to the speech (within about
one or two characters' time), not the exact onset and offset of the sound. A :class:`Segment` is one
piece of a recording (:mod:`wav2vec2_ee.segmentation`) with its text, its time in the recording and,
where asked, its words; the exit it was answered from travels with it.

numpy and the standard library only: the PyTorch transcriber, the torch-free runtime and the server
share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Word:
    """A word and its time in the recording (seconds)."""

    text: str
    start: float
    end: float


@dataclass
class Segment:
    """One piece of a recording and what the model said of it.

    Args:
        start / end: its time in the recording (seconds).
        text: the transcript of the piece.
        words: the words with their times (``None`` when not asked for).
        exit_layer: the layer it was answered from; layers: layers run for it (``None``: unknown).
        score: the exit policy's score at that exit, where the policy has one.
    """

    start: float
    end: float
    text: str
    words: list[Word] | None = None
    exit_layer: int | None = None
    layers: int | None = None
    score: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON object (the ``words`` as objects; ``None`` fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {**out, **self.extra}


def frame_seconds(conv_stride: Sequence[int], sampling_rate: int = 16_000) -> float:
    """Seconds per CTC frame of a wav2vec2 model: the product of its CNN's strides (``config.conv_stride``)
    over the sampling rate (20 ms for wav2vec2-base's ``(5, 2, 2, 2, 2, 2, 2)`` at 16 kHz)."""
    return float(np.prod([int(s) for s in conv_stride])) / sampling_rate


def token_strings(tokens: Sequence[str], pad_token: str, delimiter_token: str | None) -> dict[int, str]:
    """``id -> text`` of a CTC vocabulary's tokens (``tokens[i]`` is id ``i``'s token), lower case as the
    transcripts are; the blank (``pad_token``) and the word delimiter are left out (they end or separate
    words, :func:`word_frames`)."""
    return {i: t.lower() for i, t in enumerate(tokens) if t not in (pad_token, delimiter_token)}


def word_frames(
    ids: Sequence[int] | np.ndarray, blank_id: int, delimiter_id: int | None
) -> list[tuple[list[int], int, int]]:
    """The words of a greedy CTC frame sequence ``ids`` ``(frames,)``: ``(character ids, first frame,
    past-the-last frame)`` each, where a character's frames are the consecutive frames that emit it and
    ``delimiter_id`` (``|``) separates words."""
    words: list[tuple[list[int], int, int]] = []
    chars: list[int] = []
    first = last = 0
    previous = None
    for frame, token in enumerate(int(i) for i in ids):
        if token == previous and token != blank_id:
            if chars and token != delimiter_id:
                last = frame + 1
            continue
        previous = token
        if token == blank_id:
            continue
        if token == delimiter_id:
            if chars:
                words.append((chars, first, last))
                chars = []
            continue
        if not chars:
            first = frame
        chars.append(token)
        last = frame + 1
    if chars:
        words.append((chars, first, last))
    return words


def words_from_frames(
    ids: Sequence[int] | np.ndarray,
    tokens: Mapping[int, str],
    blank_id: int,
    delimiter_id: int | None,
    frame_seconds: float,
    offset: float = 0.0,
) -> list[Word]:
    """:func:`word_frames` as :class:`Word` s with times: frame ``f`` starts at ``offset + f *
    frame_seconds`` (``tokens``: id -> character)."""
    return [
        Word(
            "".join(tokens[c] for c in chars),
            round(offset + a * frame_seconds, 3),
            round(offset + b * frame_seconds, 3),
        )
        for chars, a, b in word_frames(ids, blank_id, delimiter_id)
    ]


# --------------------------------------------------------------------------------------------------
# subtitles


def _clock(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm``."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def format_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` and their text, a blank line between."""
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate((s for s in segments if s.text), 1)
    ]
    return "\n".join(cues)


def format_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` and their text."""
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments if s.text]
    return "WEBVTT\n\n" + "\n".join(cues)
