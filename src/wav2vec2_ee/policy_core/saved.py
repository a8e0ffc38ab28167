"""Saved policies: the one reader and writer of their JSON format (:data:`SAVED_POLICY`), and the record of
the model a policy belongs to.

A policy's value is a threshold on the statistics of one model's exits: on other weights it is another
operating point, on other exits it may not run. So a saved policy may record the model it was calibrated
for (``calibrate`` writes both): its ``exit_layers`` and its :data:`WEIGHTS_FINGERPRINT`, the
:func:`weights_fingerprint` of the checkpoint's weight files. :func:`check_policy_model` refuses a policy
whose record differs from the model it is about to run on; a file without the record (written by hand,
or by an older version) is read as before.

Part of the torch-free policy core (:mod:`wav2vec2_ee.policy_core`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_write_json
from .policies import POLICIES, ExitPolicy, _check_name, policy_with_value
from .values import is_integer, is_number

#: The file a saved policy is written to in a checkpoint folder (``calibrate --save-policy``), and read
#: from by ``transcribe`` / ``Transcriber`` when no policy is named.
SAVED_POLICY = "exit_policy.json"
#: The ``format`` of a saved policy (the same for ``calibration_<policy>.json`` and an export's
#: ``policy.json``, which older versions wrote without the field).
SAVED_POLICY_FORMAT = "wav2vec2-ee-exit-policy"
#: The ``version`` this package writes, and the versions it reads (a file without one is version 1).
SAVED_POLICY_VERSION = 1
READABLE_VERSIONS: tuple[int, ...] = (1,)
#: The optional field of a saved policy (and of an export's ``export.json``) that records the weights it
#: belongs to: :func:`weights_fingerprint` of the checkpoint (an optional field: format version 1 still).
WEIGHTS_FINGERPRINT = "weights_fingerprint"
#: The weight files of a checkpoint folder that :func:`weights_fingerprint` covers: ``model.safetensors``,
#: ``pytorch_model.bin`` and their shards (``model-00001-of-00002.safetensors``).
_WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)")
#: The scheme of :func:`weights_fingerprint` (``<scheme>:<digest>``); one of another scheme is not compared.
FINGERPRINT_SCHEME = "sha256"


@dataclass(frozen=True)
class SavedPolicy:
    """A checked saved policy: its name, value, budget and fitted arguments (the learned policy's
    :class:`LearnedWeights`); :meth:`build` gives the policy."""

    policy: str
    value: float | int | None
    max_layer: int | None
    fitted: dict = field(default_factory=dict)
    exit_layers: list[int] | None = None

    def build(self) -> ExitPolicy:
        return policy_with_value(self.policy, self.value, self.max_layer, **self.fitted)


def _check_header(values: Mapping) -> None:
    """``format``, ``version`` and ``policy`` of a saved policy's JSON object."""
    form = values.get("format", SAVED_POLICY_FORMAT)
    if form != SAVED_POLICY_FORMAT:
        raise UserError(f"format {form!r} is not {SAVED_POLICY_FORMAT!r} (not a saved exit policy)")
    version = values.get("version", SAVED_POLICY_VERSION)
    if not is_integer(version) or int(version) not in READABLE_VERSIONS:
        raise UserError(
            f"version {version!r} of {SAVED_POLICY_FORMAT} is not one this wav2vec2-ee reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}): written by a newer version, or not a saved policy"
        )
    _check_name(values["policy"])
    cls = POLICIES.get(values["policy"])
    if cls is not None and cls.needs_references:
        raise UserError(f"the {cls.name} policy needs the reference transcripts: it exists only in `sweep`")


def _check_fields(values: Mapping) -> None:
    """The types of a saved policy's ``parameter``, ``value``, ``max_layer`` and ``exit_layers``."""
    cls = POLICIES.get(values["policy"])
    expected = cls.parameter if cls is not None else None
    parameter = values.get("parameter")
    if parameter is not None and parameter != expected:
        raise UserError(f"parameter {parameter!r} is not the {values['policy']} policy's ({expected})")
    for key in ("value", "max_layer"):
        if values.get(key) is not None and not is_number(values[key]):
            raise UserError(f"{key} {values[key]!r} is not a number")
    layers = values.get("exit_layers")
    if layers is not None and (not isinstance(layers, list) or not all(is_integer(x) for x in layers)):
        raise UserError(f"exit_layers must be a list of layer numbers, got {layers!r}")
    fingerprint = values.get(WEIGHTS_FINGERPRINT)
    if fingerprint is not None and not (isinstance(fingerprint, str) and fingerprint):
        raise UserError(f"{WEIGHTS_FINGERPRINT} must be a string ('sha256:...'), got {fingerprint!r}")


def check_saved_policy(values: Any, source: str = "saved policy") -> SavedPolicy:
    """The :class:`SavedPolicy` of a saved policy's JSON object (the format in the module docstring),
    checked whole: its header, its fields' types, its value's range and its fitted model; a one-line
    :class:`~.errors.UserError` starting with ``source`` (the file) otherwise."""
    if not isinstance(values, Mapping) or "policy" not in values:
        raise UserError(
            f"{source}: not a calibrated policy (no 'policy' field; see `wav2vec2-ee calibrate --save-policy`)"
        )
    try:
        _check_header(values)
        _check_fields(values)
        cls = POLICIES.get(values["policy"])
        layers = values.get("exit_layers")
        saved = SavedPolicy(
            values["policy"],
            values.get("value"),
            values.get("max_layer"),
            cls.fitted_from_saved(values) if cls is not None else {},
            None if layers is None else [int(x) for x in layers],
        )
        saved.build()  # the value's range, the budget
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return saved


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # a missing file: FileNotFoundError
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def read_saved_policy(path: str | os.PathLike) -> dict:
    """The JSON object of a saved policy file, checked (:func:`check_saved_policy`; a one-line
    :class:`~.errors.UserError` naming the file otherwise)."""
    path = Path(path)
    values = _read_json(path)
    check_saved_policy(values, str(path))
    return values


def policy_from_saved(values: Any, source: str = "saved policy") -> ExitPolicy:
    """The policy of a saved policy's JSON object (errors name ``source``)."""
    return check_saved_policy(values, source).build()


def load_saved_policy(path: str | os.PathLike) -> ExitPolicy:
    """The policy saved in ``path`` (``exit_policy.json``, ``calibration_<policy>.json``, ``policy.json``)."""
    return check_saved_policy(_read_json(Path(path)), str(path)).build()


def saved_policy_header(policy: ExitPolicy) -> dict:
    """The start of a saved policy's JSON object: format, version, the policy (name, parameter, value,
    budget) and what it saves beyond them (the learned model); the caller adds its figures."""
    return {
        "format": SAVED_POLICY_FORMAT,
        "version": SAVED_POLICY_VERSION,
        **policy.describe(),
        **policy.saved_fields(),
    }


def write_saved_policy(path: str | os.PathLike, values: Mapping) -> Path:
    """Check ``values`` (:func:`check_saved_policy`) and write them to ``path`` atomically."""
    check_saved_policy(values, str(path))
    atomic_write_json(path, dict(values))
    return Path(path)


# --------------------------------------------------------------------------------------------------
# the model a policy belongs to


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(folder: str | os.PathLike) -> str | None:
    """The fingerprint of a checkpoint's weights: ``sha256:`` and the SHA-256 of the lines ``<name>\\t<sha256
    of the file>`` of its weight files (``model*.safetensors``, ``pytorch_model*.bin``), sorted by name.
    ``None`` for what has no weight files here (a hub id, a folder without weights).

    Defined on the files, not on the tensors, so that it needs neither torch nor safetensors and is the
    same wherever it is computed: by ``calibrate`` for the policy it saves, by ``export`` for the
    checkpoint it exports (``export.json``), by ``transcribe`` for the checkpoint it loads. Reading the
    weights once more costs about as much as loading them."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if _WEIGHT_FILE.fullmatch(p.name) and p.is_file())
    if not files:
        return None
    lines = "".join(f"{file.name}\t{file_sha256(file)}\n" for file in files)
    return f"{FINGERPRINT_SCHEME}:" + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def check_policy_model(
    values: Mapping,
    exit_layers: Sequence[int],
    fingerprint: str | None,
    source: str = "saved policy",
) -> None:
    """Refuse (a one-line :class:`~.errors.UserError` starting with ``source``) a saved policy calibrated
    for another model than the one with ``exit_layers`` and weights ``fingerprint``: its recorded
    ``exit_layers`` differ, or both fingerprints are known, of one scheme, and differ. What is not
    recorded (a policy written by hand or by an older version; a model whose fingerprint is unknown) is
    not compared, nor is a fingerprint of a scheme this version does not compute (a later version's).

    Refused rather than warned about: a policy is picked up without being named (the checkpoint's
    ``exit_policy.json``, an export's ``policy.json``), and its threshold on other weights is an unknown
    operating point, so a warning would scroll by while every transcript of the run is affected; the fix
    (calibrate this model, or name a policy) takes one command."""
    fix = "calibrate this model (wav2vec2-ee calibrate --save-policy) or name a policy (--policy)"
    layers = values.get("exit_layers")
    if layers is not None and [int(x) for x in layers] != [int(x) for x in exit_layers]:
        raise UserError(
            f"{source}: calibrated for a model with exit layers {[int(x) for x in layers]}, not this "
            f"model's {[int(x) for x in exit_layers]}: {fix}"
        )
    saved = values.get(WEIGHTS_FINGERPRINT)
    comparable = saved is not None and fingerprint is not None and _scheme(saved) == _scheme(fingerprint)
    if comparable and saved != fingerprint:
        raise UserError(
            f"{source}: calibrated for other weights ({WEIGHTS_FINGERPRINT} {saved[:19]}..., this "
            f"model's {fingerprint[:19]}...): its threshold is another operating point here; {fix}"
        )


def _scheme(fingerprint: str) -> str:
    """The scheme of a fingerprint: what comes before its first ``:`` (none: ``""``)."""
    return fingerprint.partition(":")[0] if ":" in fingerprint else ""
