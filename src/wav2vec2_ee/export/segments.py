"""The model cut into exportable segments: the input stage, one block of layers per exit, one head per exit.

Each segment is a small :class:`torch.nn.Module` around the model's own submodules (no copies of
weights), with plain tensor inputs and outputs, so that the chain

    ``InputStage -> Block_0 -> Head_0 -> Block_1 -> Head_1 -> ...``

computes what :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.iter_exits` computes, under its padding
rule (every utterance of a padded batch gets what it gets alone, ``batch_statistics=False``):

* :class:`InputStage` ``(input_values (B, S) float, attention_mask (B, S) int64) -> (hidden (B, T, H),
  frame_mask (B, T) int64)``: the CNN (a group-norm CNN normalised over each utterance's own samples,
  :func:`~wav2vec2_ee.modeling.per_utterance_features`), the feature projection, the padded frames
  zeroed, the positional convolution and, for post-LN configs, the encoder's input LayerNorm;
* :class:`Block` ``(hidden, frame_mask) -> hidden``: the layers ``(exit_layers[k-1], exit_layers[k]]``;
  the additive attention mask is built inside from ``frame_mask`` with plain operations;
* :class:`Head` ``(hidden) -> logits (B, T, V)``: the exit's head (pre-LN configs: the encoder's final
  LayerNorm first, as :meth:`~wav2vec2_ee.modeling.Wav2Vec2EEForCTC.exit_logits_at`).

Inference only: no SpecAugment, no LayerDrop, dropout off (the wrappers are used in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling import Wav2Vec2EEForCTC, per_utterance_features


def check_plain_model(model: Wav2Vec2EEForCTC) -> None:
    """Refuse a model whose modules were swapped by :mod:`wav2vec2_ee.accel` (export needs the plain
    ``transformers`` modules)."""
    if hasattr(model.wav2vec2.feature_extractor, "forward_per_utterance"):
        raise ValueError("export needs the plain model: its CNN was replaced by an accelerated one (accel)")
    for name, module in model.named_modules():
        if type(module).__module__.startswith("wav2vec2_ee.accel"):
            raise ValueError(
                f"export needs the plain model: {name} is an accelerated module ({type(module)})"
            )


class InputStage(nn.Module):
    """``(input_values, attention_mask) -> (hidden_states[0], frame_mask)`` (see the module docstring)."""

    def __init__(self, model: Wav2Vec2EEForCTC):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor):
        model = self.model
        w2v = model.wav2vec2
        sample_lengths = attention_mask.to(torch.long).sum(-1)
        if model.config.feat_extract_norm == "group":
            extract = per_utterance_features(w2v.feature_extractor, input_values, sample_lengths)
        else:  # a layer-norm CNN is frame-local: padding changes no valid frame
            extract = w2v.feature_extractor(input_values)
        extract = extract.transpose(1, 2)
        frames = extract.shape[1]
        lengths = model._get_feat_extract_output_lengths(sample_lengths).to(torch.long)
        positions = torch.arange(frames, device=extract.device)
        frame_mask = positions[None, :] < lengths[:, None]  # (B, T) True on valid frames
        hidden, _ = w2v.feature_projection(extract)
        hidden = hidden * frame_mask.unsqueeze(-1).to(hidden.dtype)  # padded frames are zero (as embed)
        encoder = w2v.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not model.config.do_stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        return hidden, frame_mask.to(torch.long)


def additive_attention_mask(frame_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, 1, T)``: 0 on valid key frames, the dtype's lowest value on padded ones (added to the
    attention scores, broadcast over heads and queries)."""
    padded = 1.0 - frame_mask.to(dtype)
    return (padded * torch.finfo(dtype).min)[:, None, None, :]


class Block(nn.Module):
    """``(hidden, frame_mask) -> hidden``: the encoder layers ``layers[start:stop]``."""

    def __init__(self, model: Wav2Vec2EEForCTC, start: int, stop: int):
        super().__init__()
        # the export's frozen copy of iter_exits' layer loop, one block per exit (tests/test_export.py checks
        # it against iter_exits exit by exit; tests/test_structure.py allows this one module)
        self.layers = nn.ModuleList(model.encoder_layers[start:stop])
        self.start, self.stop = start, stop

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        mask = additive_attention_mask(frame_mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask)
        return hidden


class Head(nn.Module):
    """``(hidden) -> logits`` of exit ``k``."""

    def __init__(self, model: Wav2Vec2EEForCTC, k: int):
        super().__init__()
        self.norm = model.wav2vec2.encoder.layer_norm if model.config.do_stable_layer_norm else None
        self.linear = model.head(k)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            hidden = self.norm(hidden)
        return self.linear(hidden)


def build_segments(model: Wav2Vec2EEForCTC) -> tuple[InputStage, list[Block], list[Head]]:
    """The segments of ``model`` (in eval mode): the input stage, a block and a head per exit."""
    check_plain_model(model)
    model.eval()
    layers = [0, *model.config.exit_layers]
    blocks = [Block(model, layers[k], layers[k + 1]).eval() for k in range(len(layers) - 1)]
    heads = [Head(model, k).eval() for k in range(model.config.num_exits)]
    return InputStage(model).eval(), blocks, heads
