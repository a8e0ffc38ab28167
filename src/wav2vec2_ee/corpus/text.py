"""Deterministic generation of short English utterances from a small grammar.

The word lists (``resources/vocabulary.json``) and the templates (``resources/grammar.json``) are data
files; this module only interprets them. Every word uses the letters a-z and the apostrophe, so the
upper-cased transcripts fit the 32-symbol wav2vec2 character vocabulary (``A``-``Z``, ``'`` and ``|``).

Template syntax (see the ``description`` field of ``grammar.json``):

* ``{category}``: a random entry of a vocabulary category;
* ``{number}`` (0-999 spelled out), ``{digits}`` (2-4 single digits), ``{word}`` (any vocabulary word);
* ``[text]``: optional text; ``(a|b|c)``: one of the alternatives. Brackets do not nest.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = [
    "TRANSCRIPT_CHARS",
    "Grammar",
    "UtteranceGenerator",
    "generate_utterances",
    "load_grammar",
    "spell_number",
    "to_transcript",
]

#: Characters allowed in transcripts (besides the space that separates words).
TRANSCRIPT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")

_WORD_RE = re.compile(r"[a-z']+")
_OPTIONAL_RE = re.compile(r"\[([^\[\]]*)\]")
_CHOICE_RE = re.compile(r"\(([^()]*)\)")
_SLOT_RE = re.compile(r"\{(\w+)\}")
_GENERATED_SLOTS = frozenset({"number", "digits", "word"})


@dataclass(frozen=True)
class Grammar:
    """Vocabulary categories plus weighted templates (see module docstring)."""

    categories: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]
    weights: tuple[float, ...]
    min_words: int = 1
    max_words: int = 8
    optional_probability: float = 0.4

    @property
    def words(self) -> tuple[str, ...]:
        """Sorted unique vocabulary words."""
        return tuple(sorted({w for ws in self.categories.values() for w in ws}))

    def validate(self) -> None:
        """Check that words use only ``a-z'`` and that every template slot is defined.

        Raises:
            ValueError: describing the first problem found.
        """
        for name, words in self.categories.items():
            if not words:
                raise ValueError(f"vocabulary category {name!r} is empty")
            for word in words:
                if not _WORD_RE.fullmatch(word):
                    raise ValueError(f"invalid word {word!r} in category {name!r}: use a-z and ' only")
        for name in ("digit", "teen", "tens", "hundred"):
            if name not in self.categories:
                raise ValueError(f"vocabulary lacks the {name!r} category needed by {{number}}")
        for template in self.templates:
            for slot in _SLOT_RE.findall(template):
                if slot not in self.categories and slot not in _GENERATED_SLOTS:
                    raise ValueError(f"template {template!r} uses unknown slot {{{slot}}}")
            literal = _SLOT_RE.sub(" ", template)
            for word in re.split(r"[\s\[\]()|]+", literal):
                if word and not _WORD_RE.fullmatch(word):
                    raise ValueError(f"template {template!r} contains invalid literal {word!r}")


def _read_resource(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("resources", name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def load_grammar() -> Grammar:
    """Load and validate the packaged vocabulary and grammar (cached)."""
    vocab = _read_resource("vocabulary.json")
    spec = _read_resource("grammar.json")
    grammar = Grammar(
        categories={k: tuple(v) for k, v in vocab["categories"].items()},
        templates=tuple(t for _, t in spec["templates"]),
        weights=tuple(float(w) for w, _ in spec["templates"]),
        min_words=int(spec.get("min_words", 1)),
        max_words=int(spec.get("max_words", 8)),
        optional_probability=float(spec.get("optional_probability", 0.4)),
    )
    grammar.validate()
    return grammar


def spell_number(n: int, grammar: Grammar | None = None) -> str:
    """Spell ``0 <= n <= 999`` in words, e.g. ``123 -> "one hundred twenty three"``."""
    if not 0 <= n <= 999:
        raise ValueError(f"can only spell 0..999, got {n}")
    c = (grammar or load_grammar()).categories
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [c["digit"][hundreds], c["hundred"][0]]
    if rest >= 20:
        tens, units = divmod(rest, 10)
        words.append(c["tens"][tens - 2])
        if units:
            words.append(c["digit"][units])
    elif rest >= 10:
        words.append(c["teen"][rest - 10])
    elif rest or not words:
        words.append(c["digit"][rest])
    return " ".join(words)


def to_transcript(text: str) -> str:
    """Upper-case, whitespace-normalised transcript (``"go left" -> "GO LEFT"``)."""
    return " ".join(text.upper().split())


class UtteranceGenerator:
    """Draw random utterances (lower-case text) from the grammar, deterministically from ``seed``.

    Example:
        >>> gen = UtteranceGenerator(seed=0)
        >>> text = gen.sample()  # the same sequence of texts for the same seed
    """

    def __init__(self, seed: int | str = 0, grammar: Grammar | None = None) -> None:
        self.grammar = grammar or load_grammar()
        self.rng = random.Random(seed)
        self._words = self.grammar.words

    def _number(self) -> str:
        r = self.rng.random()
        if r < 0.25:
            n = self.rng.randint(0, 19)
        elif r < 0.75:
            n = self.rng.randint(20, 99)
        else:
            n = self.rng.randint(100, 999)
        return spell_number(n, self.grammar)

    def _slot(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "number":
            return self._number()
        if name == "digits":
            return " ".join(
                self.rng.choice(self.grammar.categories["digit"]) for _ in range(self.rng.randint(2, 4))
            )
        if name == "word":
            return self.rng.choice(self._words)
        return self.rng.choice(self.grammar.categories[name])

    def _expand(self, template: str) -> str:
        p = self.grammar.optional_probability
        text = _OPTIONAL_RE.sub(lambda m: m.group(1) if self.rng.random() < p else "", template)
        text = _CHOICE_RE.sub(lambda m: self.rng.choice(m.group(1).split("|")), text)
        text = _SLOT_RE.sub(self._slot, text)
        return " ".join(text.split())

    def sample(self) -> str:
        """Return one utterance with ``min_words``..``max_words`` words (lower case, single spaces)."""
        g = self.grammar
        while True:
            template = self.rng.choices(g.templates, weights=g.weights)[0]
            text = self._expand(template)
            if g.min_words <= len(text.split()) <= g.max_words:
                return text

    def generate(self, n: int) -> list[str]:
        """Return the next ``n`` utterances."""
        return [self.sample() for _ in range(n)]


def generate_utterances(n: int, seed: int | str = 0) -> list[str]:
    """Return ``n`` utterances drawn deterministically from ``seed`` (see :class:`UtteranceGenerator`)."""
    return UtteranceGenerator(seed).generate(n)
