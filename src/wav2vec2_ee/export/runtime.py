"""Run an exported segment folder with ``onnxruntime``: numpy in, numpy out, no torch.

:func:`load_segments` opens the sessions listed in ``export.json``; :func:`run_onnx_exits` chains
them as :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits` runs the encoder: one
:class:`OnnxExitStep` per exit, shallow to deep; :meth:`OnnxExitStep.retain` drops the other rows
before the next block (the padding no remaining row needs is trimmed), and the chain stops when no
row remains or at the deepest exit asked for. :func:`exported_policy_values` reads the folder's saved exit
policy (``policy.json``) with the one saved-policy reader, :func:`~wav2vec2_ee.policy_core.read_saved_policy`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..policy_core import read_saved_policy

#: The manifest of an exported folder.
MANIFEST = "export.json"
#: ``export.json``'s ``format``.
FORMAT = "wav2vec2-ee-segments"


@dataclass
class OnnxSegments:
    """The open sessions of an exported folder (``exit_layers[k]`` is the layer of exit ``k``)."""

    folder: Path
    manifest: dict
    input_stage: object
    blocks: list
    heads: list
    precision: str

    @property
    def exit_layers(self) -> list[int]:
        return list(self.manifest["exit_layers"])

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def policy(self) -> dict | None:
        """The folder's calibrated policy (``policy.json``, checked: :func:`exported_policy_values`), or ``None``."""
        return _policy_values(self.folder, self.manifest)


@dataclass
class OnnxExitStep:
    """One exit of :func:`run_onnx_exits` (numpy arrays; as :class:`~wav2vec2_ee.modeling.ExitStep`).

    Args:
        exit_index: 0-based exit; layer: its layer.
        logits: ``(rows, frames, vocab)`` float32 logits of the rows still running.
        output_lengths: ``(rows,)`` valid frames.
        rows: ``(rows,)`` positions of these utterances in the input batch.
    """

    exit_index: int
    layer: int
    logits: np.ndarray
    output_lengths: np.ndarray
    rows: np.ndarray
    retained: np.ndarray | None = field(default=None, repr=False)

    def retain(self, keep) -> None:
        """Run later blocks for these rows only: a bool mask ``(rows,)`` or indices into this step's rows."""
        keep = np.asarray(keep)
        if keep.dtype == np.bool_:
            if keep.shape != self.rows.shape:
                raise ValueError(f"retain: mask of shape {keep.shape} for {len(self.rows)} rows")
            keep = np.flatnonzero(keep)
        self.retained = keep.astype(np.int64)


def _session(path: Path, options, providers):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def read_manifest(folder: str | os.PathLike) -> dict:
    """``export.json`` of an exported folder (a ``UserError`` naming the file when it is not one)."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (not a folder written by `wav2vec2-ee export`)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{file}: not a {FORMAT} manifest")
    return manifest


def _policy_values(folder: Path, manifest: dict) -> dict | None:
    name = manifest.get("policy")
    if not name:
        return None
    if not isinstance(name, str):
        raise UserError(f"{folder / MANIFEST}: policy must be a file name, got {name!r}")
    return read_saved_policy(folder / name)


def exported_policy_values(folder: str | os.PathLike) -> dict | None:
    """The saved exit policy an exported folder names in ``export.json`` (its ``policy.json``, checked by
    :func:`~wav2vec2_ee.policy_core.read_saved_policy`) as its JSON object; ``None`` when it has none."""
    return _policy_values(Path(folder), read_manifest(folder))


def load_segments(
    folder: str | os.PathLike,
    precision: str | None = None,
    *,
    providers: Iterable[str] | None = None,
    num_threads: int | None = None,
    spinning: bool = False,
) -> OnnxSegments:
    """Open the segments of an exported folder as ``onnxruntime`` sessions.

    Args:
        precision: ``"float"`` or ``"int8"`` (the quantized blocks and heads of ``export --int8``; the
            input stage stays float); default int8 where the folder has it, else float.
        providers: onnxruntime execution providers (default: CPU).
        num_threads: intra-op threads per session (default: onnxruntime's).
        spinning: let idle intra-op threads spin-wait for the next call (onnxruntime's default). Off
            here: the engine calls many small sessions with policy work between them, and threads that
            spin through those gaps take the cores from the main thread (measured on 2 cores: full-depth
            wall 17.5 ms per audio second spinning, 9.0 ms not, ``docs/results.md``).
    """
    import onnxruntime as ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    has_int8 = all("int8_file" in seg for seg in manifest["blocks"] + manifest["heads"])
    if precision is None:
        precision = "int8" if has_int8 else "float"
    if precision not in ("float", "int8"):
        raise UserError(f"precision must be 'float' or 'int8', got {precision!r}")
    if precision == "int8" and not has_int8:
        raise UserError(f"{folder}: no int8 segments (export with --int8)")
    key = "int8_file" if precision == "int8" else "file"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
    providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
    return OnnxSegments(
        folder,
        manifest,
        _session(folder / manifest["input_stage"]["file"], options, providers),
        [_session(folder / seg[key], options, providers) for seg in manifest["blocks"]],
        [_session(folder / seg[key], options, providers) for seg in manifest["heads"]],
        precision,
    )


def run_onnx_exits(
    segments: OnnxSegments,
    input_values: np.ndarray,
    attention_mask: np.ndarray | None = None,
    exits: Iterable[int] | None = None,
) -> Iterator[OnnxExitStep]:
    """Chain the segments exit by exit (as ``iter_exits``, each utterance as if alone).

    Args:
        input_values: ``(batch, samples)`` float waveforms (normalised as the feature extractor does);
        attention_mask: ``(batch, samples)`` 1 on real samples (default: all real).
        exits: 0-based exit indices (default: all); blocks beyond the deepest never run.
    """
    layers = segments.exit_layers
    wanted = list(range(len(layers))) if exits is None else sorted({int(k) for k in exits})
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(layers):
        raise ValueError(f"exit indices {exits} must lie in [0, {len(layers) - 1}]")
    values = np.ascontiguousarray(input_values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"input_values must be (batch, samples), got shape {values.shape}")
    if attention_mask is None:
        attention_mask = np.ones(values.shape, dtype=np.int64)
    mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
    hidden, frame_mask = segments.input_stage.run(None, {"input_values": values, "attention_mask": mask})
    lengths = frame_mask.sum(-1)
    rows = np.arange(len(values))
    for k in range(wanted[-1] + 1):
        (hidden,) = segments.blocks[k].run(None, {"hidden_states": hidden, "frame_mask": frame_mask})
        if k not in wanted:
            continue
        (logits,) = segments.heads[k].run(None, {"hidden_states": hidden})
        step = OnnxExitStep(k, layers[k], logits, lengths, rows)
        yield step
        keep = step.retained
        if keep is None or len(keep) == len(rows):
            continue
        if len(keep) == 0:
            return
        rows, lengths = rows[keep], lengths[keep]
        width = int(lengths.max())  # trim the padding no remaining row needs
        hidden, frame_mask = hidden[keep, :width], frame_mask[keep, :width]
        hidden, frame_mask = np.ascontiguousarray(hidden), np.ascontiguousarray(frame_mask)
