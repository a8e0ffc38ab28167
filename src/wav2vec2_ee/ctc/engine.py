"""Batched inference for evaluation: length-grouped batches, one encoder pass gives every exit.

* :func:`~wav2vec2_ee.batching.length_grouped_batches` (torch-free, shared with the lite runtime;
  importable from here) sorts utterances by duration (longest first) and cuts batches of at most
  ``batch_size`` utterances and ``max_batch_seconds`` of padded audio (memory stays bounded).
* :func:`forward_exits` runs the encoder once (:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits`),
  up to the deepest requested exit, and returns the logits of the requested exits.
* :func:`iter_exit_logits` streams a :class:`~wav2vec2_ee.data.SpeechDataset` through the model on
  its device (audio is decoded lazily, batch by batch, by a ``DataLoader``; on a CPU optionally by
  forked worker processes, :mod:`wav2vec2_ee.accel.processes`).

Batch-size independence: ``iter_exits``' padding rule gives every utterance of a padded batch what it
gets alone (attention masks the padding; a group-norm CNN takes each utterance's own statistics), so
results do not depend on the batching (up to float rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from ..accel.processes import default_processes, run_forked
from ..audio import SAMPLING_RATE
from ..batching import length_grouped_batches
from ..data import AudioError, DataCollatorCTCWithPadding, SpeechDataset
from ..device import forward_precision, model_device
from ..errors import UserError
from ..modeling import Wav2Vec2EEForCTC

logger = logging.getLogger(__name__)

T = TypeVar("T")


def forward_exits(
    model: Wav2Vec2EEForCTC,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    exits: Sequence[int] | None = None,
    batch_statistics: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of the requested exits from one encoder pass (stops at the deepest requested exit).

    Args:
        input_values: ``(batch, samples)``; attention_mask: ``(batch, samples)`` 1 on real samples.
        exits: 0-based exit indices into ``model.config.exit_layers`` (default: all).
        batch_statistics: the padding rule of :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.embed`
            (default: every utterance as alone).

    Returns:
        ``(logits, output_lengths)``: one ``(batch, frames, vocab)`` tensor per requested exit and
        ``(batch,)`` valid frames.
    """
    steps = list(model.iter_exits(input_values, attention_mask, exits, batch_statistics=batch_statistics))
    return [step.logits for step in steps], steps[-1].output_lengths


class _EvaluationItems(Dataset):
    """Items of a :class:`SpeechDataset` by index; an unreadable file gives ``None`` (not a substitute)."""

    def __init__(self, dataset: SpeechDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return {"input_values": self.dataset.audio(index), "utt_index": index}
        except AudioError as err:
            logger.warning("skipping %s: %s", err.source, err.reason)
            return None


@dataclass
class _Collate:
    collator: DataCollatorCTCWithPadding

    def __call__(self, items: list[dict | None]) -> dict | None:
        items = [x for x in items if x is not None]
        return self.collator(items) if items else None


@dataclass
class ExitBatch:
    """The exit logits of one batch.

    Args:
        indices: ``(batch,)`` positions of the utterances in the dataset.
        exit_logits: one ``(batch, frames, vocab)`` tensor per requested exit.
        output_lengths: ``(batch,)`` valid frames.
        seconds: audio seconds in the batch (without padding).
    """

    indices: list[int]
    exit_logits: list[torch.Tensor]
    output_lengths: torch.Tensor
    seconds: float


def load_batch(
    dataset: SpeechDataset, indices: Sequence[int], collator: DataCollatorCTCWithPadding
) -> dict | None:
    """The padded batch of ``indices`` (unreadable audio logged and left out; ``None`` if none is left)."""
    return _Collate(collator)([_EvaluationItems(dataset)[i] for i in indices])


def exit_batch(
    model: Wav2Vec2EEForCTC,
    batch: dict,
    exits: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> ExitBatch:
    """:func:`forward_exits` of one collated batch (``input_values``, ``attention_mask``, ``utt_index``).

    With ``dtype`` (``torch.bfloat16`` / ``torch.float16``), matrix products and convolutions run in that
    precision under ``torch.autocast`` (faster on GPUs, and on CPUs with AMX); the logits are returned
    in float32 either way, on the model's device. Lower precision can change the argmax of
    frames whose two best tokens are nearly tied, so transcripts may differ slightly from float32.
    """
    device = model_device(model)
    input_values = batch["input_values"].to(device, non_blocking=True)
    attention_mask = batch["attention_mask"].to(device, non_blocking=True)
    with torch.inference_mode(), forward_precision(device, dtype):
        logits, lengths = forward_exits(model, input_values, attention_mask, exits)
    return ExitBatch(
        indices=batch["utt_index"].tolist(),
        exit_logits=[z.float() for z in logits],
        output_lengths=lengths,
        seconds=float(attention_mask.sum()) / SAMPLING_RATE,
    )


def _batch_task(
    model: Wav2Vec2EEForCTC,
    dataset: SpeechDataset,
    exits: Sequence[int] | None,
    postprocess: Callable[[ExitBatch], T] | None,
    dtype: torch.dtype | None,
    indices: list[int],
) -> ExitBatch | T | None:
    """Read, run and ``postprocess`` the batch of ``indices`` (``None`` when none of its audio is readable)."""
    batch = load_batch(dataset, indices, DataCollatorCTCWithPadding(dataset.feature_extractor))
    if batch is None:
        return None
    out = exit_batch(model, batch, exits, dtype)
    return postprocess(out) if postprocess is not None else out


def iter_exit_logits(
    model: Wav2Vec2EEForCTC,
    dataset: SpeechDataset,
    exits: Sequence[int] | None = None,
    batch_size: int = 8,
    max_batch_seconds: float | None = 60.0,
    num_workers: int = 0,
    processes: int | None = 1,
    postprocess: Callable[[ExitBatch], T] | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[ExitBatch | T]:
    """Stream ``dataset`` through the model in length-grouped batches (in ``torch.inference_mode``).
    (Nine parameters: the batching, the parallelism and the precision of one loop, all with defaults.)

    Utterances whose audio cannot be decoded are logged and left out (their indices never appear).

    Args:
        num_workers: ``DataLoader`` processes decoding audio (with ``processes == 1``).
        processes: processes that each read, run and ``postprocess`` whole batches: this one and
            ``processes - 1`` forked children (:func:`~wav2vec2_ee.accel.processes.run_forked`), the
            torch threads shared among them (:func:`~wav2vec2_ee.accel.processes.default_processes`
            when ``None``: several on a CPU, 1 on a GPU, where more are refused). Batches then arrive in completion order; their
            ``indices`` say where they belong. Results equal those of one process (same batches; only
            float rounding of the thread count may differ).
        postprocess: applied to each :class:`ExitBatch` where it was computed (in the worker, so that
            decoding runs in parallel too); what it returns is yielded instead of the batch.
        dtype: autocast precision of the forward pass (:func:`exit_batch`); default float32.
    """
    durations = [u.duration for u in dataset.utterances]
    batches = length_grouped_batches(durations, batch_size, max_batch_seconds)
    if processes is None:
        processes = default_processes(model, len(batches))
    if processes > 1 and model_device(model).type != "cpu":
        raise UserError(
            f"--processes {processes}: worker processes run on a CPU only (the model is on a GPU)"
        )
    if processes > 1:
        task = partial(_batch_task, model, dataset, exits, postprocess, dtype)
        yield from (out for out in run_forked(task, batches, processes) if out is not None)
        return

    loader = DataLoader(
        _EvaluationItems(dataset),
        batch_sampler=batches,
        collate_fn=_Collate(DataCollatorCTCWithPadding(dataset.feature_extractor)),
        num_workers=num_workers,
    )
    for batch in loader:
        if batch is None:
            continue
        out = exit_batch(model, batch, exits, dtype)
        yield postprocess(out) if postprocess is not None else out
