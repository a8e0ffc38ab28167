"""Batched inference for evaluation: length-grouped batches, one encoder pass gives every exit.

* :func:`length_grouped_batches` sorts utterances by duration (longest first) and cuts batches of at
  most ``batch_size`` utterances and ``max_batch_seconds`` of padded audio (memory stays bounded).
* :func:`forward_exits` runs the encoder once, up to the deepest requested exit, and returns the
  logits of the requested exits.
* :func:`iter_exit_logits` streams a :class:`~wav2vec2_ee.data.SpeechDataset` through the model
  (audio is decoded lazily, batch by batch, by a ``DataLoader``).

Batch-size independence: the encoder masks padded frames in attention, and a layer-norm CNN
(``feat_extract_norm="layer"``) is frame-local, so a padded batch gives the same logits as each
utterance alone (up to float rounding). A group-norm CNN (``feat_extract_norm="group"``, e.g.
wav2vec2-base) normalises each channel over *all* samples including padding, so in ``transformers``
itself padding changes the output; :func:`forward_exits` therefore gives group-norm models each
utterance's own statistics (``per_utterance_cnn="auto"``: one batched time-major CNN call whose group
norm is masked per utterance, :mod:`wav2vec2_ee.features`, or one CNN call per utterance where that
CNN is not supported), which keeps results equal to batch size 1.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset
from transformers.masking_utils import create_bidirectional_mask

from ..data import AudioError, DataCollatorCTCWithPadding, SpeechDataset
from ..data.audio import SAMPLING_RATE
from ..features import prefers_time_major
from ..modeling import EncoderState, Wav2Vec2EEForCTC

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def length_grouped_batches(
    durations: Sequence[float], batch_size: int, max_batch_seconds: float | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    A batch holds at most ``batch_size`` utterances and, when ``max_batch_seconds`` is set, at most
    that many seconds of *padded* audio (``len(batch) * longest``); an utterance longer than the cap
    gets a batch of its own.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = durations[current[0]] if current else durations[i]
        too_many = len(current) >= batch_size
        too_long = max_batch_seconds is not None and (len(current) + 1) * longest > max_batch_seconds
        if current and (too_many or too_long):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def uses_group_norm_cnn(model: Wav2Vec2EEForCTC) -> bool:
    return getattr(model.config, "feat_extract_norm", "layer") == "group"


def embed_per_utterance(
    model: Wav2Vec2EEForCTC, input_values: torch.Tensor, attention_mask: torch.Tensor | None
) -> EncoderState:
    """The encoder input of each utterance as computed alone (unpadded), padded into one batch.

    With a CNN that :func:`~wav2vec2_ee.features.prefers_time_major`, one batched time-major call whose
    group norm takes each utterance's own statistics; otherwise (wide CNNs such as wav2vec2-base's, which
    ``transformers``' oneDNN convolutions compute faster even one utterance at a time) one ``embed`` per
    utterance.
    """
    if prefers_time_major(model.wav2vec2.feature_extractor):
        return model.embed(input_values, attention_mask, fast_cnn=True, per_utterance_norm=True)
    samples = (
        attention_mask.sum(-1).tolist()
        if attention_mask is not None
        else [input_values.shape[-1]] * input_values.shape[0]
    )
    states = [model.embed(input_values[i : i + 1, : int(n)]) for i, n in enumerate(samples)]
    lengths = torch.tensor([s.hidden_states.shape[1] for s in states], device=input_values.device)
    frames = int(lengths.max())
    hidden = states[0].hidden_states.new_zeros(len(states), frames, states[0].hidden_states.shape[-1])
    for i, s in enumerate(states):
        hidden[i, : s.hidden_states.shape[1]] = s.hidden_states[0]
    frame_mask = torch.arange(frames, device=hidden.device).unsqueeze(0) < lengths.unsqueeze(1)
    if bool(frame_mask.all()):
        frame_mask = None
    attn = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=frame_mask)
    return EncoderState(hidden, frame_mask, attn, torch.stack([s.output_lengths[0] for s in states]), 0)


def forward_exits(
    model: Wav2Vec2EEForCTC,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    exits: Sequence[int] | None = None,
    per_utterance_cnn: bool | str = "auto",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of the requested exits from one encoder pass (stops at the deepest requested exit).

    Args:
        input_values: ``(batch, samples)``; attention_mask: ``(batch, samples)`` 1 on real samples.
        exits: 0-based exit indices into ``model.config.exit_layers`` (default: all), increasing.
        per_utterance_cnn: run the CNN utterance by utterance (exact for group-norm CNNs, see the module
            docstring); ``"auto"`` = only for ``feat_extract_norm="group"`` models with a padded batch.

    Returns:
        ``(logits, output_lengths)``: one ``(batch, frames, vocab)`` tensor per requested exit and
        ``(batch,)`` valid frames.
    """
    layers = model.config.exit_layers
    wanted = list(range(len(layers))) if exits is None else sorted(set(exits))
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(layers):
        raise ValueError(f"exit indices {exits} must lie in [0, {len(layers) - 1}]")
    if per_utterance_cnn == "auto":
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        per_utterance_cnn = padded and uses_group_norm_cnn(model)
    if per_utterance_cnn:
        state = embed_per_utterance(model, input_values, attention_mask)
    else:
        state = model.embed(input_values, attention_mask)
    by_layer = {layers[k]: k for k in wanted}
    out: list[torch.Tensor] = []
    while state.layer < layers[wanted[-1]]:
        state = model.run_layer(state)
        if state.layer in by_layer:
            out.append(model.exit_logits_at(by_layer[state.layer], state.hidden_states))
    return out, state.output_lengths


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


def default_processes(model: Wav2Vec2EEForCTC, num_batches: int) -> int:
    """Worker processes for :func:`iter_exit_logits` on CPU: one per torch thread (each then runs one
    thread), at most 8 and at most one per batch; 1 on GPU and off Linux (``fork`` after libraries
    that start threads is only safe there).

    Small matrices (a few hundred frames by a few hundred channels) keep two intra-op threads far from
    twice as fast as one, while processes working on different batches scale almost linearly.
    """
    if next(model.parameters()).device.type != "cpu" or not sys.platform.startswith("linux"):
        return 1
    return max(1, min(torch.get_num_threads(), 8, num_batches))


def load_batch(
    dataset: SpeechDataset, indices: Sequence[int], collator: DataCollatorCTCWithPadding
) -> dict | None:
    """The padded batch of ``indices`` (unreadable audio logged and left out; ``None`` if none is left)."""
    return _Collate(collator)([_EvaluationItems(dataset)[i] for i in indices])


#: ``--dtype`` choices: the precision of the matrix products (``torch.autocast``); ``float32`` = none.
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name: str | None) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a ``--dtype`` name (``None`` for float32 / no autocast)."""
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown --dtype {name!r}: choose from {list(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[name]


def exit_batch(
    model: Wav2Vec2EEForCTC,
    batch: dict,
    exits: Sequence[int] | None = None,
    per_utterance_cnn: bool | str = "auto",
    dtype: torch.dtype | None = None,
) -> ExitBatch:
    """:func:`forward_exits` of one collated batch (``input_values``, ``attention_mask``, ``utt_index``).

    With ``dtype`` (``torch.bfloat16`` / ``torch.float16``), matrix products and convolutions run in that
    precision under ``torch.autocast`` (bfloat16 is faster on CPUs with AMX, and
    on GPUs); the logits are returned in float32 either way. Lower precision can change the argmax of
    frames whose two best tokens are nearly tied, so transcripts may differ slightly from float32.
    """
    device = next(model.parameters()).device
    input_values = batch["input_values"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits, lengths = forward_exits(model, input_values, attention_mask, exits, per_utterance_cnn)
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
    per_utterance_cnn: bool | str,
    postprocess: Callable[[ExitBatch], T] | None,
    dtype: torch.dtype | None,
    indices: list[int],
) -> ExitBatch | T | None:
    """Read, run and ``postprocess`` the batch of ``indices`` (``None`` when none of its audio is readable)."""
    batch = load_batch(dataset, indices, DataCollatorCTCWithPadding(dataset.feature_extractor))
    if batch is None:
        return None
    out = exit_batch(model, batch, exits, per_utterance_cnn, dtype)
    return postprocess(out) if postprocess is not None else out


class WorkerError(RuntimeError):
    """A forked worker of :func:`run_forked` failed (its traceback is in the message) or died."""


_DONE = "done"


def _take(counter, total: int) -> int | None:
    """The next unclaimed task index of the shared ``counter``, or ``None`` when all are claimed."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _forked_worker(fn: Callable, tasks: Sequence, counter, results, threads: int, worker: int) -> None:
    torch.set_num_threads(threads)
    try:
        while (index := _take(counter, len(tasks))) is not None:
            results.put((index, fn(tasks[index])))
    except BaseException as err:  # sent to the parent, which raises it
        trace = traceback.format_exc()
        try:
            pickle.dumps(err)
        except Exception:
            err = None
        results.put((_DONE, (worker, (err, trace))))
        return
    results.put((_DONE, (worker, None)))


def run_forked(fn: Callable[[T], R], tasks: Sequence[T], processes: int) -> Iterator[R]:
    """``fn(task)`` for every task, in completion order, computed by this process and ``processes - 1``
    forked children that claim tasks from a shared counter (so that the load balances).

    The children inherit ``fn`` and ``tasks`` by ``fork`` (nothing is pickled on the way in; results
    are pickled on the way back). The torch threads are shared: each process runs
    ``torch.get_num_threads() // processes`` of them (this one is restored afterwards). An exception in
    a child is raised here (its type kept where it can be pickled, with the child's traceback); a child
    that dies (killed, out of memory) raises :class:`WorkerError`. The children are stopped when the
    caller stops iterating early.
    """
    if processes < 2 or len(tasks) < 2:
        yield from map(fn, tasks)
        return
    if "fork" not in mp.get_all_start_methods():
        raise ValueError(f"processes={processes} needs the 'fork' start method, which this platform lacks")
    ctx = mp.get_context("fork")
    threads = max(1, torch.get_num_threads() // processes)
    counter, results = ctx.Value("q", 0), ctx.Queue()
    children = [
        ctx.Process(target=_forked_worker, args=(fn, tasks, counter, results, threads, i), daemon=True)
        for i in range(min(processes, len(tasks)) - 1)
    ]
    own_threads = torch.get_num_threads()
    for child in children:
        child.start()
    running = set(range(len(children)))  # the children that have not reported the end of their work

    def collect(block: bool) -> Iterator[R]:
        while running:
            try:
                key, value = results.get(timeout=0.2) if block else results.get_nowait()
            except queue.Empty:
                if not block:
                    return
                dead = [children[i] for i in running if children[i].exitcode not in (None, 0)]
                if dead:
                    raise WorkerError(
                        f"an evaluation worker process died (exit code {dead[0].exitcode}); "
                        "if it ran out of memory, lower --batch-size or --max-batch-seconds"
                    ) from None
                continue
            if key != _DONE:
                yield value
                continue
            worker, failure = value
            running.discard(worker)
            if failure is not None:
                err, trace = failure
                if err is None:
                    raise WorkerError(f"an evaluation worker process failed:\n{trace}")
                raise err from WorkerError(f"in a worker process:\n{trace}")

    try:
        torch.set_num_threads(threads)
        while (index := _take(counter, len(tasks))) is not None:
            yield fn(tasks[index])
            yield from collect(block=False)
        torch.set_num_threads(own_threads)
        yield from collect(block=True)
    finally:
        torch.set_num_threads(own_threads)
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        results.close()


def iter_exit_logits(
    model: Wav2Vec2EEForCTC,
    dataset: SpeechDataset,
    exits: Sequence[int] | None = None,
    batch_size: int = 8,
    max_batch_seconds: float | None = 60.0,
    num_workers: int = 0,
    per_utterance_cnn: bool | str = "auto",
    processes: int | None = 1,
    postprocess: Callable[[ExitBatch], T] | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[ExitBatch | T]:
    """Stream ``dataset`` through the model in length-grouped batches (in ``torch.inference_mode``).

    Utterances whose audio cannot be decoded are logged and left out (their indices never appear).

    Args:
        num_workers: ``DataLoader`` processes decoding audio (with ``processes == 1``).
        processes: processes that each read, run and ``postprocess`` whole batches: this one and
            ``processes - 1`` forked children (:func:`run_forked`), the torch threads shared among them
            (:func:`default_processes` when ``None``). Batches then arrive in completion order; their
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
    if processes > 1:
        task = partial(_batch_task, model, dataset, exits, per_utterance_cnn, postprocess, dtype)
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
        out = exit_batch(model, batch, exits, per_utterance_cnn, dtype)
        yield postprocess(out) if postprocess is not None else out
