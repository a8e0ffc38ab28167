"""What a training run skipped, and why: non-finite batches, optimizer steps not taken, unreadable audio.

Each process keeps one :class:`SkipCounts`, filled by ``EarlyExitTrainer.compute_loss`` (non-finite
batches, audio replaced by the dataset) and :class:`~.callbacks.SkipBadUpdates` (optimizer steps not
taken). :class:`~.callbacks.SaveSkipCounts` writes it into every checkpoint as ``skip_counts.json``
(``skip_counts_<rank>.json`` with several processes), a resumed run continues it
(:meth:`SkipCounts.restore`), and :func:`gather_skip_counts` sums the processes' counts at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write_text

SKIP_COUNTS_NAME = "skip_counts.json"


def skip_counts_name(process_index: int, world_size: int) -> str:
    """The counts file of process ``process_index`` (one file per process when ``world_size > 1``)."""
    if world_size <= 1:
        return SKIP_COUNTS_NAME
    return SKIP_COUNTS_NAME.replace(".json", f"_{process_index}.json")


@dataclass
class SkipCounts:
    """One process's counts of what training skipped.

    Attributes:
        skipped_nonfinite_batches: batches whose loss was not finite (trained on as a zero loss).
        skipped_updates: optimizer steps not taken (non-finite or all-zero gradient).
        bad_audio: audio path → reason, for audio that failed to decode at training time.
    """

    skipped_nonfinite_batches: int = 0
    skipped_updates: int = 0
    bad_audio: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The counts as plain JSON-able values (``bad_audio`` copied)."""
        return {
            "skipped_nonfinite_batches": self.skipped_nonfinite_batches,
            "skipped_updates": self.skipped_updates,
            "bad_audio": dict(self.bad_audio),
        }

    def note_bad_audio(self, skipped: Iterable[tuple[str, str]] | None) -> None:
        """Record a batch's ``skipped_audio`` (``(source, reason)`` pairs; the first reason is kept)."""
        for source, reason in skipped or ():
            self.bad_audio.setdefault(str(source), str(reason))

    def log_fields(self) -> dict[str, int]:
        """The non-zero counts, as the Trainer logs them beside the loss."""
        fields = {
            name: getattr(self, name)
            for name in ("skipped_nonfinite_batches", "skipped_updates")
            if getattr(self, name)
        }
        if self.bad_audio:
            fields["unreadable_audio_files"] = len(self.bad_audio)
        return fields

    def save(self, folder: str | os.PathLike, process_index: int, world_size: int) -> None:
        """Write this process's counts into the checkpoint ``folder`` (created if missing), atomically."""
        path = Path(folder, skip_counts_name(process_index, world_size))
        atomic_write_text(path, json.dumps(self.as_dict(), indent=2))

    def restore(self, checkpoint: str | os.PathLike | None, process_index: int, world_size: int) -> None:
        """Continue the counts saved in ``checkpoint`` (none saved, or no checkpoint: keep these)."""
        path = Path(checkpoint, skip_counts_name(process_index, world_size)) if checkpoint else None
        if path is None or not path.is_file():
            return
        counts = json.loads(path.read_text(encoding="utf-8"))
        self.skipped_nonfinite_batches = int(counts.get("skipped_nonfinite_batches", 0))
        self.skipped_updates = int(counts.get("skipped_updates", 0))
        self.bad_audio.update(counts.get("bad_audio", {}))


def gather_skip_counts(counts: dict) -> dict:
    """``counts`` (:meth:`SkipCounts.as_dict`) over all processes of a distributed run (else as is).

    Non-finite batches are summed (each process sees its own batches) and unreadable audio joined;
    skipped updates are the same on every process (they decide on the shared, all-reduced gradient).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return counts
    everyone: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, counts)
    bad_audio: dict[str, str] = {}
    for c in everyone:
        bad_audio.update(c["bad_audio"])
    return {
        "skipped_nonfinite_batches": sum(c["skipped_nonfinite_batches"] for c in everyone),
        # every process takes the same decision on a shared gradient: the count is the same on all
        "skipped_updates": max(c["skipped_updates"] for c in everyone),
        "bad_audio": bad_audio,
    }
