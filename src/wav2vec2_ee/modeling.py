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

**Loading.** ``from_pretrained`` reads every supported checkpoint layout with ``transformers``' own
machinery; the layouts and conversions are :mod:`wav2vec2_ee.checkpoints`, the strict entry
(``load_model``, ``load_config``) and the checkpoint writer :mod:`wav2vec2_ee.loading`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Wav2Vec2Config
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2GroupNormConvLayer,
    Wav2Vec2Model,
    Wav2Vec2PreTrainedModel,
)

from .checkpoints import load_absent_exit_heads, original_layout
from .configuration import Wav2Vec2EEConfig
from .objectives import build_objective


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

    ``from_pretrained`` loads every supported checkpoint layout (:mod:`wav2vec2_ee.checkpoints`):
    ours, a plain ``Wav2Vec2ForCTC`` (the exit heads start from its ``lm_head``) and the original
    research code's (``decoders.{i}`` heads renamed by ``transformers``' ``key_mapping``, its
    ``copy_model.*`` teacher ignored); each conversion is announced in one INFO line.
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
            input_values: ``(batch, samples)`` waveforms.
            attention_mask: ``(batch, samples)`` 1 on real samples, 0 on padding.
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
    # loading: transformers' own machinery, the layouts in wav2vec2_ee.checkpoints
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """``transformers``' ``from_pretrained``, for every supported checkpoint layout.

        * ours: as saved;
        * a plain ``Wav2Vec2ForCTC``: the exit heads, absent from it, are loaded from its ``lm_head``
          (during loading, see :meth:`_finalize_model_loading`), one INFO line;
        * a local folder of the original research code (``decoders.{i}`` heads beside ``lm_head``, a
          ``copy_model.*`` teacher): the heads are renamed onto ours with ``transformers``'
          ``key_mapping`` (:func:`~wav2vec2_ee.checkpoints.original_layout`), ``config.share_exit_heads``
          follows the stored heads, the teacher is ignored, one INFO line. The renaming is not kept for
          saving: a converted model saves in our layout.

        Anything else the checkpoint lacks is handled as ``transformers`` does (initialised and listed
        in its load report); :func:`~wav2vec2_ee.loading.load_model` is the strict entry that refuses it.
        """
        layout = original_layout(pretrained_model_name_or_path, config, kwargs)
        if layout is None:
            return super().from_pretrained(
                pretrained_model_name_or_path, *model_args, config=config, **kwargs
            )
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            output_loading_info=True,
            **layout.from_pretrained_kwargs(kwargs),
        )
        layout.adopt(model, pretrained_model_name_or_path)
        return (model, info) if want_info else model

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        """``transformers``' last loading step (initialise what the checkpoint lacked, tie, report),
        preceded by the documented conversion of a plain CTC checkpoint: exit heads that it lacks
        altogether are loaded from its ``lm_head``
        (:func:`~wav2vec2_ee.checkpoints.load_absent_exit_heads`), so they are neither initialised at
        random first nor reported missing."""
        if isinstance(model, Wav2Vec2EEForCTC):
            load_absent_exit_heads(model, load_config, loading_info)
        return Wav2Vec2PreTrainedModel._finalize_model_loading(model, load_config, loading_info)
