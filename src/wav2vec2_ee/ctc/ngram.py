"""Word n-gram language models for the lexicon-constrained beam search.

:class:`NgramLM` is an interpolated Kneser-Ney model (modified to use one absolute discount per order,
Chen & Goodman 1998) estimated from transcripts, e.g. the training split of a corpus. It is small
and exact: ``prob(word, context)`` sums to one over the vocabulary plus ``</s>`` for every context
(tested), words outside the vocabulary map to ``<unk>``. It can be written in the ARPA back-off format
(:meth:`NgramLM.to_arpa`), which KenLM reads (:func:`kenlm_for`), and read back from it.

:func:`kenlm_for` gives the beam search either model as flashlight-text's native KenLM (the
flashlight-text wheels carry KenLM, which reads ARPA files).

Why here and not a dependency: KenLM's estimator (``lmplz``) is a C++ program that pip cannot install,
the ``kenlm`` wheel only queries models, and the LM fusion of ``wav2vec2-ee evaluate --lm`` needs an
estimate from a corpus's own transcripts (the demo's synthetic English).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

__all__ = ["BOS", "EOS", "UNK", "ArpaLM", "NgramLM", "kenlm_for", "read_arpa"]


class NgramLM:
    """Interpolated Kneser-Ney word n-gram model.

    Args:
        sentences: training sentences, each a sequence of words (upper or lower case is kept as is).
        order: n (2 = bigram, 3 = trigram).
        discount: absolute discount ``D`` in (0, 1) for every order; default: ``n1 / (n1 + 2 n2)`` per
            order from the counts of counts (Ney et al.).
    """

    def __init__(self, sentences: Iterable[Sequence[str]], order: int = 3, discount: float | None = None):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"discount must lie in (0, 1), got {discount}")
        self.order = int(order)
        counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[n][ngram]
        vocab: set[str] = set()
        for sentence in sentences:
            words = [BOS, *sentence, EOS]  # one <s>, as KenLM: start contexts are shorter
            vocab.update(sentence)
            for n in range(1, order + 1):
                for i in range(len(words) - n + 1):
                    if n > 1 or i > 0:  # <s> is never predicted
                        counts[n][tuple(words[i : i + n])] += 1
        if not vocab:
            raise UserError("no training word: the language model needs at least one sentence")
        self.vocab = frozenset(vocab)
        #: the predicted symbols: the words, </s> and <unk> (which gets the unigram floor mass only)
        self.symbols = tuple(sorted(vocab)) + (EOS, UNK)

        # Kneser-Ney: below the top order, counts are continuation counts (distinct left contexts),
        # except for n-grams that start with <s>, which have no left context (their raw counts)
        self._counts: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
        self._counts[order] = dict(counts[order])
        for n in range(1, order):
            continuation: Counter = Counter(gram[1:] for gram in counts[n + 1])
            for gram, c in counts[n].items():
                if gram[0] == BOS:
                    continuation[gram] = c
            self._counts[n] = {g: c for g, c in continuation.items() if g in counts[n]}
        self._discount = [0.0] * (order + 1)
        for n in range(1, order + 1):
            if discount is not None:
                self._discount[n] = float(discount)
                continue
            cc = Counter(int(c) for c in self._counts[n].values())
            n1, n2 = cc.get(1, 0), cc.get(2, 0)
            self._discount[n] = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
        # per context: total count, number of distinct followers
        self._context_total: list[dict[tuple, float]] = [defaultdict(float) for _ in range(order + 1)]
        self._followers: list[dict[tuple, list[str]]] = [defaultdict(list) for _ in range(order + 1)]
        for n in range(1, order + 1):
            for gram, c in self._counts[n].items():
                self._context_total[n][gram[:-1]] += c
                self._followers[n][gram[:-1]].append(gram[-1])
        self._cache: dict[tuple, float] = {}

    # ----------------------------------------------------------------------------------------------
    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """``P(word | context)``; the context's last ``order - 1`` words count, ``<s>`` pads the start;
        a word outside the vocabulary is ``<unk>``."""
        if word not in self.vocab and word != EOS:
            word = UNK
        return self._prob(word, self._context(context))

    def _context(self, context: Sequence[str]) -> tuple:
        """The last ``order - 1`` words of ``<s> context`` (fewer at the start of a sentence)."""
        if self.order == 1:
            return ()
        context = (BOS, *(w if w in self.vocab else UNK for w in context))
        return context[-(self.order - 1) :]

    def _prob(self, word: str, context: tuple) -> float:
        key = (word, context)
        if key in self._cache:
            return self._cache[key]
        n = len(context) + 1
        if n == 1:
            # unigram level interpolated with the uniform distribution over the symbols
            total = self._context_total[1].get((), 0.0)
            d = self._discount[1]
            c = self._counts[1].get((word,), 0.0)
            types = len(self._followers[1].get((), ()))
            lower = 1.0 / len(self.symbols)
            p = max(c - d, 0.0) / total + d * types / total * lower
        else:
            lower = self._prob(word, context[1:])
            total = self._context_total[n].get(context, 0.0)
            if total == 0.0:
                p = lower
            else:
                d = self._discount[n]
                c = self._counts[n].get(context + (word,), 0.0)
                types = len(self._followers[n][context])
                p = max(c - d, 0.0) / total + d * types / total * lower
        self._cache[key] = p
        return p

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        return math.log10(self.prob(word, context))

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """Per-symbol perplexity (words and ``</s>``) of ``sentences``."""
        log_sum, n = 0.0, 0
        for sentence in sentences:
            history: list[str] = []
            for word in [*sentence, EOS]:
                log_sum += math.log(self.prob(word, history))
                history.append(word)
                n += 1
        return math.exp(-log_sum / max(n, 1))

    # ----------------------------------------------------------------------------------------------
    def to_arpa(self, path: str | os.PathLike) -> None:
        """Write the model in the ARPA back-off format (log10 probabilities and back-off weights).

        Interpolated KN is exactly a back-off model whose explicit n-grams are the seen ones: for a seen
        n-gram the interpolated probability, for an unseen one the back-off weight of the context times
        the lower-order probability. KenLM, pyctcdecode and :func:`read_arpa` read the file.
        """
        grams: list[list[tuple]] = [[] for _ in range(self.order + 1)]
        grams[1] = [(w,) for w in self.symbols] + [(BOS,)]
        for n in range(2, self.order + 1):
            grams[n] = sorted(self._counts[n])
        contexts = {g for n in range(2, self.order + 1) for g in (x[:-1] for x in grams[n])}
        lines = ["", "\\data\\"]
        lines += [f"ngram {n}={len(grams[n])}" for n in range(1, self.order + 1)]
        for n in range(1, self.order + 1):
            lines += ["", f"\\{n}-grams:"]
            for gram in grams[n]:
                logp = -99.0 if gram == (BOS,) else math.log10(self._prob(gram[-1], gram[:-1]))
                line = f"{logp:.7f}\t{' '.join(gram)}"
                if n < self.order and gram in contexts:
                    line += f"\t{math.log10(self._backoff(gram)):.7f}"
                lines.append(line)
        lines += ["", "\\end\\", ""]
        atomic_write_text(path, "\n".join(lines))

    def _backoff(self, context: tuple) -> float:
        """Back-off weight of ``context``: the mass it leaves to unseen words over their lower-order mass."""
        seen = self._followers[len(context) + 1].get(context, [])
        left = 1.0 - sum(self._prob(w, context) for w in seen)
        lower = 1.0 - sum(self._prob(w, context[1:]) for w in seen)
        return left / lower if lower > 0 else 1.0


def read_arpa(path: str | os.PathLike) -> tuple[int, dict[tuple, tuple[float, float]]]:
    """Read an ARPA file: ``(order, {ngram: (log10 prob, log10 back-off)})``.

    Raises:
        UserError: naming the file and line when it is not an ARPA file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such language model file")
    table: dict[tuple, tuple[float, float]] = {}
    order, section = 0, 0
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-")[0])
                order = max(order, section)
                continue
            fields = line.split()
            if section == 0 or len(fields) < section + 1:
                raise UserError(f"{path}:{number}: not an ARPA n-gram line: {line[:60]!r}")
            try:
                logp = float(fields[0])
                backoff = float(fields[section + 1]) if len(fields) > section + 1 else 0.0
            except ValueError as err:
                raise UserError(f"{path}:{number}: not an ARPA n-gram line: {line[:60]!r}") from err
            table[tuple(fields[1 : section + 1])] = (logp, backoff)
    if not order:
        raise UserError(f"{path}: no n-gram section (not an ARPA file)")
    return order, table


class ArpaLM:
    """An ARPA back-off model (from :func:`read_arpa`) with the ``prob`` interface of :class:`NgramLM`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.order, self._table = read_arpa(path)
        self.vocab = frozenset(g[0] for g in self._table if len(g) == 1) - {BOS, EOS, UNK}

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        if word not in self.vocab and word != EOS:
            word = UNK
        context = (
            (BOS, *(w if w in self.vocab else UNK for w in context))[-(self.order - 1) :]
            if self.order > 1
            else ()
        )
        backoff = 0.0
        for start in range(len(context) + 1):
            gram = context[start:] + (word,)
            if gram in self._table:
                return backoff + self._table[gram][0]
            backoff += self._table.get(context[start:], (0.0, 0.0))[1]
        return backoff - 99.0  # a word the model does not know at all

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        return 10.0 ** self.log10_prob(word, context)


def kenlm_for(lm: NgramLM | ArpaLM, word_dict):
    """``lm`` as flashlight-text's native KenLM over the decoder's ``word_dict`` (the flashlight-text
    wheels carry KenLM: ``flashlight.lib.text.decoder.kenlm.KenLM``), with the factor that turns its
    log10 scores into natural logarithms, the unit of ``lm_weight``.

    An :class:`ArpaLM` is loaded from its file; an :class:`NgramLM` estimated in memory is written to a
    temporary ARPA file first. Raises ``ValueError`` naming the file when KenLM cannot read it.
    """
    from flashlight.lib.text.decoder.kenlm import KenLM

    with tempfile.TemporaryDirectory() as tmp:
        path = lm.path if isinstance(lm, ArpaLM) else Path(tmp, "lm.arpa")
        if not isinstance(lm, ArpaLM):
            lm.to_arpa(path)
        try:
            model = KenLM(str(path), word_dict)
        except RuntimeError as err:
            detail = str(err).strip().splitlines()[-1]
            raise UserError(f"{path}: KenLM cannot read this language model ({detail})") from err
    return model, math.log(10.0)
