"""Command options as dataclasses (the ``HfArgumentParser`` ones), also from keyword arguments.

Every command function takes its options as the dataclasses its command line parses, so settings travel
as a few objects, not long keyword lists. For use from Python, :func:`resolve_options` also accepts the
fields as keywords: ``run_sweep(ckpt, out, data="corpus", split="dev", device="cpu")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


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
