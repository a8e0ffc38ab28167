"""Word agreement between consecutive exits' transcripts (patience and the learned policy).

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def agreement(previous: str | None, current: str) -> float:
    """``1 - d / max(1, len(a), len(b))`` over the words ``a`` of ``previous`` and ``b`` of ``current``
    (``d``: :func:`word_edit_distance`); 0 without a previous transcript (the first exit)."""
    if previous is None:
        return 0.0
    a, b = previous.split(), current.split()
    return 1.0 - word_edit_distance(a, b) / max(1, len(a), len(b))


def agreement_array(previous: Sequence[str] | None, current: Sequence[str]) -> np.ndarray:
    """``(n,)`` float32 :func:`agreement` of each utterance's transcripts (``previous=None``: zeros)."""
    if previous is None:
        return np.zeros(len(current), dtype=np.float32)
    return np.array([agreement(p, c) for p, c in zip(previous, current)], dtype=np.float32)
