"""Lexicons for the lexicon-constrained beam search: read from a file or built from transcripts.

A lexicon maps each word to one or more spellings, each a list of tokens of the tokenizer ending
with the word delimiter ``|`` (flashlight / torchaudio convention: ``HELLO  H E L L O |``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer

from ..errors import UserError
from ..io import atomic_write_text
from ..vocab import TextNormalizer

logger = logging.getLogger(__name__)

Lexicon = dict[str, list[list[str]]]


def spell(word: str, tokenizer: Wav2Vec2CTCTokenizer) -> list[str]:
    """The character spelling of ``word`` followed by the word delimiter."""
    return [*word, tokenizer.word_delimiter_token]


def lexicon_from_texts(texts: Iterable[str], tokenizer: Wav2Vec2CTCTokenizer) -> Lexicon:
    """Every word of ``texts`` (normalised to the tokenizer's characters) spelled letter by letter."""
    normalize = TextNormalizer(tokenizer)
    words = sorted({w for text in texts for w in normalize(text).split()})
    return {w: [spell(w, tokenizer)] for w in words}


def _map_token(token: str, vocab: dict[str, int]) -> str | None:
    for candidate in (token, token.upper(), token.lower()):
        if candidate in vocab:
            return candidate
    return None


def read_lexicon(path: str | os.PathLike, tokenizer: Wav2Vec2CTCTokenizer) -> Lexicon:
    """Read a lexicon file: ``WORD<TAB or spaces>T O K E N S |`` lines (flashlight / torchaudio) or
    one word per line (spelled letter by letter).

    Tokens are matched to the tokenizer's vocabulary (case-insensitively when the case differs); a
    spelling with a token outside the vocabulary is dropped, and the count of dropped words is logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such lexicon file")
    vocab = tokenizer.get_vocab()
    normalize = TextNormalizer(tokenizer)
    delimiter = tokenizer.word_delimiter_token
    lexicon: Lexicon = {}
    dropped: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields:
            continue
        word, tokens = fields[0], fields[1:]
        if not tokens:
            norm = normalize(word)
            if not norm or " " in norm:
                dropped.append(word)
                continue
            word, tokens = norm, spell(norm, tokenizer)
        mapped = [_map_token(t, vocab) for t in tokens]
        if any(t is None for t in mapped):
            dropped.append(word)
            continue
        if mapped[-1] != delimiter:
            mapped.append(delimiter)
        spellings = lexicon.setdefault(word, [])
        if mapped not in spellings:
            spellings.append(mapped)  # type: ignore[arg-type]
    if dropped:
        logger.warning(
            "%s: %d words dropped (tokens outside the vocabulary), e.g. %s", path, len(dropped), dropped[:5]
        )
    if not lexicon:
        raise UserError(
            f"{path}: no usable lexicon entry (expected 'WORD W O R D |' lines or one word per line)"
        )
    return lexicon


def write_lexicon(lexicon: Lexicon, path: str | os.PathLike) -> None:
    """Write ``lexicon`` in the flashlight format (``WORD\\tW O R D |``), one spelling per line."""
    lines = [f"{word}\t{' '.join(sp)}" for word, spellings in lexicon.items() for sp in spellings]
    atomic_write_text(path, "\n".join(lines) + "\n")
