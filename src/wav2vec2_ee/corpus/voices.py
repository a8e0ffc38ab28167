"""Synthetic speakers: English eSpeak NG accents x voice variants, split into train / dev / test.

A *speaker* is one ``(accent, variant)`` pair, spoken as the eSpeak voice ``"<accent>+<variant>"``.
The split is deterministic and keeps dev and test speakers out of train in two ways:

* whole voice variants are held out (:data:`DEV_VARIANTS` only in dev, :data:`TEST_VARIANTS` only in test),
  so the evaluation sets contain voice timbres never heard in training;
* of the remaining variants, about 8 % of the accent+variant combinations go to dev and 8 % to test
  (chosen by a hash of the speaker name), giving unseen combinations of known accents and timbres.

Speaker ids are stable integers ``1000 + 100 * accent_index + variant_index`` over the candidate lists
:data:`ACCENTS` and :data:`VARIANTS` (append-only, never reorder). Candidates missing from the installed
eSpeak data are skipped (eSpeak would silently fall back to its default voice).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from functools import lru_cache

from .espeak import espeak_data_path

__all__ = [
    "ACCENTS",
    "DEV_VARIANTS",
    "PITCH_RANGE",
    "RATE_RANGE",
    "SPLITS",
    "TEST_VARIANTS",
    "VARIANTS",
    "Speaker",
    "available_accents",
    "available_variants",
    "list_speakers",
    "sample_prosody",
    "speakers_by_split",
]

SPLITS = ("train", "dev", "test")

#: English eSpeak voices (accents), in id order. ``en-Shaw`` (Shavian script) is deliberately absent.
ACCENTS = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

#: Voice variants (files in ``espeak-ng-data/voices/!v``), in id order. Robotic, echoing and whispering
#: variants are left out.
VARIANTS = (
    *(f"m{i}" for i in range(1, 9)),
    *(f"f{i}" for i in range(1, 6)),
    "croak",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "Alex",
    "Andy",
    "Annie",
    "Lee",
    "Mike",
    "Michael",
    "Mario",
    "Gene",
    "Jacky",
    "aunty",
    "belinda",
    "linda",
    "grandma",
    "grandpa",
    "steph",
    "anika",
    "robert",
    "rob",
    "paul",
    "quincy",
    "ed",
    "edward",
    "david",
    "adam",
    "benjamin",
    "victor",
    "travis",
    "Denis",
    "antonio",
    "pedro",
    "gustave",
    "marcelo",
    "shelby",
    "Andrea",
)

#: Variants that only ever appear in dev / in test.
DEV_VARIANTS = ("m3", "f2", "klatt3", "Annie", "robert", "ed")
TEST_VARIANTS = ("m6", "f4", "klatt5", "belinda", "Michael", "travis")
#: Fraction of the remaining accent+variant combinations held out for dev and for test (each).
HELD_OUT_COMBO_FRACTION = 0.08

#: Per-utterance speaking rate (words per minute) and pitch (0-100) ranges, inclusive.
RATE_RANGE = (120, 220)
PITCH_RANGE = (20, 80)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak accent with a voice variant."""

    id: int
    accent: str
    variant: str
    split: str

    @property
    def voice(self) -> str:
        """eSpeak voice name, e.g. ``"en-us+f3"``."""
        return f"{self.accent}+{self.variant}"


def _unit_hash(text: str) -> float:
    """Stable pseudo-random number in [0, 1) derived from ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def _split_of(accent: str, variant: str) -> str:
    if variant in DEV_VARIANTS:
        return "dev"
    if variant in TEST_VARIANTS:
        return "test"
    u = _unit_hash(f"{accent}+{variant}")
    if u < HELD_OUT_COMBO_FRACTION:
        return "dev"
    if u < 2 * HELD_OUT_COMBO_FRACTION:
        return "test"
    return "train"


def available_accents(data_path: str | None = None) -> tuple[str, ...]:
    """The entries of :data:`ACCENTS` present in the eSpeak data (all of them if the data is not found)."""
    data_path = data_path or espeak_data_path()
    if data_path is None:
        return ACCENTS
    found = {name.lower() for _, _, files in os.walk(os.path.join(data_path, "lang")) for name in files}
    return tuple(a for a in ACCENTS if a in found)


def available_variants(data_path: str | None = None) -> tuple[str, ...]:
    """The entries of :data:`VARIANTS` present in the eSpeak data (all of them if the data is not found)."""
    data_path = data_path or espeak_data_path()
    if data_path is None:
        return VARIANTS
    variant_dir = os.path.join(data_path, "voices", "!v")
    return tuple(v for v in VARIANTS if os.path.isfile(os.path.join(variant_dir, v)))


@lru_cache(maxsize=4)
def list_speakers(data_path: str | None = None) -> tuple[Speaker, ...]:
    """All available speakers with their split, sorted by id."""
    accents, variants = set(available_accents(data_path)), set(available_variants(data_path))
    speakers = [
        Speaker(1000 + 100 * ai + vi, accent, variant, _split_of(accent, variant))
        for ai, accent in enumerate(ACCENTS)
        if accent in accents
        for vi, variant in enumerate(VARIANTS)
        if variant in variants
    ]
    return tuple(speakers)


def speakers_by_split(data_path: str | None = None) -> dict[str, tuple[Speaker, ...]]:
    """``{"train": ..., "dev": ..., "test": ...}``; the three speaker sets are disjoint.

    Raises:
        RuntimeError: if a split ends up without speakers (eSpeak data lacking most voices).
    """
    speakers = list_speakers(data_path)
    result = {split: tuple(s for s in speakers if s.split == split) for split in SPLITS}
    empty = [split for split, members in result.items() if not members]
    if empty:
        raise RuntimeError(f"no eSpeak speakers available for split(s) {empty}; is the voice data complete?")
    return result


def sample_prosody(rng: random.Random) -> tuple[int, int]:
    """Draw ``(rate_wpm, pitch)`` uniformly from :data:`RATE_RANGE` and :data:`PITCH_RANGE`."""
    return rng.randint(*RATE_RANGE), rng.randint(*PITCH_RANGE)
