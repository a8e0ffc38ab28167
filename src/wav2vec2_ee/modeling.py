"""The early-exit wav2vec2 CTC model.

:class:`Wav2Vec2EEForCTC` is a ``transformers`` wav2vec2 encoder with a CTC exit head after each
layer of ``config.exit_layers``, built from plain ``transformers`` modules: the same arithmetic on any
device, with or without gradients (CPU speed-ups are a separate, explicit layer:
:mod:`wav2vec2_ee.accel`). Index conventions: ``hidden_states[0]`` is the encoder input (after the
positional convolution), ``hidden_states[l]`` the output of layer ``l``. Exit ``k`` reads
``hidden_states[exit_layers[k]]``; for stable-layer-norm (pre-LN) configs the encoder's final
LayerNorm is applied at every exit, not only at the top.

The deepest exit's head is the ordinary ``lm_head``, so a checkpoint whose deepest exit is the top
layer loads in plain :class:`transformers.Wav2Vec2ForCTC` and gives the final-exit output.

**One encoder path.** :meth:`Wav2Vec2EEForCTC.iter_exits` runs the encoder exit by exit and yields
each requested exit's logits (:class:`ExitStep`); a consumer may drop finished utterances from the
batch (:meth:`ExitStep.retain`), and the encoder stops at the deepest exit asked for. ``forward``
(training), layer-wise evaluation, dynamic early exit and the sweep's reference all consume it.

**The padding rule** (decided in :meth:`Wav2Vec2EEForCTC.embed`, nowhere else). Attention masks the
padded frames, and a layer-norm CNN is frame-local, so padding changes nothing there. A group-norm
CNN (``feat_extract_norm="group"``, e.g. wav2vec2-base) normalises each channel over time:

* ``iter_exits`` (evaluation, inference, the sweep's reference): every utterance gets what it gets
  alone: the group norm takes each utterance's own samples (``batch_statistics=False``), so results
  do not depend on the batch;
* ``forward`` (training, ``Trainer`` evaluation): ``transformers``' semantics, the statistics include
  the padding (``batch_statistics=True``), so losses and gradients equal ``Wav2Vec2ForCTC``'s.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedConfig, Wav2Vec2Config, Wav2Vec2Processor
from transformers.core_model_loading import WeightRenaming, set_param_for_module
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2GroupNormConvLayer,
    Wav2Vec2Model,
    Wav2Vec2PreTrainedModel,
)

from .configuration import Wav2Vec2EEConfig, default_exit_layers, validate_exit_layers

logger = logging.getLogger(__name__)


@dataclass
class Wav2Vec2EEOutput(ModelOutput):
    """Output of :class:`Wav2Vec2EEForCTC`.

    Args:
        loss: the early-exit objective (sum of the active exits' CTC losses) when ``labels`` are given.
        logits: ``(batch, frames, vocab)`` logits of the deepest computed exit.
        exit_logits: tuple of K tensors ``(batch, frames, vocab)``, shallow to deep.
        output_lengths: ``(batch,)`` number of valid frames per utterance.
        hidden_states: tuple ``hidden_states[0..L]`` when ``output_hidden_states=True``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    exit_logits: tuple[torch.Tensor, ...] | None = None
    output_lengths: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class EncoderState:
    """The running state of a layer-by-layer encoder pass.

    Args:
        hidden_states: ``(batch, frames, hidden)`` output of the last layer run (or the encoder input).
        frame_mask: ``(batch, frames)`` bool, True on valid frames; ``None`` when nothing is padded.
        attention_mask: the mask handed to the attention layers (as built by ``transformers``).
        output_lengths: ``(batch,)`` valid frames per utterance.
        layer: number of layers run so far (0 = encoder input).
    """

    hidden_states: torch.Tensor
    frame_mask: torch.Tensor | None
    attention_mask: torch.Tensor | None
    output_lengths: torch.Tensor
    layer: int = 0

    def select(self, index: torch.Tensor, config: Wav2Vec2Config) -> EncoderState:
        """The state of the utterances ``index`` only (their frames keep their padding)."""
        hidden = self.hidden_states[index]
        frame_mask = None if self.frame_mask is None else self.frame_mask[index]
        lengths = self.output_lengths[index]
        if frame_mask is not None:
            # Trim padding that no remaining utterance needs, so later layers run on fewer frames.
            max_len = int(lengths.max())
            hidden, frame_mask = hidden[:, :max_len], frame_mask[:, :max_len]
            if bool(frame_mask.all()):
                frame_mask = None
        attention_mask = create_bidirectional_mask(
            config=config, inputs_embeds=hidden, attention_mask=frame_mask
        )
        return EncoderState(hidden, frame_mask, attention_mask, lengths, self.layer)


@dataclass
class ExitStep:
    """One exit of :meth:`Wav2Vec2EEForCTC.iter_exits`.

    Args:
        exit_index: 0-based exit (into ``config.exit_layers``); layer: its layer.
        logits: ``(rows, frames, vocab)`` logits of the rows still running.
        output_lengths: ``(rows,)`` valid frames.
        rows: ``(rows,)`` positions of these utterances in the input batch (on the CPU).
        hidden_states: ``hidden_states[0..layer]`` (all rows) with ``output_hidden_states=True``.
    """

    exit_index: int
    layer: int
    logits: torch.Tensor
    output_lengths: torch.Tensor
    rows: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    retained: torch.Tensor | None = field(default=None, repr=False)

    def retain(self, keep: torch.Tensor) -> None:
        """Run later layers for these rows only: a bool mask ``(rows,)`` (True = keep running) or
        indices into this step's rows."""
        keep = torch.as_tensor(keep).to("cpu")
        if keep.dtype == torch.bool:
            if keep.shape != self.rows.shape:
                raise ValueError(f"retain: mask of shape {tuple(keep.shape)} for {len(self.rows)} rows")
            keep = keep.nonzero().squeeze(1)
        self.retained = keep.to(torch.long)


def per_utterance_features(
    feature_encoder: nn.Module, input_values: torch.Tensor, sample_lengths: torch.Tensor
) -> torch.Tensor:
    """``transformers``' CNN ``(batch, samples) -> (batch, channels, frames)`` with the group norm of
    its first layer taken over each utterance's own first ``sample_lengths[b]`` samples' frames, so
    every utterance's valid frames equal those of the utterance computed alone (the other layers are
    frame-local, and a valid frame reads only valid frames). Plain tensor operations, any device.
    """
    layers = feature_encoder.conv_layers
    first = layers[0]
    if not isinstance(first, Wav2Vec2GroupNormConvLayer):
        return feature_encoder(input_values)
    conv, norm = first.conv, first.layer_norm
    hidden = conv(input_values[:, None])  # (batch, channels, time)
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    frames = torch.div(sample_lengths.to(torch.long) - kernel, stride, rounding_mode="floor") + 1
    positions = torch.arange(hidden.shape[-1], device=hidden.device)
    valid = (positions < frames.to(hidden.device)[:, None]).unsqueeze(1)  # (batch, 1, time)
    h = hidden.float()
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    mean = (h * valid).sum(-1, keepdim=True) / count
    var = ((h - mean).square() * valid).sum(-1, keepdim=True) / count
    h = (h - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        h = h * norm.weight.float()[:, None] + norm.bias.float()[:, None]
    hidden = first.activation(h.to(hidden.dtype))
    for layer in layers[1:]:
        hidden = layer(hidden)
    return hidden


class Wav2Vec2EEForCTC(Wav2Vec2PreTrainedModel):
    """Wav2vec2 encoder with CTC exit heads after the layers of ``config.exit_layers``.

    ``from_pretrained`` loads every supported checkpoint layout (see "loading" below): ours, a plain
    ``Wav2Vec2ForCTC`` (the exit heads start from its ``lm_head``) and the original research code's
    (``decoders.{i}`` heads renamed by ``transformers``' ``key_mapping``, its ``copy_model.*`` teacher
    ignored); each conversion is announced in one INFO line.
    """

    config_class = Wav2Vec2EEConfig
    # the original research code's checkpoints hold a teacher copy: never part of the model
    _keys_to_ignore_on_load_unexpected = [r"^copy_model\."]

    def __init__(self, config: Wav2Vec2EEConfig):
        if not isinstance(config, Wav2Vec2EEConfig):
            config = Wav2Vec2EEConfig(**config.to_dict())
        super().__init__(config)
        if config.vocab_size is None:
            raise ValueError("config.vocab_size must be set to build the CTC exit heads")
        if config.add_adapter:
            raise ValueError("adapters (config.add_adapter=True) are not supported by early-exit models")
        self.wav2vec2 = Wav2Vec2Model(config)
        self.dropout = nn.Dropout(config.final_dropout)
        num_extra = 0 if config.share_exit_heads else config.num_exits - 1
        self.exit_heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.vocab_size) for _ in range(num_extra)
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    # ----------------------------------------------------------------------------------------------
    # pieces of the encoder, shared by training, evaluation and incremental inference
    def freeze_feature_encoder(self) -> None:
        """Stop gradients through the CNN feature encoder (as the seed did when fine-tuning)."""
        self.wav2vec2.feature_extractor._freeze_parameters()

    @property
    def encoder_layers(self) -> nn.ModuleList:
        return self.wav2vec2.encoder.layers

    def head(self, k: int) -> nn.Linear:
        """The linear head of exit ``k`` (0-based, shallow to deep)."""
        if self.config.share_exit_heads or k == self.config.num_exits - 1:
            return self.lm_head
        return self.exit_heads[k]

    def output_lengths(self, attention_mask: torch.Tensor | None, input_values: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` number of CTC frames per utterance, from the sample-level attention mask."""
        if attention_mask is None:
            lengths = torch.full((input_values.shape[0],), input_values.shape[-1], device=input_values.device)
        else:
            lengths = attention_mask.sum(-1)
        return self._get_feat_extract_output_lengths(lengths).to(torch.long)

    def extract_features(
        self, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, frames, channels)`` output of the CNN feature encoder for ``(batch, samples)`` input.

        With ``sample_lengths`` ``(batch,)``, a group-norm CNN normalises each utterance over its own
        samples (:func:`per_utterance_features`, or the feature encoder's own
        ``forward_per_utterance(input_values, sample_lengths)`` where it has one, as the accelerated
        encoders of :mod:`wav2vec2_ee.accel.cnn` do); without, over the whole padded row, as
        ``transformers``.
        """
        encoder_cnn = self.wav2vec2.feature_extractor
        if sample_lengths is None:
            extract = encoder_cnn(input_values)
        else:
            per_utterance = getattr(encoder_cnn, "forward_per_utterance", None)
            if per_utterance is not None:
                extract = per_utterance(input_values, sample_lengths)
            else:
                extract = per_utterance_features(encoder_cnn, input_values, sample_lengths)
        return extract.transpose(1, 2)

    def embed(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        batch_statistics: bool = False,
    ) -> EncoderState:
        """Run the CNN, the projection and the encoder's input stage (``hidden_states[0]``).

        Args:
            input_values: ``(batch, samples)`` float waveforms.
            attention_mask: ``(batch, samples)`` 1 on real samples, 0 on padding.
            mask_time_indices: ``(batch, frames)`` SpecAugment time mask (as ``transformers``).
            batch_statistics: the padding rule (see the module docstring): ``False`` (default) gives every
                utterance of a padded batch what it gets alone; ``True`` keeps ``transformers``' semantics
                (a group-norm CNN normalises over the padding too).
        """
        w2v = self.wav2vec2
        sample_lengths = None
        if attention_mask is not None and not batch_statistics and self.config.feat_extract_norm == "group":
            sample_lengths = attention_mask.sum(-1)
            if bool((sample_lengths == input_values.shape[-1]).all()):
                sample_lengths = None  # nothing padded: the batch statistics are each utterance's own
        extract = self.extract_features(input_values, sample_lengths)
        frames = extract.shape[1]
        lengths = self.output_lengths(attention_mask, input_values).clamp(max=frames)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = w2v._get_feature_vector_attention_mask(frames, attention_mask, add_adapter=False)
        hidden, _ = w2v.feature_projection(extract)
        hidden = w2v._mask_hidden_states(
            hidden, mask_time_indices=mask_time_indices, attention_mask=frame_mask
        )

        encoder = w2v.encoder
        if frame_mask is not None:
            hidden = hidden.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        attn = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=frame_mask)
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.config.do_stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        return EncoderState(hidden, frame_mask, attn, lengths, 0)

    def run_layer(self, state: EncoderState) -> EncoderState:
        """Run the next encoder layer (LayerDrop applies in training, as in ``transformers``)."""
        layer = self.encoder_layers[state.layer]
        skip = self.training and self.config.layerdrop > 0.0 and bool(torch.rand([]) < self.config.layerdrop)
        hidden = state.hidden_states
        if not skip:
            hidden = layer(hidden, attention_mask=state.attention_mask)
        return EncoderState(
            hidden, state.frame_mask, state.attention_mask, state.output_lengths, state.layer + 1
        )

    def exit_logits_at(self, k: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, vocab)`` logits of exit ``k`` from the output of its layer."""
        if self.config.do_stable_layer_norm:
            hidden_states = self.wav2vec2.encoder.layer_norm(hidden_states)
        return self.head(k)(self.dropout(hidden_states))

    def iter_exits(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        exits: Iterable[int] | None = None,
        *,
        batch_statistics: bool = False,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> Iterator[ExitStep]:
        """Run the encoder exit by exit: the one loop over encoder layers.

        Yields one :class:`ExitStep` per requested exit, shallow to deep, as soon as its logits exist.
        Layers beyond the deepest requested exit never run. Calling :meth:`ExitStep.retain` on a step
        drops the other utterances: later layers run on the retained rows only (with the padding that
        none of them needs trimmed), and the loop ends when none remain.

        Args:
            input_values: ``(batch, samples)`` waveforms; attention_mask: ``(batch, samples)`` 1 on real samples.
            exits: 0-based exit indices into ``config.exit_layers`` (default: all).
            batch_statistics: the padding rule (:meth:`embed`); ``False`` = each utterance as alone.
            output_hidden_states: give each step the hidden states of every layer run so far (then no
                row may be dropped).
        """
        layers = self.config.exit_layers
        wanted = list(range(len(layers))) if exits is None else sorted({int(k) for k in exits})
        if not wanted or wanted[0] < 0 or wanted[-1] >= len(layers):
            raise ValueError(f"exit indices {exits} must lie in [0, {len(layers) - 1}]")
        state = self.embed(input_values, attention_mask, mask_time_indices, batch_statistics)
        rows = torch.arange(len(input_values))
        hidden = [state.hidden_states] if output_hidden_states else None
        for k in wanted:
            while state.layer < layers[k]:
                state = self.run_layer(state)
                if hidden is not None:
                    hidden.append(state.hidden_states)
            step = ExitStep(
                k,
                layers[k],
                self.exit_logits_at(k, state.hidden_states),
                state.output_lengths,
                rows,
                tuple(hidden) if hidden is not None else None,
            )
            yield step
            keep = step.retained
            if keep is None or len(keep) == len(rows):
                continue
            if hidden is not None:
                raise ValueError("iter_exits(output_hidden_states=True) cannot drop rows")
            if len(keep) == 0:
                return
            state = state.select(keep.to(state.hidden_states.device), self.config)
            rows = rows[keep]

    # ----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_exits: int | None = None,
        output_hidden_states: bool = False,
        mask_time_indices: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Wav2Vec2EEOutput:
        """Run the encoder up to the deepest needed exit and every exit head (``transformers``' padding
        semantics, see the module docstring).

        Args:
            input_values: ``(batch, samples)`` waveforms.
            attention_mask: ``(batch, samples)`` 1 on real samples.
            labels: ``(batch, target_len)`` token ids padded with -100; gives ``loss``, the ``ee``
                objective of :mod:`wav2vec2_ee.objectives` (the sum of the active exits' CTC losses), as
                ``Wav2Vec2ForCTC`` returns its CTC loss; training uses the objective it is configured with.
            num_exits: compute only the first ``num_exits`` exits and stop the encoder at the last of
                them (manual exit activation); default all.
        """
        n = self.config.num_exits if num_exits is None else int(num_exits)
        if not 1 <= n <= self.config.num_exits:
            raise ValueError(f"num_exits must lie in [1, {self.config.num_exits}], got {num_exits}")
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(
                f"label ids must be < vocab_size={self.config.vocab_size}, got {int(labels.max())}"
            )
        steps = list(
            self.iter_exits(
                input_values,
                attention_mask,
                range(n),
                batch_statistics=True,
                mask_time_indices=mask_time_indices,
                output_hidden_states=output_hidden_states,
            )
        )
        exit_logits = [step.logits for step in steps]
        output_lengths = steps[-1].output_lengths
        loss = None
        if labels is not None:  # the losses are made in one place: objectives.py (here its "ee" objective)
            from .objectives import build_objective

            objective = build_objective("ee", self.config, num_exits=n)
            loss = objective(exit_logits, output_lengths, labels).loss
        return Wav2Vec2EEOutput(
            loss=loss,
            logits=exit_logits[-1],
            exit_logits=tuple(exit_logits),
            output_lengths=output_lengths,
            hidden_states=steps[-1].hidden_states,
        )

    # ----------------------------------------------------------------------------------------------
    def reinit_encoder(self) -> None:
        """Re-initialise the transformer layers (and the encoder input stage), keeping the CNN."""
        modules = [self.wav2vec2.feature_projection, self.wav2vec2.encoder]
        for module in modules:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
                self._init_weights(sub)

    # ----------------------------------------------------------------------------------------------
    # loading (transformers' own machinery; the layouts and rules are described at "loading" below)
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """``transformers``' ``from_pretrained``, for every supported checkpoint layout.

        * ours: as saved;
        * a plain ``Wav2Vec2ForCTC``: the exit heads, absent from it, are loaded from its ``lm_head``
          (during loading, see :meth:`_finalize_model_loading`), one INFO line;
        * a local folder of the original research code (``decoders.{i}`` heads beside ``lm_head``, a
          ``copy_model.*`` teacher): the heads are renamed onto ours with ``transformers``'
          ``key_mapping`` (:func:`original_key_mapping`), ``config.share_exit_heads`` follows the stored
          heads, the teacher is ignored, one INFO line. The renaming is not kept for saving: a converted
          model saves in our layout.

        Anything else the checkpoint lacks is handled as ``transformers`` does (initialised and listed
        in its load report); :func:`load_model` is the strict entry that refuses it.
        """
        folder = _local_folder(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        keys = checkpoint_keys(folder) if folder is not None else None
        if not keys or not is_original_layout(keys):
            return super().from_pretrained(
                pretrained_model_name_or_path, *model_args, config=config, **kwargs
            )

        if isinstance(config, PreTrainedConfig):
            config = copy.deepcopy(config)
            if not isinstance(config, Wav2Vec2EEConfig):
                config = Wav2Vec2EEConfig(**config.to_dict())
            num_exits = config.num_exits
        else:  # transformers reads the config; only the number of exits is needed here
            overrides = {k: kwargs[k] for k in ("exit_layers", "num_hidden_layers") if k in kwargs}
            num_exits = cls.config_class.from_pretrained(config or folder, **overrides).num_exits
        mapping, shared = original_key_mapping(folder, keys, num_exits)
        if isinstance(config, PreTrainedConfig):
            config.share_exit_heads = shared
        else:
            kwargs["share_exit_heads"] = shared  # a config attribute: applied when transformers reads it
        user_mapping = kwargs.pop("key_mapping", None) or {}
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            config=config,
            key_mapping={**mapping, **user_mapping},
            output_loading_info=True,
            **kwargs,
        )
        # transformers keeps the renamings it used to reverse them on save: ours must not be reversed
        model._weight_conversions = [
            c
            for c in getattr(model, "_weight_conversions", None) or []
            if not (isinstance(c, WeightRenaming) and c._original_source_patterns[0] in mapping)
        ]
        logger.info(
            "%s: the original research code's layout: decoders.{i} heads (%s)%s",
            pretrained_model_name_or_path,
            "shared" if shared else "one per exit",
            ", copy_model.* teacher dropped" if any(k.startswith("copy_model.") for k in keys) else "",
        )
        return (model, info) if want_info else model

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        """``transformers``' last loading step (initialise what the checkpoint lacked, tie, report),
        preceded by the documented conversion of a plain CTC checkpoint: exit heads that it lacks
        altogether are loaded from its ``lm_head`` (:func:`_load_absent_exit_heads`), so they are
        neither initialised at random first nor reported missing."""
        if isinstance(model, Wav2Vec2EEForCTC):
            _load_absent_exit_heads(model, load_config, loading_info)
        return Wav2Vec2PreTrainedModel._finalize_model_loading(model, load_config, loading_info)


# --------------------------------------------------------------------------------------------------
# loading: our checkpoints, plain Wav2Vec2ForCTC / Wav2Vec2Model ones, and the original research code's
#
# The documented conversions happen in ``Wav2Vec2EEForCTC.from_pretrained``, with ``transformers``'
# own machinery, each announced in one INFO line: a plain ``Wav2Vec2ForCTC`` gets its exit heads
# from its ``lm_head`` (loaded in ``transformers``' post-load step, ``_finalize_model_loading``,
# before missing weights are initialised and reported); the original research code's
# ``decoders.{i}`` layout is renamed by ``from_pretrained(key_mapping=...)`` (the mechanism
# ``transformers`` offers for checkpoints of another naming), its ``copy_model.*`` teacher ignored
# (``_keys_to_ignore_on_load_unexpected``).
#
# Inference, evaluation and a distillation teacher need the checkpoint's own weights, all of them:
# ``load_model`` (``from_pretrained`` plus the config options and a strict check) refuses a folder
# without weights and any tensor that is missing, of another shape or left over.
# ``allow_random_init=True`` (``train --model`` only) builds a fresh model from a config alone and
# lets tensors the checkpoint lacks start random (fresh heads on a ``Wav2Vec2Model``, a new
# vocabulary), with one warning line.

_ORIGINAL_HEAD = re.compile(r"^decoders\.(\d+)\.(weight|bias)$")
_LAYER_KEY = re.compile(r"^(?:wav2vec2\.)?encoder\.layers\.(\d+)\.")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_OUR_MODULES = ("wav2vec2.", "lm_head.", "exit_heads.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def unreadable_file_error(path: str | os.PathLike, err: BaseException) -> ValueError:
    """One-line error for a checkpoint file that cannot be read (empty, truncated, another format)."""
    return ValueError(
        f"{path}: cannot read this file ({_first_line(err)}): empty, truncated or not a checkpoint file"
    )


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{file}: not a valid JSON file ({_first_line(err)})") from err


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The raw ``config.json`` of a checkpoint folder (or a config file), as a dict.

    Raises:
        FileNotFoundError: a folder without ``config.json``.
        ValueError: a file that is not a JSON object (one line naming it).
    """
    path = Path(path)
    file = path if path.is_file() else path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no config.json)")
    values = _read_json(file)
    if not isinstance(values, dict):
        raise ValueError(f"{file}: not a model config (a JSON object is expected)")
    return values


def checkpoint_keys(path: Path) -> list[str] | None:
    """Names of the tensors of a local checkpoint folder (``None`` for a hub id or no weights).

    Raises:
        ValueError: an unreadable ``model.safetensors`` or index (one line naming the file).
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
            raise ValueError(f"{index}: not a safetensors index (no weight_map)")
        return list(data["weight_map"])
    return None


def _has_weights(path: Path) -> bool:
    return any((Path(path) / n).is_file() for n in _WEIGHT_FILES)


def no_weights_error(path: str | os.PathLike) -> FileNotFoundError:
    """One-line refusal of a config without weights (it would be a randomly initialised model)."""
    if Path(path).is_file():
        what = "is a config file, not a checkpoint folder with weights"
    else:
        what = f"holds no model weights (no {' or '.join(_WEIGHT_FILES[::2])})"
    return FileNotFoundError(
        f"{path} {what}: refusing to use a randomly initialised model; "
        "only `train --model` starts from a config alone"
    )


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise unreadable_file_error(file, err) from err


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a local checkpoint folder: safetensors, else ``pytorch_model.bin`` unpickled safely."""
    st = path / "model.safetensors"
    if st.is_file():
        return _load_safetensors(st)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        data = _read_json(index)
        if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
            raise ValueError(f"{index}: not a safetensors index (no weight_map)")
        for shard in sorted(set(data["weight_map"].values())):
            state.update(_load_safetensors(path / shard))
        return state
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(str(binary), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # the file names objects beyond tensors: it could run code
            raise refused_pickle_error(binary, err) from err
        except (RuntimeError, EOFError) as err:  # truncated or not a torch file
            raise ValueError(f"{binary}: cannot read this checkpoint ({str(err).splitlines()[0]})") from err
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")


def refused_pickle_error(path: str | os.PathLike, err: Exception) -> ValueError:
    """One-line error for a pickled checkpoint that ``torch.load(weights_only=True)`` refused."""
    detail = next(
        (line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "global" in line), ""
    )
    return ValueError(
        f"{path}: refusing to load: not a plain tensor checkpoint, unpickling it could run code"
        + (f" ({detail.rstrip('.')})" if detail else "")
        + "; load only weights you trust, preferably as model.safetensors"
    )


def is_original_layout(keys: list[str]) -> bool:
    """Whether tensor names are those of the original research code (``decoders.{i}.*`` heads)."""
    return any(_ORIGINAL_HEAD.match(k) for k in keys)


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


def _local_folder(name_or_path: str | os.PathLike | None, subfolder: str = "") -> Path | None:
    """The local checkpoint folder ``from_pretrained`` reads (``None`` for a hub id)."""
    if name_or_path is None:
        return None
    folder = Path(name_or_path, subfolder or "")
    return folder if folder.is_dir() else None


def _load_absent_exit_heads(model: Wav2Vec2EEForCTC, load_config, loading_info) -> None:
    """The documented conversion of a plain CTC checkpoint, during loading: when the checkpoint holds
    none of the model's exit heads but its ``lm_head``, and its own config does not declare separate
    exit heads, every exit head is loaded from that ``lm_head`` (one INFO line). A checkpoint that
    holds some exit heads, or declares heads it lacks, is incomplete: left to ``transformers`` (and
    refused by :func:`load_model`)."""
    heads = [name for name, _ in model.named_parameters() if name.startswith("exit_heads.")]
    missing = loading_info.missing_keys
    not_loaded = missing | {k for k, *_ in loading_info.mismatched_keys}
    if not heads or not set(heads) <= missing or {"lm_head.weight", "lm_head.bias"} & not_loaded:
        return
    source = load_config.pretrained_model_name_or_path
    folder = _local_folder(source)
    if folder is not None and _declares_exit_heads(folder):
        return
    _heads_from_lm_head(
        model,
        heads,
        source,
        lambda name, value: set_param_for_module(model, name, value, loading_info, load_config.hf_quantizer),
    )


def _heads_from_lm_head(
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
        _some(sorted({k.rsplit(".", 1)[0] for k in names})),
    )


def _config_from_values(file: Path, values: dict, overrides: dict) -> Wav2Vec2EEConfig:
    try:
        return Wav2Vec2EEConfig(**{**values, **overrides})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file}: not a valid model config ({_first_line(err)})") from err


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
        ValueError: a ``config.json`` (or config file) that is not valid JSON or not a valid config.
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
            raise ValueError(
                f"{local / 'config.json'}: not a valid model config ({_first_line(err)})"
            ) from err
        config = Wav2Vec2EEConfig(**{**base.to_dict(), "exit_layers": None, **overrides})
        stored = getattr(base, "exit_layers", None)
        if stored is not None:  # a checkpoint's own exits, checked below ([] or "2,4,6" are errors)
            config.exit_layers = stored
        config.share_exit_heads = bool(getattr(base, "share_exit_heads", False))
    if num_hidden_layers is not None:
        if num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
        if num_hidden_layers > config.num_hidden_layers and model_name_or_path is not None:
            raise ValueError(
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


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _some(items: Iterable[str], limit: int = 4) -> str:
    """``a, b, c, d and 12 more`` (sorted naturally: layer 3 before layer 10)."""
    items = sorted(items, key=_natural)
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _drop_load_report(record: logging.LogRecord) -> bool:
    """A logging filter: transformers' multi-line load report (``_check_loading`` gives the account)."""
    return "LOAD REPORT" not in record.getMessage()


def _from_pretrained(
    load_from: str, config: Wav2Vec2EEConfig, source: str | os.PathLike
) -> tuple[Wav2Vec2EEForCTC, dict]:
    """``Wav2Vec2EEForCTC.from_pretrained`` with its loading info; errors as one line naming ``source``.

    Shapes that differ are loaded as fresh tensors and reported (``ignore_mismatched_sizes``), so that
    :func:`_check_loading` decides; transformers' own load report is silenced in favour of its account.
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
        raise ValueError(f"{source}: cannot load these weights ({_first_line(err)})") from err
    finally:
        report.removeFilter(_drop_load_report)


def _declares_exit_heads(path: Path) -> bool:
    """Whether a local checkpoint's own config has separate exit heads (so its weights must hold them)."""
    try:
        values = read_checkpoint_config(path)
    except (FileNotFoundError, ValueError):
        return False
    return len(values.get("exit_layers") or []) > 1 and not values.get("share_exit_heads", False)


def _check_loading(
    model: Wav2Vec2EEForCTC,
    info: dict,
    source: str | os.PathLike,
    *,
    allow_random_init: bool,
    truncated: bool = False,
    declares_exit_heads: bool = False,
) -> Wav2Vec2EEForCTC:
    """Accept what ``from_pretrained`` loaded (its conversions done), or refuse.

    Strict (``allow_random_init=False``): any missing, mismatched or left-over tensor of the model's
    own modules is a ``ValueError`` naming the keys (``from_pretrained`` has already loaded the exit
    heads of a plain ``Wav2Vec2ForCTC`` checkpoint from its ``lm_head``; should it not have, that is
    done here, with the same INFO line). Left-over layers of an encoder truncated on request
    (``truncated``), and tensors of modules the model has none of (a pretraining quantizer, ...), are
    dropped. With ``allow_random_init`` the tensors the checkpoint lacks start random (one WARNING
    line); absent exit heads, even some of them, start from a loaded ``lm_head``.
    """
    missing = set(info.get("missing_keys", ()))
    mismatched = {k: (tuple(ckpt), tuple(want)) for k, ckpt, want in info.get("mismatched_keys", ())}
    unexpected = set(info.get("unexpected_keys", ()))
    if truncated:
        depth = model.config.num_hidden_layers
        unexpected = {k for k in unexpected if not ((m := _LAYER_KEY.match(k)) and int(m.group(1)) >= depth)}
    foreign = {k for k in unexpected if not k.startswith(_OUR_MODULES)}
    if foreign:
        logger.info("%s: ignoring %d tensors of other modules: %s", source, len(foreign), _some(foreign))
    unexpected -= foreign

    head_keys = {k for k in model.state_dict() if k.startswith("exit_heads.")}
    absent_heads = head_keys & missing
    lm_head_loaded = not any(k.startswith("lm_head.") for k in missing | mismatched.keys())
    convert = bool(absent_heads) and lm_head_loaded
    if not allow_random_init:
        convert = convert and absent_heads == head_keys and not declares_exit_heads
    if convert:
        with torch.no_grad():
            _heads_from_lm_head(
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
                _some(fresh),
            )
        if unexpected:
            logger.warning(
                "%s: %d tensors of the checkpoint do not fit the config and are ignored: %s",
                source,
                len(unexpected),
                _some(unexpected),
            )
        return model

    if {"lm_head.weight", "lm_head.bias"} <= missing and not (
        missing - head_keys - {"lm_head.weight", "lm_head.bias"}
    ):
        raise ValueError(
            f"{source}: no CTC head (lm_head) in the weights, an encoder-only (Wav2Vec2Model) checkpoint: "
            "it cannot transcribe; fine-tune it first (`train --model` gives it fresh heads)"
        )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_some(missing)}")
    if mismatched:
        shapes = [f"{k} {list(ckpt)} vs {list(want)}" for k, (ckpt, want) in mismatched.items()]
        problems.append(f"of another shape (weights vs config) {len(shapes)}: {_some(shapes)}")
        if "lm_head.weight" in mismatched:  # (vocab, hidden): name the config value that differs
            ckpt, want = mismatched["lm_head.weight"]
            for i, name in enumerate(("vocab_size", "hidden_size")):
                if len(ckpt) == 2 and ckpt[i] != want[i]:
                    problems.append(f"the model is built for {name}={want[i]}, the weights have {ckpt[i]}")
    if unexpected:
        problems.append(f"not in the config {len(unexpected)}: {_some(unexpected)}")
    if problems:
        raise ValueError(f"{source}: the weights do not match the config: " + "; ".join(problems))
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
        ValueError: an unreadable weights or config file; weights that do not match the config,
            naming the keys (without ``allow_random_init``).
    """
    path = Path(model_name_or_path) if model_name_or_path is not None else None
    config_only = path is not None and (path.is_file() or (path.is_dir() and not _has_weights(path)))
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
    return _check_loading(
        model,
        info,
        model_name_or_path,
        allow_random_init=allow_random_init,
        truncated=truncated,
        declares_exit_heads=path.is_dir() and _declares_exit_heads(path),
    )


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
