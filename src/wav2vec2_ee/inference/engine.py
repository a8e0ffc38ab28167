"""The early-exit engine: run the encoder exit by exit and stop where the exit policy says.

:func:`run_early_exit` consumes the model's one encoder path
(:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits`): after each exit the policy decides which
utterances stop; those answer and leave the batch (:meth:`~wav2vec2_ee.modeling.ExitStep.retain`,
which also trims padding no remaining utterance needs), and later layers run only on the rest. Layers
beyond the policy's deepest allowed exit are never run, and the loop stops as soon as every utterance
has answered. :func:`full_forward`, the reference the engine is timed against, runs the same path at
full depth with every exit head, so the two compute the same function.

The engine runs on any *exit source* (:func:`as_exit_source`): the PyTorch model itself, or the ONNX
segments of an exported folder run by ``onnxruntime``
(:class:`~wav2vec2_ee.export.source.OnnxExitSource`, or an :class:`~wav2vec2_ee.export.OnnxSegments`,
wrapped on the fly); any object with ``exit_layers`` and ``iter_exits(input_values, attention_mask,
exits)`` yielding steps with ``exit_index, layer, logits, output_lengths, rows`` (torch tensors) and
``retain(keep)`` works. The policies see the same :class:`~.policies.ExitView` s on every source. The loop
over the exits is :func:`~wav2vec2_ee.policy_core.exit_loop`, which the torch-free runtime runs too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..device import synchronize
from ..export.runtime import OnnxSegments
from ..export.source import OnnxExitSource
from ..modeling import Wav2Vec2EEForCTC
from ..policy_core import ExitPolicy, exit_loop
from .policies import Decoders, ExitView


@runtime_checkable
class ExitSource(Protocol):
    """What the engine runs: the exits of an encoder, shallow to deep, rows droppable between exits."""

    @property
    def exit_layers(self) -> Sequence[int]: ...

    def iter_exits(
        self, input_values: Any, attention_mask: Any = None, exits: Iterable[int] | None = None
    ) -> Iterator[Any]: ...


class _ModelSource:
    """A :class:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC` as an :class:`ExitSource` (its own ``iter_exits``)."""

    def __init__(self, model: Wav2Vec2EEForCTC):
        self.model = model

    @property
    def exit_layers(self) -> list[int]:
        return list(self.model.config.exit_layers)

    def iter_exits(self, input_values, attention_mask=None, exits=None):
        return self.model.iter_exits(input_values, attention_mask, exits)


def as_exit_source(source) -> ExitSource:
    """``source`` as an :class:`ExitSource`: a model (``config.exit_layers`` + ``iter_exits``), ONNX
    segments (:class:`~wav2vec2_ee.export.OnnxSegments`, wrapped in an
    :class:`~wav2vec2_ee.export.source.OnnxExitSource`) or an exit source already."""
    if isinstance(source, OnnxSegments):
        return OnnxExitSource(source)
    if hasattr(source, "iter_exits") and hasattr(getattr(source, "config", None), "exit_layers"):
        return _ModelSource(source)
    if hasattr(source, "iter_exits") and hasattr(source, "exit_layers"):
        return source
    raise TypeError(
        f"run_early_exit needs a Wav2Vec2EEForCTC, ONNX segments (load_segments) or an exit source "
        f"(exit_layers + iter_exits), got {type(source).__name__}"
    )


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

    def __init__(
        self,
        batch: int,
        layers: list[int],
        transcripts: bool,
        logits: bool,
        start: float,
        device: torch.device,
    ):
        self.layers, self.start, self.device = layers, start, device
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
        synchronize(self.device)  # queued GPU work is part of the cost
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
    model: Wav2Vec2EEForCTC | ExitSource,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    policy: ExitPolicy,
    decoders: Decoders | None = None,
    return_logits: bool = False,
) -> EarlyExitResult:
    """Transcribe a batch with dynamic early exit: layers run only for utterances still undecided.

    Args:
        model: the exit source (:func:`as_exit_source`): an early-exit model in eval mode, or the ONNX
            segments of an exported folder (:class:`~wav2vec2_ee.export.source.OnnxExitSource`,
            :class:`~wav2vec2_ee.export.OnnxSegments`).
        input_values: ``(batch, samples)`` normalised waveforms; attention_mask: ``(batch, samples)``,
            both on the model's device (the CPU for ONNX segments).
        policy: decides after each exit which utterances stop (:mod:`.policies`).
        decoders: tokenizer (for transcripts and the patience policy) and lexicon decoder (for the
            posterior policy).
        return_logits: also return each utterance's answering logits.
    """
    start = time.perf_counter()
    decoders = decoders or Decoders()
    source = as_exit_source(model)
    layers = list(source.exit_layers)
    deepest = policy.deepest_exit(layers)
    answers = _Answers(
        len(input_values), layers, decoders.tokenizer is not None, return_logits, start, input_values.device
    )
    exit_loop(
        source.iter_exits(input_values, attention_mask, range(deepest + 1)),
        deepest,
        # float32 statistics under an autocast --dtype too
        lambda step: ExitView(
            step.exit_index, step.layer, step.rows, step.logits.float(), step.output_lengths, decoders
        ),
        lambda history: policy.should_exit(history).to(device="cpu", dtype=torch.bool),
        lambda mask: mask.nonzero().squeeze(1),
        answers.record,
    )
    return answers.result()


@torch.inference_mode()
def full_forward(
    model: Wav2Vec2EEForCTC | ExitSource,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    decoders: Decoders | None = None,
) -> list[str] | None:
    """The reference the engine is timed against: every layer and every exit head on the model's one
    encoder path (the same padding rule as the engine), then greedy decoding of the last exit
    (``model``: any exit source, :func:`as_exit_source`)."""
    steps = list(as_exit_source(model).iter_exits(input_values, attention_mask))
    if decoders is None or decoders.tokenizer is None:
        return None
    last = steps[-1]
    view = ExitView(
        last.exit_index, last.layer, last.rows, last.logits.float(), last.output_lengths, decoders
    )
    return view.transcripts
