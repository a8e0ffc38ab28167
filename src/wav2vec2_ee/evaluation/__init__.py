"""Evaluation: decoding (greedy, beam, lexicon n-best), metrics, result files in the seed's formats, plots.

The reusable pieces (stable names, imported by the inference engine):

* :mod:`.metrics`: ``mean_frame_entropy``, ``mean_max_prob``, ``frame_mask``, ``word_errors``,
  ``split_errors``.
* :mod:`.decoding`: ``greedy_decode``, ``greedy_decode_exits``, ``ctc_collapse``, ``BeamSearchDecoder``,
  ``LexiconBeamDecoder``, ``nbest_posterior``.
* :mod:`.engine`: ``forward_exits``, ``iter_exit_logits``, ``length_grouped_batches``.
* :mod:`.model`: ``load_evaluation_model``; :mod:`.decoder_spec`: ``LexiconDecoderSpec`` (one lexicon beam
  search: lexicon, n-best, beam, LM); :mod:`.results`: every result file.
* :mod:`.evaluate`: ``evaluate_checkpoint`` (the ``wav2vec2-ee evaluate`` command as a function).

The names are imported on first use (PEP 562), so that ``wav2vec2-ee evaluate --help`` builds its parser
(:mod:`.arguments`, :mod:`.cli`) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: name -> the module it comes from (relative to this package)
_EXPORTS = {
    "LexiconDecoderSpec": "..ctc.decoder_spec",
    **dict.fromkeys(
        ("BeamSearchDecoder", "LexiconBeamDecoder", "NBestHypothesis", "ctc_collapse", "greedy_decode",
         "greedy_decode_exits", "nbest_posterior", "posterior_from_scores"),
        "..ctc.decoding",
    ),
    **dict.fromkeys(("forward_exits", "iter_exit_logits", "length_grouped_batches"), "..ctc.engine"),
    **dict.fromkeys(("lexicon_from_texts", "read_lexicon"), "..ctc.lexicon"),
    **dict.fromkeys(
        ("SplitErrors", "WordErrors", "mean_frame_entropy", "mean_max_prob", "split_errors", "word_errors"),
        "..ctc.metrics",
    ),
    **dict.fromkeys(("EvaluationModel", "load_evaluation_model"), "..ctc.model"),
    "frame_mask": "..labels",
    "normalize_transcript": "..vocab",
    "evaluate_checkpoint": ".evaluate",
}  # fmt: skip

__all__ = [
    "BeamSearchDecoder",
    "EvaluationModel",
    "LexiconBeamDecoder",
    "LexiconDecoderSpec",
    "NBestHypothesis",
    "SplitErrors",
    "WordErrors",
    "ctc_collapse",
    "evaluate_checkpoint",
    "forward_exits",
    "frame_mask",
    "greedy_decode",
    "greedy_decode_exits",
    "iter_exit_logits",
    "length_grouped_batches",
    "lexicon_from_texts",
    "load_evaluation_model",
    "mean_frame_entropy",
    "mean_max_prob",
    "nbest_posterior",
    "normalize_transcript",
    "posterior_from_scores",
    "read_lexicon",
    "split_errors",
    "word_errors",
]

if TYPE_CHECKING:
    from ..ctc.decoder_spec import LexiconDecoderSpec
    from ..ctc.decoding import (
        BeamSearchDecoder,
        LexiconBeamDecoder,
        NBestHypothesis,
        ctc_collapse,
        greedy_decode,
        greedy_decode_exits,
        nbest_posterior,
        posterior_from_scores,
    )
    from ..ctc.engine import forward_exits, iter_exit_logits, length_grouped_batches
    from ..ctc.lexicon import lexicon_from_texts, read_lexicon
    from ..ctc.metrics import (
        SplitErrors,
        WordErrors,
        mean_frame_entropy,
        mean_max_prob,
        split_errors,
        word_errors,
    )
    from ..ctc.model import EvaluationModel, load_evaluation_model
    from ..labels import frame_mask
    from ..vocab import normalize_transcript
    from .evaluate import evaluate_checkpoint


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
