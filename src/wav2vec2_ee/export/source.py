"""An exported folder as an exit source of the PyTorch engine (:func:`~wav2vec2_ee.inference.run_early_exit`).

:class:`OnnxExitSource` wraps :func:`~.runtime.run_onnx_exits` so that its steps carry torch tensors
(what the exit policies read) while the blocks run in ``onnxruntime``: the same interface as
:meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits` (``exit_layers``, ``iter_exits(input_values,
attention_mask, exits)`` yielding steps with ``exit_index, layer, logits, output_lengths, rows`` and
``retain(keep)``). Imports torch (the torch-free runtime is :mod:`.runtime` and :mod:`wav2vec2_ee.lite`).

Two thread pools share the process here: onnxruntime's runs the segments, torch's the policy's
statistics and the decoding between them. torch's OpenMP threads keep spinning for a while after
each small operation, on the cores onnxruntime's threads are about to use; on 2 cores that made an
early-exit pass slower than the full depth (wall 1.06-1.16 of it at 0.92 of the layers, measured with
``benchmarks/bench_export.py``). So while its steps are being consumed, the source runs torch on
``torch_threads`` threads (default 1: the work between segments is a few small tensors) and restores
torch's setting when the pass ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..configuration import Wav2Vec2EEConfig
from .runtime import OnnxExitStep, OnnxSegments, load_segments, run_onnx_exits


@dataclass
class OnnxTorchStep:
    """One exit of :meth:`OnnxExitSource.iter_exits`: an :class:`~.runtime.OnnxExitStep` as torch tensors
    (CPU; ``logits`` shares the numpy array's memory). :meth:`retain` drops rows in the ONNX chain."""

    exit_index: int
    layer: int
    logits: torch.Tensor
    output_lengths: torch.Tensor
    rows: torch.Tensor
    step: OnnxExitStep = field(repr=False)

    @property
    def retained(self) -> torch.Tensor | None:
        kept = self.step.retained
        return None if kept is None else torch.from_numpy(kept)

    def retain(self, keep) -> None:
        """Run later blocks for these rows only: a bool mask ``(rows,)`` or indices into this step's rows."""
        if isinstance(keep, torch.Tensor):
            keep = keep.detach().cpu().numpy()
        self.step.retain(keep)


class OnnxExitSource:
    """The ONNX segments of an exported folder behind the model's exit interface (see the module docstring).

    Args:
        segments: an :class:`~.runtime.OnnxSegments` (:func:`~.runtime.load_segments`) or a folder to load.
        precision, providers, num_threads: passed to :func:`~.runtime.load_segments` for a folder.
        torch_threads: torch's intra-op threads while a pass runs (the policy's work between segment
            calls; see the module docstring); ``None`` leaves torch's setting alone.
    """

    def __init__(
        self,
        segments: OnnxSegments | str | os.PathLike,
        precision: str | None = None,
        *,
        providers: Iterable[str] | None = None,
        num_threads: int | None = None,
        torch_threads: int | None = 1,
    ):
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {torch_threads}")
        self.torch_threads = torch_threads
        if not isinstance(segments, OnnxSegments):
            segments = load_segments(segments, precision, providers=providers, num_threads=num_threads)
        self.segments = segments
        self._config = None

    @property
    def config(self):
        """The exported model's :class:`~wav2vec2_ee.configuration.Wav2Vec2EEConfig` (its ``config.json``)."""
        if self._config is None:
            self._config = Wav2Vec2EEConfig.from_pretrained(str(self.segments.folder))
        return self._config

    def eval(self) -> OnnxExitSource:
        """Inference only, as the model's ``eval()``: returns itself."""
        return self

    @property
    def exit_layers(self) -> list[int]:
        return self.segments.exit_layers

    def __repr__(self) -> str:
        return f"OnnxExitSource({str(self.segments.folder)!r}, precision={self.segments.precision!r})"

    def iter_exits(
        self,
        input_values: torch.Tensor | np.ndarray,
        attention_mask: torch.Tensor | np.ndarray | None = None,
        exits: Iterable[int] | None = None,
    ) -> Iterator[OnnxTorchStep]:
        """:func:`~.runtime.run_onnx_exits` on torch (or numpy) inputs, steps as torch tensors."""
        values = _numpy(input_values, np.float32)
        mask = None if attention_mask is None else _numpy(attention_mask, np.int64)
        before = torch.get_num_threads()
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        try:
            for step in run_onnx_exits(self.segments, values, mask, exits):
                yield OnnxTorchStep(
                    step.exit_index,
                    step.layer,
                    torch.from_numpy(step.logits),
                    torch.from_numpy(np.asarray(step.output_lengths, dtype=np.int64)),
                    torch.from_numpy(np.asarray(step.rows, dtype=np.int64)),
                    step,
                )
        finally:  # also when the caller stops early (the generator is closed)
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32 if dtype == np.float32 else torch.int64).numpy()
    return np.ascontiguousarray(value, dtype=dtype)
