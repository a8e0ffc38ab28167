"""Wall time, measured: run the engine (and the full forward pass it is compared with) over a split.

The audio is decoded, normalised and padded into length-grouped batches once, before any clock
starts (:func:`load_batches`); a timed run covers the model, the exit policy's statistics and the
greedy decoding of the answers, nothing else. :func:`measure_wall_times` times several runs over the
same batches, interleaved round by round (``repeats`` rounds; the fastest round of each run counts,
which damps noise from other processes), after one untimed warm-up batch. On a GPU the clock is read
only after the queued work is done (:func:`~wav2vec2_ee.device.synchronize`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..ctc.engine import length_grouped_batches
from ..data import AudioError, DataCollatorCTCWithPadding, PreparedUtterance, SpeechDataset
from ..device import forward_precision, model_device, synchronize
from ..modeling import Wav2Vec2EEForCTC
from ..policy_core import ExitPolicy
from .engine import full_forward, run_early_exit
from .policies import Decoders

logger = logging.getLogger(__name__)

#: Builds the policy for one batch from its utterance ids (most policies ignore them; replaying the
#: oracle's decisions, :class:`~.policies.ScheduledExit`, needs them).
PolicyFactory = Callable[[Sequence[str]], ExitPolicy]


@dataclass
class AudioBatch:
    """One padded batch: ``input_values`` / ``attention_mask`` ``(batch, samples)``."""

    ids: list[str]
    input_values: torch.Tensor
    attention_mask: torch.Tensor


def load_batches(
    prepared: Sequence[PreparedUtterance],
    feature_extractor,
    batch_size: int = 16,
    max_batch_seconds: float | None = 320.0,
    device: torch.device | str = "cpu",
) -> list[AudioBatch]:
    """Decode and pad every utterance into length-grouped batches (longest first)."""
    dataset = SpeechDataset(prepared, feature_extractor)
    collate = DataCollatorCTCWithPadding(feature_extractor)
    batches = []
    for indices in length_grouped_batches([u.duration for u in prepared], batch_size, max_batch_seconds):
        items, ids = [], []
        for i in indices:
            try:
                items.append({"input_values": dataset.audio(i)})
                ids.append(prepared[i].id)
            except AudioError as err:
                logger.warning("skipping %s: %s", err.source, err.reason)
        if items:
            b = collate(items)
            batches.append(AudioBatch(ids, b["input_values"].to(device), b["attention_mask"].to(device)))
    return batches


@dataclass
class Measurement:
    """A timed run over all batches.

    Args:
        seconds: wall seconds of the fastest round; rounds: every round's seconds.
        cpu_seconds: CPU time of this process (all threads) in its fastest round: less sensitive
            than wall time to other processes on a busy machine.
        transcripts / layers_computed: per utterance id, from the last round.
    """

    seconds: float
    cpu_seconds: float = float("inf")
    rounds: list[float] = field(default_factory=list)
    transcripts: dict[str, str] = field(default_factory=dict)
    layers_computed: dict[str, int] = field(default_factory=dict)


def _run(
    model: Wav2Vec2EEForCTC,
    batches: Sequence[AudioBatch],
    factory: PolicyFactory | None,
    decoders: Decoders,
    dtype: torch.dtype | None = None,
) -> tuple[float, float, dict[str, str], dict[str, int]]:
    """``(wall seconds, cpu seconds, transcripts, layers computed)`` of one pass over ``batches``."""
    texts: dict[str, str] = {}
    layers: dict[str, int] = {}
    full = int(model.config.exit_layers[-1])
    device = model_device(model)
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with forward_precision(device, dtype):
        _pass(model, batches, factory, decoders, full, texts, layers)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, texts, layers


def _pass(
    model: Wav2Vec2EEForCTC,
    batches: Sequence[AudioBatch],
    factory: PolicyFactory | None,
    decoders: Decoders,
    full: int,
    texts: dict[str, str],
    layers: dict[str, int],
) -> None:
    """One pass over ``batches`` (engine or full forward), filling ``texts`` and ``layers`` by id."""
    for b in batches:
        if factory is None:
            out_texts = full_forward(model, b.input_values, b.attention_mask, decoders) or []
            texts.update(zip(b.ids, out_texts))
            layers.update((i, full) for i in b.ids)
        else:
            out = run_early_exit(model, b.input_values, b.attention_mask, factory(b.ids), decoders)
            texts.update(zip(b.ids, out.transcripts or []))
            layers.update(zip(b.ids, out.layers_computed))


def measure_wall_times(
    model: Wav2Vec2EEForCTC,
    batches: Sequence[AudioBatch],
    runs: Mapping[str, PolicyFactory | None],
    decoders: Decoders,
    repeats: int = 1,
    dtype: torch.dtype | None = None,
) -> dict[str, Measurement]:
    """Time each run over ``batches``: a :data:`PolicyFactory` runs the engine, ``None`` the full forward.

    Returns:
        ``{name: Measurement}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model.eval()
    if batches:  # warm-up: first-call allocations and lazy initialisation stay out of the clock
        _run(model, batches[:1], None, decoders, dtype)
        for factory in runs.values():
            if factory is not None:
                _run(model, batches[:1], factory, decoders, dtype)
                break
    results: dict[str, Measurement] = {}
    for _ in range(repeats):
        for name, factory in runs.items():
            seconds, cpu, texts, layers = _run(model, batches, factory, decoders, dtype)
            m = results.setdefault(name, Measurement(seconds))
            m.rounds.append(seconds)
            m.seconds = min(m.rounds)
            m.cpu_seconds = min(m.cpu_seconds, cpu)
            m.transcripts, m.layers_computed = texts, layers
    return results
