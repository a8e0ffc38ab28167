"""Word times of a corpus split, written as its ``words.ctm`` (:mod:`wav2vec2_ee.data.alignments`).

A CTC model's greedy alignment times the words it hears (``transcribe --word-timestamps``); the gaps
between them are where the recording-condition pauses go (training with ``--silence-prob`` and
``benchmarks/check_conditions.py``). The words are the model's, not the transcript's: a misheard word
still marks a word of the audio, and only the gaps between words are used. Any CTM file of the same
split (from a forced aligner such as the Montreal Forced Aligner) can take its place.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.alignments import CTM_NAME
from ..data.sources import load_split
from ..io import atomic_write_text
from ..transcripts import ctm_lines
from .transcriber import Transcriber


def write_word_times(
    model: str | os.PathLike,
    corpus: str | os.PathLike,
    split: str,
    overwrite: bool = False,
    batch_size: int = 16,
) -> Path:
    """``<corpus>/<split>/words.ctm``: the word times of every utterance of the LibriSpeech-layout
    ``split`` by the greedy alignment of ``model``'s last exit (one utterance is one piece: no splitting
    at pauses). An existing file is kept unless ``overwrite``. Returns its path."""
    path = Path(corpus, split, CTM_NAME)
    if path.is_file() and not overwrite:
        return path
    utterances = load_split(corpus, [split])
    transcriber = Transcriber.from_pretrained(model, word_timestamps=True, split=None, batch_size=batch_size)
    rows = transcriber.transcribe([u.audio for u in utterances], raise_errors=True)
    lines = []
    for utt, row in zip(utterances, rows):
        lines += ctm_lines(row.to_dict(), utterance_id=utt.id)
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path
