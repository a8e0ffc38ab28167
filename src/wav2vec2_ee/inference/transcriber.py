"""``Transcriber``: the Python API of dynamic early-exit transcription.

>>> from wav2vec2_ee import Transcriber
>>> from wav2vec2_ee.inference import build_policy
>>> t = Transcriber.from_pretrained("runs/ee", policy=build_policy("entropy", threshold=0.4))
>>> t.transcribe("a.wav").text                       # one path (or one array) -> one result
>>> [r.exit_layer for r in t.transcribe(["a.wav", "b.flac"])]   # a list -> a list, in input order
>>> t.transcribe("recordings/")                      # a folder (walked) or a manifest -> a list
>>> for r in t.transcribe_stream(["recordings/", "list.jsonl"]): ...   # in input order, as they are ready
>>> t.transcribe("talk.wav").segments               # a long file: split at its pauses, timed pieces
>>> Transcriber.from_pretrained("runs/ee")   # no policy: the saved exit_policy.json, else the last exit

Inputs: paths of audio files, folders (walked, recursively, for files with an audio extension that
soundfile reads, :data:`~.inputs.AUDIO_EXTENSIONS`, case-insensitive; sorted), JSONL/CSV manifests (the
``audio`` column of the :func:`~wav2vec2_ee.data.read_manifest` format) and 16 kHz mono arrays
(:mod:`.inputs`).

Audio is read lazily: durations come from the file headers, inputs are grouped into batches of
similar length (longest first, among a few batches' worth of consecutive inputs, so that results come
in input order without waiting for the whole list: :meth:`Transcriber.transcribe_stream`), and a
batch's audio is decoded only when that batch runs.

Long recordings (``split``, the default, the same as ``wav2vec2-ee transcribe``'s): an input longer than
``split.max_seconds`` (20 s) is read block by block and split at its pauses
(:mod:`wav2vec2_ee.segmentation`: a voice activity detector, Silero VAD with the ``[vad]`` extra, else
an energy detector); the pieces (each at most ``split.max_seconds``, a stretch of speech without a pause
cut at its quietest moment) are batched, each takes its own exit decision, and the input's text is the
pieces' texts joined; the silence between pieces is never run. Shorter inputs run whole. Its
:class:`Transcription` has one :class:`~wav2vec2_ee.timestamps.Segment` per piece (its time in the
recording, text, exit and layers; ``word_timestamps=True``: its words timed from the CTC alignment),
``exit_layer`` the deepest exit that answered, ``layers_computed`` the pieces' mean weighted by their
audio, ``chunks`` the number of pieces.

``chunk_seconds`` (an explicit choice) replaces the pauses with fixed overlapping windows, as
``transformers``' ASR pipeline does for CTC (``chunk_length_s`` / ``stride_length_s``: :mod:`.chunking`):
each window has ``stride_seconds`` of context on either side (none at the file's ends) and its own exit;
the answering logits of the windows' central frames are concatenated and collapsed once. Windows cut
words and glue the words on either side of a pause together (the pauses' reason to be the default);
they remain for speech without pauses and for comparison. ``chunk_seconds=0`` or ``split=None`` (with
no ``chunk_seconds``): every input in one forward pass, and ``max_seconds`` refuses longer ones.

Timing: ``seconds`` is an input's share of the compute of the batches it ran in (each batch's time split
in proportion to audio x layers run, plus its own lexicon search), so the inputs' ``seconds`` add up to
the compute time; ``latency_seconds`` the time from the start of its first batch until its answer.

Bad inputs: one path or array that cannot be transcribed (missing, not a regular file: a named pipe is
never opened, not audio, too short for the CNN, NaN or infinite samples, longer than ``max_seconds``
with splitting off) raises a ``ValueError`` naming it; in a list (or a folder, a manifest), each such
input gets a :class:`Transcription` whose ``error`` says why (``text`` empty, ``exit_layer`` ``None``)
and the others are transcribed (``raise_errors=True``: raise instead). An array that is not 1-D is a
caller's mistake and always raises.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Processor

from ..audio import SAMPLING_RATE, AudioError
from ..batching import DEFAULT_MAX_BATCH_SECONDS, length_grouped_batches
from ..ctc.decoding import LexiconBeamDecoder, NBestHypothesis, ctc_collapse
from ..ctc.model import min_duration_for_ctc
from ..data import audio_duration, load_audio
from ..device import (
    autocast_dtype,
    check_runtime_options,
    forward_precision,
    model_device,
    prepare_for_inference,
)
from ..errors import UserError
from ..export.runtime import MANIFEST, exported_policy_values
from ..export.source import OnnxExitSource
from ..loading import load_config, load_model
from ..modeling import Wav2Vec2EEForCTC
from ..policy_core import (
    SAVED_POLICY,
    WEIGHTS_FINGERPRINT,
    ExitPolicy,
    FixedExit,
    check_policy_model,
    policy_from_saved,
    read_saved_policy,
    weights_fingerprint,
)
from ..segmentation import EnergyVAD, SileroVAD, SplitOptions, build_vad, iter_audio_blocks, pieces_of
from ..segmentation import Piece as SpeechPiece
from ..timestamps import Segment, Word, frame_seconds, token_strings, word_frames, words_from_frames
from ..transcripts import InputOrder, ResultRow, ResultStream
from ..vocab import build_processor, normalize_transcript
from .chunking import (
    Piece,
    array_pieces,
    central_frames,
    check_chunking,
    file_pieces,
    pad_to_length,
    window_count,
    windows_per_batch,
)
from .engine import run_early_exit
from .inputs import AudioInput, AudioItem, check_array_shapes, expand_inputs, input_list, is_single_input
from .policies import Decoders

logger = logging.getLogger(__name__)

#: Seconds of audio beyond which an input that runs in one forward pass is refused
#: (``Transcriber(max_seconds=)``, ``--max-seconds``): with splitting at pauses and windows off.
DEFAULT_MAX_SECONDS = 60.0

#: How long inputs are split by default (``Transcriber(split=)``, ``transcribe``'s ``--max-segment-seconds``
#: 20, ``--vad auto``): at their pauses, into pieces of at most 20 s.
DEFAULT_SPLIT = SplitOptions()

#: Consecutive inputs (in batches' worth) whose whole ones are length-grouped together: results wait at
#: most this many batches for an earlier input (:meth:`Transcriber.transcribe_stream`).
_GROUP_BATCHES = 4

#: How an input runs: in one forward pass, split at its pauses, or in fixed windows.
_WHOLE, _PAUSES, _WINDOWS = "whole", "pauses", "windows"


class TooLongError(UserError):
    """An input longer than ``max_seconds`` that would run in one forward pass (splitting off): the
    message names it, its duration, the limit and the flags."""

    def __init__(self, source: str, seconds: float, max_seconds: float):
        super().__init__(
            f"{source}: {seconds:.1f} s of audio is longer than the limit of {max_seconds:g} s "
            f"(--max-seconds, Transcriber(max_seconds=...)) for one forward pass, which would take minutes "
            f"and much memory; let it be split at its pauses (the default: --max-segment-seconds "
            f"{DEFAULT_SPLIT.max_seconds:g}, Transcriber(split=SplitOptions())), or raise the limit"
        )
        self.source = source
        self.seconds = seconds
        self.max_seconds = max_seconds


@dataclass
class Transcription(ResultRow):
    """The transcript of one input and what it cost (the row of ``transcribe --output``: the fields are
    described in :mod:`wav2vec2_ee.transcripts`).

    Args:
        source: the path, or ``<array i>`` for the i-th array given.
        text: the transcript (lower case, single spaces; the ``decoder``'s; split: the pieces' texts
            joined); empty when ``error`` is set.
        exit_layer: the layer of the exit that answered (split or windowed: the deepest over the
            pieces); ``None`` when ``error`` is set or no piece had speech.
        layers_computed: transformer layers run for this input (split: the pieces' mean weighted by
            their audio; windowed: the windows' mean; a float); 0 when ``error`` is set.
        num_layers: the model's full depth (the layer of its last exit).
        seconds: its share of the compute time of the batches it ran in (each batch's time, the CNN
            included, audio decoding excluded, split in proportion to audio x layers run; plus its own
            lexicon search): the inputs' ``seconds`` add up to the compute time. 0 when ``error`` is set.
        audio_seconds: duration of the audio (0 when it could not be read).
        error: why this input was not transcribed (``None``: it was); names the input.
        chunks: pieces the input ran as (1: one forward pass; split or windowed: how many; 0 when
            ``error`` is set or no piece had speech).
        path: the input's resolved absolute path (links resolved: ``.`` and an absolute path give the
            same), what identifies it across runs (``--output``'s rows); ``None`` for an array.
        latency_seconds: wall-clock seconds from the start of its first batch until its answer was ready
            (split: the reading and splitting between its batches included).
        decoder: what gave ``text``: ``greedy``, ``lexicon`` or ``lexicon-lm``.
        segments: the pieces it ran as, in order (:class:`~wav2vec2_ee.timestamps.Segment`: start and
            end seconds in the recording, text, exit layer, layers run, and with ``word_timestamps`` the
            words); a whole input is one segment; none when ``error`` is set.
    """

    source: str
    text: str
    exit_layer: int | None
    layers_computed: int | float
    num_layers: int
    seconds: float
    audio_seconds: float
    error: str | None = None
    chunks: int = 1
    path: str | None = None
    latency_seconds: float = 0.0
    decoder: str = "greedy"
    segments: list[Segment] = field(default_factory=list)


def saved_policy_values(folder: str | os.PathLike) -> dict | None:
    """The policy saved with a checkpoint folder (``exit_policy.json``, ``calibrate --save-policy``) or an
    exported folder (the ``policy.json`` its ``export.json`` names), as its JSON object; ``None``: none.

    A policy calibrated for another model is refused (:func:`~wav2vec2_ee.policy_core.check_policy_model`):
    its recorded exit layers differ from the model's, or its weights fingerprint from the checkpoint's
    (:func:`checkpoint_policy_values`) or from the one the export recorded of its source
    (:func:`~wav2vec2_ee.export.runtime.exported_policy_values`). Refused, not warned about: the policy is
    used without being named, and its threshold on other weights is an unknown operating point for every
    file of the run; naming a policy (``--policy``) or calibrating again is the fix."""
    folder = Path(folder)
    if (folder / SAVED_POLICY).is_file():
        return checkpoint_policy_values(folder)
    if (folder / MANIFEST).is_file():
        return exported_policy_values(folder)
    return None


def checkpoint_policy_values(folder: str | os.PathLike) -> dict:
    """A checkpoint's ``exit_policy.json``, read (:func:`~wav2vec2_ee.policy_core.read_saved_policy`) and
    refused when calibrated for another model: other exit layers than the checkpoint's ``config.json``, or
    another weights fingerprint (computed only when the policy records one)."""
    folder = Path(folder)
    file = folder / SAVED_POLICY
    values = read_saved_policy(file)
    exit_layers = list(load_config(str(folder)).exit_layers)
    fingerprint = weights_fingerprint(folder) if values.get(WEIGHTS_FINGERPRINT) is not None else None
    check_policy_model(values, exit_layers, fingerprint, str(file))
    return values


def saved_policy(folder: str | os.PathLike) -> ExitPolicy | None:
    """The policy saved with a checkpoint or an exported folder (:func:`saved_policy_values`), or ``None``."""
    values = saved_policy_values(folder)
    if values is None:
        return None
    policy = policy_from_saved(values, f"{folder}: saved policy")
    logger.info("%s: using the saved exit policy %r", folder, policy)
    return policy


@dataclass
class _Answer:
    """One input of a batch, answered (:meth:`Transcriber._answer_batch`).

    Args:
        text: its transcript (the decoder's), normalised; words: timed words (``word_timestamps``).
        exit_layer / layers: the exit that answered, layers run.
        seconds: its share of the batch's compute (plus its own lexicon search).
        started / ready: ``time.perf_counter()`` at the start of the batch and when its answer was ready.
        logits: ``(frames, vocab)`` answering logits on its valid frames (when kept).
    """

    text: str
    exit_layer: int
    layers: int
    seconds: float
    started: float
    ready: float
    words: list[Word] | None = None
    logits: torch.Tensor | None = None


class TranscriptionStream(ResultStream[Transcription]):
    """The results of :meth:`Transcriber.transcribe_stream` (:class:`~wav2vec2_ee.transcripts.ResultStream`
    of :class:`Transcription`)."""


class Transcriber:
    """Transcribe audio with an early-exit model and an exit policy.

    Args:
        model: an early-exit model (put in eval mode here).
        policy: the exit policy (default: the last exit, i.e. the full model).
        processor: feature extractor + tokenizer (default: the bundled vocabulary).
        lexicon_decoder: the lexicon beam decoder that the ``posterior`` policy needs.
        batch_size / max_batch_seconds: utterances (or pieces, windows) and seconds of padded audio per
            batch.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the forward pass's precision
            (``torch.autocast``).
        max_seconds: with splitting off (``split=None`` or ``chunk_seconds=0``), inputs longer than this
            are refused (an error naming the input, its duration and the limit): an utterance runs in one
            forward pass, so a long recording would take minutes and memory quadratic in its length
            (self-attention). ``None``: no limit. Not applied while long inputs are split or windowed.
        split: how inputs longer than ``split.max_seconds`` are split at their pauses
            (:class:`~wav2vec2_ee.segmentation.SplitOptions`; default :data:`DEFAULT_SPLIT`: 20 s, the
            detector ``auto``, as ``transcribe``); ``None``: off.
        chunk_seconds: instead of splitting at pauses, transcribe inputs longer than this in fixed
            overlapping windows of this many seconds (see the module's docstring;
            :data:`~.chunking.DEFAULT_CHUNK_SECONDS`, 30 s, is a good value). ``None``: no windows (the pauses); 0: neither
            windows nor pauses (each input in one forward pass, ``max_seconds`` applies).
        stride_seconds: context on either side of a window whose frames are dropped (default
            ``chunk_seconds / 6``, as ``transformers``' pipeline); less than ``chunk_seconds / 2``.
        word_timestamps: give each segment its words, timed from the CTC alignment of the text's decoder.
        decoder: the lexicon beam search whose best hypothesis is the text (built from a
            :class:`~wav2vec2_ee.ctc.decoder_spec.LexiconDecoderSpec`, with or without a language model);
            ``None``: greedy (the best path of the answering exit).

    The model runs where it is: :meth:`from_pretrained` places it (``device=``) and applies the CPU
    speed-ups (:mod:`wav2vec2_ee.accel`) when that is a CPU.
    """

    def __init__(
        self,
        model: Wav2Vec2EEForCTC,
        policy: ExitPolicy | None = None,
        processor: Wav2Vec2Processor | None = None,
        lexicon_decoder: LexiconBeamDecoder | None = None,
        batch_size: int = 16,
        max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS,
        dtype: str = "float32",
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        chunk_seconds: float | None = None,
        stride_seconds: float | None = None,
        split: SplitOptions | None = DEFAULT_SPLIT,
        word_timestamps: bool = False,
        decoder: LexiconBeamDecoder | None = None,
    ):
        check_runtime_options(batch_size=batch_size, max_batch_seconds=max_batch_seconds)
        if max_seconds is not None and not float(max_seconds) > 0:
            raise UserError(f"--max-seconds must be a number > 0, got {max_seconds}")
        if split is not None and not isinstance(split, SplitOptions):
            raise TypeError(f"split must be a SplitOptions or None, got {type(split).__name__}")
        whole_only = chunk_seconds is not None and not isinstance(chunk_seconds, bool) and chunk_seconds == 0
        self.chunk_seconds, self.stride_seconds = check_chunking(chunk_seconds, stride_seconds)
        self.split = None if whole_only else split
        self.word_timestamps = bool(word_timestamps)
        self.decoder = decoder
        self.model = model.eval()
        self.policy = policy if policy is not None else FixedExit()
        # fail now on a layer the model lacks (a fixed layer, a --max-layer that is no exit layer)
        self.policy.deepest_exit(model.config.exit_layers)
        self.processor = processor if processor is not None else build_processor(None)
        self.decoders = Decoders(self.processor.tokenizer, lexicon_decoder)
        self.batch_size = int(batch_size)
        self.max_batch_seconds = max_batch_seconds
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.dtype = autocast_dtype(dtype)
        # an exported model's ONNX segments (from_export) run on the CPU
        self._device = model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
        self._min_seconds = min_duration_for_ctc(model)
        if (
            self.chunk_seconds is not None
            and self.chunk_seconds - 2 * self.stride_seconds < self._min_seconds
        ):
            raise UserError(
                f"--chunk-seconds {self.chunk_seconds:g}: the window less its strides is shorter than the "
                f"model's shortest input ({self._min_seconds:g} s)"
            )
        # the CTC alignment's clock and alphabet (word timestamps)
        self.frame_seconds = frame_seconds(model.config.conv_stride, SAMPLING_RATE)
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        delimiter = getattr(tokenizer, "word_delimiter_token", None)
        self._blank = int(tokenizer.pad_token_id)
        self._delimiter = vocab.get(delimiter) if delimiter is not None else None
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self._tokens = token_strings(tokens, tokenizer.pad_token, delimiter)
        self._vad: EnergyVAD | SileroVAD | None = None
        if self.split is not None and self.split.vad == "silero":
            self._detector()  # a missing [vad] extra is refused now, not as an error of each long file

    @classmethod
    def from_export(
        cls,
        folder: str | os.PathLike,
        policy: ExitPolicy | None = None,
        precision: str | None = None,
        **kwargs,
    ) -> Transcriber:
        """A transcriber for a folder written by ``wav2vec2-ee export``: the same engine and policies,
        each exported segment run by ONNX Runtime (``precision``: ``"float"`` or ``"int8"`` where the
        export has it; default the best there). Without ``policy``, the folder's ``policy.json`` if it
        has one (any saved policy, the learned one included), else the last exit."""
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such export folder")
        source = OnnxExitSource(folder, precision)
        if policy is None:
            policy = saved_policy(folder)
        return cls(source, policy, build_processor(folder), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        policy: ExitPolicy | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> Transcriber:
        """A transcriber for a checkpoint folder (its own vocabulary when it has one), on ``device``
        (default ``cuda`` when available, else ``cpu``, :func:`~wav2vec2_ee.device.resolve_device`).
        Without ``policy``, the folder's saved policy (``exit_policy.json``, written by ``calibrate
        --save-policy``) if it has one, else the last exit."""
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint folder")
        if policy is None:
            policy = saved_policy(checkpoint)
        model = prepare_for_inference(load_model(str(checkpoint)), device)
        return cls(model, policy, build_processor(checkpoint), **kwargs)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.exit_layers[-1])

    @property
    def decoder_name(self) -> str:
        """What gives the text: ``greedy``, ``lexicon`` or ``lexicon-lm`` (a lexicon search with an LM)."""
        if self.decoder is None:
            return "greedy"
        return "lexicon-lm" if getattr(self.decoder, "has_lm", False) else "lexicon"

    # ----------------------------------------------------------------------------------------------
    # inputs

    def _mode(self, seconds: float) -> str:
        """How an input of ``seconds`` runs: whole, split at its pauses, or in windows."""
        if self.chunk_seconds is not None:
            return _WINDOWS if seconds > self.chunk_seconds else _WHOLE
        if self.split is not None and seconds > self.split.max_seconds:
            return _PAUSES
        return _WHOLE

    def _chunked(self, seconds: float) -> bool:
        return self._mode(seconds) != _WHOLE

    def _check_length(self, source: str, seconds: float) -> None:
        splitting = self.chunk_seconds is not None or self.split is not None
        if not splitting and self.max_seconds is not None and seconds > self.max_seconds:
            raise TooLongError(source, seconds, self.max_seconds)

    def _check_short(self, source: str, samples: int) -> None:
        if samples / SAMPLING_RATE < self._min_seconds:
            raise UserError(
                f"{source}: {samples} samples is too short for the model "
                f"(at least {self._min_seconds * SAMPLING_RATE:.0f} samples at 16 kHz)"
            )

    #: Folders walked for audio files, manifests read, arrays named (:func:`~.inputs.expand_inputs`).
    expand = staticmethod(expand_inputs)

    def _measure(self, item: AudioItem) -> None:
        """``item.seconds`` from the header (a path) or the array, checked against the limits; a
        ``ValueError`` naming the input when it cannot be used."""
        if item.error is not None:
            raise UserError(item.error)
        if item.array is not None:
            if not np.isfinite(item.array).all():
                raise UserError(f"{item.source}: the waveform contains NaN or infinite samples")
            item.seconds = len(item.array) / SAMPLING_RATE
            self._check_length(item.source, item.seconds)
            self._check_short(item.source, len(item.array))
        else:
            item.seconds = audio_duration(item.path)  # type: ignore[arg-type]
            self._check_length(item.source, item.seconds)
            self._check_short(item.source, round(item.seconds * SAMPLING_RATE))

    def _decode(self, item: AudioItem) -> np.ndarray:
        """The 16 kHz waveform of an input that runs whole, decoded now."""
        if item.array is not None:
            return item.array
        array = load_audio(item.path, item.source)  # type: ignore[arg-type]
        self._check_length(item.source, len(array) / SAMPLING_RATE)
        self._check_short(item.source, len(array))
        return array

    def _inputs(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, samples)`` normalised, padded input values and their attention mask."""
        fe = self.processor.feature_extractor
        values = [fe(a, sampling_rate=SAMPLING_RATE).input_values[0] for a in arrays]
        batch = fe.pad(
            {"input_values": values}, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        return batch["input_values"].to(self._device), batch["attention_mask"].to(self._device)

    def _run(self, arrays: Sequence[np.ndarray], return_logits: bool = False):
        input_values, attention_mask = self._inputs(arrays)
        with forward_precision(input_values.device, self.dtype):
            return run_early_exit(
                self.model, input_values, attention_mask, self.policy, self.decoders, return_logits
            )

    # ----------------------------------------------------------------------------------------------
    # a batch: run, decode, time

    def _answer_batch(
        self, arrays: Sequence[np.ndarray], offsets: Sequence[float] | None = None, keep_logits: bool = False
    ) -> list[_Answer]:
        """Run a batch; each input's text (the decoder's), words (``word_timestamps``, at ``offsets``
        seconds in its recording) and its share of the batch's time. ``keep_logits``: keep each input's
        answering logits and leave the text greedy, the words out (windows: their central frames are
        decoded by the caller)."""
        started = time.perf_counter()
        decode = not keep_logits and (self.decoder is not None or self.word_timestamps)
        out = self._run(arrays, return_logits=keep_logits or decode)
        engine = time.perf_counter() - started
        # the engine's clock (out.seconds) starts after the feature extraction
        lead = max(0.0, engine - max(out.seconds))
        offsets = list(offsets) if offsets is not None else [0.0] * len(arrays)
        answers = []
        for j in range(len(arrays)):
            logits = out.logits[j] if out.logits is not None else None
            text, words, search = out.transcripts[j], None, 0.0  # type: ignore[index]
            if decode and self.decoder is not None:
                text, words, search = self._decode_logits(logits, offsets[j])  # type: ignore[arg-type]
            elif decode:  # greedy: the engine's text, its words from the best path
                words = self._greedy_words(logits.argmax(-1).tolist(), offsets[j])  # type: ignore[union-attr]
            answers.append(
                _Answer(
                    text=text,
                    exit_layer=out.exit_layer[j],
                    layers=out.layers_computed[j],
                    seconds=search,
                    started=started,
                    # the engine's answer, or the end of its lexicon search (rows are searched in turn)
                    ready=time.perf_counter() if search else started + lead + out.seconds[j],
                    words=words,
                    logits=logits if keep_logits else None,
                )
            )
        # the batch's time in proportion to the work each input caused: its audio x its layers
        weights = [len(a) * max(1, answer.layers) for a, answer in zip(arrays, answers)]
        total = sum(weights) or 1
        for weight, answer in zip(weights, answers):
            answer.seconds += engine * weight / total
        return answers

    def _decode_logits(
        self, logits: torch.Tensor, offset: float, ids: torch.Tensor | None = None
    ) -> tuple[str, list[Word] | None, float]:
        """``(text, words, seconds of lexicon search)`` of one input's ``(frames, vocab)`` answering
        logits: the decoder's best hypothesis (greedy: the best path ``ids``, computed when not given),
        its words timed from ``offset`` seconds when ``word_timestamps``."""
        if self.decoder is not None:
            started = time.perf_counter()
            best = self.decoder.best(logits)
            search = time.perf_counter() - started
            text = normalize_transcript(best.text) if best is not None else ""
            words = self._hypothesis_words(best, offset) if self.word_timestamps else None
            return text, words, search
        if ids is None:
            ids = logits.argmax(-1).to("cpu", torch.int32)
        text = normalize_transcript(ctc_collapse(ids.unsqueeze(0).long(), None, self.processor.tokenizer)[0])
        words = self._greedy_words(ids.tolist(), offset) if self.word_timestamps else None
        return text, words, 0.0

    def _greedy_words(self, ids: Sequence[int], offset: float) -> list[Word]:
        return words_from_frames(ids, self._tokens, self._blank, self._delimiter, self.frame_seconds, offset)

    def _hypothesis_words(self, best: NBestHypothesis | None, offset: float) -> list[Word]:
        """The words of a lexicon hypothesis, each timed by the frames of its path that spell it."""
        if best is None:
            return []
        spans = word_frames(best.path, self._blank, self._delimiter)
        if len(spans) != len(best.words):  # a path that does not split into its words: time the path's
            return self._greedy_words(best.path, offset)
        step = self.frame_seconds
        return [
            Word(word.lower(), round(offset + a * step, 3), round(offset + b * step, 3))
            for word, (_, a, b) in zip(best.words, spans)
        ]

    # ----------------------------------------------------------------------------------------------
    # transcription

    def transcribe(
        self,
        audio: AudioInput | Sequence[AudioInput],
        raise_errors: bool | None = None,
        progress: bool = False,
    ) -> Transcription | list[Transcription]:
        """Transcribe a path, an array (16 kHz mono), a folder, a manifest, or a list of them.

        Args:
            raise_errors: raise a ``ValueError`` naming the first input that cannot be transcribed
                (missing, not audio, too short, non-finite, longer than ``max_seconds`` with splitting
                off) instead of returning it with ``error`` set. Default: raise for one input, report for
                a list.
            progress: a progress bar on stderr (in seconds of audio) when there is more than one batch.

        Returns:
            one :class:`Transcription` for one file or array, else a list in input order (folders and
            manifests expanded in place; failed inputs included, with ``error`` set, ``text`` empty
            and ``exit_layer`` ``None``).
        """
        single = is_single_input(audio)
        items = input_list(audio)
        if raise_errors is None:
            raise_errors = single
        if not items:
            return []
        results = list(self.transcribe_stream(items, raise_errors=raise_errors, progress=progress))
        return results[0] if single else results

    def transcribe_stream(
        self,
        audio: AudioInput | Sequence[AudioInput],
        skip: Collection[str] = (),
        raise_errors: bool = False,
        progress: bool = False,
        once: bool = False,
    ) -> TranscriptionStream:
        """Transcribe like :meth:`transcribe`, giving each result in input order as soon as it and every
        input before it are done (whole inputs are length-grouped among a few batches' worth of
        consecutive inputs, so a result waits for a few batches at most). Inputs whose source or
        resolved path (:attr:`Transcription.path`) is in ``skip`` are left out (a resumed run); ``once``:
        a file named more than once (``.`` and its absolute path) is transcribed once. Folders are walked
        and manifests read now (``total`` is known); audio is read as it runs."""
        items = input_list(audio)
        check_array_shapes(items)
        inputs = expand_inputs(items)
        plan = self._plan(inputs, skip, once)
        return TranscriptionStream(len(plan), self._in_order(inputs, plan, raise_errors, progress))

    def transcribe_batches(
        self,
        audio: AudioInput | Sequence[AudioInput],
        skip: Collection[str] = (),
        raise_errors: bool = False,
        progress: bool = False,
        once: bool = False,
    ) -> Iterator[list[Transcription]]:
        """Transcribe like :meth:`transcribe_stream`, yielding results as they are ready, in the order
        they are computed: a list per batch (the inputs refused from their headers first; then each
        batch's, longest first; a long input alone)."""
        items = input_list(audio)
        check_array_shapes(items)
        inputs = expand_inputs(items)
        for batch in self._batches(inputs, self._plan(inputs, skip, once), raise_errors, progress):
            yield [result for _, result in batch]

    @staticmethod
    def _plan(inputs: list[AudioItem], skip: Collection[str], once: bool) -> list[int]:
        """The indices of ``inputs`` to transcribe: those not in ``skip`` (source or resolved path),
        with ``once`` each file once."""
        skip = set(skip)
        plan = []
        for i, item in enumerate(inputs):
            if item.source in skip or item.key in skip:
                continue
            if once:
                skip.add(item.key)
            plan.append(i)
        return plan

    def _in_order(
        self, inputs: list[AudioItem], plan: list[int], raise_errors: bool, progress: bool
    ) -> Iterator[Transcription]:
        position = {i: k for k, i in enumerate(plan)}
        order = InputOrder()
        for batch in self._batches(inputs, plan, raise_errors, progress):
            for i, result in batch:
                yield from order.add(position[i], result)

    def _batch_count(self, inputs: list[AudioItem], runnable: list[int]) -> int:
        """How many batches the runnable inputs take (about, for a long input split at its pauses)."""
        count = 0
        group = _GROUP_BATCHES * self.batch_size
        per_window = windows_per_batch(self.chunk_seconds, self.batch_size, self.max_batch_seconds)
        for g in range(0, len(runnable), group):
            members = [inputs[i].seconds for i in runnable[g : g + group]]
            whole = [s for s in members if self._mode(s) == _WHOLE]
            count += len(length_grouped_batches(whole, self.batch_size, self.max_batch_seconds))
            for seconds in members:
                mode = self._mode(seconds)
                if mode == _WINDOWS:
                    count += -(-self._window_count(seconds) // per_window)
                elif mode == _PAUSES:
                    per_batch = self.batch_size * self.split.max_seconds  # type: ignore[union-attr]
                    if self.max_batch_seconds is not None:
                        per_batch = min(per_batch, self.max_batch_seconds)
                    count += max(1, int(-(-seconds // per_batch)))
        return count

    def _batches(
        self,
        inputs: list[AudioItem],
        plan: list[int],
        raise_errors: bool,
        progress: bool,
    ) -> Iterator[list[tuple[int, Transcription]]]:
        """``(input index, result)`` lists as the work is done: the inputs refused from their headers
        first, then, a few batches' worth of consecutive inputs at a time, the whole ones' length-grouped
        batches (longest first) and each long one."""
        failed: list[tuple[int, Transcription]] = []
        runnable: list[int] = []
        for i in plan:
            item = inputs[i]
            try:
                self._measure(item)
            except ValueError as err:  # AudioError included: each message names its input
                if raise_errors:
                    raise
                failed.append((i, self._failed(item, str(err), getattr(err, "seconds", 0.0))))
                continue
            runnable.append(i)
        if failed:
            yield failed
        total = sum(inputs[i].seconds for i in runnable)
        bar = _progress_bar(progress and self._batch_count(inputs, runnable) > 1, total)
        group = _GROUP_BATCHES * self.batch_size
        try:
            for g in range(0, len(runnable), group):
                members = runnable[g : g + group]
                whole = [i for i in members if self._mode(inputs[i].seconds) == _WHOLE]
                durations = [inputs[i].seconds for i in whole]
                for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
                    yield self._run_whole([whole[j] for j in batch], inputs, raise_errors, bar)
                for i in members:
                    mode = self._mode(inputs[i].seconds)
                    if mode == _WHOLE:
                        continue
                    try:
                        if mode == _WINDOWS:
                            result = self._transcribe_chunked(inputs[i], bar)
                        else:
                            result = self._transcribe_split(inputs[i], bar)
                    except ValueError as err:
                        if raise_errors:
                            raise
                        result = self._failed(inputs[i], str(err), inputs[i].seconds)
                    yield [(i, result)]
        finally:
            bar.close()

    def _run_whole(
        self, indices: list[int], inputs: list[AudioItem], raise_errors: bool, bar
    ) -> list[tuple[int, Transcription]]:
        """One batch of inputs that run whole: decoded now, run, answered."""
        rows, arrays, out = [], [], []
        for i in indices:
            try:
                arrays.append(self._decode(inputs[i]))
                rows.append(i)
            except ValueError as err:
                if raise_errors:
                    raise
                out.append((i, self._failed(inputs[i], str(err), inputs[i].seconds)))
        if rows:
            for i, array, answer in zip(rows, arrays, self._answer_batch(arrays)):
                out.append((i, self._whole(inputs[i], array, answer)))
        bar.update(sum(inputs[i].seconds for i in indices))
        return out

    def _whole(self, item: AudioItem, array: np.ndarray, answer: _Answer) -> Transcription:
        seconds = len(array) / SAMPLING_RATE
        segment = Segment(0.0, round(seconds, 3), answer.text, answer.words, answer.exit_layer, answer.layers)
        return Transcription(
            source=item.source,
            text=answer.text,
            exit_layer=answer.exit_layer,
            layers_computed=answer.layers,
            num_layers=self.num_layers,
            seconds=answer.seconds,
            audio_seconds=seconds,
            path=_path_of(item),
            latency_seconds=answer.ready - answer.started,
            decoder=self.decoder_name,
            segments=[segment],
        )

    def _failed(self, item: AudioItem, error: str, audio_seconds: float = 0.0) -> Transcription:
        return Transcription(
            source=item.source,
            text="",
            exit_layer=None,
            layers_computed=0,
            num_layers=self.num_layers,
            seconds=0.0,
            audio_seconds=audio_seconds,
            error=error,
            chunks=0,
            path=_path_of(item),
            decoder=self.decoder_name,
        )

    # ----------------------------------------------------------------------------------------------
    # long recordings split at their pauses (wav2vec2_ee.segmentation)

    def _detector(self) -> EnergyVAD | SileroVAD:
        """The voice activity detector of ``split.vad``, built once (a stream: reset per recording)."""
        if self._vad is None:
            self._vad = build_vad(self.split.vad)  # type: ignore[union-attr]
        return self._vad

    def _speech_pieces(self, item: AudioItem, counted: list[int]) -> Iterator[SpeechPiece]:
        """The pieces of a long input, split at its pauses as it is read (a file block by block, never
        whole); ``counted[0]`` counts the samples read."""

        def blocks() -> Iterator[np.ndarray]:
            if item.array is not None:
                step = 30 * SAMPLING_RATE
                source = (item.array[i : i + step] for i in range(0, len(item.array), step))
            else:
                source = iter_audio_blocks(item.path, source=item.source)  # type: ignore[arg-type]
            for block in source:
                counted[0] += len(block)
                yield block

        return pieces_of(blocks(), self.split, self._detector())

    def _answer_pieces(self, pieces: list[SpeechPiece]) -> list[tuple[SpeechPiece, _Answer]]:
        """Pieces of one recording, length-grouped into batches, run; in recording order."""
        min_samples = round(self._min_seconds * SAMPLING_RATE) + 1
        durations = [len(piece.audio) / SAMPLING_RATE for piece in pieces]
        out = []
        for batch in length_grouped_batches(durations, self.batch_size, self.max_batch_seconds):
            arrays = [pad_to_length(pieces[j].audio, min_samples) for j in batch]
            offsets = [pieces[j].start / SAMPLING_RATE for j in batch]
            out += [(pieces[j], answer) for j, answer in zip(batch, self._answer_batch(arrays, offsets))]
        return sorted(out, key=lambda pair: pair[0].start)

    def _transcribe_split(self, item: AudioItem, bar) -> Transcription:
        """One long input split at its pauses: a few batches' worth of pieces at a time are run (each
        piece exits on its own), their texts joined; the silence between them is not run."""
        counted = [0]
        # (start, end) samples and the answer of each piece run: a piece's audio is dropped once it has
        # run, so memory does not grow with the recording's length
        answered: list[tuple[int, int, _Answer]] = []
        pending: list[SpeechPiece] = []
        covered = 0  # samples of the recording the bar has counted
        most = _GROUP_BATCHES * self.batch_size
        seconds_cap = 2 * self.max_batch_seconds if self.max_batch_seconds is not None else float("inf")

        def run() -> None:
            nonlocal covered, pending
            answered.extend(
                (piece.start, piece.end, answer) for piece, answer in self._answer_pieces(pending)
            )
            bar.update(max(0, pending[-1].end - covered) / SAMPLING_RATE)
            covered = max(covered, pending[-1].end)
            pending = []

        for piece in self._speech_pieces(item, counted):
            pending.append(piece)
            if len(pending) >= most or sum(len(p.audio) for p in pending) / SAMPLING_RATE >= seconds_cap:
                run()
        if pending:
            run()
        bar.update(max(0, counted[0] - covered) / SAMPLING_RATE)
        answers = [answer for _, _, answer in answered]
        samples = [end - start for start, end, _ in answered]
        segments = [
            Segment(
                round(start / SAMPLING_RATE, 3),
                round(end / SAMPLING_RATE, 3),
                answer.text,
                answer.words,
                answer.exit_layer,
                answer.layers,
            )
            for start, end, answer in answered
        ]
        layers = sum(a.layers * n for a, n in zip(answers, samples)) / sum(samples) if answers else 0.0
        return Transcription(
            source=item.source,
            text=" ".join(a.text for a in answers if a.text),
            exit_layer=max(a.exit_layer for a in answers) if answers else None,
            layers_computed=float(layers),
            num_layers=self.num_layers,
            seconds=sum(a.seconds for a in answers),
            audio_seconds=counted[0] / SAMPLING_RATE,
            chunks=len(answers),
            path=_path_of(item),
            latency_seconds=_latency(answers),
            decoder=self.decoder_name,
            segments=segments,
        )

    # ----------------------------------------------------------------------------------------------
    # long recordings in fixed windows (--chunk-seconds: .chunking)

    def _window_count(self, seconds: float) -> int:
        return window_count(seconds, self.chunk_seconds, self.stride_seconds)  # type: ignore[arg-type]

    def _pieces(self, item: AudioItem) -> Iterator[Piece]:
        """The windows of a long input; a file is read window by window, never whole."""
        chunk, stride = self.chunk_seconds, self.stride_seconds
        assert chunk is not None
        if item.array is not None:
            return array_pieces(item.array, chunk, stride)
        return file_pieces(item.path, item.source, chunk, stride)  # type: ignore[arg-type]

    def _run_pieces(self, pieces: Sequence[Piece], joined: _Joined, bar) -> None:
        """Run a batch of windows; each one's central frames at the exit that answered (as argmax ids)
        join ``joined``, and make its segment. A window shorter than the model's shortest input (a last
        sliver) is padded; the padding's frames are dropped with its right context."""
        min_samples = round(self._min_seconds * SAMPLING_RATE) + 1
        arrays = [pad_to_length(piece.audio, min_samples) for piece in pieces]
        answers = self._answer_batch(arrays, keep_logits=True)
        for j, (piece, answer) in enumerate(zip(pieces, answers)):
            padding = len(arrays[j]) - len(piece.audio)
            logits = answer.logits  # type: ignore[assignment]
            first, last = central_frames(len(logits), len(arrays[j]), piece.left, piece.right + padding)
            ids = logits[first:last].argmax(-1).to("cpu", torch.int32)
            joined.ids.append(ids)
            joined.layers.append(answer.layers)
            joined.exits.append(answer.exit_layer)
            start = (piece.start + piece.left) / SAMPLING_RATE
            text, words, search = self._decode_logits(logits[first:last], start, ids)
            end = start + piece.central_samples / SAMPLING_RATE
            joined.segments.append(
                Segment(round(start, 3), round(end, 3), text, words, answer.exit_layer, answer.layers)
            )
            joined.seconds += answer.seconds + search
            joined.started = min(joined.started, answer.started)
            joined.ready = max(joined.ready, answer.ready + search)
        bar.update(sum(piece.central_samples for piece in pieces) / SAMPLING_RATE)

    def _transcribe_chunked(self, item: AudioItem, bar) -> Transcription:
        """One long input in overlapping windows: each window exits on its own; the central frames of
        each window's answering logits are kept (as argmax ids) and collapsed once (the lexicon
        decoder: each window's central frames searched on their own, their texts joined)."""
        joined = _Joined()
        per_batch = windows_per_batch(self.chunk_seconds, self.batch_size, self.max_batch_seconds)
        pending: list[Piece] = []
        for piece in self._pieces(item):
            joined.samples += piece.central_samples
            pending.append(piece)
            if len(pending) >= per_batch:
                self._run_pieces(pending, joined, bar)
                pending = []
        if pending:
            self._run_pieces(pending, joined, bar)
        if not joined.ids:
            raise AudioError(item.source, "the file holds no audio samples")
        if self.decoder is None:
            text = ctc_collapse(torch.cat(joined.ids).unsqueeze(0).long(), None, self.processor.tokenizer)[0]
        else:
            text = " ".join(segment.text for segment in joined.segments if segment.text)
        return Transcription(
            source=item.source,
            text=normalize_transcript(text),
            exit_layer=max(joined.exits),
            layers_computed=sum(joined.layers) / len(joined.layers),
            num_layers=self.num_layers,
            seconds=joined.seconds,
            audio_seconds=joined.samples / SAMPLING_RATE,
            chunks=len(joined.layers),
            path=_path_of(item),
            latency_seconds=joined.ready - joined.started,
            decoder=self.decoder_name,
            segments=joined.segments,
        )

    def __call__(
        self, audio: AudioInput | Sequence[AudioInput], raise_errors: bool | None = None
    ) -> Transcription | list[Transcription]:
        return self.transcribe(audio, raise_errors)


def _latency(answers: Sequence[_Answer]) -> float:
    """Seconds from the start of the first batch of a recording's pieces until its last answer."""
    return max(a.ready for a in answers) - min(a.started for a in answers) if answers else 0.0


def _path_of(item: AudioItem) -> str | None:
    """:attr:`Transcription.path` of an input: its resolved path (:attr:`~.inputs.AudioItem.key`), ``None``
    for an array."""
    return None if item.array is not None else item.key


@dataclass
class _Joined:
    """The windows of one long input answered so far (:meth:`Transcriber._transcribe_chunked`).

    Args:
        ids: per window, ``(central frames,)`` int32 argmax ids of the exit that answered.
        layers / exits: per window, the layers computed and the layer of the exit that answered.
        segments: per window, its central part's segment.
        seconds: the windows' shares of their batches' compute; samples: 16 kHz samples answered for.
        started / ready: ``time.perf_counter()`` at the start of the first batch, at the last answer.
    """

    ids: list[torch.Tensor] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    started: float = float("inf")
    ready: float = float("-inf")


class _NoBar:
    def update(self, n: float) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(show: bool, total: float):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=round(total, 1), desc="transcribing", unit="s", file=sys.stderr, dynamic_ncols=True)
