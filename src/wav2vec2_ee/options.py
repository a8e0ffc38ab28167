"""Command options as dataclasses (the ``HfArgumentParser`` ones), also from keyword arguments.

Every command function takes its options as the dataclasses its command line parses, so settings travel
as a few objects, not long keyword lists. For use from Python, :func:`resolve_options` also accepts the
fields as keywords: ``run_sweep(ckpt, out, data="corpus", split="dev", device="cpu")``.

No torch here: the commands' parsers (``--help``) are built from their option dataclasses without
importing torch. :class:`DeviceArguments` (``--device`` / ``--dtype``) and :func:`check_runtime_options`
live here for that reason; :mod:`wav2vec2_ee.device` re-exports them beside what needs torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from .batching import check_batching, check_count

#: ``--dtype`` choices: the precision of the matrix products (``torch.autocast``; ``float32`` = none).
#: :data:`wav2vec2_ee.device.AUTOCAST_DTYPES` maps each to its torch dtype.
DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass
class DeviceArguments:
    """``--device`` and ``--dtype``, shared by ``evaluate``, ``transcribe``, ``sweep``, ``calibrate`` and ``demo``."""

    device: str | None = field(
        default=None,
        metadata={"help": "where the model runs: cpu, cuda, cuda:N (default: cuda when available, else cpu)"},
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "precision of the forward pass's matrix products: float32, or bfloat16 / float16 under "
            "torch.autocast (faster on GPUs and on CPUs with AMX; transcripts may differ slightly)",
            "choices": list(DTYPE_NAMES),
        },
    )


def check_runtime_options(
    num_threads: int | None = None,
    batch_size: int | None = None,
    max_batch_seconds: float | None = None,
) -> None:
    """A ``ValueError`` naming the option and its accepted range for ``--num-threads`` (an integer
    >= 1), ``--batch-size`` (an integer >= 1) or ``--max-batch-seconds`` (a number > 0) out of range;
    ``None`` is "the default". Called by the option dataclasses' ``__post_init__``, so the message names
    the flag rather than the ``RuntimeError`` of ``torch.set_num_threads`` or an empty batch. The
    batching checks are :func:`~wav2vec2_ee.batching.check_batching` (the lite runtime's too)."""
    check_count("--num-threads", num_threads)
    check_batching(batch_size, max_batch_seconds)


def resolve_options(given: Sequence[object | None], types: Sequence[type], options: dict) -> list:
    """One instance per type of ``types``: the given one (or the type's defaults) with the ``options``
    whose names are its fields applied. A keyword that is no field of any type is a ``TypeError``."""
    remaining = dict(options)
    out = []
    for instance, cls in zip(given, types):
        if instance is not None and not isinstance(instance, cls):
            raise TypeError(
                f"expected {cls.__name__} or None, got {type(instance).__name__} {instance!r}: pass the fields "
                "of the options as keywords (e.g. data=...)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {k: remaining.pop(k) for k in list(remaining) if k in names}
        out.append(dataclasses.replace(instance, **mine) if instance is not None else cls(**mine))
    if remaining:
        raise TypeError(f"unknown options {sorted(remaining)}")
    return out
