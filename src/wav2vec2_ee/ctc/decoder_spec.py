"""The lexicon-constrained beam search as one spec: its lexicon, n-best, beam, word score and word
language model, resolved once and built into a decoder.

Every command that runs a lexicon decoder (``evaluate --exit-stats posterior``, the ``posterior`` exit
policy of ``transcribe`` / ``sweep`` / ``calibrate``, the scored transcripts of ``sweep`` /
``calibrate --lm-order``) describes it with a :class:`LexiconDecoderSpec` and gets it from
:meth:`LexiconDecoderSpec.resolve` + :meth:`ResolvedLexiconDecoder.build`:

* the lexicon: a ``lexicon`` file, else the words of the ``lexicon_from`` transcripts (splits of
  ``--data`` or manifests), else, per split, the split's own references (an oracle vocabulary, warned
  about);
* the language model: an ARPA file (``lm``), else a Kneser-Ney model of order ``lm_order`` estimated
  from the ``lexicon_from`` transcripts (never from the evaluated references), else none.

A spec is a plain description (the commands' option dataclasses make one, and ``--help`` builds their
parsers without torch): this module imports the decoder, the lexicon and the data readers when a spec
is resolved, not when it is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .ngram import ArpaLM, NgramLM

if TYPE_CHECKING:
    from .decoding import LexiconBeamDecoder
    from .lexicon import Lexicon

logger = logging.getLogger(__name__)


@dataclass
class LexiconDecoderSpec:
    """One lexicon beam search (flashlight-text), described before anything is read.

    Args:
        lexicon: a lexicon file ('WORD W O R D |' lines, or one word per line).
        lexicon_from: transcripts whose words form the lexicon (splits of ``--data`` or manifest files).
        source_flag: the flag that named ``lexicon_from`` (for messages and result settings).
        nbest / beam_size / word_score: the search's n-best list, beam and word insertion score.
        lm: a word n-gram model (ARPA file); lm_order: else estimate one of this order from the
            ``lexicon_from`` transcripts (0: none); lm_weight: its weight (shallow fusion).
    """

    lexicon: str | None = None
    lexicon_from: Sequence[str] | None = None
    source_flag: str = "--lexicon-from"
    nbest: int = 10
    beam_size: int = 500
    word_score: float = -0.26
    lm: str | None = None
    lm_order: int = 0
    lm_weight: float = 1.0
    lm_order_flag: str = "--lm-order"

    def resolve(self, data: str | os.PathLike | None, tokenizer) -> ResolvedLexiconDecoder:
        """Read the lexicon and the language model (once, before any split); a missing flashlight-text
        (the ``lm`` extra) is refused first."""
        from .decoding import require_flashlight

        require_flashlight("the lexicon beam search")
        source = resolve_lexicon(data, tokenizer, self.lexicon, self.lexicon_from, self.source_flag)
        lm, lm_description = resolve_lexicon_lm(
            data, tokenizer, self.lm, self.lm_order, self.lexicon_from, source.lexicon, self.lm_order_flag
        )
        return ResolvedLexiconDecoder(self, tokenizer, source, lm, lm_description)


@dataclass
class ResolvedLexiconDecoder:
    """A :class:`LexiconDecoderSpec` with its lexicon source and language model read."""

    spec: LexiconDecoderSpec
    tokenizer: object
    source: LexiconSource
    lm: NgramLM | ArpaLM | None
    lm_description: str | None

    def build(self, split: str = "", references: Sequence[str] = ()) -> LexiconBeamDecoder:
        """The decoder for a split (whose ``references`` form the lexicon when no other source was given)."""
        from .decoding import LexiconBeamDecoder

        lexicon = self.source.for_split(split, references, self.tokenizer)
        spec = self.spec
        return LexiconBeamDecoder(
            self.tokenizer,
            lexicon,
            nbest=spec.nbest,
            beam_size=spec.beam_size,
            word_score=spec.word_score,
            lm=self.lm,
            lm_weight=spec.lm_weight,
        )

    def settings(self) -> dict:
        """What identifies this decoder in result files (and resume markers)."""
        out = {
            "nbest": self.spec.nbest,
            "lexicon_beam_size": self.spec.beam_size,
            "word_score": self.spec.word_score,
            "lexicon": self.source.description,
        }
        if self.lm is not None:
            out.update(lexicon_lm=self.lm_description, lexicon_lm_weight=self.spec.lm_weight)
        return out


@dataclass
class LexiconSource:
    """Where the lexicon of the n-best posterior comes from (resolved once, before the splits)."""

    lexicon: Lexicon | None
    description: str

    def for_split(self, name: str, references: Sequence[str], tokenizer) -> Lexicon:
        from .lexicon import lexicon_from_texts

        if self.lexicon is not None:
            return self.lexicon
        logger.warning(
            "%s: no --lexicon, --lexicon-from or --train-splits: the lexicon decoder's lexicon is built from "
            "the split's own references (an oracle vocabulary: every reference word is in it)",
            name,
        )
        return lexicon_from_texts(references, tokenizer)


def resolve_lexicon(
    data: str | os.PathLike | None,
    tokenizer,
    lexicon: str | None,
    lexicon_from: Sequence[str] | None,
    flag: str = "--lexicon-from",
) -> LexiconSource:
    """The lexicon: a ``lexicon`` file, else the words of the ``lexicon_from`` transcripts (named by
    ``flag`` in the description), else (per split) the evaluated split's own references, which is an
    oracle vocabulary."""
    from ..data.splits import read_texts
    from .lexicon import lexicon_from_texts, read_lexicon

    if lexicon:
        lex = read_lexicon(lexicon, tokenizer)
        description = f"file {Path(lexicon).resolve()}"
    elif lexicon_from:
        sources = list(lexicon_from)
        lex = lexicon_from_texts(read_texts(data, sources), tokenizer)
        description = f"transcripts of {', '.join(sources)} ({flag})"
    else:
        return LexiconSource(None, "the evaluated split's references")
    logger.info("lexicon: %d words from %s", len(lex), description)
    return LexiconSource(lex, description)


def resolve_lexicon_lm(
    data: str | os.PathLike | None,
    tokenizer,
    lexicon_lm: str | None,
    lexicon_lm_order: int,
    lexicon_from: Sequence[str] | None,
    lexicon: Lexicon | None,
    order_flag: str = "--lm-order",
) -> tuple[NgramLM | ArpaLM | None, str | None]:
    """The lexicon decoder's word n-gram model: an ARPA file, else one of order ``lexicon_lm_order``
    (``order_flag`` in messages) estimated from the ``lexicon_from`` transcripts (never from the
    evaluated references); ``(None, None)`` for none. Returns the model and a description."""
    if lexicon_lm:
        lm = ArpaLM(lexicon_lm)
        if lexicon is not None and not any(w in lm.vocab for w in lexicon):
            raise UserError(
                f"{lexicon_lm}: no lexicon word is in the language model's vocabulary (different case?)"
            )
        return lm, f"file {Path(lexicon_lm).resolve()}"
    if not lexicon_lm_order:
        return None, None
    if lexicon_lm_order < 1:
        raise UserError(f"{order_flag} must be >= 1, got {lexicon_lm_order}")
    sources = list(lexicon_from or [])
    if not sources:
        raise UserError(
            f"{order_flag} needs --train-splits or --lexicon-from: the language model is estimated from "
            "their transcripts (estimating it from the evaluated references would be an oracle)"
        )
    from ..data.splits import read_texts
    from ..vocab import TextNormalizer

    normalize = TextNormalizer(tokenizer)
    sentences = [normalize(t).split() for t in read_texts(data, sources)]
    lm = NgramLM([s for s in sentences if s], order=lexicon_lm_order)
    description = f"{lexicon_lm_order}-gram Kneser-Ney model of the transcripts of {', '.join(sources)}"
    logger.info("language model: %s (%d words)", description, len(lm.vocab))
    return lm, description
