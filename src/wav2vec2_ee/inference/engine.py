"""The early-exit engine: run the encoder layer by layer and stop where the exit policy says.

:func:`run_early_exit` runs the CNN feature encoder and the encoder's input stage once for the
batch (:func:`embed_batch`), then the transformer layers one at a time with the model's own pieces
(:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.run_layer`,
:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.exit_logits_at`), so every exit equals the full forward
pass. After each exit layer the policy decides which utterances stop; those leave the batch
(:meth:`~wav2vec2_ee.modeling.EncoderState.select`, which also trims padding no remaining utterance
needs), and later layers run only on the rest. Layers beyond the policy's deepest allowed exit are
never run, and the whole loop stops as soon as every utterance has answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..evaluation.engine import embed_per_utterance, uses_group_norm_cnn
from ..modeling import EncoderState, Wav2Vec2EEForCTC
from .policies import Decoders, ExitPolicy, ExitView


def embed_batch(
    model: Wav2Vec2EEForCTC,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    fast_cnn: bool = True,
) -> EncoderState:
    """The encoder input ``hidden_states[0]`` of a batch (the CNN runs once per utterance).

    A group-norm CNN (``feat_extract_norm="group"``) normalises over padding too in ``transformers``,
    so for a padded batch of such a model each utterance gets its own statistics (as in evaluation:
    :func:`~wav2vec2_ee.evaluation.engine.embed_per_utterance`); otherwise one call, time-major when
    ``fast_cnn`` (:mod:`wav2vec2_ee.features`: same function, about half the time).

    Args:
        input_values: ``(batch, samples)``; attention_mask: ``(batch, samples)``, 1 on real samples.
    """
    padded = attention_mask is not None and not bool(attention_mask.bool().all())
    if padded and uses_group_norm_cnn(model):
        return embed_per_utterance(model, input_values, attention_mask)
    return model.embed(input_values, attention_mask if padded else None, fast_cnn=fast_cnn)


@dataclass
class EarlyExitResult:
    """What :func:`run_early_exit` returns, one entry per utterance in batch order.

    Args:
        exit_index: 0-based exit that answered (into ``config.exit_layers``).
        exit_layer: the layer of that exit.
        layers_computed: transformer layers run for the utterance (the engine stops an utterance at
            its exit, so this equals ``exit_layer``; kept separate for runs that do not).
        seconds: wall-clock seconds from the start of the batch (its CNN included) until the
            utterance's answer was ready.
        output_lengths: valid frames.
        transcripts: normalised greedy transcripts (``None`` without a tokenizer).
        logits: ``(frames, vocab)`` logits of the answering exit on the valid frames (``None`` unless
            asked for).
    """

    exit_index: list[int]
    exit_layer: list[int]
    layers_computed: list[int]
    seconds: list[float]
    output_lengths: list[int]
    transcripts: list[str] | None = None
    logits: list[torch.Tensor] | None = None


class _Answers:
    """Collects the answers of a batch as its utterances exit (row = position in the input batch)."""

    def __init__(self, batch: int, layers: list[int], transcripts: bool, logits: bool, start: float):
        self.layers, self.start = layers, start
        self.exit_index = [-1] * batch
        self.seconds = [0.0] * batch
        self.lengths = [0] * batch
        self.transcripts: list[str] | None = [""] * batch if transcripts else None
        self.logits: list[torch.Tensor] | None = [torch.empty(0)] * batch if logits else None

    def record(self, view: ExitView) -> None:
        """The utterances of ``view`` answer at its exit (transcripts decoded now, as part of the cost)."""
        texts = view.transcripts if self.transcripts is not None else None
        lengths = view.output_lengths.tolist()
        logits = view.logits if self.logits is not None else None
        now = time.perf_counter() - self.start
        for j, row in enumerate(view.rows.tolist()):
            self.exit_index[row], self.seconds[row], self.lengths[row] = view.exit_index, now, lengths[j]
            if texts is not None:
                self.transcripts[row] = texts[j]  # type: ignore[index]
            if logits is not None:
                self.logits[row] = logits[j, : lengths[j]]  # type: ignore[index]

    def result(self) -> EarlyExitResult:
        exit_layer = [self.layers[k] for k in self.exit_index]
        return EarlyExitResult(
            self.exit_index,
            exit_layer,
            list(exit_layer),
            self.seconds,
            self.lengths,
            self.transcripts,
            self.logits,
        )


@torch.inference_mode()
def run_early_exit(
    model: Wav2Vec2EEForCTC,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    policy: ExitPolicy,
    decoders: Decoders | None = None,
    return_logits: bool = False,
    fast_cnn: bool = True,
) -> EarlyExitResult:
    """Transcribe a batch with dynamic early exit: layers run only for utterances still undecided.

    Args:
        model: an early-exit model in eval mode.
        input_values: ``(batch, samples)`` normalised waveforms; attention_mask: ``(batch, samples)``.
        policy: decides after each exit which utterances stop (:mod:`.policies`).
        decoders: tokenizer (for transcripts and the patience policy) and lexicon decoder (for the
            posterior policy).
        return_logits: also return each utterance's answering logits.
        fast_cnn: compute the CNN time-major (:mod:`wav2vec2_ee.features`; same results up to float rounding).
    """
    start = time.perf_counter()
    decoders = decoders or Decoders()
    layers = list(model.config.exit_layers)
    deepest = policy.deepest_exit(layers)
    answers = _Answers(len(input_values), layers, decoders.tokenizer is not None, return_logits, start)

    state = embed_batch(model, input_values, attention_mask, fast_cnn)
    history: list[ExitView] = []  # the exits so far, restricted to the utterances still running
    rows = torch.arange(len(input_values))
    for k in range(deepest + 1):
        while state.layer < layers[k]:
            state = model.run_layer(state)
        logits = model.exit_logits_at(k, state.hidden_states)
        history.append(ExitView(k, layers[k], rows, logits, state.output_lengths, decoders))
        if k == deepest:
            answers.record(history[-1])
            break
        stop = policy.should_exit(history).to(device="cpu", dtype=torch.bool)
        if not bool(stop.any()):
            continue
        answers.record(history[-1].select(stop.nonzero().squeeze(1)))
        if bool(stop.all()):
            break
        keep = (~stop).nonzero().squeeze(1)
        state = state.select(keep.to(state.hidden_states.device), model.config)
        rows = rows[keep]
        history = [view.select(keep) for view in history]
    return answers.result()


@torch.inference_mode()
def full_forward(
    model: Wav2Vec2EEForCTC,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    decoders: Decoders | None = None,
) -> list[str] | None:
    """The reference the engine is timed against: the model's ordinary ``forward`` (every layer, every
    exit head) and greedy decoding of the last exit."""
    out = model(input_values, attention_mask=attention_mask)
    if decoders is None or decoders.tokenizer is None:
        return None
    view = ExitView(
        len(out.exit_logits) - 1,
        model.config.exit_layers[-1],
        torch.arange(len(out.logits)),
        out.logits,
        out.output_lengths,
        decoders,
    )
    return view.transcripts
