"""Write an early-exit model as ONNX segments (``wav2vec2-ee export``).

The folder holds, beside ``export.json`` (the manifest: files, exit layers, input and output names):

* ``input_stage.onnx``: ``(input_values (B, S) float32, attention_mask (B, S) int64) ->
  (hidden_states (B, T, H), frame_mask (B, T) int64)``;
* ``block_{k}.onnx``: ``(hidden_states, frame_mask) -> hidden_states``, the layers between exit
  ``k - 1`` and exit ``k``;
* ``head_{k}.onnx``: ``(hidden_states) -> logits (B, T, V)``;
* with ``int8``: ``block_{k}.int8.onnx`` and ``head_{k}.int8.onnx`` (dynamic int8 quantization of the
  weights; the input stage stays float);
* ``config.json``, the tokenizer's ``vocab.json`` and the processor's files (feature-extractor settings),
  and ``policy.json`` (a calibrated exit policy) when one is given: a self-contained folder.

Batch, sample and frame axes are dynamic; padded batches give every utterance what it gets alone
(the padding rule of :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.embed`, see
:mod:`wav2vec2_ee.export.segments`). Run a folder with :mod:`wav2vec2_ee.export.runtime`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, require
from ..io import atomic_write_json
from ..loading import load_config, load_model
from ..modeling import Wav2Vec2EEForCTC
from ..policy_core import SAVED_POLICY, policy_from_saved, read_saved_policy
from ..vocab import build_processor
from .runtime import FORMAT, MANIFEST, load_segments, run_onnx_exits
from .segments import build_segments

logger = logging.getLogger(__name__)

#: The default ONNX opset (LayerNormalization is a single operator from 17 on).
DEFAULT_OPSET = 17


@dataclass
class ExportSummary:
    """What :func:`export_model` wrote."""

    folder: Path
    files: dict[str, int] = field(default_factory=dict)  # file -> bytes
    float_bytes: int = 0  # blocks and heads, float
    int8_bytes: int | None = None  # blocks and heads, int8
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # precision -> vs PyTorch

    def lines(self) -> list[str]:
        out = [f"exported {self.folder}: {len(self.files)} files"]
        for name, size in self.files.items():
            out.append(f"  {name:<28}{size / 1e6:>10.3f} MB")
        out.append(f"  blocks + heads, float: {self.float_bytes / 1e6:.3f} MB")
        if self.int8_bytes is not None:
            ratio = self.int8_bytes / max(self.float_bytes, 1)
            out.append(f"  blocks + heads, int8:  {self.int8_bytes / 1e6:.3f} MB ({ratio:.0%} of float)")
        for precision, diff in self.max_abs_diff.items():
            out.append(f"  check ({precision}): max |logits - PyTorch| on a padded batch = {diff:.2e}")
        return out


def require_onnx(int8: bool = False, check: bool = True) -> None:
    """Refuse, before any work, an export whose packages (the ``onnx`` extra) are missing: ``onnx`` to
    write the segments, ``onnxruntime`` to quantize them (``int8``) or ``check`` them against PyTorch."""
    require("onnx", "onnx", "ONNX export")
    if int8:
        require("onnxruntime", "onnx", "int8 quantization of the ONNX segments (--int8)")
    if check:
        require("onnxruntime", "onnx", "checking the ONNX segments against PyTorch (--no-check skips it)")


def example_batch(model: Wav2Vec2EEForCTC, samples: int = 16_000) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded ``(2, samples)`` batch (the second row three quarters long) for tracing and checks."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, samples, generator=generator)
    mask = torch.ones(2, samples, dtype=torch.long)
    mask[1, (3 * samples) // 4 :] = 0
    values[mask == 0] = 0.0
    return values, mask


def _export(module: torch.nn.Module, args: tuple, file: Path, inputs, outputs, axes, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # transformers' SDPA wrapper asks whether a mask was given (always: the segment builds one)
        warnings.filterwarnings(
            "ignore", message="Converting a tensor to a Python boolean", module="transformers.integrations"
        )
        torch.onnx.export(
            module,
            args,
            str(file),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the weights of ``source``'s matrix products (``onnxruntime``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_drop_preprocess_advice)
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
    finally:
        root.removeFilter(_drop_preprocess_advice)


def _drop_preprocess_advice(record: logging.LogRecord) -> bool:
    """A logging filter: onnxruntime's advice to pre-process before quantizing (once per file)."""
    return "pre-processing before quantization" not in record.getMessage()


def read_policy(file: str | os.PathLike, exit_layers: list[int]) -> dict:
    """A calibrated policy for ``policy.json``: a saved policy of ``wav2vec2-ee calibrate`` (its
    ``exit_policy.json`` or ``calibration_<policy>.json``, or a ``policy.json``): ``{"policy", "value",
    "max_layer", ...}`` and, for the learned policy, its ``model``; checked to build for ``exit_layers``."""
    file = Path(file)
    values = read_saved_policy(file)
    max_layer = values.get("max_layer")
    if max_layer is not None and int(max_layer) not in exit_layers:
        raise UserError(f"{file}: max_layer {max_layer} is not an exit layer of the model ({exit_layers})")
    policy = policy_from_saved(values, str(file))
    try:
        policy.deepest_exit(exit_layers)  # a learned model fitted for other exits
    except ValueError as err:
        raise UserError(f"{file}: {err}") from err
    keep = (
        "format",
        "version",
        "policy",
        "parameter",
        "value",
        "max_layer",
        "max_wer_increase",
        "reference_wer",
        "dev",
        "oracle",
        "splits",
        "exit_layers",
    )
    return {"source": file.name, **{k: values[k] for k in keep if k in values}, **policy.saved_fields()}


@torch.no_grad()
def check_against_torch(model: Wav2Vec2EEForCTC, folder: Path, precision: str) -> float:
    """Max |logits| difference, over every exit and the valid frames of :func:`example_batch`, between
    the exported segments and ``model.iter_exits``."""
    values, mask = example_batch(model)
    reference = [step.logits for step in model.iter_exits(values, mask)]
    lengths = model.output_lengths(mask, values)
    segments = load_segments(folder, precision)
    worst = 0.0
    for step in run_onnx_exits(segments, values.numpy(), mask.numpy()):
        ref = reference[step.exit_index].numpy()
        for row, length in enumerate(lengths.tolist()):
            diff = np.abs(step.logits[row, :length] - ref[row, :length]).max()
            worst = max(worst, float(diff))
    return worst


def _write_segment(
    module, args: tuple, folder: Path, name: str, io_names: tuple, axes: dict, opset: int
) -> dict:
    """Export ``module`` called on ``args`` as ``folder/name``; ``io_names``: ``(inputs, outputs)``;
    ``axes``: the dynamic axes of each input and output name. Returns its manifest entry."""
    inputs, outputs = io_names
    _export(module, args, folder / name, inputs, outputs, axes, opset)
    return {"file": name, "inputs": list(inputs), "outputs": list(outputs)}


def _write_segments(model: Wav2Vec2EEForCTC, folder: Path, opset: int, say: Callable[[str], None]) -> dict:
    """The input stage, one block per exit and one head per exit, exported with dynamic batch and time
    axes, each traced on the outputs of the one before (a padded example batch). Returns the manifest's
    ``input_stage``, ``blocks`` and ``heads`` entries."""
    input_stage, blocks, heads = build_segments(model)
    values, mask = example_batch(model)
    hidden = {0: "batch", 1: "frames"}
    states = ("hidden_states", "frame_mask")
    parts: dict = {"blocks": [], "heads": []}
    with torch.no_grad():
        parts["input_stage"] = _write_segment(
            input_stage, (values, mask), folder, "input_stage.onnx", (("input_values", "attention_mask"), states),
            {"input_values": {0: "batch", 1: "samples"}, "attention_mask": {0: "batch", 1: "samples"},
             "hidden_states": hidden, "frame_mask": hidden}, opset,
        )  # fmt: skip
        say("wrote input_stage.onnx")
        state, frame_mask = input_stage(values, mask)
        for k, (block, head) in enumerate(zip(blocks, heads, strict=True)):
            entry = _write_segment(
                block, (state, frame_mask), folder, f"block_{k}.onnx", (states, ("hidden_states_out",)),
                {"hidden_states": hidden, "frame_mask": hidden, "hidden_states_out": hidden}, opset,
            )  # fmt: skip
            parts["blocks"].append({**entry, "layers": [block.start + 1, block.stop]})  # 1-based, inclusive
            say(f"wrote {entry['file']} (layers {block.start + 1}..{block.stop})")
            state = block(state, frame_mask)
            layer = model.config.exit_layers[k]
            entry = _write_segment(
                head, (state,), folder, f"head_{k}.onnx", (("hidden_states",), ("logits",)),
                {"hidden_states": hidden, "logits": hidden}, opset,
            )  # fmt: skip
            parts["heads"].append({**entry, "exit_index": k, "layer": layer})
            say(f"wrote {entry['file']} (exit {k}, layer {layer})")
    return parts


def export_model(
    model: Wav2Vec2EEForCTC,
    folder: str | os.PathLike,
    *,
    processor=None,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    policy: str | os.PathLike | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write ``model`` (plain, not accelerated) as ONNX segments into ``folder`` (see the module docstring).

    Args:
        processor: the checkpoint's processor (tokenizer + feature extractor); default the bundled one.
        opset: the ONNX opset.
        int8: also write int8 (dynamically quantized) blocks and heads.
        policy: a saved policy (``exit_policy.json`` or ``calibration_<policy>.json`` of ``calibrate``) to
            copy in as ``policy.json``.
        check: run the exported segments on a padded batch and record the largest difference to PyTorch.
        progress: called with one line per file written.
    """
    require_onnx(int8, check)
    folder = Path(folder)
    say = progress or (lambda line: None)
    model = model.float().eval()
    config = model.config
    policy_values = read_policy(policy, list(config.exit_layers)) if policy is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "format": FORMAT,
        "version": 1,
        "opset": opset,
        "exit_layers": list(config.exit_layers),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "feat_extract_norm": config.feat_extract_norm,
        "do_stable_layer_norm": bool(config.do_stable_layer_norm),
        "padding_rule": "each utterance as alone (batch_statistics=False)",
        **_write_segments(model, folder, opset, say),
    }

    summary = ExportSummary(folder)
    segment_entries = manifest["blocks"] + manifest["heads"]
    summary.float_bytes = sum((folder / seg["file"]).stat().st_size for seg in segment_entries)
    if int8:
        for seg in segment_entries:
            seg["int8_file"] = seg["file"].replace(".onnx", ".int8.onnx")
            quantize_int8(folder / seg["file"], folder / seg["int8_file"])
            say(f"wrote {seg['int8_file']}")
        summary.int8_bytes = sum((folder / seg["int8_file"]).stat().st_size for seg in segment_entries)

    config.save_pretrained(str(folder))
    (processor if processor is not None else build_processor(None)).save_pretrained(str(folder))
    manifest["policy"] = None
    if policy_values is not None:
        atomic_write_json(folder / "policy.json", policy_values)
        manifest["policy"] = "policy.json"
    manifest["bytes"] = {"float": summary.float_bytes, "int8": summary.int8_bytes}
    atomic_write_json(folder / MANIFEST, manifest)  # the manifest last: its presence marks a finished export

    if check:
        say("checking the segments against PyTorch on a padded batch")
        summary.max_abs_diff["float"] = check_against_torch(model, folder, "float")
        if int8:
            summary.max_abs_diff["int8"] = check_against_torch(model, folder, "int8")
        manifest["check_max_abs_diff"] = summary.max_abs_diff
        atomic_write_json(folder / MANIFEST, manifest)
    files = [manifest["input_stage"]["file"]] + [seg[key] for seg in segment_entries
                                                  for key in ("file", "int8_file") if key in seg]  # fmt: skip
    summary.files = {name: (folder / name).stat().st_size for name in files}
    return summary


def export_checkpoint(
    checkpoint: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    policy: str | os.PathLike | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Load a checkpoint (plain, not accelerated; :func:`~wav2vec2_ee.loading.load_model`) with its
    processor and :func:`export_model` it. Without ``policy``, the checkpoint's saved policy
    (``exit_policy.json`` of ``calibrate --save-policy``) is copied in when it has one."""
    require_onnx(int8, check)  # before anything is read
    if policy is None and (Path(checkpoint) / SAVED_POLICY).is_file():
        policy = Path(checkpoint) / SAVED_POLICY
    if policy is not None:  # a bad policy file is refused before the weights are read
        read_policy(policy, list(load_config(checkpoint).exit_layers))
    model = load_model(checkpoint)
    return export_model(
        model,
        folder,
        processor=build_processor(checkpoint),
        opset=opset,
        int8=int8,
        policy=policy,
        check=check,
        progress=progress,
    )
