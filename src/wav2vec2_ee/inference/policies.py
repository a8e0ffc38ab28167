"""What the exit policies see in PyTorch: one exit's outputs as an :class:`ExitView` of torch tensors, the
torch kernels of its statistics (:data:`STATISTICS`), and :class:`ScheduledExit`.

The policies themselves (their names, parameters and checks, their decisions, the factory, the flags
and saved policies) are torch-free, in :mod:`wav2vec2_ee.policy_core`, shared with the lite runtime
(:mod:`wav2vec2_ee.lite`, whose numpy views compute the same statistics): a policy reads an exit through
the view's ``stat(name)`` and answers with a ``(batch,)`` bool tensor (the
:class:`~wav2vec2_ee.policy_core.View` protocol). The engine (:func:`~.engine.run_early_exit`) hands it
the history of views of the utterances still running (``history[-1]`` is the exit just computed).

Simulating a policy on every exit's precomputed statistics (``sweep``, ``calibrate``) and fitting the
learned one on an exit table: :mod:`.search`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Wav2Vec2CTCTokenizer

from ..ctc.decoding import LexiconBeamDecoder, greedy_decode, nbest_posterior
from ..ctc.metrics import mean_frame_entropy, mean_max_prob
from ..errors import UserError
from ..policy_core import FEATURES, ExitPolicy, View
from ..policy_core import learned_features as host_learned_features
from ..vocab import normalize_transcript
from .learned import log_frames, low_quantile_max_prob, mean_top_margin, non_blank_share

# --------------------------------------------------------------------------------------------------
# what a policy sees


@dataclass
class Decoders:
    """What some exit statistics need: the tokenizer (greedy transcripts) and a lexicon beam decoder
    (the n-best posterior)."""

    tokenizer: Wav2Vec2CTCTokenizer | None = None
    lexicon_decoder: LexiconBeamDecoder | None = None


def _transcripts(logits: torch.Tensor, lengths: torch.Tensor, decoders: Decoders) -> list[str]:
    if decoders.tokenizer is None:
        raise UserError("greedy transcripts (the patience policy, the answers) need a tokenizer")
    return [normalize_transcript(t) for t in greedy_decode(logits, lengths, decoders.tokenizer)]


def _posterior(logits: torch.Tensor, lengths: torch.Tensor, decoders: Decoders) -> torch.Tensor:
    if decoders.lexicon_decoder is None:
        raise UserError(
            "the posterior policy needs a lexicon beam decoder (--lexicon FILE or --lexicon-from SPLITS)"
        )
    values = [nbest_posterior(z, decoders.lexicon_decoder, int(n)) for z, n in zip(logits, lengths.tolist())]
    # no hypothesis at all (nan) is no confidence
    return torch.tensor([0.0 if math.isnan(v) else v for v in values], dtype=torch.float32)


def _blank_id(decoders: Decoders) -> int:
    if decoders.tokenizer is None:
        raise UserError(
            "the non_blank statistic (the learned policy) needs a tokenizer: its pad id is the blank"
        )
    return int(decoders.tokenizer.pad_token_id)


#: Per-utterance statistics of one exit, computed from ``(logits, output_lengths, decoders)``
#: (the learned policy's features: :mod:`.learned`).
STATISTICS: dict[str, Callable[[torch.Tensor, torch.Tensor, Decoders], torch.Tensor | list[str]]] = {
    "entropy": lambda z, n, d: mean_frame_entropy(z, n),
    "max_prob": lambda z, n, d: mean_max_prob(z, n),
    "max_prob_p10": lambda z, n, d: low_quantile_max_prob(z, n),
    "margin": lambda z, n, d: mean_top_margin(z, n),
    "non_blank": lambda z, n, d: non_blank_share(z, n, _blank_id(d)),
    "log_frames": lambda z, n, d: log_frames(n),
    "posterior": _posterior,
    "transcripts": _transcripts,
}


def _take(value: torch.Tensor | list, index: torch.Tensor) -> torch.Tensor | list:
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    return [value[i] for i in index.tolist()]


class ExitView:
    """One exit's outputs for the utterances still running: what a policy sees (the torch
    :class:`~wav2vec2_ee.policy_core.View`).

    Statistics (:data:`STATISTICS`: ``entropy``, ``max_prob``, ``posterior`` ``(batch,)`` tensors and
    ``transcripts``, normalised greedy transcripts) are computed on first use and cached, so a
    policy pays only for what it reads. A view built by ``sweep`` from precomputed statistics has no
    logits.

    Args:
        exit_index: 0-based exit (into ``config.exit_layers``); layer: its layer number.
        rows: ``(batch,)`` positions of these utterances in the batch the engine started with.
        logits: ``(batch0, frames, vocab)`` logits of the exit; with ``index`` only the rows
            ``index`` of them belong to this view (views of a shrinking batch share one tensor).
        output_lengths: ``(batch0,)`` valid frames.
        decoders: tokenizer and lexicon decoder for ``transcripts`` and ``posterior``.
        stats: precomputed statistics, each ``(batch,)`` (already restricted to this view's rows).
        index: ``(batch,)`` rows of ``logits`` / ``output_lengths`` in this view (``None``: all).
    """

    def __init__(
        self,
        exit_index: int,
        layer: int,
        rows: torch.Tensor,
        logits: torch.Tensor | None = None,
        output_lengths: torch.Tensor | None = None,
        decoders: Decoders | None = None,
        stats: Mapping[str, torch.Tensor | list] | None = None,
        index: torch.Tensor | None = None,
    ):
        self.exit_index = exit_index
        self.layer = layer
        self.rows = rows
        self._logits = logits
        self._lengths = output_lengths
        self._index = index
        self.decoders = decoders or Decoders()
        self._stats: dict[str, torch.Tensor | list] = dict(stats or {})

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def logits(self) -> torch.Tensor:
        """``(batch, frames, vocab)`` logits of this view's utterances."""
        if self._logits is None:
            raise ValueError(f"exit {self.exit_index} (layer {self.layer}) was given statistics, not logits")
        return self._logits if self._index is None else self._logits[self._index]

    @property
    def output_lengths(self) -> torch.Tensor:
        """``(batch,)`` valid frames."""
        if self._lengths is None:
            raise ValueError(f"exit {self.exit_index} (layer {self.layer}) was given statistics, not logits")
        return self._lengths if self._index is None else self._lengths[self._index]

    def stat(self, name: str) -> torch.Tensor | list[str]:
        """The per-utterance statistic ``name`` (computed once, then cached)."""
        if name not in self._stats:
            if name not in STATISTICS:
                raise ValueError(f"unknown exit statistic {name!r}: choose from {sorted(STATISTICS)}")
            self._stats[name] = STATISTICS[name](self.logits, self.output_lengths, self.decoders)
        return self._stats[name]

    def derived(self, name: str, compute: Callable[[], torch.Tensor | list]) -> torch.Tensor | list:
        """A per-utterance value that needs more than this exit's logits (e.g. the previous exit's
        transcripts): ``compute()`` once, then cached like a statistic (precomputed ones win)."""
        if name not in self._stats:
            self._stats[name] = compute()
        return self._stats[name]

    @property
    def entropy(self) -> torch.Tensor:
        return self.stat("entropy")  # type: ignore[return-value]

    @property
    def max_prob(self) -> torch.Tensor:
        return self.stat("max_prob")  # type: ignore[return-value]

    @property
    def posterior(self) -> torch.Tensor:
        return self.stat("posterior")  # type: ignore[return-value]

    @property
    def transcripts(self) -> list[str]:
        return self.stat("transcripts")  # type: ignore[return-value]

    def host(self, values: torch.Tensor | Sequence[float]) -> np.ndarray:
        """A statistic as a ``(batch,)`` float32 numpy array (on the CPU)."""
        return torch.as_tensor(values).detach().to("cpu", torch.float32).numpy()

    def native(self, values: np.ndarray) -> torch.Tensor:
        """A ``(batch,)`` numpy array (a decision, a score) as a CPU tensor."""
        return torch.from_numpy(np.ascontiguousarray(values))

    def select(self, keep: torch.Tensor) -> ExitView:
        """The view of the utterances ``keep`` ``(n,)`` (positions in this view); logits are not copied."""
        index = keep if self._index is None else self._index[keep]
        stats = {name: _take(value, keep) for name, value in self._stats.items()}
        return ExitView(
            self.exit_index,
            self.layer,
            self.rows[keep],
            self._logits,
            self._lengths,
            self.decoders,
            stats,
            index if self._logits is not None else None,
        )


def learned_features(history: Sequence[View], names: Sequence[str] = FEATURES) -> torch.Tensor:
    """``(batch, F)`` float32 features of ``history[-1]``'s utterances
    (:func:`~wav2vec2_ee.policy_core.learned_features`, as a tensor)."""
    return torch.from_numpy(host_learned_features(history, names))


class ScheduledExit(ExitPolicy):
    """Each utterance stops at an exit known in advance (``exits[row]``, 0-based): replays another
    policy's decisions, e.g. to time the oracle. Not in :func:`~wav2vec2_ee.policy_core.build_policy`."""

    name = "scheduled"

    def __init__(self, exits: Sequence[int] | torch.Tensor):
        self.exits = torch.as_tensor(exits, dtype=torch.long)

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        return min(int(self.exits.max()), len(exit_layers) - 1)

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        view = history[-1]
        return self.exits[view.rows.cpu()] <= view.exit_index
