"""The exit loop over a stop mask, shared by the PyTorch engine and the torch-free runtime.

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol


class ExitStep(Protocol):
    """One exit of a batch (``ExitStep`` of the model, ``OnnxExitStep`` of the ONNX segments)."""

    exit_index: int

    def retain(self, keep: Any) -> None: ...


def exit_loop(
    steps: Iterable[ExitStep],
    deepest: int,
    view_of: Callable[[Any], Any],
    stops: Callable[[list], Any],
    positions: Callable[[Any], Any],
    record: Callable[[Any], None],
) -> None:
    """The engine's loop over one batch's exits (shallow to deep), in any array library.

    After each exit the policy decides (``stops(history)``: a ``(rows,)`` bool mask of the utterances
    still running that stop here); those answer (``record`` of their view) and leave the batch
    (``step.retain(~stop)``: later blocks run on the rest only); the exit ``deepest`` answers for all
    that are left, and the loop ends there (or when the steps end: no utterance is left).

    Args:
        steps: the exits of the batch, up to ``deepest`` at least.
        view_of: the policy's view of a step (the runtime's exit view, with ``select(indices)``).
        stops: ``history -> (rows,)`` bool mask on the host (``policy.should_exit`` converted).
        positions: the indices of a mask's true entries, as the views' ``select`` takes them.
        record: called with the view of the utterances that answer at its exit.
    """
    history: list = []  # the exits so far, restricted to the utterances still running
    for step in steps:
        history.append(view_of(step))
        if step.exit_index == deepest:
            record(history[-1])
            return
        stop = stops(history)
        if not bool(stop.any()):
            continue
        record(history[-1].select(positions(stop)))
        step.retain(~stop)
        keep = positions(~stop)
        history = [view.select(keep) for view in history]
