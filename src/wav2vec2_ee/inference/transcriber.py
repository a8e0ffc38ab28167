"""``Transcriber``: the Python API of dynamic early-exit transcription.

>>> from wav2vec2_ee import Transcriber
>>> from wav2vec2_ee.inference import build_policy
>>> t = Transcriber.from_pretrained("runs/ee", policy=build_policy("entropy", threshold=0.4))
>>> t.transcribe("a.wav").text                       # one path (or one array) -> one result
>>> [r.exit_layer for r in t.transcribe(["a.wav", "b.flac"])]   # a list -> a list, in input order
>>> t.transcribe("recordings/")                      # a folder (walked) or a manifest -> a list
>>> for batch in t.transcribe_batches(["recordings/", "list.jsonl"]): ...   # results as they finish
>>> Transcriber.from_pretrained("runs/ee")   # no policy: the saved exit_policy.json, else the last exit

Inputs: paths of audio files, folders (walked, recursively, for files with an audio extension that
soundfile reads, :data:`~.inputs.AUDIO_EXTENSIONS`, case-insensitive; sorted), JSONL/CSV manifests (the
``audio`` column of the :func:`~wav2vec2_ee.data.read_manifest` format) and 16 kHz mono arrays
(:mod:`.inputs`).

Audio is read lazily: durations come from the file headers, inputs are grouped into batches of
similar length (longest first), and a batch's audio is decoded only when that batch runs.

Long recordings (``chunk_seconds``): an input longer than ``chunk_seconds`` is cut into overlapping
windows (:mod:`.chunking`), as ``transformers``' ASR pipeline does for CTC (``chunk_length_s`` /
``stride_length_s``): each window has ``stride_seconds`` of context on either side (none at the file's
ends); each window takes its own exit decision; the answering exit's logits of the window's central
frames (the strides dropped) are concatenated and collapsed once (greedy CTC). A file is read from
disk window by window (soundfile ``seek``/``read``), so memory stays bounded for an hour-long file. Its
:class:`Transcription` reports the deepest exit that answered (``exit_layer``), the *mean* layers
computed per window (``layers_computed``, a float) and the number of windows (``chunks``). With
chunking on, ``max_seconds`` is not applied (long files are chunked, not refused).

Bad inputs: one path or array that cannot be transcribed (missing, not a regular file: a named pipe is
never opened, not audio, too short for the CNN, NaN or infinite samples, longer than ``max_seconds``
without chunking) raises a ``ValueError`` naming it; in a list (or a folder, a manifest), each such
input gets a :class:`Transcription` whose ``error`` says why (``text`` empty, ``exit_layer`` ``None``)
and the others are transcribed (``raise_errors=True``: raise instead). An array that is not 1-D is a
caller's mistake and always raises.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Processor

from ..audio import SAMPLING_RATE, AudioError
from ..batching import DEFAULT_MAX_BATCH_SECONDS, length_grouped_batches
from ..ctc.decoding import LexiconBeamDecoder, ctc_collapse
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
from ..vocab import build_processor, normalize_transcript
from .chunking import (
    DEFAULT_CHUNK_SECONDS,
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

#: Seconds of audio beyond which an input is refused (``Transcriber(max_seconds=)``, ``--max-seconds``)
#: when chunking is off.
DEFAULT_MAX_SECONDS = 60.0


class TooLongError(UserError):
    """An input longer than ``max_seconds``: the message names it, its duration, the limit and the flag."""

    def __init__(self, source: str, seconds: float, max_seconds: float):
        super().__init__(
            f"{source}: {seconds:.1f} s of audio is longer than the limit of {max_seconds:g} s "
            f"(--max-seconds, Transcriber(max_seconds=...)): one forward pass over it would take minutes "
            f"and much memory; transcribe it in windows (--chunk-seconds {DEFAULT_CHUNK_SECONDS:g}, "
            f"Transcriber(chunk_seconds=...)), split it into utterances, or raise the limit"
        )
        self.source = source
        self.seconds = seconds
        self.max_seconds = max_seconds


@dataclass
class Transcription:
    """The transcript of one input and what it cost.

    Args:
        source: the path, or ``<array i>`` for the i-th array given.
        text: the greedy transcript (lower case, single spaces); empty when ``error`` is set.
        exit_layer: the layer of the exit that answered (chunked: the deepest over the windows);
            ``None`` when ``error`` is set.
        layers_computed: transformer layers run for this utterance (chunked: the mean over the
            windows, a float); 0 when ``error`` is set.
        num_layers: the model's full depth (the layer of its last exit).
        seconds: wall-clock seconds from the start of its batch's computation (the CNN included,
            audio decoding excluded) until its answer was ready (chunked: summed over the windows'
            batches); 0 when ``error`` is set.
        audio_seconds: duration of the audio (0 when it could not be read).
        error: why this input was not transcribed (``None``: it was); names the input.
        chunks: windows the input was transcribed in (1: one forward pass; 0 when ``error`` is set).
        path: the input's resolved absolute path (links resolved: ``.`` and an absolute path give the
            same), what identifies it across runs (``--output``'s rows); ``None`` for an array.
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

    @property
    def ok(self) -> bool:
        """Whether the input was transcribed (``error`` is ``None``)."""
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


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


class Transcriber:
    """Transcribe audio with an early-exit model and an exit policy.

    Args:
        model: an early-exit model (put in eval mode here).
        policy: the exit policy (default: the last exit, i.e. the full model).
        processor: feature extractor + tokenizer (default: the bundled vocabulary).
        lexicon_decoder: the lexicon beam decoder that the ``posterior`` policy needs.
        batch_size / max_batch_seconds: utterances (or windows) and seconds of padded audio per batch.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``: the forward pass's precision
            (``torch.autocast``).
        max_seconds: without chunking, inputs longer than this are refused (an error naming the input,
            its duration and the limit): an utterance runs in one forward pass, so a long recording
            would take minutes and memory quadratic in its length (self-attention). ``None``: no limit.
        chunk_seconds: transcribe inputs longer than this in overlapping windows of this many seconds
            (see the module's docstring; :data:`DEFAULT_CHUNK_SECONDS` is a good value). ``None`` or 0:
            off (each input in one forward pass, ``max_seconds`` applies).
        stride_seconds: context on either side of a window whose frames are dropped (default
            ``chunk_seconds / 6``, as ``transformers``' pipeline); less than ``chunk_seconds / 2``.

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
    ):
        check_runtime_options(batch_size=batch_size, max_batch_seconds=max_batch_seconds)
        if max_seconds is not None and not float(max_seconds) > 0:
            raise UserError(f"--max-seconds must be a number > 0, got {max_seconds}")
        self.chunk_seconds, self.stride_seconds = check_chunking(chunk_seconds, stride_seconds)
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

    # ----------------------------------------------------------------------------------------------
    # inputs

    def _chunked(self, seconds: float) -> bool:
        return self.chunk_seconds is not None and seconds > self.chunk_seconds

    def _check_length(self, source: str, seconds: float) -> None:
        if self.chunk_seconds is None and self.max_seconds is not None and seconds > self.max_seconds:
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
        """The 16 kHz waveform of a (not chunked) input, decoded now."""
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
                (missing, not audio, too short, non-finite, longer than ``max_seconds`` without
                chunking) instead of returning it with ``error`` set. Default: raise for one input,
                report for a list.
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
        check_array_shapes(items)
        inputs = expand_inputs(items)
        results: list[Transcription | None] = [None] * len(inputs)
        for batch in self._batches(inputs, (), raise_errors, progress):
            for i, result in batch:
                results[i] = result
        return results[0] if single else results  # type: ignore[return-value]

    def transcribe_batches(
        self,
        audio: AudioInput | Sequence[AudioInput],
        skip: Collection[str] = (),
        raise_errors: bool = False,
        progress: bool = False,
        once: bool = False,
    ) -> Iterator[list[Transcription]]:
        """Transcribe like :meth:`transcribe`, yielding results as they are ready: a list per batch
        (the inputs refused from their headers first; then each batch's, longest first; a chunked file
        alone), so that a caller can save them as it goes. Inputs whose source or resolved path
        (:attr:`Transcription.path`) is in ``skip`` are left out (a resumed run); ``once``: a file named
        more than once (``.`` and its absolute path) is transcribed once."""
        items = input_list(audio)
        check_array_shapes(items)
        for batch in self._batches(expand_inputs(items), skip, raise_errors, progress, once):
            yield [result for _, result in batch]

    def _batches(
        self,
        inputs: list[AudioItem],
        skip: Collection[str],
        raise_errors: bool,
        progress: bool,
        once: bool = False,
    ) -> Iterator[list[tuple[int, Transcription]]]:
        failed: list[tuple[int, Transcription]] = []
        whole: list[int] = []
        chunked: list[int] = []
        skip = set(skip)
        for i, item in enumerate(inputs):
            if item.source in skip or item.key in skip:
                continue
            if once:
                skip.add(item.key)
            try:
                self._measure(item)
            except ValueError as err:  # AudioError included: each message names its input
                if raise_errors:
                    raise
                failed.append((i, self._failed(item, str(err), getattr(err, "seconds", 0.0))))
                continue
            (chunked if self._chunked(item.seconds) else whole).append(i)
        if failed:
            yield failed
        durations = [inputs[i].seconds for i in whole]
        batches = length_grouped_batches(durations, self.batch_size, self.max_batch_seconds)
        per_window = windows_per_batch(self.chunk_seconds, self.batch_size, self.max_batch_seconds)
        count = len(batches) + sum(-(-self._window_count(inputs[i].seconds) // per_window) for i in chunked)
        bar = _progress_bar(progress and count > 1, sum(durations) + sum(inputs[i].seconds for i in chunked))
        try:
            for batch in batches:
                rows, arrays, out = [], [], []
                for j in batch:
                    i = whole[j]
                    try:
                        arrays.append(self._decode(inputs[i]))
                        rows.append(i)
                    except ValueError as err:
                        if raise_errors:
                            raise
                        out.append((i, self._failed(inputs[i], str(err), inputs[i].seconds)))
                if rows:
                    result = self._run(arrays)
                    for j, i in enumerate(rows):
                        out.append((i, self._answer(inputs[i], result, j, len(arrays[j]))))
                bar.update(sum(inputs[whole[j]].seconds for j in batch))
                yield out
            for i in chunked:
                try:
                    result = self._transcribe_chunked(inputs[i], bar)
                except ValueError as err:
                    if raise_errors:
                        raise
                    result = self._failed(inputs[i], str(err), inputs[i].seconds)
                yield [(i, result)]
        finally:
            bar.close()

    def _answer(self, item: AudioItem, out, j: int, samples: int) -> Transcription:
        return Transcription(
            source=item.source,
            text=out.transcripts[j],
            exit_layer=out.exit_layer[j],
            layers_computed=out.layers_computed[j],
            num_layers=self.num_layers,
            seconds=out.seconds[j],
            audio_seconds=samples / SAMPLING_RATE,
            path=_path_of(item),
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
        )

    # ----------------------------------------------------------------------------------------------
    # long recordings (the windows: .chunking)

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
        join ``joined``. A window shorter than the model's shortest input (a last sliver) is padded;
        the padding's frames are dropped with its right context."""
        min_samples = round(self._min_seconds * SAMPLING_RATE) + 1
        arrays = [pad_to_length(piece.audio, min_samples) for piece in pieces]
        out = self._run(arrays, return_logits=True)
        joined.seconds += max(out.seconds)
        for j, piece in enumerate(pieces):
            padding = len(arrays[j]) - len(piece.audio)
            first, last = central_frames(
                out.output_lengths[j], len(arrays[j]), piece.left, piece.right + padding
            )
            logits = out.logits[j]  # type: ignore[index]
            joined.ids.append(logits[first:last].argmax(-1).to("cpu", torch.int32))
            joined.layers.append(out.layers_computed[j])
            joined.exits.append(out.exit_layer[j])
        bar.update(sum(piece.central_samples for piece in pieces) / SAMPLING_RATE)

    def _transcribe_chunked(self, item: AudioItem, bar) -> Transcription:
        """One long input in overlapping windows: each window exits on its own; the central frames of
        each window's answering logits are kept (as argmax ids) and collapsed once."""
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
        text = ctc_collapse(torch.cat(joined.ids).unsqueeze(0).long(), None, self.processor.tokenizer)[0]
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
        )

    def __call__(
        self, audio: AudioInput | Sequence[AudioInput], raise_errors: bool | None = None
    ) -> Transcription | list[Transcription]:
        return self.transcribe(audio, raise_errors)


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
        seconds: wall-clock seconds of the windows' batches; samples: 16 kHz samples answered for.
    """

    ids: list[torch.Tensor] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0


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
