"""Loading and saving early-exit checkpoints: the config options, the strict entry, the folder writer.

:func:`load_model` is ``Wav2Vec2EEForCTC.from_pretrained`` (which loads every supported layout and
does the documented conversions, :mod:`wav2vec2_ee.checkpoints`) plus the config options
(:func:`load_config`), one-line errors, and strictness. Inference, evaluation and a distillation
teacher need the checkpoint's own weights, all of them: ``load_model`` refuses a folder without
weights and any tensor that is missing, of another shape or left over (:func:`check_loading`).
``allow_random_init=True`` (``train --model`` only) builds a fresh model from a config alone and lets
tensors the checkpoint lacks start random (fresh heads on a ``Wav2Vec2Model``, a new vocabulary), with
one warning line. :func:`save_checkpoint_files` writes the folder every command reads.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import Wav2Vec2Config, Wav2Vec2Processor

from .checkpoints import (
    declares_exit_heads,
    first_line,
    has_weights,
    heads_from_lm_head,
    no_weights_error,
    read_checkpoint_config,
    refused_pickle_error,
    some_names,
    unreadable_file_error,
)
from .configuration import Wav2Vec2EEConfig, default_exit_layers, validate_exit_layers
from .errors import UserError
from .modeling import Wav2Vec2EEForCTC

logger = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^(?:wav2vec2\.)?encoder\.layers\.(\d+)\.")
_OUR_MODULES = ("wav2vec2.", "lm_head.", "exit_heads.")


# --------------------------------------------------------------------------------------------------
# the config


def _config_from_values(file: Path, values: dict, overrides: dict) -> Wav2Vec2EEConfig:
    try:
        return Wav2Vec2EEConfig(**{**values, **overrides})
    except (TypeError, ValueError) as err:
        raise UserError(f"{file}: not a valid model config ({first_line(err)})") from err


def load_config(
    model_name_or_path: str | os.PathLike | None,
    *,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    num_hidden_layers: int | None = None,
    exit_layers: list[int] | None = None,
    share_exit_heads: bool | None = None,
    **overrides,
) -> Wav2Vec2EEConfig:
    """The early-exit config of a checkpoint (hub id or folder) or a config file, or a fresh one, with
    overrides.

    ``num_hidden_layers`` truncates a deeper encoder to its first N layers; exit layers beyond it are
    dropped (and default to every second layer when none remain).

    Raises:
        FileNotFoundError: a local folder without ``config.json``.
        UserError: a ``config.json`` (or config file) that is not valid JSON or not a valid config.
    """
    local = Path(model_name_or_path) if model_name_or_path is not None else None
    if model_name_or_path is None:
        config = Wav2Vec2EEConfig(**overrides)
    elif local.is_file():  # a config file (config.json or any *.json)
        config = _config_from_values(local, read_checkpoint_config(local), overrides)
    else:
        if local.is_dir():
            read_checkpoint_config(local)  # a missing or invalid config.json: one line naming it
        try:
            base = Wav2Vec2Config.from_pretrained(str(model_name_or_path))
        except (OSError, TypeError, ValueError) as err:
            if not local.is_dir():
                raise
            raise UserError(f"{local / 'config.json'}: not a valid model config ({first_line(err)})") from err
        config = Wav2Vec2EEConfig(**{**base.to_dict(), "exit_layers": None, **overrides})
        stored = getattr(base, "exit_layers", None)
        if stored is not None:  # a checkpoint's own exits, checked below ([] or "2,4,6" are errors)
            config.exit_layers = stored
        config.share_exit_heads = bool(getattr(base, "share_exit_heads", False))
    if num_hidden_layers is not None:
        if num_hidden_layers < 1:
            raise UserError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
        if num_hidden_layers > config.num_hidden_layers and model_name_or_path is not None:
            raise UserError(
                f"num_hidden_layers={num_hidden_layers} exceeds the {config.num_hidden_layers} layers of "
                f"{model_name_or_path}: a pretrained encoder can only be truncated"
            )
        kept = [x for x in config.exit_layers if x <= num_hidden_layers]
        config.num_hidden_layers = num_hidden_layers
        config.exit_layers = (
            kept if kept and kept[-1] == num_hidden_layers else default_exit_layers(num_hidden_layers)
        )
    if exit_layers is not None:
        config.exit_layers = list(exit_layers)
    config.exit_layers = validate_exit_layers(config.exit_layers, config.num_hidden_layers)
    if share_exit_heads is not None:
        config.share_exit_heads = share_exit_heads
    if vocab_size is not None:
        config.vocab_size = vocab_size
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    config.architectures = ["Wav2Vec2EEForCTC"]
    return config


# --------------------------------------------------------------------------------------------------
# the weights: from_pretrained, then the strict check


def _drop_load_report(record: logging.LogRecord) -> bool:
    """A logging filter: transformers' multi-line load report (:func:`check_loading` gives the account)."""
    return "LOAD REPORT" not in record.getMessage()


def _from_pretrained(
    load_from: str, config: Wav2Vec2EEConfig, source: str | os.PathLike
) -> tuple[Wav2Vec2EEForCTC, dict]:
    """``Wav2Vec2EEForCTC.from_pretrained`` with its loading info; errors as one line naming ``source``.

    Shapes that differ are loaded as fresh tensors and reported (``ignore_mismatched_sizes``), so that
    :func:`check_loading` decides; transformers' own load report is silenced in favour of its account.
    Parameters are float32 whatever the checkpoint stores (the packaged demo base is float16): training
    and the CPU kernels need them so; reduced precision is autocast (``--dtype``). ``from_pretrained``
    called directly keeps transformers' choice (``dtype="auto"``: the stored one).
    """
    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(_drop_load_report)
    try:  # transformers unpickles *.bin weights with torch.load(weights_only=True) only
        return Wav2Vec2EEForCTC.from_pretrained(
            load_from,
            config=config,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            dtype=torch.float32,
        )
    except pickle.UnpicklingError as err:
        raise refused_pickle_error(source, err) from err
    except SafetensorError as err:
        raise unreadable_file_error(source, err) from err
    except (RuntimeError, OSError) as err:
        if isinstance(err, RuntimeError) and not any(
            s in str(err) for s in ("loading state_dict", "conversion of the weights")
        ):
            raise
        if isinstance(err, OSError) and not Path(source).is_dir():
            raise  # a hub id: transformers' message
        raise UserError(f"{source}: cannot load these weights ({first_line(err)})") from err
    finally:
        report.removeFilter(_drop_load_report)


def check_loading(
    model: Wav2Vec2EEForCTC,
    info: dict,
    source: str | os.PathLike,
    *,
    allow_random_init: bool,
    truncated: bool = False,
    declared_heads: bool = False,
) -> Wav2Vec2EEForCTC:
    """Accept what ``from_pretrained`` loaded (its conversions done), or refuse.

    Strict (``allow_random_init=False``): any missing, mismatched or left-over tensor of the model's
    own modules is a :class:`~wav2vec2_ee.errors.UserError` naming the keys (``from_pretrained`` has
    already loaded the exit heads of a plain ``Wav2Vec2ForCTC`` checkpoint from its ``lm_head``; should
    it not have, that is done here, with the same INFO line). Left-over layers of an encoder truncated
    on request (``truncated``), and tensors of modules the model has none of (a pretraining quantizer,
    ...), are dropped. With ``allow_random_init`` the tensors the checkpoint lacks start random (one
    WARNING line); absent exit heads, even some of them, start from a loaded ``lm_head``.

    Args:
        info: ``from_pretrained``'s loading info (``missing_keys``, ``mismatched_keys``, ``unexpected_keys``).
        declared_heads: the checkpoint's own config has separate exit heads (so absent ones are not
            a plain CTC checkpoint's).
    """
    missing = set(info.get("missing_keys", ()))
    mismatched = {k: (tuple(ckpt), tuple(want)) for k, ckpt, want in info.get("mismatched_keys", ())}
    unexpected = set(info.get("unexpected_keys", ()))
    if truncated:
        depth = model.config.num_hidden_layers
        unexpected = {k for k in unexpected if not ((m := _LAYER_KEY.match(k)) and int(m.group(1)) >= depth)}
    foreign = {k for k in unexpected if not k.startswith(_OUR_MODULES)}
    if foreign:
        logger.info("%s: ignoring %d tensors of other modules: %s", source, len(foreign), some_names(foreign))
    unexpected -= foreign

    head_keys = {k for k in model.state_dict() if k.startswith("exit_heads.")}
    absent_heads = head_keys & missing
    lm_head_loaded = not any(k.startswith("lm_head.") for k in missing | mismatched.keys())
    convert = bool(absent_heads) and lm_head_loaded
    if not allow_random_init:
        convert = convert and absent_heads == head_keys and not declared_heads
    if convert:
        with torch.no_grad():
            heads_from_lm_head(
                model, absent_heads, source, lambda name, value: model.get_parameter(name).copy_(value)
            )
        missing -= absent_heads

    if allow_random_init:
        fresh = missing | mismatched.keys()
        if fresh:
            logger.warning(
                "%s: %d tensors are not in the checkpoint (or have another shape) and start random: %s",
                source,
                len(fresh),
                some_names(fresh),
            )
        if unexpected:
            logger.warning(
                "%s: %d tensors of the checkpoint do not fit the config and are ignored: %s",
                source,
                len(unexpected),
                some_names(unexpected),
            )
        return model

    if {"lm_head.weight", "lm_head.bias"} <= missing and not (
        missing - head_keys - {"lm_head.weight", "lm_head.bias"}
    ):
        raise UserError(
            f"{source}: no CTC head (lm_head) in the weights, an encoder-only (Wav2Vec2Model) checkpoint: "
            "it cannot transcribe; fine-tune it first (`train --model` gives it fresh heads)"
        )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {some_names(missing)}")
    if mismatched:
        shapes = [f"{k} {list(ckpt)} vs {list(want)}" for k, (ckpt, want) in mismatched.items()]
        problems.append(f"of another shape (weights vs config) {len(shapes)}: {some_names(shapes)}")
        if "lm_head.weight" in mismatched:  # (vocab, hidden): name the config value that differs
            ckpt, want = mismatched["lm_head.weight"]
            for i, name in enumerate(("vocab_size", "hidden_size")):
                if len(ckpt) == 2 and ckpt[i] != want[i]:
                    problems.append(f"the model is built for {name}={want[i]}, the weights have {ckpt[i]}")
    if unexpected:
        problems.append(f"not in the config {len(unexpected)}: {some_names(unexpected)}")
    if problems:
        raise UserError(f"{source}: the weights do not match the config: " + "; ".join(problems))
    return model


def load_model(
    model_name_or_path: str | os.PathLike | None,
    config: Wav2Vec2EEConfig | None = None,
    *,
    allow_random_init: bool = False,
    **config_kwargs,
) -> Wav2Vec2EEForCTC:
    """Load any supported checkpoint as an early-exit model, with all of its weights.

    A convenience over :meth:`Wav2Vec2EEForCTC.from_pretrained`, which does the loading and the
    conversions: (a) our own checkpoints, (b) plain ``Wav2Vec2ForCTC`` checkpoints by hub id or folder
    (the exit heads start from ``lm_head``), (c) folders written by the original research code
    (``decoders.{i}`` heads, ``copy_model.*`` teacher dropped); each conversion is logged in one line.
    Here: the config options (:func:`load_config`), one-line errors, and strictness: every tensor the
    model needs must be in the checkpoint, with the config's shape.
    ``model_name_or_path=None`` builds a randomly initialised model from ``config`` / ``config_kwargs``.
    Extra keyword arguments go to :func:`load_config`.

    Args:
        allow_random_init: for training only: a config file or a folder without weights builds a
            randomly initialised model, and tensors the checkpoint lacks or has in another shape (a
            ``Wav2Vec2Model`` without CTC head, another vocabulary) start random (one warning line).

    Raises:
        FileNotFoundError: a folder without weights or a config file (without ``allow_random_init``).
        UserError: an unreadable weights or config file; weights that do not match the config,
            naming the keys (without ``allow_random_init``).
    """
    path = Path(model_name_or_path) if model_name_or_path is not None else None
    config_only = path is not None and (path.is_file() or (path.is_dir() and not has_weights(path)))
    if config_only and not allow_random_init:
        raise no_weights_error(path)
    truncated = config_kwargs.get("num_hidden_layers") is not None
    if config is None:
        config = load_config(model_name_or_path, **config_kwargs)
    if path is None or config_only:
        if path is not None:
            logger.info("%s: a config without weights: a randomly initialised model", path)
        return Wav2Vec2EEForCTC(config)

    # every layout (ours, plain CTC, the original research code's) through from_pretrained's conversions
    model, info = _from_pretrained(str(model_name_or_path), config, model_name_or_path)
    return check_loading(
        model,
        info,
        model_name_or_path,
        allow_random_init=allow_random_init,
        truncated=truncated,
        declared_heads=path.is_dir() and declares_exit_heads(path),
    )


# --------------------------------------------------------------------------------------------------
# saving


def save_checkpoint_files(
    model: Wav2Vec2EEForCTC, processor: Wav2Vec2Processor, folder: str | os.PathLike
) -> Path:
    """Write a checkpoint folder: the model (``config.json``, ``model.safetensors``) and its processor
    (feature extractor and tokenizer), so that :func:`load_model`, ``Wav2Vec2EEForCTC.from_pretrained``,
    ``AutoProcessor.from_pretrained`` and ``pipeline("automatic-speech-recognition", model=folder)``
    (plain ``Wav2Vec2ForCTC``: the final exit) all read it. Every folder the package writes is one."""
    folder = Path(folder)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
