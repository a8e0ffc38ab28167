"""The model under evaluation: a checkpoint loaded for inference, with what evaluation needs to know.

:func:`load_evaluation_model` loads our early-exit checkpoints (every exit), plain ``Wav2Vec2ForCTC``
ones (the final layer, or chosen layers read through its ``lm_head``) and the original research code's,
on ``--device`` in ``--dtype`` (:mod:`wav2vec2_ee.device`: the CPU speed-ups on a CPU only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from ..checkpoints import checkpoint_keys, is_original_layout, read_checkpoint_config
from ..device import autocast_dtype, model_device, prepare_for_inference
from ..errors import UserError
from ..loading import load_model
from ..modeling import Wav2Vec2EEForCTC
from ..vocab import SAMPLING_RATE, build_feature_extractor, build_tokenizer

logger = logging.getLogger(__name__)


def checkpoint_has_exits(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint folder is an early-exit model (else a plain ``Wav2Vec2ForCTC``).

    Ours have ``exit_layers`` in ``config.json``; the original research code's have ``decoders.*``
    heads (or an ``EE...`` architecture name); plain CTC checkpoints have neither.

    Raises:
        FileNotFoundError: no ``config.json``; ValueError: an invalid one, or unreadable weights.
    """
    path = Path(checkpoint)
    config = read_checkpoint_config(path)
    if "exit_layers" in config:
        return True
    if any("EE" in name for name in config.get("architectures") or []):
        return True
    keys = checkpoint_keys(path)
    return bool(keys) and is_original_layout(keys)


@dataclass
class EvaluationModel:
    """A loaded model with what evaluation needs to know about it.

    Args:
        exit_indices: 0-based indices into ``model.config.exit_layers`` of the evaluated exits.
        layers: the evaluated exits' layer numbers.
        labels: the names used in the result files (``layer_<l>``, or ``predicted`` for a plain model).
        has_exits: False for a plain ``Wav2Vec2ForCTC`` checkpoint.
        dtype: the forward pass's autocast precision (``None``: float32).
    """

    model: Wav2Vec2EEForCTC
    tokenizer: Wav2Vec2CTCTokenizer
    feature_extractor: Wav2Vec2FeatureExtractor
    exit_indices: list[int]
    layers: list[int]
    labels: list[str]
    has_exits: bool
    dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return model_device(self.model)


def load_evaluation_model(
    checkpoint: str | os.PathLike,
    exits: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> EvaluationModel:
    """Load ``checkpoint`` for evaluation; ``exits`` restricts the evaluated exits (layer numbers).

    The model goes to ``device`` (default ``cuda`` when available, else ``cpu``), in eval mode, with
    the CPU speed-ups of :mod:`wav2vec2_ee.accel` on a CPU (:func:`~wav2vec2_ee.device.prepare_for_inference`);
    ``dtype`` is the forward pass's precision (``float32``, or ``bfloat16`` / ``float16`` autocast).

    A plain ``Wav2Vec2ForCTC`` checkpoint is evaluated at its final layer (label ``predicted``); with
    ``exits`` its intermediate layers are read through its ``lm_head`` (labels ``layer_<l>``).

    The checkpoint's weights must all be there and match its config (:func:`~wav2vec2_ee.loading.load_model`):
    a folder without weights, an unreadable file or a tensor that is missing or of another shape is an
    error (``FileNotFoundError`` / ``ValueError``, one line naming the folder or file), never a model
    evaluated with random parts.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder")
    has_exits = checkpoint_has_exits(path)
    requested = None if exits is None else sorted({int(x) for x in exits})
    if has_exits:
        model = load_model(str(path))
        available = list(model.config.exit_layers)
        if requested is None:
            requested = available
        missing = [x for x in requested if x not in available]
        if missing:
            raise UserError(f"--exits {missing}: {checkpoint} has exits at layers {available} only")
        indices = [available.index(x) for x in requested]
        labels = [f"layer_{x}" for x in requested]
    else:
        top = read_checkpoint_config(path).get("num_hidden_layers")
        if not isinstance(top, int) or top < 1:
            raise UserError(f"{path / 'config.json'}: no valid num_hidden_layers ({top!r})")
        layers = requested or [int(top)]
        bad = [x for x in layers if not 1 <= x <= int(top)]
        if bad:
            raise UserError(f"--exits {bad}: {checkpoint} has layers 1..{top}")
        model = load_model(str(path), exit_layers=layers)
        requested, indices = layers, list(range(len(layers)))
        labels = [f"layer_{x}" for x in layers] if exits is not None else ["predicted"]
        logger.info("%s has no exits: evaluating %s", checkpoint, ", ".join(labels))
    forward_dtype = autocast_dtype(dtype)
    model = prepare_for_inference(model, device)
    tokenizer = build_tokenizer(path)
    if len(tokenizer.get_vocab()) != model.config.vocab_size:
        logger.warning(
            "the tokenizer has %d tokens but the model's vocab_size is %d",
            len(tokenizer.get_vocab()),
            model.config.vocab_size,
        )
    return EvaluationModel(
        model, tokenizer, build_feature_extractor(path), indices, requested, labels, has_exits, forward_dtype
    )


def min_duration_for_ctc(model: Wav2Vec2EEForCTC) -> float:
    """Seconds of audio the CNN needs for one output frame (shorter files cannot be evaluated)."""
    samples = 1
    for kernel, stride in reversed(list(zip(model.config.conv_kernel, model.config.conv_stride))):
        samples = (samples - 1) * stride + kernel
    return samples / SAMPLING_RATE
