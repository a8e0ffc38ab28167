"""Deployment export: the early-exit model as ONNX segments, and their ``onnxruntime`` chain.

* :func:`export_model` / :func:`export_checkpoint` (``wav2vec2-ee export``): write the input stage,
  one block of layers per exit and one head per exit (:mod:`.exporter`, segments in :mod:`.segments`);
* :func:`load_segments` and :func:`run_onnx_exits`: run a written folder exit by exit with
  ``onnxruntime`` and numpy only (:mod:`.runtime`), as ``Wav2Vec2EEForCTC.iter_exits`` runs the model.

Importing this package does not import torch: :mod:`.runtime` is torch-free, the export side is
imported on first use.
"""

from __future__ import annotations

from .runtime import OnnxExitStep, OnnxSegments, load_segments, read_manifest, run_onnx_exits

__all__ = [
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
