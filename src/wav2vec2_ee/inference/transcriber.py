"""``Transcriber``: the Python API of dynamic early-exit transcription.

>>> from wav2vec2_ee import Transcriber
>>> from wav2vec2_ee.inference import build_policy
>>> t = Transcriber.from_pretrained("runs/ee", policy=build_policy("entropy", threshold=0.4))
>>> t.transcribe("a.wav").text                       # one path (or one array) -> one result
>>> [r.exit_layer for r in t.transcribe(["a.wav", "b.flac"])]   # a list -> a list, in input order

Inputs are batched internally, longest first, so that utterances of similar length share a batch.

Bad inputs: one path or array that cannot be transcribed (missing, not audio, too short for the CNN,
NaN or infinite samples, longer than ``max_seconds``) raises a ``ValueError`` naming it; in a list,
each such input gets a :class:`Transcription` whose ``error`` says why (``text`` empty,
``exit_layer`` ``None``) and the others are transcribed (``raise_errors=True``: raise instead). An array
that is not 1-D is a caller's mistake and always raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Processor

from ..data import audio_duration, load_audio
from ..data.audio import SAMPLING_RATE
from ..device import (
    autocast_dtype,
    check_runtime_options,
    forward_precision,
    model_device,
    prepare_for_inference,
)
from ..evaluation.decoding import LexiconBeamDecoder
from ..evaluation.engine import length_grouped_batches
from ..evaluation.model import min_duration_for_ctc
from ..modeling import Wav2Vec2EEForCTC, load_model
from ..vocab import build_processor
from .engine import run_early_exit
from .policies import Decoders, ExitPolicy, FixedExit

logger = logging.getLogger(__name__)

AudioInput = str | os.PathLike | np.ndarray

#: Seconds of audio beyond which an input is refused (``Transcriber(max_seconds=)``, ``--max-seconds``).
DEFAULT_MAX_SECONDS = 60.0


class TooLongError(ValueError):
    """An input longer than ``max_seconds``: the message names it, its duration, the limit and the flag."""

    def __init__(self, source: str, seconds: float, max_seconds: float):
        super().__init__(
            f"{source}: {seconds:.1f} s of audio is longer than the limit of {max_seconds:g} s "
            f"(--max-seconds, Transcriber(max_seconds=...)): one forward pass over it would take minutes "
            f"and much memory; split it into utterances, or raise the limit"
        )
        self.source = source
        self.seconds = seconds
        self.max_seconds = max_seconds


@dataclass
class Transcription:
    """The transcript of one input and what it cost.

    Args:
        source: the path, or ``<array i>`` for the i-th array given.
        text: the greedy transcript (lower case, single spaces); empty when ``error`` is set.
        exit_layer: the layer of the exit that answered; ``None`` when ``error`` is set.
        layers_computed: transformer layers run for this utterance (0 when ``error`` is set).
        num_layers: the model's full depth (the layer of its last exit).
        seconds: wall-clock seconds from the start of its batch's computation (the CNN included,
            audio decoding excluded) until its answer was ready (0 when ``error`` is set).
        audio_seconds: duration of the audio (0 when it could not be read).
        error: why this input was not transcribed (``None``: it was); names the input.
    """

    source: str
    text: str
    exit_layer: int | None
    layers_computed: int
    num_layers: int
    seconds: float
    audio_seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the input was transcribed (``error`` is ``None``)."""
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


class Transcriber:
    """Transcribe audio with an early-exit model and an exit policy.

    Args:
        model: an early-exit model (put in eval mode here).
        policy: the exit policy (default: the last exit, i.e. the full model).
        processor: feature extractor + tokenizer (default: the bundled vocabulary).
        lexicon_decoder: the lexicon beam decoder that the ``posterior`` policy needs.
        batch_size / max_batch_seconds: utterances and seconds of padded audio per batch.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the forward pass's precision
            (``torch.autocast``).
        max_seconds: inputs longer than this are refused (an error naming the input, its duration and
            the limit): an utterance runs in one forward pass, so a long recording would take minutes
            and memory quadratic in its length (self-attention). ``None``: no limit. Split long
            recordings into utterances first.

    The model runs where it is: :meth:`from_pretrained` places it (``device=``) and applies the CPU
    speed-ups (:mod:`wav2vec2_ee.accel`) when that is a CPU.
    """

    def __init__(
        self,
        model: Wav2Vec2EEForCTC,
        policy: ExitPolicy | None = None,
        processor: Wav2Vec2Processor | None = None,
        lexicon_decoder: LexiconBeamDecoder | None = None,
        batch_size: int = 16,
        max_batch_seconds: float | None = 160.0,
        dtype: str = "float32",
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ):
        check_runtime_options(batch_size=batch_size, max_batch_seconds=max_batch_seconds)
        if max_seconds is not None and not float(max_seconds) > 0:
            raise ValueError(f"--max-seconds must be a number > 0, got {max_seconds}")
        self.model = model.eval()
        self.policy = policy if policy is not None else FixedExit()
        # fail now on a layer the model lacks (a fixed layer, a --max-layer that is no exit layer)
        self.policy.deepest_exit(model.config.exit_layers)
        self.processor = processor if processor is not None else build_processor(None)
        self.decoders = Decoders(self.processor.tokenizer, lexicon_decoder)
        self.batch_size = int(batch_size)
        self.max_batch_seconds = max_batch_seconds
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.dtype = autocast_dtype(dtype)
        self._min_seconds = min_duration_for_ctc(model)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        policy: ExitPolicy | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> Transcriber:
        """A transcriber for a checkpoint folder (its own vocabulary when it has one), on ``device``
        (default ``cuda`` when available, else ``cpu``, :func:`~wav2vec2_ee.device.resolve_device`)."""
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder")
        model = prepare_for_inference(load_model(str(checkpoint)), device)
        return cls(model, policy, build_processor(checkpoint), **kwargs)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.exit_layers[-1])

    def _check_length(self, source: str, seconds: float) -> None:
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise TooLongError(source, seconds, self.max_seconds)

    def _load_one(self, index: int, item: AudioInput) -> tuple[str, np.ndarray]:
        """``(source, 16 kHz waveform)`` of one input; a ``ValueError`` naming it when it cannot be used."""
        if isinstance(item, np.ndarray | torch.Tensor):
            source = f"<array {index}>"
            array = np.asarray(item, dtype=np.float32)
            if not np.isfinite(array).all():
                raise ValueError(f"{source}: the waveform contains NaN or infinite samples")
        else:
            source = str(item)
            self._check_length(source, audio_duration(item))  # from the header: before decoding it
            array = load_audio(item)
        self._check_length(source, len(array) / SAMPLING_RATE)
        if len(array) / SAMPLING_RATE < self._min_seconds:
            raise ValueError(
                f"{source}: {len(array)} samples is too short for the model "
                f"(at least {self._min_seconds * SAMPLING_RATE:.0f} samples at 16 kHz)"
            )
        return source, array

    @staticmethod
    def _check_shapes(items: Sequence[AudioInput]) -> None:
        """Arrays must be 1-D waveforms: another shape is the caller's mistake, raised for any input."""
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray | torch.Tensor) and item.ndim != 1:
                raise ValueError(
                    f"<array {i}>: expected a 1-D 16 kHz mono waveform, got shape {tuple(item.shape)}"
                )

    def _inputs(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, samples)`` normalised, padded input values and their attention mask."""
        fe = self.processor.feature_extractor
        values = [fe(a, sampling_rate=SAMPLING_RATE).input_values[0] for a in arrays]
        batch = fe.pad(
            {"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        device = model_device(self.model)
        return batch["input_values"].to(device), batch["attention_mask"].to(device)

    def transcribe(
        self, audio: AudioInput | Sequence[AudioInput], raise_errors: bool | None = None
    ) -> Transcription | list[Transcription]:
        """Transcribe a path, an array (16 kHz mono), or a list of them.

        Args:
            raise_errors: raise a ``ValueError`` naming the first input that cannot be transcribed
                (missing, not audio, too short, non-finite, longer than ``max_seconds``) instead of
                returning it with ``error`` set. Default: raise for one input, report for a list.

        Returns:
            one :class:`Transcription` for one input, else a list in input order (failed inputs
            included, with ``error`` set, ``text`` empty and ``exit_layer`` ``None``).
        """
        single = isinstance(audio, str | os.PathLike | np.ndarray | torch.Tensor)
        items = [audio] if single else list(audio)  # type: ignore[list-item]
        if raise_errors is None:
            raise_errors = single
        if not items:
            return []
        self._check_shapes(items)
        results: list[Transcription | None] = [None] * len(items)
        good: list[int] = []
        sources: dict[int, str] = {}
        arrays: dict[int, np.ndarray] = {}
        for i, item in enumerate(items):
            try:
                sources[i], arrays[i] = self._load_one(i, item)
            except ValueError as err:  # AudioError included: each message names its input
                if raise_errors:
                    raise
                source = f"<array {i}>" if isinstance(item, np.ndarray | torch.Tensor) else str(item)
                results[i] = self._failed(source, str(err), getattr(err, "seconds", 0.0))
            else:
                good.append(i)
        durations = [len(arrays[i]) / SAMPLING_RATE for i in good]
        for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
            rows = [good[j] for j in batch]
            input_values, attention_mask = self._inputs([arrays[i] for i in rows])
            with forward_precision(input_values.device, self.dtype):
                out = run_early_exit(self.model, input_values, attention_mask, self.policy, self.decoders)
            for j, i in enumerate(rows):
                results[i] = Transcription(
                    source=sources[i],
                    text=out.transcripts[j],  # type: ignore[index]
                    exit_layer=out.exit_layer[j],
                    layers_computed=out.layers_computed[j],
                    num_layers=self.num_layers,
                    seconds=out.seconds[j],
                    audio_seconds=len(arrays[i]) / SAMPLING_RATE,
                )
        return results[0] if single else results  # type: ignore[return-value]

    def _failed(self, source: str, error: str, audio_seconds: float = 0.0) -> Transcription:
        return Transcription(
            source=source,
            text="",
            exit_layer=None,
            layers_computed=0,
            num_layers=self.num_layers,
            seconds=0.0,
            audio_seconds=audio_seconds,
            error=error,
        )

    def __call__(
        self, audio: AudioInput | Sequence[AudioInput], raise_errors: bool | None = None
    ) -> Transcription | list[Transcription]:
        return self.transcribe(audio, raise_errors)
