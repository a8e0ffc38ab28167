"""CTC decoding of exit logits: greedy, beam search and lexicon n-best (both flashlight-text).

Stable API (imported by the dynamic-exit inference engine):

* :func:`greedy_decode` argmax + the tokenizer's CTC collapse, on the valid frames only.
* :func:`ctc_collapse` that collapse for a whole batch of frame ids at once (what
  ``tokenizer.batch_decode`` returns, without its per-token Python loop).
* :func:`greedy_decode_exits` the same for every exit of a batch with one vectorised argmax.
* :class:`BeamSearchDecoder` lexicon-free beam search over the tokenizer's characters (optional KenLM).
* :class:`LexiconBeamDecoder` flashlight-text's lexicon-constrained CTC beam search (no LM), as the
  seed's ``eval_posteriors.py`` (torchaudio's ``ctc_decoder``: beam 1500, word score -0.26,
  ``log_add=True``); :meth:`LexiconBeamDecoder.nbest` gives the n-best hypotheses with scores.
* :func:`nbest_posterior` the largest softmax weight over the n-best scores (in ``(0, 1]``).

Hypotheses are returned in the tokenizer's convention (the bundled vocabulary is upper case; the
word delimiter ``|`` becomes a space); the evaluation lower-cases and normalises white space.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2CTCTokenizer

from ..errors import UserError, require
from ..vocab import TextNormalizer
from .lexicon import spell
from .ngram import ArpaLM, kenlm_for

logger = logging.getLogger(__name__)

#: Settings of the seed's lexicon decoder (``eval_posteriors.py``).
SEED_LEXICON_BEAM_SIZE = 1500
SEED_WORD_SCORE = -0.26


def require_flashlight(feature: str) -> None:
    """Import flashlight-text's decoder (the ``lm`` extra), or raise
    :class:`~wav2vec2_ee.errors.MissingExtraError` saying that ``feature`` needs it."""
    require("flashlight.lib.text.decoder", "lm", feature)


def _valid_ids(ids: torch.Tensor, output_lengths: torch.Tensor | None) -> list[list[int]]:
    """Rows of ``ids`` ``(batch, frames)`` cut to their valid frames, as Python lists."""
    rows = ids.tolist()
    if output_lengths is None:
        return rows
    return [row[:n] for row, n in zip(rows, output_lengths.tolist())]


def _token_strings(tokenizer: Wav2Vec2CTCTokenizer) -> list[str] | None:
    """What each id contributes to ``tokenizer.decode``'s text (pad ``""``, delimiter its replacement),
    or ``None`` where the tokenizer post-processes the joined text in other ways (clean-up of spaces)."""
    if tokenizer.clean_up_tokenization_spaces or not isinstance(tokenizer, Wav2Vec2CTCTokenizer):
        return None
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    table = []
    for token in tokens:
        if token == tokenizer.pad_token:
            token = ""
        elif token == tokenizer.word_delimiter_token:
            token = tokenizer.replace_word_delimiter_char
        table.append(token)
    return table


def ctc_collapse(
    ids: torch.Tensor, output_lengths: torch.Tensor | None, tokenizer: Wav2Vec2CTCTokenizer
) -> list[str]:
    """``tokenizer.batch_decode`` of the valid frames of ``ids`` ``(batch, frames)``, vectorised.

    The same text as ``Wav2Vec2CTCTokenizer.decode`` (checked in the tests): repeats merged, then the
    blank (pad) dropped, the word delimiter replaced, the text stripped (and lower-cased where the
    tokenizer does). Falls back to ``batch_decode`` for tokenizers that also clean up spaces.
    """
    table = _token_strings(tokenizer)
    if table is None or (ids.numel() and int(ids.max()) >= len(table)):
        return tokenizer.batch_decode(_valid_ids(ids, output_lengths))
    frames = ids.shape[1]
    previous = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], dim=1)
    keep = (ids != previous) & (ids != tokenizer.pad_token_id)
    if output_lengths is not None:
        keep &= torch.arange(frames, device=ids.device) < output_lengths.to(ids.device).unsqueeze(1)
    kept = ids[keep].tolist()
    texts, start = [], 0
    for count in keep.sum(1).tolist():
        text = "".join([table[i] for i in kept[start : start + count]]).strip()
        texts.append(text.lower() if tokenizer.do_lower_case else text)
        start += count
    return texts


def greedy_decode(
    logits: torch.Tensor, output_lengths: torch.Tensor | None, tokenizer: Wav2Vec2CTCTokenizer
) -> list[str]:
    """Best-path CTC decoding: argmax per frame, then the tokenizer's collapse on the valid frames
    (:func:`ctc_collapse`).

    The tokenizer merges repeats, drops the blank (pad) and maps the word delimiter to a space.

    Args:
        logits: ``(batch, frames, vocab)``.
        output_lengths: ``(batch,)`` valid frames per utterance (``None``: all frames are valid).

    Returns:
        one transcript per utterance.
    """
    return ctc_collapse(logits.argmax(-1), output_lengths, tokenizer)


def greedy_decode_exits(
    exit_logits: Sequence[torch.Tensor], output_lengths: torch.Tensor | None, tokenizer: Wav2Vec2CTCTokenizer
) -> list[list[str]]:
    """:func:`greedy_decode` of every exit at once (one argmax over the stacked exits).

    Args:
        exit_logits: K tensors ``(batch, frames, vocab)`` (same frames, as from one forward pass).
        output_lengths: ``(batch,)``.

    Returns:
        ``K`` lists of ``batch`` transcripts.
    """
    k, batch = len(exit_logits), exit_logits[0].shape[0]
    ids = torch.stack(list(exit_logits)).argmax(-1).flatten(0, 1)  # (K * batch, frames)
    lengths = None if output_lengths is None else output_lengths.repeat(k)
    texts = ctc_collapse(ids, lengths, tokenizer)
    return [texts[i * batch : (i + 1) * batch] for i in range(k)]


def _log_probs_numpy(logits: torch.Tensor, output_length: int | None) -> np.ndarray:
    """``(frames, vocab)`` float32 C-contiguous log-probabilities of one utterance's valid frames."""
    if output_length is not None:
        logits = logits[:output_length]
    return np.ascontiguousarray(F.log_softmax(logits.detach().float(), dim=-1).cpu().numpy())


def ctc_labels(tokenizer: Wav2Vec2CTCTokenizer) -> list[str]:
    """The vocabulary in id order as CTC labels: blank ``""`` for pad, ``" "`` for the delimiter."""
    vocab = tokenizer.get_vocab()
    labels = [""] * len(vocab)
    for token, index in vocab.items():
        labels[index] = token
    labels[tokenizer.pad_token_id] = ""
    delimiter = tokenizer.word_delimiter_token
    if delimiter in vocab:
        labels[vocab[delimiter]] = " "
    return labels


class BeamSearchDecoder:
    """CTC beam search over the tokenizer's characters: flashlight-text's lexicon-free decoder.

    Without a language model (the default) it searches with ``ZeroLM``. With ``kenlm_model`` (an ARPA
    file) it is a word-level shallow fusion instead: flashlight's lexicon decoder over the model's words
    with its native KenLM (:class:`LexiconBeamDecoder`; weight ``alpha`` on natural-log probabilities,
    word insertion bonus ``beta``), as pyctcdecode's unigram-constrained KenLM decoding does.

    Args:
        tokenizer: gives the labels (pad = blank, ``|`` = word boundary).
        beam_width: beams kept per frame.
        kenlm_model: path of a word n-gram model in the ARPA format.
        alpha / beta: LM weight and word insertion bonus (used only with ``kenlm_model``).
        unigrams: the words the search may output (default, with ``kenlm_model``: the model's own).
    """

    def __init__(
        self,
        tokenizer: Wav2Vec2CTCTokenizer,
        beam_width: int = 100,
        kenlm_model: str | None = None,
        alpha: float = 0.5,
        beta: float = 1.5,
        unigrams: Sequence[str] | None = None,
    ):
        if beam_width < 1:
            raise UserError(f"beam_width must be >= 1, got {beam_width}")
        require_flashlight("--decoder beam")  # before reading any file
        self.beam_width = int(beam_width)
        self.labels = ctc_labels(tokenizer)
        self._tokens = {i: t for t, i in tokenizer.get_vocab().items()}
        self._blank = tokenizer.pad_token_id
        self._delimiter = tokenizer.word_delimiter_token
        self._fused = None
        if kenlm_model is not None:
            lm = ArpaLM(kenlm_model)
            normalize = TextNormalizer(tokenizer)
            # the model's own words (its spelling, so that KenLM finds them), spelled in the tokenizer's letters
            spelled = {w: normalize(w) for w in sorted(unigrams if unigrams is not None else lm.vocab)}
            lexicon = {w: [spell(n, tokenizer)] for w, n in spelled.items() if n and " " not in n}
            self._fused = LexiconBeamDecoder(
                tokenizer,
                lexicon,
                nbest=1,
                beam_size=self.beam_width,
                word_score=beta,
                lm=lm,
                lm_weight=alpha,
            )
            return
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconFreeDecoder,
            LexiconFreeDecoderOptions,
            ZeroLM,
        )

        options = LexiconFreeDecoderOptions(
            beam_size=self.beam_width,
            beam_size_token=len(self.labels),
            beam_threshold=50.0,
            lm_weight=0.0,
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        silence = tokenizer.get_vocab().get(self._delimiter, self._blank)
        self._decoder = LexiconFreeDecoder(options, ZeroLM(), silence, self._blank, [])

    def decode(self, logits: torch.Tensor, output_length: int | None = None) -> str:
        """Best transcript of one utterance. ``logits``: ``(frames, vocab)``."""
        log_probs = _log_probs_numpy(logits, output_length)
        frames, vocab = log_probs.shape
        if frames == 0:
            return ""
        if self._fused is not None:
            return self._fused.decode(logits, output_length)
        results = self._decoder.decode(log_probs.ctypes.data, frames, vocab)
        if not results:
            return ""
        ids = torch.unique_consecutive(
            torch.tensor([t for t in results[0].tokens if t >= 0], dtype=torch.long)
        )
        chars = [self._tokens[i] for i in ids.tolist() if i != self._blank]
        return " ".join("".join(chars).replace(self._delimiter, " ").split())

    def batch_decode(self, logits: torch.Tensor, output_lengths: torch.Tensor | None = None) -> list[str]:
        """Best transcript per utterance. ``logits``: ``(batch, frames, vocab)``; ``output_lengths``: ``(batch,)``."""
        lengths = [None] * logits.shape[0] if output_lengths is None else output_lengths.tolist()
        return [self.decode(row, n) for row, n in zip(logits, lengths)]


# --------------------------------------------------------------------------------------------------
# lexicon-constrained n-best (flashlight-text)


@dataclass(frozen=True)
class NBestHypothesis:
    """One hypothesis of a lexicon beam search: its words, its total decoder score and its path (the
    token id the search aligned with each frame: blank, the word delimiter or a letter; what times its
    words, :func:`~wav2vec2_ee.timestamps.word_frames`)."""

    words: tuple[str, ...]
    score: float
    path: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        return " ".join(self.words)


def posterior_from_scores(scores: Sequence[float]) -> float:
    """Largest softmax weight over hypothesis scores (the seed's n-best posterior), in ``(0, 1]``.

    Returns ``nan`` for an empty list.
    """
    if len(scores) == 0:
        return float("nan")
    return float(torch.softmax(torch.tensor(list(scores), dtype=torch.float64), dim=0).max())


class LexiconBeamDecoder:
    """flashlight-text's lexicon-constrained CTC beam search, with no language model (``ZeroLM``, as the
    seed) or a word n-gram model.

    Every hypothesis is a sequence of lexicon words. Settings follow the seed (torchaudio's
    ``ctc_decoder`` defaults plus ``beam_size=1500, word_score=-0.26, log_add=True``) except the beam
    size, whose default here is 500 for CPU speed (:data:`SEED_LEXICON_BEAM_SIZE` is the seed's).

    The constructor takes flashlight's ``LexiconDecoderOptions`` one by one (hence twelve parameters
    and about 90 lines: checks, the dictionaries, the trie and the options);
    :class:`~.decoder_spec.LexiconDecoderSpec` is the short way to describe one.

    Args:
        tokenizer: its ids are the decoder's token indices (pad = blank, ``|`` = silence).
        lexicon: word -> spellings, each a list of tokens of the tokenizer (see :mod:`.lexicon`).
        nbest: hypotheses returned by :meth:`nbest`.
        beam_size / beam_size_token / beam_threshold / word_score / unk_score / sil_score / log_add:
            flashlight's ``LexiconDecoderOptions`` (``beam_size_token`` defaults to the vocabulary size).
        lm / lm_weight: a word n-gram model (:class:`~wav2vec2_ee.ctc.ngram.NgramLM` or
            ``ArpaLM``) whose natural-log probabilities are added with weight ``lm_weight`` (shallow
            fusion); ``None`` = no language model, as in the seed.
    """

    def __init__(
        self,
        tokenizer: Wav2Vec2CTCTokenizer,
        lexicon: Mapping[str, Sequence[Sequence[str]]],
        nbest: int = 10,
        beam_size: int = 500,
        beam_size_token: int | None = None,
        beam_threshold: float = 50.0,
        word_score: float = SEED_WORD_SCORE,
        unk_score: float = float("-inf"),
        sil_score: float = 0.0,
        log_add: bool = True,
        lm=None,
        lm_weight: float = 0.0,
    ):
        require_flashlight("the lexicon beam search")
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoder,
            LexiconDecoderOptions,
            SmearingMode,
            Trie,
            ZeroLM,
        )
        from flashlight.lib.text.dictionary import Dictionary

        if nbest < 1:
            raise UserError(f"nbest must be >= 1, got {nbest}")
        if beam_size < 1:
            raise UserError(f"beam_size must be >= 1, got {beam_size}")
        if not lexicon:
            raise UserError("the lexicon is empty: the lexicon decoder needs at least one word")
        self.nbest_size = int(nbest)
        self.lexicon = lexicon
        vocab = tokenizer.get_vocab()
        self.blank = tokenizer.pad_token_id
        delimiter = tokenizer.word_delimiter_token
        if delimiter not in vocab:
            raise UserError(
                f"the tokenizer has no word delimiter token {delimiter!r} (the decoder's silence)"
            )
        self.silence = vocab[delimiter]

        self.word_dict = Dictionary()
        for word in lexicon:
            self.word_dict.add_entry(word)
        unk_word = "<unk>"
        if not self.word_dict.contains(unk_word):
            self.word_dict.add_entry(unk_word)
        self.word_dict.set_default_index(self.word_dict.get_index(unk_word))

        self.has_lm = lm is not None
        if lm is not None:
            self._lm, to_natural_log = kenlm_for(lm, self.word_dict)
            lm_weight = float(lm_weight) * to_natural_log  # KenLM scores are log10
        else:
            self._lm = ZeroLM()
            lm_weight = 0.0
        start = self._lm.start(False)
        self._trie = Trie(len(vocab), self.silence)
        for word, spellings in lexicon.items():
            index = self.word_dict.get_index(word)
            _, score = self._lm.score(start, index)
            for spelling in spellings:
                self._trie.insert([vocab[t] for t in spelling], index, score)
        self._trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(
            beam_size=int(beam_size),
            beam_size_token=int(beam_size_token or len(vocab)),
            beam_threshold=float(beam_threshold),
            lm_weight=float(lm_weight),
            word_score=float(word_score),
            unk_score=float(unk_score),
            sil_score=float(sil_score),
            log_add=bool(log_add),
            criterion_type=CriterionType.CTC,
        )
        self._decoder = LexiconDecoder(
            options,
            self._trie,
            self._lm,
            self.silence,
            self.blank,
            self.word_dict.get_index(unk_word),
            [],
            False,
        )

    def nbest(self, logits: torch.Tensor, output_length: int | None = None) -> list[NBestHypothesis]:
        """The n-best hypotheses of one utterance, best first.

        Args:
            logits: ``(frames, vocab)`` of one utterance (log-softmax is applied here, in float32).
            output_length: valid frames (``None``: all).
        """
        emissions = _log_probs_numpy(logits, output_length)
        frames, vocab = emissions.shape
        if frames == 0:
            return []
        results = self._decoder.decode(emissions.ctypes.data, frames, vocab)[: self.nbest_size]
        # r.tokens has a token per frame plus the search's silence before the first and after the last
        return [
            NBestHypothesis(
                tuple(self.word_dict.get_entry(w) for w in r.words if w >= 0),
                float(r.score),
                tuple(int(t) for t in list(r.tokens)[1 : frames + 1]),
            )
            for r in results
        ]

    def best(self, logits: torch.Tensor, output_length: int | None = None) -> NBestHypothesis | None:
        """The best hypothesis of one utterance (``None`` when the search found none)."""
        hyps = self.nbest(logits, output_length)
        return hyps[0] if hyps else None

    def decode(self, logits: torch.Tensor, output_length: int | None = None) -> str:
        """Best hypothesis of one utterance (``""`` when the search found none)."""
        hyps = self.nbest(logits, output_length)
        return hyps[0].text if hyps else ""


def nbest_posterior(
    logits_one_utt: torch.Tensor,
    decoder: LexiconBeamDecoder,
    output_length: int | None = None,
) -> float:
    """Largest softmax weight over the scores of the n-best hypotheses of one utterance.

    The seed's confidence measure (``eval_posteriors.py``): ``max softmax([score_1..score_n])`` of the
    lexicon decoder's n-best list; 1.0 when one hypothesis dominates (or when n = 1).

    Args:
        logits_one_utt: ``(frames, vocab)`` logits of one exit for one utterance.
        decoder: a :class:`LexiconBeamDecoder` (its ``nbest`` sets n).
        output_length: valid frames (``None``: all).

    Returns:
        the posterior in ``(0, 1]`` (``nan`` when the search returned no hypothesis).
    """
    return posterior_from_scores([h.score for h in decoder.nbest(logits_one_utt, output_length)])
