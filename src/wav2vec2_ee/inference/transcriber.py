"""``Transcriber``: the Python API of dynamic early-exit transcription.

>>> from wav2vec2_ee import Transcriber
>>> from wav2vec2_ee.inference import build_policy
>>> t = Transcriber.from_pretrained("runs/ee", policy=build_policy("entropy", threshold=0.4))
>>> t.transcribe("a.wav").text                       # one path (or one array) -> one result
>>> [r.exit_layer for r in t.transcribe(["a.wav", "b.flac"])]   # a list -> a list, in input order

Inputs are batched internally, longest first, so that utterances of similar length share a batch.
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

from ..data import load_audio
from ..data.audio import SAMPLING_RATE
from ..device import autocast_dtype, forward_precision, model_device, prepare_for_inference
from ..evaluation.decoding import LexiconBeamDecoder
from ..evaluation.engine import length_grouped_batches
from ..evaluation.model import min_duration_for_ctc
from ..modeling import Wav2Vec2EEForCTC, load_model
from ..vocab import build_processor
from .engine import run_early_exit
from .policies import Decoders, ExitPolicy, FixedExit

logger = logging.getLogger(__name__)

AudioInput = str | os.PathLike | np.ndarray


@dataclass
class Transcription:
    """The transcript of one input and what it cost.

    Args:
        source: the path, or ``<array i>`` for the i-th array given.
        text: the greedy transcript (lower case, single spaces).
        exit_layer: the layer of the exit that answered.
        layers_computed: transformer layers run for this utterance.
        num_layers: the model's full depth (the layer of its last exit).
        seconds: wall-clock seconds from the start of its batch's computation (the CNN included,
            audio decoding excluded) until its answer was ready.
        audio_seconds: duration of the audio.
    """

    source: str
    text: str
    exit_layer: int
    layers_computed: int
    num_layers: int
    seconds: float
    audio_seconds: float

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
    ):
        self.model = model.eval()
        self.policy = policy if policy is not None else FixedExit()
        self.policy.deepest_exit(model.config.exit_layers)  # fail now on a layer the model lacks
        self.processor = processor if processor is not None else build_processor(None)
        self.decoders = Decoders(self.processor.tokenizer, lexicon_decoder)
        self.batch_size = int(batch_size)
        self.max_batch_seconds = max_batch_seconds
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

    def _load(self, audio: Sequence[AudioInput]) -> tuple[list[str], list[np.ndarray]]:
        sources, arrays = [], []
        for i, item in enumerate(audio):
            if isinstance(item, np.ndarray | torch.Tensor):
                array = np.asarray(item, dtype=np.float32)
                source = f"<array {i}>"
                if array.ndim != 1:
                    raise ValueError(
                        f"{source}: expected a 1-D 16 kHz mono waveform, got shape {array.shape}"
                    )
                if not np.isfinite(array).all():
                    raise ValueError(f"{source}: the waveform contains NaN or infinite samples")
            else:
                source = str(item)
                array = load_audio(item)
            if len(array) / SAMPLING_RATE < self._min_seconds:
                raise ValueError(
                    f"{source}: {len(array)} samples is too short for the model "
                    f"(at least {self._min_seconds * SAMPLING_RATE:.0f} samples at 16 kHz)"
                )
            sources.append(source)
            arrays.append(array)
        return sources, arrays

    def _inputs(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, samples)`` normalised, padded input values and their attention mask."""
        fe = self.processor.feature_extractor
        values = [fe(a, sampling_rate=SAMPLING_RATE).input_values[0] for a in arrays]
        batch = fe.pad(
            {"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        device = model_device(self.model)
        return batch["input_values"].to(device), batch["attention_mask"].to(device)

    def transcribe(self, audio: AudioInput | Sequence[AudioInput]) -> Transcription | list[Transcription]:
        """Transcribe a path, an array (16 kHz mono), or a list of them.

        Returns:
            one :class:`Transcription` for one input, else a list in input order.
        """
        single = isinstance(audio, str | os.PathLike | np.ndarray | torch.Tensor)
        items = [audio] if single else list(audio)  # type: ignore[list-item]
        if not items:
            return []
        sources, arrays = self._load(items)
        durations = [len(a) / SAMPLING_RATE for a in arrays]
        results: list[Transcription | None] = [None] * len(items)
        for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
            input_values, attention_mask = self._inputs([arrays[i] for i in batch])
            with forward_precision(input_values.device, self.dtype):
                out = run_early_exit(self.model, input_values, attention_mask, self.policy, self.decoders)
            for j, i in enumerate(batch):
                results[i] = Transcription(
                    source=sources[i],
                    text=out.transcripts[j],  # type: ignore[index]
                    exit_layer=out.exit_layer[j],
                    layers_computed=out.layers_computed[j],
                    num_layers=self.num_layers,
                    seconds=out.seconds[j],
                    audio_seconds=durations[i],
                )
        return results[0] if single else results  # type: ignore[return-value]

    def __call__(self, audio: AudioInput | Sequence[AudioInput]) -> Transcription | list[Transcription]:
        return self.transcribe(audio)
