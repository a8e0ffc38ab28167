"""Checks the benchmark scripts share, so that a benchmark that measured nothing, or that calibrated (or
fitted) on the data it reports on, says so and exits with status 1 instead of printing ratios of nothing
or a test WER of its own calibration data (issue 29).

A script imports it after putting its own folder on ``sys.path`` (``python benchmarks/x.py`` does; a
script loaded from a file by the tests does not)::

    sys.path.insert(0, str(Path(__file__).parent))
    from _guards import refuse_nothing_measured, refuse_shared_utterances  # noqa: E402

Bad flags are usage errors (argparse's, exit status 2): :func:`refuse_counts_below_one`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class _Utterance(Protocol):
    """What the checks read of an utterance (``Utterance``, ``PreparedUtterance``)."""

    id: str
    audio: str | None


def refuse(message: str) -> None:
    """Exit with status 1, ``<script>: <message>`` on stderr (``SystemExit`` with the message)."""
    raise SystemExit(f"{Path(sys.argv[0]).name}: {message}")


def refuse_counts_below_one(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """A usage error (argparse's, exit status 2) naming every count flag of ``names`` (attributes of
    ``args``: rounds, repeats, steps, utterances, batch size) that is below 1: a benchmark of zero of
    them measures nothing."""
    low = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in names if getattr(args, name) < 1]
    if low:
        parser.error(f"{', '.join(low)}: must be at least 1 (a benchmark of none measures nothing)")


def refuse_nothing_measured(count: int, what: str, why: str = "") -> None:
    """Refuse a measurement of ``count`` ``what`` (e.g. ``"utterances"``) when it is none."""
    if count <= 0:
        refuse(f"measured nothing: 0 {what}" + (f" ({why})" if why else ""))


def utterance_keys(utterances: Iterable[_Utterance]) -> set[str]:
    """What identifies each utterance's recording: its audio file (resolved), else its id."""
    return {os.path.realpath(u.audio) if u.audio else f"id {u.id}" for u in utterances}


def refuse_shared_utterances(
    data: str | os.PathLike,
    fitted: tuple[str, Iterable[_Utterance]],
    reported: tuple[str, Iterable[_Utterance]],
) -> None:
    """Refuse a benchmark whose ``fitted`` utterances (``(label, utterances)``: what a threshold is
    calibrated or a policy fitted on, e.g. ``("--dev-split dev", dev)``) share any recording with the
    ``reported`` ones (what its WERs and times are measured on): it would report on its own calibration
    data. A manifest is one split: every split name of it reads the whole file."""
    (fitted_label, fitted_utts), (reported_label, reported_utts) = fitted, reported
    reported_keys = utterance_keys(reported_utts)
    shared = utterance_keys(fitted_utts) & reported_keys
    if not shared:
        return
    hint = ""
    if Path(data).is_file():
        hint = f"; {data} is a manifest, one split: every split name reads the whole file"
    refuse(
        f"{fitted_label} and {reported_label} of {data} share {len(shared)} of the {len(reported_keys)} "
        f"utterances measured: the benchmark would be calibrated on its test data{hint}; choose splits "
        "without common recordings"
    )
