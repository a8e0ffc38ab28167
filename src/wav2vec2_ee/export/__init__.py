"""Deployment export: the early-exit model as ONNX segments, and their ``onnxruntime`` chain.

* :func:`export_model` / :func:`export_checkpoint` (``wav2vec2-ee export``): write the input stage,
  one block of layers per exit and one head per exit (:mod:`.exporter`, segments in :mod:`.segments`);
* :func:`load_segments` and :func:`run_onnx_exits`: run a written folder exit by exit with
  ``onnxruntime`` and numpy only (:mod:`.runtime`), as ``Wav2Vec2EEForCTC.iter_exits`` runs the model;
  the folder is verified first (its manifest, each file's checksum, each segment's inputs and outputs);
* :class:`OnnxExitSource` (:mod:`.source`, imports torch): a folder as an exit source of the PyTorch
  engine, ``run_early_exit(OnnxExitSource(folder), ...)``.

Importing this package does not import torch: :mod:`.runtime` is torch-free, the export side and
:class:`OnnxExitSource` are imported on first use.
"""

from __future__ import annotations

from .runtime import OnnxExitStep, OnnxSegments, load_segments, read_manifest, run_onnx_exits

__all__ = [
    "OnnxExitSource",
    "OnnxExitStep",
    "OnnxSegments",
    "export_checkpoint",
    "export_model",
    "load_segments",
    "read_manifest",
    "run_onnx_exits",
]


def __getattr__(name: str):
    if name in ("export_model", "export_checkpoint"):
        from . import exporter

        return getattr(exporter, name)
    if name == "OnnxExitSource":
        from .source import OnnxExitSource

        return OnnxExitSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
