"""Per-utterance exit statistics (entropy, max probability) and word error rates.

Stable API (imported by the dynamic-exit inference engine):

* :func:`frame_mask` ``(batch, frames)`` valid-frame mask from ``output_lengths``.
* :func:`mean_frame_entropy` mean per-frame entropy of the output distribution, in nats.
* :func:`mean_max_prob` mean per-frame largest softmax probability.
* :func:`word_errors` one utterance's word-level alignment counts (jiwer).
* :func:`split_errors` corpus-level WER / CER over a whole split (jiwer), not an average of
  per-utterance WERs.

Relation to the seed's entropy (``eval_with_entropy.py``): the seed wrote
``sum_t sum_v p_tv log p_tv / (T * V)`` (negative, also divided by the vocabulary size ``V``, over
all ``T`` frames of a batch-size-1 input). :func:`mean_frame_entropy` is
``-(1/T) sum_t sum_v p_tv log p_tv``, so ``ours = -V * seed`` (``V = 32`` for the bundled vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
import torch
import torch.nn.functional as F

from ..labels import frame_mask


def _masked_frame_mean(values: torch.Tensor, output_lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``(..., batch, frames)`` over the valid frames → ``(..., batch)``."""
    if output_lengths is None:
        return values.mean(-1)
    mask = frame_mask(output_lengths.to(values.device), values.shape[-1]).to(values.dtype)
    count = mask.sum(-1).clamp(min=1.0)
    return (values * mask).sum(-1) / count


def mean_frame_entropy(logits: torch.Tensor, output_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-frame entropy (nats) of the softmax of ``logits`` over each utterance's valid frames.

    Args:
        logits: ``(..., batch, frames, vocab)``, e.g. one exit ``(batch, frames, vocab)`` or all exits
            stacked ``(exits, batch, frames, vocab)``. Computed in float32.
        output_lengths: ``(batch,)`` valid frames per utterance; ``None`` = every frame is valid.

    Returns:
        ``(..., batch)`` float32: ``log(vocab)`` for uniform outputs, 0 for one-hot outputs. An
        utterance with no valid frame gets 0.
    """
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return _masked_frame_mean(entropy, output_lengths)


def mean_max_prob(logits: torch.Tensor, output_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid frames of the largest softmax probability (a confidence in ``(1/vocab, 1]``).

    Args:
        logits: ``(..., batch, frames, vocab)``.
        output_lengths: ``(batch,)`` valid frames; ``None`` = all.

    Returns:
        ``(..., batch)`` float32.
    """
    max_prob = F.log_softmax(logits, dim=-1, dtype=torch.float32).amax(-1).exp()
    return _masked_frame_mean(max_prob, output_lengths)


# --------------------------------------------------------------------------------------------------
# word error rates


@dataclass(frozen=True)
class WordErrors:
    """Word-level alignment counts of one utterance or a whole split.

    ``reference_words = hits + substitutions + deletions`` and
    ``wer = (substitutions + insertions + deletions) / reference_words``.
    """

    hits: int
    substitutions: int
    insertions: int
    deletions: int
    reference_words: int
    hypothesis_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    @property
    def wer(self) -> float:
        """Word error rate; with an empty reference 0.0 for an empty hypothesis, else ``inf``."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return float(self.errors) / float(self.reference_words)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(*(a + b for a, b in zip(_counts(self), _counts(other))))


def _counts(e: WordErrors) -> tuple[int, ...]:
    return (e.hits, e.substitutions, e.insertions, e.deletions, e.reference_words, e.hypothesis_words)


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Alignment counts of one utterance (jiwer's word alignment; words split on white space)."""
    ref_words, hyp_words = reference.split(), hypothesis.split()
    if not ref_words:
        return WordErrors(0, 0, len(hyp_words), 0, 0, len(hyp_words))
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    return WordErrors(
        out.hits, out.substitutions, out.insertions, out.deletions, len(ref_words), len(hyp_words)
    )


@dataclass(frozen=True)
class SplitErrors(WordErrors):
    """Corpus-level error rates of one exit on one split (jiwer over the whole split): the word counts
    of :class:`WordErrors` summed over the split, its character error rate and its size.

    ``wer`` is the total number of word errors over the total number of reference words (jiwer's
    corpus WER), not a mean of per-utterance WERs; ``cer`` likewise over characters (spaces count).
    """

    cer: float = 0.0
    utterances: int = 0

    def to_dict(self) -> dict:
        return {"wer": self.wer, "cer": self.cer, **asdict(self)}


def split_errors(references: Sequence[str], hypotheses: Sequence[str]) -> SplitErrors:
    """WER and CER of a split, computed with jiwer over all utterances at once.

    Args:
        references / hypotheses: one string per utterance; references must not be empty.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("cannot compute a WER over zero utterances")
    refs = [" ".join(r.split()) for r in references]
    hyps = [" ".join(h.split()) for h in hypotheses]
    if not all(refs):
        raise ValueError("references must not be empty (jiwer cannot score an empty reference)")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return SplitErrors(
        cer=float(chars.cer),
        hits=words.hits,
        substitutions=words.substitutions,
        insertions=words.insertions,
        deletions=words.deletions,
        reference_words=sum(len(r.split()) for r in refs),
        hypothesis_words=sum(len(h.split()) for h in hyps),
        utterances=len(refs),
    )
