"""Run an exported segment folder with ``onnxruntime``: numpy in, numpy out, no torch.

:func:`load_segments` opens the sessions listed in ``export.json``; :func:`run_onnx_exits` chains
them as :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits` runs the encoder: one
:class:`OnnxExitStep` per exit, shallow to deep; :meth:`OnnxExitStep.retain` drops the other rows
before the next block (the padding no remaining row needs is trimmed), and the chain stops when no
row remains or at the deepest exit asked for. :func:`exported_policy_values` reads the folder's saved exit
policy (``policy.json``) with the one saved-policy reader, :func:`~wav2vec2_ee.policy_core.read_saved_policy`,
and refuses one calibrated for another model (:func:`~wav2vec2_ee.policy_core.check_policy_model`: the
manifest's exit layers and the weights fingerprint of the checkpoint the folder was exported from).

A folder is verified before it is used, here, for both runtimes (the ONNX Runtime engine and
:mod:`wav2vec2_ee.lite`): :func:`read_manifest` checks ``export.json`` itself (its version, one block
and one head per exit layer, each block's layers following the last, file names that are unique and
listed, each segment's signature as the model's sizes give it) and ``config.json`` against it;
:func:`load_segments` checks each file it uses against the size and SHA-256 the manifest records
(:func:`verify_files`: missing, truncated, replaced or scrambled files) and each session's inputs and
outputs against the segment's signature. Each refusal is a one-line
:class:`~wav2vec2_ee.errors.UserError` naming the file.

``export.json`` (version :data:`MANIFEST_VERSION`)::

    {"format": "wav2vec2-ee-segments", "version": 2, "opset": 17,
     "exit_layers": [2, 4], "num_hidden_layers": 4, "hidden_size": 768, "vocab_size": 32, ...,
     "weights_fingerprint": "sha256:..." | null,   # the checkpoint exported (policy_core.weights_fingerprint)
     "input_stage": {"file": "input_stage.onnx", "inputs": [...], "outputs": [...], "signature": {...}},
     "blocks": [{"file": "block_0.onnx", "int8_file": "block_0.int8.onnx", "layers": [1, 2], ...}, ...],
     "heads": [{"file": "head_0.onnx", "exit_index": 0, "layer": 2, ...}, ...],
     "files": {"block_0.onnx": {"sha256": "...", "bytes": 123}, "config.json": {...}, ...},
     "policy": "policy.json" | null, ...}

``files`` lists every file of the export but ``export.json`` and ``policy.json`` (a saved policy is
checked by its own reader and its model record, and may be replaced by another calibration). A
``signature`` is ``{"inputs": [...], "outputs": [...]}``, each ``{"name", "type", "shape"}`` as
onnxruntime reports them (:func:`segment_signature`). Version 1 manifests (no checksums) are refused
with the fix: export again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError, require
from ..policy_core import WEIGHTS_FINGERPRINT, check_policy_model, file_sha256, is_integer, read_saved_policy

#: The manifest of an exported folder.
MANIFEST = "export.json"
#: ``export.json``'s ``format``.
FORMAT = "wav2vec2-ee-segments"
#: The manifest version written and read (2: file checksums and segment signatures; 1 is refused).
MANIFEST_VERSION = 2
#: The default ONNX opset of ``wav2vec2-ee export`` (LayerNormalization is a single operator from 17
#: on); here, beside the format, so that ``export --help`` shows it without importing torch.
DEFAULT_OPSET = 17
#: What a refused folder's message ends with.
REEXPORT = "export the model again (wav2vec2-ee export CHECKPOINT FOLDER --overwrite)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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

    @property
    def weights_fingerprint(self) -> str | None:
        """The weights fingerprint of the checkpoint the folder was exported from (``None``: unknown)."""
        return self.manifest.get(WEIGHTS_FINGERPRINT)

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


def segment_signature(kind: str, hidden_size: int, vocab_size: int) -> dict:
    """The inputs and outputs of a segment (``kind``: ``input_stage``, ``block`` or ``head``) of a model
    with ``hidden_size`` and ``vocab_size``, as onnxruntime reports them: ``{"inputs": [...], "outputs":
    [...]}``, each ``{"name", "type", "shape"}``, the dynamic axes by name."""
    real, integer = "tensor(float)", "tensor(int64)"
    samples, frames = ["batch", "samples"], ["batch", "frames"]
    hidden = [*frames, int(hidden_size)]

    def arg(name: str, kind_: str, shape: list) -> dict:
        return {"name": name, "type": kind_, "shape": shape}

    states = [arg("hidden_states", real, hidden), arg("frame_mask", integer, frames)]
    if kind == "input_stage":
        return {"inputs": [arg("input_values", real, samples), arg("attention_mask", integer, samples)],
                "outputs": states}  # fmt: skip
    if kind == "block":
        return {"inputs": states, "outputs": [arg("hidden_states_out", real, hidden)]}
    if kind == "head":
        return {"inputs": states[:1], "outputs": [arg("logits", real, [*frames, int(vocab_size)])]}
    raise ValueError(f"unknown segment kind {kind!r}")


def _session_signature(session) -> dict:
    """What an onnxruntime session's inputs and outputs are (the form of :func:`segment_signature`)."""

    def args(nodes) -> list[dict]:
        return [{"name": n.name, "type": n.type, "shape": list(n.shape)} for n in nodes]

    return {"inputs": args(session.get_inputs()), "outputs": args(session.get_outputs())}


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """The exceptions onnxruntime raises for a file it cannot load (its own classes, not ``RuntimeError``)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException")  # fmt: skip
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _session(path: Path, options, providers, signature: dict):
    """An onnxruntime session of ``path``, whose inputs and outputs must be ``signature``; a one-line
    :class:`~wav2vec2_ee.errors.UserError` naming the file otherwise."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except _onnxruntime_errors() as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: onnxruntime cannot load it ({first}); {REEXPORT}") from None
    got = _session_signature(session)
    if got != signature:
        raise UserError(
            f"{path}: its inputs and outputs {_describe(got)} are not those export.json records "
            f"({_describe(signature)}); {REEXPORT}"
        )
    return session


def _describe(signature: dict) -> str:
    """``(a[batch,frames,16], b[batch,frames]) -> (c[...])``: a signature on one line."""

    def args(items) -> str:
        return ", ".join(f"{a.get('name')}[{','.join(map(str, a.get('shape') or []))}]" for a in items)

    return f"({args(signature.get('inputs', []))}) -> ({args(signature.get('outputs', []))})"


def read_manifest(folder: str | os.PathLike) -> dict:
    """``export.json`` of an exported folder, checked (:func:`check_manifest`) and its ``config.json``
    against it (:func:`check_config`); a ``UserError`` naming the file when it is not one."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file (not a folder written by `wav2vec2-ee export`)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not valid JSON ({err}); {REEXPORT}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{file}: not a {FORMAT} manifest")
    check_manifest(manifest, file)
    check_config(Path(folder), manifest)
    return manifest


def _check_version(manifest: Mapping, file: Path) -> None:
    version = manifest.get("version", 1)
    if is_integer(version) and int(version) == 1:
        raise UserError(
            f"{file}: an export of an older wav2vec2-ee (manifest version 1, without file checksums): "
            f"its files cannot be verified; {REEXPORT}"
        )
    if not is_integer(version) or int(version) != MANIFEST_VERSION:
        raise UserError(
            f"{file}: manifest version {version!r} is not one this wav2vec2-ee reads ({MANIFEST_VERSION}): "
            "written by a newer version; upgrade wav2vec2-ee or export with this one"
        )


def _positive_integer(manifest: Mapping, key: str, file: Path) -> int:
    value = manifest.get(key)
    if not is_integer(value) or int(value) < 1:
        raise UserError(f"{file}: {key} must be an integer >= 1, got {value!r}; {REEXPORT}")
    return int(value)


def _check_exit_layers(manifest: Mapping, file: Path) -> list[int]:
    """The manifest's exit layers: integers, strictly increasing, in ``[1, num_hidden_layers]``."""
    depth = _positive_integer(manifest, "num_hidden_layers", file)
    layers = manifest.get("exit_layers")
    if (
        not isinstance(layers, list)
        or not layers
        or not all(is_integer(x) for x in layers)
        or any(b <= a for a, b in zip(layers, layers[1:]))
        or not 1 <= layers[0] <= layers[-1] <= depth
    ):
        raise UserError(
            f"{file}: exit_layers {layers!r} must be increasing layer numbers in [1, {depth}] "
            f"(num_hidden_layers); {REEXPORT}"
        )
    return [int(x) for x in layers]


def _segment_entries(manifest: Mapping, key: str, count: int, file: Path) -> list[dict]:
    """The manifest's ``blocks`` or ``heads``: a list of ``count`` objects."""
    entries = manifest.get(key)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{file}: no {key!r} list (one entry per exit); {REEXPORT}")
    if len(entries) != count:
        raise UserError(f"{file}: {len(entries)} {key} for {count} exit layers; {REEXPORT}")
    return entries


def _check_files_table(manifest: Mapping, file: Path) -> dict:
    """The manifest's ``files``: file name -> ``{"sha256", "bytes"}``."""
    table = manifest.get("files")
    if not isinstance(table, dict):
        raise UserError(f"{file}: no 'files' table (each file's size and checksum); {REEXPORT}")
    for name, entry in table.items():
        if (
            not _plain_name(name)
            or not isinstance(entry, dict)
            or not (isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"]))
            or not (is_integer(entry.get("bytes")) and int(entry["bytes"]) >= 0)
        ):
            raise UserError(
                f"{file}: files[{name!r}] must be a file name with its sha256 and bytes; {REEXPORT}"
            )
    return table


def _plain_name(name) -> bool:
    """Whether ``name`` is a file name in the folder (no path, not ``.`` / ``..``)."""
    return (
        isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    )


def check_manifest(manifest: Mapping, file: str | os.PathLike = MANIFEST) -> None:
    """Refuse (a one-line :class:`~wav2vec2_ee.errors.UserError` naming ``file``) a manifest that does not
    describe one whole export: another version; exit layers that are not increasing layers of the model;
    not one block and one head per exit; a block whose layers do not follow the last exit's; a head of
    another exit; a segment file listed twice, not a plain name, or missing from ``files``; int8 files for
    some segments only; a segment signature that is not the model's (:func:`segment_signature`)."""
    file = Path(file)
    _check_version(manifest, file)
    layers = _check_exit_layers(manifest, file)
    sizes = {key: _positive_integer(manifest, key, file) for key in ("hidden_size", "vocab_size")}
    table = _check_files_table(manifest, file)
    stage = manifest.get("input_stage")
    if not isinstance(stage, dict):
        raise UserError(f"{file}: no 'input_stage' entry; {REEXPORT}")
    blocks = _segment_entries(manifest, "blocks", len(layers), file)
    heads = _segment_entries(manifest, "heads", len(layers), file)
    for k, (block, head) in enumerate(zip(blocks, heads, strict=True)):
        first = layers[k - 1] + 1 if k else 1
        if block.get("layers") != [first, layers[k]]:
            raise UserError(
                f"{file}: blocks[{k}] holds layers {block.get('layers')!r}, not [{first}, {layers[k]}] "
                f"(exit {k} is layer {layers[k]}); {REEXPORT}"
            )
        if head.get("exit_index") != k or head.get("layer") != layers[k]:
            raise UserError(
                f"{file}: heads[{k}] is exit {head.get('exit_index')!r} at layer {head.get('layer')!r}, "
                f"not exit {k} at layer {layers[k]}; {REEXPORT}"
            )
    int8 = [("int8_file" in seg) for seg in blocks + heads]
    if any(int8) and not all(int8):
        raise UserError(f"{file}: int8 files for some blocks and heads only; {REEXPORT}")
    seen: set[str] = set()
    kinds = [("input_stage", stage)] + [("block", b) for b in blocks] + [("head", h) for h in heads]
    for kind, entry in kinds:
        for key in ("file", "int8_file") if kind != "input_stage" else ("file",):
            if key == "int8_file" and key not in entry:
                continue  # a float-only export
            name = entry.get(key)
            if not _plain_name(name) or name in seen or name not in table:
                problem = "listed twice" if name in seen else "not a file name of 'files'"
                raise UserError(f"{file}: segment file {name!r} is {problem}; {REEXPORT}")
            seen.add(name)
        if entry.get("signature") != segment_signature(kind, sizes["hidden_size"], sizes["vocab_size"]):
            raise UserError(
                f"{file}: the signature of {entry.get('file')} is not a {kind.replace('_', ' ')} of a "
                f"model of hidden size {sizes['hidden_size']} and {sizes['vocab_size']} symbols; {REEXPORT}"
            )
    fingerprint = manifest.get(WEIGHTS_FINGERPRINT)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise UserError(f"{file}: {WEIGHTS_FINGERPRINT} must be a string or null; {REEXPORT}")


def check_config(folder: Path, manifest: Mapping) -> None:
    """Refuse a ``config.json`` that is not the model the manifest describes (its exit layers, depth,
    hidden size or vocabulary size differ): the ONNX Runtime engine reads its exits from it."""
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file}: no such file (the exported model's config); {REEXPORT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not valid JSON ({err}); {REEXPORT}") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: not a model config (a JSON object); {REEXPORT}")
    for key in ("exit_layers", "num_hidden_layers", "hidden_size", "vocab_size"):
        if key in config and config[key] != manifest[key]:
            raise UserError(
                f"{file}: {key} {config[key]!r} is not the {manifest[key]!r} of {MANIFEST}: the two files "
                f"are of different models; {REEXPORT}"
            )


def verify_files(folder: str | os.PathLike, manifest: Mapping, names: Iterable[str]) -> None:
    """Check the files ``names`` of an exported folder against the size and SHA-256 ``export.json``
    records: a one-line :class:`~wav2vec2_ee.errors.UserError` naming the first that is missing,
    truncated (or grown), or whose bytes changed (replaced by another export's, scrambled)."""
    folder = Path(folder)
    for name in names:
        path = folder / name
        want = manifest["files"][name]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{path}: no such file (export.json lists it); {REEXPORT}") from None
        if size != int(want["bytes"]):
            raise UserError(
                f"{path}: {size} bytes, not the {want['bytes']} export.json records (truncated or "
                f"replaced); {REEXPORT}"
            )
        if file_sha256(path) != want["sha256"]:
            raise UserError(
                f"{path}: its bytes are not those export.json records (sha256 differs: replaced by "
                f"another file or changed); {REEXPORT}"
            )


def files_used(manifest: Mapping, precision: str) -> list[str]:
    """The files of an export that a run at ``precision`` reads: the config, vocabulary and processor
    files (every file of ``files`` that is no segment), the input stage, and the blocks and heads of that
    precision (``int8_file`` for ``"int8"``, else ``file``)."""
    key = "int8_file" if precision == "int8" else "file"
    entries = manifest["blocks"] + manifest["heads"]
    segments = [manifest["input_stage"]["file"], *(seg[key] for seg in entries)]
    onnx = {seg[k] for seg in entries for k in ("file", "int8_file") if k in seg} | set(segments)
    return [name for name in manifest["files"] if name not in onnx] + segments


def _policy_values(folder: Path, manifest: dict) -> dict | None:
    name = manifest.get("policy")
    if not name:
        return None
    if not _plain_name(name):
        raise UserError(f"{folder / MANIFEST}: policy must be a file name, got {name!r}")
    file = folder / name
    values = read_saved_policy(file)
    check_policy_model(values, manifest["exit_layers"], manifest.get(WEIGHTS_FINGERPRINT), str(file))
    return values


def exported_policy_values(folder: str | os.PathLike) -> dict | None:
    """The saved exit policy an exported folder names in ``export.json`` (its ``policy.json``, checked by
    :func:`~wav2vec2_ee.policy_core.read_saved_policy` and refused when it was calibrated for another
    model, :func:`~wav2vec2_ee.policy_core.check_policy_model`) as its JSON object; ``None`` when it has
    none."""
    return _policy_values(Path(folder), read_manifest(folder))


def load_segments(
    folder: str | os.PathLike,
    precision: str | None = None,
    *,
    providers: Iterable[str] | None = None,
    num_threads: int | None = None,
    spinning: bool = False,
) -> OnnxSegments:
    """Open the segments of an exported folder as ``onnxruntime`` sessions, verified: the manifest
    (:func:`read_manifest`), the files used (this precision's segments and the config, vocabulary and
    processor files, :func:`verify_files`) and each session's inputs and outputs.

    Args:
        precision: ``"float"`` or ``"int8"`` (the quantized blocks and heads of ``export --int8``; the
            input stage stays float); default int8 where the folder has it, else float.
        providers: onnxruntime execution providers (default: CPU).
        num_threads: intra-op threads per session (default: onnxruntime's).
        spinning: let idle intra-op threads spin-wait for the next call (onnxruntime's default). Off
            here: the engine calls many small sessions with policy work between them, and threads that
            spin through those gaps take the cores from the main thread (measured on 2 cores: full-depth
            wall 17.5 ms per audio second spinning, 9.0 ms not, ``docs/results.md``).

    Raises:
        MissingExtraError: onnxruntime is not installed (a one-line error naming the ``onnx`` extra).
    """
    ort = require("onnxruntime", "onnx", "running exported ONNX segments")

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
    verify_files(folder, manifest, files_used(manifest, precision))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
    providers = list(providers) if providers is not None else ["CPUExecutionProvider"]

    def open_(seg: dict, name: str) -> object:
        return _session(folder / name, options, providers, seg["signature"])

    stage = manifest["input_stage"]
    return OnnxSegments(
        folder,
        manifest,
        open_(stage, stage["file"]),
        [open_(seg, seg[key]) for seg in manifest["blocks"]],
        [open_(seg, seg[key]) for seg in manifest["heads"]],
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
