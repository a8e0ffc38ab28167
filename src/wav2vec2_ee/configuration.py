"""Configuration of early-exit wav2vec2 models."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence

from transformers import Wav2Vec2Config

from .errors import UserError


def default_exit_layers(num_hidden_layers: int) -> list[int]:
    """Every second layer up to the top one: ``[2, 4, ..., 12]`` for 12 layers, ``[1]`` for 1."""
    layers = list(range(2, num_hidden_layers + 1, 2))
    if not layers or layers[-1] != num_hidden_layers:
        layers.append(num_hidden_layers)
    return layers


def _is_layer_number(x) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, numbers.Integral) or (isinstance(x, numbers.Real) and float(x).is_integer())


def validate_exit_layers(exit_layers: Sequence[int], num_hidden_layers: int) -> list[int]:
    """Check that ``exit_layers`` is a list of strictly increasing layer numbers in ``[1, num_hidden_layers]``.

    A string (``"2,4,6"`` in a ``config.json`` or a config file) is refused rather than guessed at:
    the field is a JSON list of integers, ``[2, 4, 6]``. An empty list is an error, not "the default".
    Each error is a one-line :class:`~wav2vec2_ee.errors.UserError` (a ``ValueError``)."""
    example = default_exit_layers(max(1, int(num_hidden_layers)))
    if isinstance(exit_layers, str | bytes | Mapping) or not isinstance(exit_layers, Iterable):
        raise UserError(
            f"exit_layers must be a list of layer numbers such as {example}, got {type(exit_layers).__name__} "
            f"{exit_layers!r}"
        )
    exit_layers = list(exit_layers)
    if not all(_is_layer_number(x) for x in exit_layers):
        raise UserError(
            f"exit_layers must be a list of integer layer numbers such as {example}, got {exit_layers!r}"
        )
    layers = [int(x) for x in exit_layers]
    if not layers:
        raise UserError(
            f"exit_layers must name at least one layer, got an empty list (omit the field for the default "
            f"{example})"
        )
    bad = [x for x in layers if x < 1 or x > num_hidden_layers]
    if bad:
        raise UserError(
            f"exit_layers {layers} contain {bad}: exit layers must lie in [1, {num_hidden_layers}] "
            f"(num_hidden_layers={num_hidden_layers}; layer 0 is the encoder input, not a layer)"
        )
    dupes = sorted({x for x in layers if layers.count(x) > 1})
    if dupes:
        raise UserError(f"exit_layers {layers} contain duplicates {dupes}")
    if layers != sorted(layers):
        raise UserError(f"exit_layers {layers} must be sorted in increasing order, e.g. {sorted(layers)}")
    return layers


class Wav2Vec2EEConfig(Wav2Vec2Config):
    r"""Configuration of :class:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC`.

    Everything of :class:`transformers.Wav2Vec2Config`, plus:

    Args:
        exit_layers (`list[int]`, *optional*):
            Encoder layers (1-based, increasing) after which an exit head reads the hidden states.
            Defaults to every second layer up to ``num_hidden_layers``. An exit at the top layer uses the
            ordinary ``lm_head``, so a checkpoint loads in plain ``Wav2Vec2ForCTC``.
        share_exit_heads (`bool`, *optional*, defaults to `False`):
            One linear head shared by all exits (what the original research code did: its six
            "decoders" are one module) instead of one head per exit.
    """

    # model_type stays "wav2vec2" so that AutoConfig / AutoModelForCTC read our checkpoints as plain
    # wav2vec2 CTC models (the deepest exit is the ordinary lm_head).

    def __init__(
        self,
        exit_layers: Sequence[int] | None = None,
        share_exit_heads: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if exit_layers is None:
            exit_layers = default_exit_layers(self.num_hidden_layers)
        self.exit_layers = validate_exit_layers(exit_layers, self.num_hidden_layers)
        self.share_exit_heads = bool(share_exit_heads)

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)
