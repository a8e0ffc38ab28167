"""Batches of recordings of similar length, bounded in utterances and in seconds of padded audio.

Standard library only: the PyTorch engines (``evaluate``, ``sweep``, ``transcribe``) and the torch-free
runtime (:mod:`wav2vec2_ee.lite`) cut their batches here, so that one bound in seconds holds memory
whichever of them runs (a batch's activations grow with its padded length, not its count).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UserError

#: Seconds of padded audio per batch of ``transcribe`` and the lite runtime unless ``--max-batch-seconds``
#: says otherwise.
DEFAULT_MAX_BATCH_SECONDS = 160.0


def check_count(flag: str, value: int | None) -> None:
    """A :class:`~wav2vec2_ee.errors.UserError` naming ``flag`` unless ``value`` is an integer >= 1
    (``None``: the default, accepted)."""
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise UserError(f"{flag} must be an integer >= 1, got {value}")


def check_batching(batch_size: int | None = None, max_batch_seconds: float | None = None) -> None:
    """A :class:`~wav2vec2_ee.errors.UserError` naming the flag for ``--batch-size`` (an integer >= 1) or
    ``--max-batch-seconds`` (a number > 0) out of range; ``None`` is "the default"."""
    check_count("--batch-size", batch_size)
    if max_batch_seconds is not None and not float(max_batch_seconds) > 0:  # nan fails too
        raise UserError(
            f"--max-batch-seconds must be a number > 0 (seconds of padded audio per batch), got {max_batch_seconds}"
        )


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
