"""Checkpoint folders and their layouts: reading, the one-line errors, and the documented conversions.

A checkpoint is a ``transformers`` folder (``config.json`` and ``model.safetensors``, sharded or not,
or ``pytorch_model.bin``). Three layouts load as :class:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC`,
through ``Wav2Vec2EEForCTC.from_pretrained`` and ``transformers``' own machinery, each conversion
announced in one INFO line:

* ours: as saved;
* a plain ``Wav2Vec2ForCTC``: it has no exit heads; they are loaded from its ``lm_head`` in
  ``transformers``' post-load step (``_finalize_model_loading``, :func:`load_absent_exit_heads`),
  before missing weights are initialised and reported;
* the original research code's: ``decoders.{i}`` heads beside an ``lm_head``, renamed onto ours by
  ``from_pretrained(key_mapping=...)`` (:func:`original_layout`, the mechanism ``transformers`` offers
  for checkpoints of another naming), its ``copy_model.*`` teacher ignored.

A file that cannot be used is a one-line :class:`~wav2vec2_ee.errors.UserError` naming it. This
module holds what those steps need and nothing of the model: the model's methods call in here
(it never imports :mod:`wav2vec2_ee.modeling`). The strict entry, ``load_model``, and the config
options are :mod:`wav2vec2_ee.loading`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedConfig
from transformers.core_model_loading import WeightRenaming, set_param_for_module

from .configuration import Wav2Vec2EEConfig
from .errors import UserError

if TYPE_CHECKING:  # annotations only
    from .modeling import Wav2Vec2EEForCTC

logger = logging.getLogger(__name__)

_ORIGINAL_HEAD = re.compile(r"^decoders\.(\d+)\.(weight|bias)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# --------------------------------------------------------------------------------------------------
# one-line messages


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def some_names(items: Iterable[str], limit: int = 4) -> str:
    """``a, b, c, d and 12 more`` (sorted naturally: layer 3 before layer 10)."""
    items = sorted(items, key=_natural)
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def unreadable_file_error(path: str | os.PathLike, err: BaseException) -> UserError:
    """One-line error for a checkpoint file that cannot be read (empty, truncated, another format)."""
    return UserError(
        f"{path}: cannot read this file ({first_line(err)}): empty, truncated or not a checkpoint file"
    )


def refused_pickle_error(path: str | os.PathLike, err: Exception) -> UserError:
    """One-line error for a pickled checkpoint that ``torch.load(weights_only=True)`` refused."""
    detail = next(
        (line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "global" in line), ""
    )
    return UserError(
        f"{path}: refusing to load: not a plain tensor checkpoint, unpickling it could run code"
        + (f" ({detail.rstrip('.')})" if detail else "")
        + "; load only weights you trust, preferably as model.safetensors"
    )


def no_weights_error(path: str | os.PathLike) -> FileNotFoundError:
    """One-line refusal of a config without weights (it would be a randomly initialised model)."""
    if Path(path).is_file():
        what = "is a config file, not a checkpoint folder with weights"
    else:
        what = f"holds no model weights (no {' or '.join(WEIGHT_FILES[::2])})"
    return FileNotFoundError(
        f"{path} {what}: refusing to use a randomly initialised model; "
        "only `train --model` starts from a config alone"
    )


# --------------------------------------------------------------------------------------------------
# reading a local folder


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{file}: not a valid JSON file ({first_line(err)})") from err


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The raw ``config.json`` of a checkpoint folder (or a config file), as a dict.

    Raises:
        FileNotFoundError: a folder without ``config.json``.
        UserError: a file that is not a JSON object (one line naming it).
    """
    path = Path(path)
    file = path if path.is_file() else path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no config.json)")
    values = _read_json(file)
    if not isinstance(values, dict):
        raise UserError(f"{file}: not a model config (a JSON object is expected)")
    return values


def checkpoint_keys(path: Path) -> list[str] | None:
    """Names of the tensors of a local checkpoint folder (``None`` for a hub id or no weights).

    Raises:
        UserError: an unreadable ``model.safetensors`` or index (one line naming the file).
    """
    path = Path(path)
    st = path / "model.safetensors"
    if st.is_file():
        try:
            with safe_open(str(st), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as err:
            raise unreadable_file_error(st, err) from err
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
            raise UserError(f"{index}: not a safetensors index (no weight_map)")
        return list(data["weight_map"])
    return None


def has_weights(path: str | os.PathLike) -> bool:
    """Whether a folder holds model weights (one of :data:`WEIGHT_FILES`)."""
    return any((Path(path) / n).is_file() for n in WEIGHT_FILES)


def declares_exit_heads(path: Path) -> bool:
    """Whether a local checkpoint's own config has separate exit heads (so its weights must hold them)."""
    try:
        values = read_checkpoint_config(path)
    except (FileNotFoundError, ValueError):
        return False
    return len(values.get("exit_layers") or []) > 1 and not values.get("share_exit_heads", False)


def local_folder(name_or_path: str | os.PathLike | None, subfolder: str = "") -> Path | None:
    """The local checkpoint folder ``from_pretrained`` reads (``None`` for a hub id)."""
    if name_or_path is None:
        return None
    folder = Path(name_or_path, subfolder or "")
    return folder if folder.is_dir() else None


def _read_tensors(path: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Some tensors of a local safetensors checkpoint (single file or sharded), by name."""
    names = list(names)
    single = path / "model.safetensors"
    if single.is_file():
        files = dict.fromkeys(names, single.name)
    else:
        files = _read_json(path / "model.safetensors.index.json")["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for file in sorted({files[n] for n in names}):
        try:
            with safe_open(str(path / file), framework="pt") as f:
                for name in names:
                    if files[name] == file:
                        out[name] = f.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise unreadable_file_error(path / file, err) from err
    return out


# --------------------------------------------------------------------------------------------------
# a plain Wav2Vec2ForCTC: the exit heads start from its lm_head


def heads_from_lm_head(
    model: Wav2Vec2EEForCTC,
    names: Iterable[str],
    source: str | os.PathLike,
    assign: Callable[[str, torch.Tensor], None],
) -> None:
    """The plain-CTC conversion, in one place: every exit-head tensor of ``names`` (``exit_heads.{k}.weight``
    / ``.bias``) gets a copy of ``lm_head``'s, through ``assign(name, value)``; one INFO line."""
    names = sorted(names)
    for name in names:
        assign(name, model.lm_head.get_parameter(name.rsplit(".", 1)[1]).detach().clone())
    logger.info(
        "%s: a plain CTC checkpoint: the exit heads start from its lm_head (%s)",
        source,
        some_names(sorted({k.rsplit(".", 1)[0] for k in names})),
    )


def load_absent_exit_heads(model: Wav2Vec2EEForCTC, load_config, loading_info) -> None:
    """The documented conversion of a plain CTC checkpoint, during loading: when the checkpoint holds
    none of the model's exit heads but its ``lm_head``, and its own config does not declare separate
    exit heads, every exit head is loaded from that ``lm_head`` (one INFO line). A checkpoint that
    holds some exit heads, or declares heads it lacks, is incomplete: left to ``transformers`` (and
    refused by ``load_model``).

    Args:
        load_config / loading_info: ``transformers``' ``LoadStateDictConfig`` and ``LoadStateDictInfo``
            of this load (as ``_finalize_model_loading`` receives them).
    """
    heads = [name for name, _ in model.named_parameters() if name.startswith("exit_heads.")]
    missing = loading_info.missing_keys
    not_loaded = missing | {k for k, *_ in loading_info.mismatched_keys}
    if not heads or not set(heads) <= missing or {"lm_head.weight", "lm_head.bias"} & not_loaded:
        return
    source = load_config.pretrained_model_name_or_path
    folder = local_folder(source)
    if folder is not None and declares_exit_heads(folder):
        return
    heads_from_lm_head(
        model,
        heads,
        source,
        lambda name, value: set_param_for_module(model, name, value, loading_info, load_config.hf_quantizer),
    )


# --------------------------------------------------------------------------------------------------
# the original research code's layout: decoders.{i} heads, a copy_model.* teacher


def is_original_layout(keys: list[str]) -> bool:
    """Whether tensor names are those of the original research code (``decoders.{i}.*`` heads)."""
    return any(_ORIGINAL_HEAD.match(k) for k in keys)


def original_key_mapping(path: Path, keys: list[str], num_exits: int) -> tuple[dict[str, str], bool]:
    """The ``key_mapping`` (for ``from_pretrained``) of a checkpoint of the original research code.

    The original kept its exit heads as ``decoders.{i}`` (one module shared by all exits, so
    safetensors may store only some of them), beside an ``lm_head`` and ``wav2vec2``, and sometimes a
    teacher copy under ``copy_model.*`` (ignored: ``_keys_to_ignore_on_load_unexpected``). The heads
    are shared when fewer than ``num_exits`` are stored or all stored ones are equal: then every
    ``decoders.{i}`` names our one ``lm_head``; otherwise ``decoders.{i}`` is ``exit_heads.{i}`` and the
    deepest, ``decoders.{num_exits - 1}``, is our ``lm_head``. The checkpoint's own ``lm_head`` is not
    an exit head and is not used: where two checkpoint tensors name one parameter, ``transformers``
    loads the first in its (sorted) key order, and ``decoders.*`` sorts before ``lm_head.*``.

    Returns:
        the mapping (regular expressions over checkpoint keys) and whether the heads are shared.
    """
    stored = sorted({int(m.group(1)) for k in keys if (m := _ORIGINAL_HEAD.match(k))})
    shared = len(stored) < num_exits
    if not shared:
        heads = _read_tensors(path, [f"decoders.{i}.{p}" for i in stored for p in ("weight", "bias")])
        first = stored[0]
        shared = all(
            torch.equal(heads[f"decoders.{i}.{p}"], heads[f"decoders.{first}.{p}"])
            for i in stored
            for p in ("weight", "bias")
        )
    if shared:
        return {r"^decoders\.\d+\.": "lm_head."}, True
    mapping = {rf"^decoders\.{i}\.": f"exit_heads.{i}." for i in range(num_exits - 1)}
    mapping[rf"^decoders\.{num_exits - 1}\."] = "lm_head."
    return mapping, False


@dataclass
class OriginalLayout:
    """How ``from_pretrained`` reads a local folder of the original research code.

    Args:
        mapping: the ``key_mapping`` renaming its ``decoders.{i}`` heads onto ours
            (:func:`original_key_mapping`).
        shared: whether its heads are one shared head (``config.share_exit_heads``).
        teacher: whether it holds a ``copy_model.*`` teacher (ignored when loading).
        config: the ``config`` given to ``from_pretrained``: a copy, as an early-exit config, when it
            is a config object; else as given (a path, or ``None``: the folder's own).
    """

    mapping: dict[str, str]
    shared: bool
    teacher: bool
    config: PreTrainedConfig | str | os.PathLike | None

    def from_pretrained_kwargs(self, kwargs: dict) -> dict:
        """``from_pretrained``'s keyword arguments for this layout: ``config`` with ``share_exit_heads``
        following the stored heads, and our renaming before the caller's own ``key_mapping``."""
        kwargs = dict(kwargs)
        if isinstance(self.config, PreTrainedConfig):
            self.config.share_exit_heads = self.shared
        else:
            kwargs["share_exit_heads"] = self.shared  # a config attribute: applied when transformers reads it
        kwargs["key_mapping"] = {**self.mapping, **(kwargs.get("key_mapping") or {})}
        return {**kwargs, "config": self.config}

    def adopt(self, model: Wav2Vec2EEForCTC, source: str | os.PathLike) -> None:
        """After loading: the renaming is not kept for saving (a converted model saves in our layout);
        one INFO line."""
        # transformers keeps the renamings it used to reverse them on save: ours must not be reversed
        model._weight_conversions = [
            c
            for c in getattr(model, "_weight_conversions", None) or []
            if not (isinstance(c, WeightRenaming) and c._original_source_patterns[0] in self.mapping)
        ]
        logger.info(
            "%s: the original research code's layout: decoders.{i} heads (%s)%s",
            source,
            "shared" if self.shared else "one per exit",
            ", copy_model.* teacher dropped" if self.teacher else "",
        )


def original_layout(
    name_or_path: str | os.PathLike | None,
    config: PreTrainedConfig | str | os.PathLike | None,
    kwargs: dict,
) -> OriginalLayout | None:
    """The original research code's layout of the folder ``from_pretrained(name_or_path, config=config,
    **kwargs)`` reads, or ``None`` (a hub id, or another layout).

    The number of exits, which decides how its heads map onto ours, comes from ``config`` when it is a
    config object, else from the config ``transformers`` will read (with ``kwargs``' ``exit_layers`` /
    ``num_hidden_layers`` overrides)."""
    folder = local_folder(name_or_path, kwargs.get("subfolder", ""))
    keys = checkpoint_keys(folder) if folder is not None else None
    if not keys or not is_original_layout(keys):
        return None
    if isinstance(config, PreTrainedConfig):
        config = copy.deepcopy(config)
        if not isinstance(config, Wav2Vec2EEConfig):
            config = Wav2Vec2EEConfig(**config.to_dict())
        num_exits = config.num_exits
    else:  # transformers reads the config; only the number of exits is needed here
        overrides = {k: kwargs[k] for k in ("exit_layers", "num_hidden_layers") if k in kwargs}
        num_exits = Wav2Vec2EEConfig.from_pretrained(config or folder, **overrides).num_exits
    mapping, shared = original_key_mapping(folder, keys, num_exits)
    return OriginalLayout(mapping, shared, any(k.startswith("copy_model.") for k in keys), config)
