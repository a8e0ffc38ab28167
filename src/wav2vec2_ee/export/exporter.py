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
:mod:`wav2vec2_ee.export.segments`). Run a folder with :mod:`wav2vec2_ee.export.runtime`, which verifies
it first: the manifest records each file's size and SHA-256, each segment's signature and the weights
fingerprint of the checkpoint exported (the format: :mod:`wav2vec2_ee.export.runtime`).

An export appears whole or not at all (:func:`staged_export`): it is written into a folder beside the
output folder (``.<name>.export-partial``), checked there, and swapped in last
(:func:`~wav2vec2_ee.io.replace_folder`), under a lock (``.<name>.export-lock`` beside it) that refuses
a second export into the same folder while one runs. An output folder that holds an export or a
checkpoint is refused unless ``overwrite`` (``--overwrite``), and then replaced whole; one that holds
other files is always refused (:func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import WEIGHT_FILES, some_names
from ..errors import UserError, require
from ..io import atomic_write_json, exclusive_lock, name_the_file, replace_folder
from ..loading import load_config, load_model
from ..modeling import Wav2Vec2EEForCTC
from ..policy_core import (
    SAVED_POLICY,
    WEIGHTS_FINGERPRINT,
    check_policy_model,
    file_sha256,
    policy_from_saved,
    read_saved_policy,
    weights_fingerprint,
)
from ..vocab import build_processor
from .runtime import (
    DEFAULT_OPSET,
    FORMAT,
    MANIFEST,
    MANIFEST_VERSION,
    load_segments,
    read_manifest,
    run_onnx_exits,
    segment_signature,
)
from .segments import build_segments

logger = logging.getLogger(__name__)


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


def read_policy(file: str | os.PathLike, exit_layers: list[int], fingerprint: str | None = None) -> dict:
    """A calibrated policy for ``policy.json``: a saved policy of ``wav2vec2-ee calibrate`` (its
    ``exit_policy.json`` or ``calibration_<policy>.json``, or a ``policy.json``): ``{"policy", "value",
    "max_layer", ...}`` and, for the learned policy, its ``model``; checked to build for ``exit_layers``
    and refused when it was calibrated for another model (other exits, or other weights than those of
    ``fingerprint``: :func:`~wav2vec2_ee.policy_core.check_policy_model`)."""
    file = Path(file)
    values = read_saved_policy(file)
    check_policy_model(values, exit_layers, fingerprint, str(file))
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
        WEIGHTS_FINGERPRINT,
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


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """The block writes ``path``: an ``OSError`` that names no file (a full disk, ``[Errno 28]``, raised by
    a write of an open file) is given its name (:func:`~wav2vec2_ee.io.name_the_file`)."""
    try:
        yield path
    except OSError as err:
        name_the_file(err, path)
        raise


def _write_segment(
    module, args: tuple, folder: Path, name: str, io_names: tuple, axes: dict, opset: int, signature: dict
) -> dict:
    """Export ``module`` called on ``args`` as ``folder/name``; ``io_names``: ``(inputs, outputs)``;
    ``axes``: the dynamic axes of each input and output name; ``signature``: what the manifest records
    of its inputs and outputs (:func:`~.runtime.segment_signature`). Returns its manifest entry."""
    inputs, outputs = io_names
    with writing(folder / name) as path:
        _export(module, args, path, inputs, outputs, axes, opset)
    return {"file": name, "inputs": list(inputs), "outputs": list(outputs), "signature": signature}


def _write_segments(model: Wav2Vec2EEForCTC, folder: Path, opset: int, say: Callable[[str], None]) -> dict:
    """The input stage, one block per exit and one head per exit, exported with dynamic batch and time
    axes, each traced on the outputs of the one before (a padded example batch). Returns the manifest's
    ``input_stage``, ``blocks`` and ``heads`` entries."""
    input_stage, blocks, heads = build_segments(model)
    values, mask = example_batch(model)
    hidden = {0: "batch", 1: "frames"}
    states = ("hidden_states", "frame_mask")
    config = model.config

    def signature(kind: str) -> dict:
        return segment_signature(kind, config.hidden_size, config.vocab_size)

    parts: dict = {"blocks": [], "heads": []}
    with torch.no_grad():
        parts["input_stage"] = _write_segment(
            input_stage, (values, mask), folder, "input_stage.onnx", (("input_values", "attention_mask"), states),
            {"input_values": {0: "batch", 1: "samples"}, "attention_mask": {0: "batch", 1: "samples"},
             "hidden_states": hidden, "frame_mask": hidden}, opset, signature("input_stage"),
        )  # fmt: skip
        say("wrote input_stage.onnx")
        state, frame_mask = input_stage(values, mask)
        for k, (block, head) in enumerate(zip(blocks, heads, strict=True)):
            entry = _write_segment(
                block, (state, frame_mask), folder, f"block_{k}.onnx", (states, ("hidden_states_out",)),
                {"hidden_states": hidden, "frame_mask": hidden, "hidden_states_out": hidden}, opset,
                signature("block"),
            )  # fmt: skip
            parts["blocks"].append({**entry, "layers": [block.start + 1, block.stop]})  # 1-based, inclusive
            say(f"wrote {entry['file']} (layers {block.start + 1}..{block.stop})")
            state = block(state, frame_mask)
            layer = config.exit_layers[k]
            entry = _write_segment(
                head, (state,), folder, f"head_{k}.onnx", (("hidden_states",), ("logits",)),
                {"hidden_states": hidden, "logits": hidden}, opset, signature("head"),
            )  # fmt: skip
            parts["heads"].append({**entry, "exit_index": k, "layer": layer})
            say(f"wrote {entry['file']} (exit {k}, layer {layer})")
    return parts


def _what_it_holds(names: list[str]) -> str | None:
    """What a folder with the files ``names`` holds: ``"an export"``, ``"a checkpoint"``, or ``None``
    (other files)."""
    if MANIFEST in names or any(name.endswith(".onnx") for name in names):
        return "an export"
    if "config.json" in names or any(name in WEIGHT_FILES for name in names):
        return "a checkpoint"
    return None


def check_output_folder(
    folder: str | os.PathLike, overwrite: bool = False, checkpoint: str | os.PathLike | None = None
) -> str | None:
    """Refuse an output folder an export may not replace (a one-line :class:`~wav2vec2_ee.errors.UserError`
    naming it): a file or a symbolic link; the checkpoint being exported or a folder holding it; the
    current folder or one above it; a folder holding files that are neither an export nor a checkpoint
    (never replaced: they may be anything); a folder holding an export or a checkpoint, unless
    ``overwrite``. Returns what ``overwrite`` will replace (``"an export"``, ``"a checkpoint"``), or
    ``None`` for a folder that is absent or empty."""
    target = Path(os.path.abspath(folder))
    if target.is_symlink():
        raise UserError(f"{folder}: a symbolic link: give the folder it points to as the output folder")
    if checkpoint is not None and Path(checkpoint).exists():
        source = Path(os.path.abspath(checkpoint))
        if source == target or target in source.parents:
            raise UserError(
                f"{folder}: the output folder holds the checkpoint being exported ({checkpoint}): an export "
                "replaces its folder whole; choose another folder"
            )
    if not target.exists():
        return None
    if not target.is_dir():
        raise UserError(f"{folder}: not a folder (a file is there): choose another output folder")
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise UserError(
            f"{folder}: the current folder (or one above it): an export replaces its folder whole; "
            "choose another folder"
        )
    names = sorted(p.name for p in target.iterdir())
    if not names:
        return None
    what = _what_it_holds(names)
    if what is None:
        raise UserError(
            f"{folder} holds files that are neither an export nor a checkpoint ({some_names(names)}): "
            "choose an empty or new folder (--overwrite replaces only an export or a checkpoint)"
        )
    if not overwrite:
        raise UserError(
            f"{folder} holds {what} ({some_names(names)}): pass --overwrite to replace it whole, or "
            "choose another folder"
        )
    return what


@contextlib.contextmanager
def staged_export(
    folder: str | os.PathLike,
    overwrite: bool = False,
    checkpoint: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """The folder to write an export into, swapped in for ``folder`` when the block ends normally.

    Under a lock (``.<name>.export-lock`` beside ``folder``: a second export into it is refused while this
    one runs; the file is removed as the export ends), ``folder`` is checked
    (:func:`check_output_folder`), a staging folder ``.<name>.export-partial`` beside it is made (one
    left by a killed export removed first) and given to the block; then it replaces ``folder`` whole
    (:func:`~wav2vec2_ee.io.replace_folder`). When the block raises, the staging folder is removed and
    ``folder`` is as it was. An ``OSError`` about a file of the staging folder names the file of
    ``folder`` it was to become."""
    target = Path(os.path.abspath(folder))
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.export-lock")
    busy = (
        f"{folder}: another export is writing into it (process {{pid}}); wait for it to end, or choose "
        "another folder"
    )
    with exclusive_lock(lock, busy):
        staging = target.with_name(f".{target.name}.export-partial")
        try:
            replaced = check_output_folder(folder, overwrite, checkpoint)
            if replaced is not None and say is not None:
                say(f"{folder} holds {replaced}: replacing it whole (--overwrite)")
            if staging.exists():
                shutil.rmtree(staging)  # left by a killed export (the lock is ours)
            staging.mkdir()
            yield staging
            replace_folder(staging, target)
        except OSError as err:
            if err.filename is not None and Path(err.filename).parent == staging:
                err.filename = str(Path(folder) / Path(err.filename).name)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after the swap
            with contextlib.suppress(OSError):
                lock.unlink()  # removed while held: io.exclusive_lock


def _file_table(folder: Path) -> dict:
    """``files`` of the manifest: every file of ``folder`` but the manifest and the policy, with its size
    and SHA-256, by name."""
    return {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, "policy.json")
    }


def _write_export(
    model: Wav2Vec2EEForCTC,
    staging: Path,
    *,
    processor,
    opset: int,
    int8: bool,
    policy_values: dict | None,
    fingerprint: str | None,
    say: Callable[[str], None],
) -> tuple[dict, ExportSummary]:
    """Write every file of the export into ``staging``, the manifest last (see the module docstring).
    Returns the manifest and the summary (its folder and check to be filled in)."""
    config = model.config
    manifest: dict = {
        "format": FORMAT,
        "version": MANIFEST_VERSION,
        "opset": opset,
        "exit_layers": list(config.exit_layers),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "feat_extract_norm": config.feat_extract_norm,
        "do_stable_layer_norm": bool(config.do_stable_layer_norm),
        "padding_rule": "each utterance as alone (batch_statistics=False)",
        WEIGHTS_FINGERPRINT: fingerprint,
        **_write_segments(model, staging, opset, say),
    }
    summary = ExportSummary(staging)
    segment_entries = manifest["blocks"] + manifest["heads"]
    summary.float_bytes = sum((staging / seg["file"]).stat().st_size for seg in segment_entries)
    if int8:
        for seg in segment_entries:
            seg["int8_file"] = seg["file"].replace(".onnx", ".int8.onnx")
            with writing(staging / seg["int8_file"]) as path:
                quantize_int8(staging / seg["file"], path)
            say(f"wrote {seg['int8_file']}")
        summary.int8_bytes = sum((staging / seg["int8_file"]).stat().st_size for seg in segment_entries)
    with writing(staging / "config.json"):
        config.save_pretrained(str(staging))
    with writing(staging / "(the tokenizer and feature-extractor files)"):
        (processor if processor is not None else build_processor(None)).save_pretrained(str(staging))
    manifest["policy"] = None
    if policy_values is not None:
        atomic_write_json(staging / "policy.json", policy_values)
        manifest["policy"] = "policy.json"
    manifest["bytes"] = {"float": summary.float_bytes, "int8": summary.int8_bytes}
    manifest["files"] = _file_table(staging)
    atomic_write_json(staging / MANIFEST, manifest)
    files = [manifest["input_stage"]["file"]] + [seg[key] for seg in segment_entries
                                                  for key in ("file", "int8_file") if key in seg]  # fmt: skip
    summary.files = {name: (staging / name).stat().st_size for name in files}
    return manifest, summary


def record_files(folder: str | os.PathLike) -> dict:
    """Record again, in an exported folder's ``export.json``, the size and SHA-256 of each of its files
    (``files``), and return the manifest: for a tool that replaces segment files on purpose (a
    quantization variant with the same inputs and outputs); the runtimes refuse a folder whose files
    differ from what its manifest records."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    manifest["files"] = _file_table(folder)
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _export_into(
    model: Wav2Vec2EEForCTC,
    staging: Path,
    *,
    processor,
    opset: int,
    int8: bool,
    policy_values: dict | None,
    fingerprint: str | None,
    check: bool,
    say: Callable[[str], None],
) -> ExportSummary:
    """Write the export into ``staging`` (:func:`_write_export`) and, with ``check``, compare it with
    PyTorch there (the manifest records the differences)."""
    model = model.float().eval()
    manifest, summary = _write_export(
        model, staging, processor=processor, opset=opset, int8=int8, policy_values=policy_values,
        fingerprint=fingerprint, say=say,
    )  # fmt: skip
    if check:
        say("checking the segments against PyTorch on a padded batch")
        summary.max_abs_diff["float"] = check_against_torch(model, staging, "float")
        if int8:
            summary.max_abs_diff["int8"] = check_against_torch(model, staging, "int8")
        manifest["check_max_abs_diff"] = summary.max_abs_diff
        atomic_write_json(staging / MANIFEST, manifest)
    return summary


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
    overwrite: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> ExportSummary:
    """Write ``model`` (plain, not accelerated) as ONNX segments into ``folder`` (see the module docstring):
    whole or not at all, under a lock (:func:`staged_export`).

    Args:
        processor: the checkpoint's processor (tokenizer + feature extractor); default the bundled one.
        opset: the ONNX opset.
        int8: also write int8 (dynamically quantized) blocks and heads.
        policy: a saved policy (``exit_policy.json`` or ``calibration_<policy>.json`` of ``calibrate``) to
            copy in as ``policy.json``; refused when calibrated for another model.
        check: run the exported segments on a padded batch and record the largest difference to PyTorch.
        progress: called with one line per file written.
        overwrite: replace ``folder`` whole when it holds an export or a checkpoint (refused otherwise).
        checkpoint: the checkpoint folder ``model`` was loaded from: the export records its weights
            fingerprint (:func:`~wav2vec2_ee.policy_core.weights_fingerprint`; without it, none), which
            a saved policy is checked against, and ``folder`` may not hold it.
    """
    require_onnx(int8, check)
    say = progress or (lambda line: None)
    fingerprint = weights_fingerprint(checkpoint) if checkpoint is not None else None
    exit_layers = list(model.config.exit_layers)
    policy_values = read_policy(policy, exit_layers, fingerprint) if policy is not None else None
    with staged_export(folder, overwrite, checkpoint, say) as staging:
        summary = _export_into(
            model, staging, processor=processor, opset=opset, int8=int8, policy_values=policy_values,
            fingerprint=fingerprint, check=check, say=say,
        )  # fmt: skip
    summary.folder = Path(folder)
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
    overwrite: bool = False,
) -> ExportSummary:
    """Load a checkpoint (plain, not accelerated; :func:`~wav2vec2_ee.loading.load_model`) with its
    processor and export it as :func:`export_model` does, recording its weights fingerprint. Without
    ``policy``, the checkpoint's saved policy (``exit_policy.json`` of ``calibrate --save-policy``) is
    copied in when it has one. The output folder, a bad policy file and one calibrated for another model
    are refused before the weights are read; a second export into the folder, before they are loaded."""
    require_onnx(int8, check)  # before anything is read
    say = progress or (lambda line: None)
    check_output_folder(folder, overwrite, checkpoint)
    if policy is None and (Path(checkpoint) / SAVED_POLICY).is_file():
        policy = Path(checkpoint) / SAVED_POLICY
    fingerprint = weights_fingerprint(checkpoint)
    policy_values = None
    if policy is not None:
        policy_values = read_policy(policy, list(load_config(checkpoint).exit_layers), fingerprint)
    with staged_export(folder, overwrite, checkpoint, say) as staging:
        summary = _export_into(
            load_model(checkpoint), staging, processor=build_processor(checkpoint), opset=opset, int8=int8,
            policy_values=policy_values, fingerprint=fingerprint, check=check, say=say,
        )  # fmt: skip
    summary.folder = Path(folder)
    return summary
