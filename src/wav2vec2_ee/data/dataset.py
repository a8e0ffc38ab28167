"""Preparing utterances for CTC training and evaluation, the dataset and the padding collator."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from ..audio import SAMPLING_RATE, AudioError, audio_duration, load_audio
from ..labels import pad_labels
from ..vocab import TextNormalizer
from .augment import NoiseAndReverb, SpeedPerturbation
from .conditions import ConditionPlan, RecordingConditions, scale_positions
from .sources import BadItemError, Utterance, report_skipped, strict_error

logger = logging.getLogger(__name__)


@dataclass
class PreparationReport:
    """What data preparation kept and skipped, with one reason per skipped item."""

    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_characters: Counter = field(default_factory=Counter)

    def counts(self) -> Counter:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def summary(self) -> str:
        parts = [f"{self.kept} utterances kept, {len(self.skipped)} skipped"]
        parts += [f"{n} {why}" for why, n in self.counts().most_common()]
        return "; ".join(parts)


@dataclass
class PreparedUtterance:
    """An utterance ready for the model: normalised text, label ids and duration."""

    id: str
    audio: str | None
    text: str
    labels: list[int]
    duration: float
    audio_bytes: bytes | None = None


def _measure(utt: Utterance, verify_audio: bool) -> float | AudioError:
    """Duration in seconds of ``utt`` (decoding the whole file when ``verify_audio``), or the error."""
    try:
        if verify_audio or (utt.audio_bytes is not None and utt.duration is None):
            source = utt.audio_bytes if utt.audio_bytes is not None else utt.audio
            return len(load_audio(source, source=utt.audio or utt.id)) / SAMPLING_RATE
        if utt.duration is not None:
            return utt.duration
        return audio_duration(utt.audio)
    except AudioError as err:
        return err


def ctc_frames_needed(labels: Sequence[int]) -> int:
    """Frames CTC needs for ``labels``: one per label plus a blank between each pair of equal labels."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


def prepare_utterances(
    utterances: Sequence[Utterance],
    tokenizer: Wav2Vec2CTCTokenizer,
    frames_for_samples: Callable[[int], int] | None = None,
    max_duration: float | None = None,
    min_duration: float | None = None,
    require_text: bool = True,
    strict: bool = False,
    progress: bool = True,
    desc: str = "checking data",
    verify_audio: bool = False,
    num_workers: int | None = None,
    tokenize: bool = True,
) -> tuple[list[PreparedUtterance], PreparationReport]:
    """Normalise transcripts, read durations and drop unusable items.

    (Twelve keyword options, each a check or its limit, and about 90 lines: one pass over the items
    that reports each skipped one once; callers set two or three options.)

    Each skipped item is reported once (logged with its path and the reason) and counted; with
    ``strict`` the first one raises :class:`BadItemError` instead. Skipped: the rows or lines that the
    source reader left out (``utterances.skipped`` of :func:`~wav2vec2_ee.data.load_split`'s result,
    each named ``file:line``: not UTF-8, a bad field, a repeated id; repeated ids are reported in one
    warning), audio that is missing or whose header cannot be read (empty, not audio), transcripts that are empty or mostly outside the
    vocabulary after normalisation, utterances outside the duration limits and utterances with fewer
    CTC frames than their labels need.

    By default only the file headers are read (milliseconds per file). A file with a sound header
    and broken data (a truncated FLAC) then passes here and is caught when training reads it (see
    :class:`SpeechDataset`). ``verify_audio`` decodes every file here instead (the cost of one full
    pass over the audio, spread over ``num_workers`` threads), so such files are reported up front.

    Args:
        frames_for_samples: maps a number of samples to CTC frames (the model's CNN length formula);
            when given, utterances with fewer frames than CTC needs for their labels are skipped.
        max_duration / min_duration: seconds; longer / shorter utterances are skipped.
        verify_audio: decode every file (and take its duration from the decoded samples).
        num_workers: threads reading headers / decoding (default: up to 8).
        tokenize: fill each item's ``labels`` (training needs them; evaluation, which needs only the
            normalised text, saves ~0.25 ms per utterance with ``False``: ``labels`` are then empty
            unless ``frames_for_samples`` asks for the CTC length check).
    """
    normalizer = TextNormalizer(tokenizer)
    delimiter = tokenizer.word_delimiter_token
    report = PreparationReport()
    kept: list[PreparedUtterance] = []

    def skip(utt: Utterance, reason: str) -> None:
        where = utt.audio or utt.id
        if strict:
            raise strict_error(where, reason)
        logger.warning("skipping %s: %s", where, reason)
        report.skipped.append((where, reason))

    # the rows the source reader left out come first (they come first in the files, too)
    bad_rows = list(getattr(utterances, "skipped", ()))
    report_skipped(bad_rows, strict=strict, log=logger)
    report.skipped.extend(bad_rows)

    workers = num_workers or min(8, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        measured = executor.map(lambda u: _measure(u, verify_audio), utterances)
        for utt, duration in tqdm(
            zip(utterances, measured), total=len(utterances), desc=desc, disable=not progress, leave=False
        ):
            if isinstance(duration, AudioError):
                skip(utt, f"unreadable audio: {duration.reason}")
                continue
            raw_chars = sum(not ch.isspace() for ch in utt.text)
            text = normalizer(utt.text)
            if require_text and not text:
                skip(utt, "empty transcript: nothing left after normalising to the vocabulary")
                continue
            dropped = raw_chars - sum(ch != " " for ch in text)
            if require_text and 2 * dropped > raw_chars:
                skip(
                    utt,
                    f"transcript mostly outside the vocabulary: {dropped} of {raw_chars} characters dropped",
                )
                continue
            if max_duration is not None and duration > max_duration:
                skip(utt, f"too long: {duration:.2f} s > max_duration {max_duration} s")
                continue
            if min_duration is not None and duration < min_duration:
                skip(utt, f"too short: {duration:.2f} s < min_duration {min_duration} s")
                continue
            needs_labels = bool(text) and (tokenize or frames_for_samples is not None)
            labels = tokenizer(text.replace(" ", delimiter)).input_ids if needs_labels else []
            if frames_for_samples is not None and labels:
                frames = int(frames_for_samples(int(round(duration * SAMPLING_RATE))))
                needed = ctc_frames_needed(labels)
                if frames < needed:
                    skip(utt, f"too short for its transcript: {frames} CTC frames < {needed} needed")
                    continue
            kept.append(PreparedUtterance(utt.id, utt.audio, text, labels, duration, utt.audio_bytes))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    report.kept = len(kept)
    report.dropped_characters = normalizer.dropped
    if normalizer.report():
        logger.warning(normalizer.report())
    return kept, report


class SpeechDataset(Dataset):
    """Audio decoded lazily (memory stays bounded), normalised by the feature extractor.

    Items are dicts with ``input_values`` (float32 array), ``labels`` (list of ids) and
    ``utt_index`` (position in the dataset, used to cache teacher pseudo-labels).
    An item whose audio turns out unreadable at training time is replaced by the next good one
    (and counted in :attr:`bad_items`) so that one bad file never kills a run; the item that
    replaces it also carries ``skipped_audio`` (``[(path, reason), ...]``), which the collator passes
    on, so the trainer can count it even when the data loader runs in worker processes. With
    ``strict`` the unreadable item raises :class:`BadItemError` instead.

    With ``speed_perturbation`` (training), each item is played faster or slower by the factor that
    :meth:`SpeedPerturbation.factor` gives for ``(epoch, index)`` (:meth:`set_epoch`, called by the data
    loader each epoch) and carries it as ``speed``; a factor that would leave fewer CTC frames
    (``frames_for_samples``) than the item's labels need falls back to 1.0. With ``noise_and_reverb``
    (training), the audio is then reverberated and/or mixed with noise (:class:`NoiseAndReverb`) and
    normalised again when the feature extractor normalises. With ``conditions`` (training), the real
    recording conditions of :class:`~.conditions.RecordingConditions` are drawn per ``(epoch, index)``
    (the room's noise and reverberation in their place in its chain; babble from other utterances of
    this dataset); a tempo that would leave too few CTC frames is not applied, and
    :meth:`lengths_in_epoch` includes the lengths the conditions give. ``word_gaps`` (``{utterance id:
    [(start, end) samples between words]}``, :func:`~.alignments.load_word_gaps`) puts the conditions'
    pauses between words (where an utterance has none listed: at its quietest moments).
    """

    def __init__(
        self,
        utterances: Sequence[PreparedUtterance],
        feature_extractor: Wav2Vec2FeatureExtractor,
        cache_audio: bool = False,
        strict: bool = False,
        speed_perturbation: SpeedPerturbation | None = None,
        frames_for_samples: Callable[[int], int] | None = None,
        noise_and_reverb: NoiseAndReverb | None = None,
        conditions: RecordingConditions | None = None,
        word_gaps: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    ):
        self.utterances = list(utterances)
        self.word_gaps = dict(word_gaps or {})
        self.conditions = conditions if conditions and conditions.enabled else None
        self.noise_and_reverb = noise_and_reverb if noise_and_reverb and noise_and_reverb.enabled else None
        self.feature_extractor = feature_extractor
        self.cache_audio = cache_audio
        self.strict = strict
        self.speed_perturbation = speed_perturbation
        self.frames_for_samples = frames_for_samples
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self.bad_items: dict[str, str] = {}
        #: items prepared ahead of the sampler's order (:meth:`schedule`; 0 = off)
        self.prefetch = 0
        self._executor: ThreadPoolExecutor | None = None
        self._futures: dict = {}
        self._order: list[int] = []
        self._positions: dict[int, int] = {}

    def lengths_in_epoch(self, epoch: int) -> list[int]:
        """Lengths in samples as ``epoch`` will give them (after speed perturbation and recording
        conditions, if any)."""
        lengths = self.lengths
        if self.speed_perturbation is not None:
            factor = self.speed_perturbation.factor
            lengths = [int(n / factor(epoch, i)) for i, n in enumerate(lengths)]
        if self.conditions is not None:
            lengths = [self._plan(epoch, i, n).length_after(n) for i, n in enumerate(lengths)]
        return lengths

    def _plan(self, epoch: int, index: int, samples: int) -> ConditionPlan:
        """The recording conditions of ``index`` in ``epoch`` for ``samples`` of audio, without a tempo
        that would leave fewer CTC frames than its labels need."""
        plan = self.conditions.plan(epoch, index)
        labels, frames = self.utterances[index].labels, self.frames_for_samples
        if plan.tempo is None or frames is None or not labels:
            return plan
        if int(frames(plan.with_tempo_only().length_after(samples))) < ctc_frames_needed(labels):
            plan = dataclasses.replace(plan, tempo=None)
        return plan

    def set_epoch(self, epoch: int) -> None:
        """The epoch that speed perturbation draws its factors for."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def lengths(self) -> list[int]:
        """Lengths in samples, known up front (for ``group_by_length``)."""
        return [int(u.duration * SAMPLING_RATE) for u in self.utterances]

    def audio(self, index: int) -> np.ndarray:
        """``(samples,)`` normalised input values of utterance ``index``."""
        if index in self._cache:
            return self._cache[index]
        utt = self.utterances[index]
        array = load_audio(
            utt.audio_bytes if utt.audio_bytes is not None else utt.audio, source=utt.audio or utt.id
        )
        values = self.feature_extractor(array, sampling_rate=SAMPLING_RATE).input_values[0].astype(np.float32)
        if self.cache_audio:
            self._cache[index] = values
        return values

    # ----------------------------------------------------------------------------------------------
    # preparing items ahead, in one background thread (decoding and augmentation release the GIL)
    def schedule(self, order: Sequence[int]) -> None:
        """The order in which this epoch's items will be asked for (the sampler's), so that with
        :attr:`prefetch` > 0 the next items are prepared in a background thread while the model
        trains on the current batch. Each item is a pure function of ``(epoch, index)``: the items are
        those :meth:`__getitem__` would make on demand."""
        self._cancel_prefetch()
        if self.prefetch > 0:
            self._order = list(order)
            self._positions = {int(index): pos for pos, index in enumerate(self._order)}

    def _cancel_prefetch(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures = {}
        self._order, self._positions = [], {}

    def __getitem__(self, index: int) -> dict:
        position = self._positions.get(int(index))
        if position is None:
            return self._item(int(index), self.epoch)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        for pos in range(position + 1, min(position + 1 + self.prefetch, len(self._order))):
            if pos not in self._futures:
                self._futures[pos] = self._executor.submit(self._item, self._order[pos], self.epoch)
        future = self._futures.pop(position, None)
        for pos in [p for p in self._futures if p < position]:  # skipped (a resume skips batches)
            self._futures.pop(pos).cancel()
        return future.result() if future is not None else self._item(int(index), self.epoch)

    def __getstate__(self) -> dict:
        """Picklable for data loader worker processes (which prepare items themselves: no schedule)."""
        state = dict(self.__dict__)
        state.update(_executor=None, _futures={}, _order=[], _positions={})
        return state

    def _item(self, index: int, epoch: int) -> dict:
        """Item ``index`` of ``epoch`` (or, when its audio is unreadable, the next readable one)."""
        skipped: list[tuple[str, str]] = []
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                values = self.audio(i)
            except AudioError as err:
                if self.strict:
                    raise BadItemError(
                        f"{err.source}: {err.reason} (--strict stops at the first bad item)"
                    ) from err
                if err.source not in self.bad_items:
                    logger.warning("skipping %s at training time: %s", err.source, err.reason)
                    self.bad_items[err.source] = err.reason
                skipped.append((err.source, err.reason))
                continue
            labels = self.utterances[i].labels
            item = {"input_values": values, "labels": labels, "utt_index": i}
            if self.speed_perturbation is not None:
                item["input_values"], item["speed"] = self._perturb(values, labels, i, epoch)
            if self.conditions is not None or self.noise_and_reverb is not None:
                gaps = self.word_gaps.get(self.utterances[i].id)
                if gaps is not None and item["input_values"].size != values.size:
                    gaps = scale_positions(gaps, item["input_values"].size / max(values.size, 1))
                item["input_values"] = self._augment(item["input_values"], i, epoch, gaps)
            if skipped:
                item["skipped_audio"] = skipped
            return item
        raise AudioError("<dataset>", "no readable audio in the whole dataset")

    def _other_audio(self, rng: np.random.Generator) -> np.ndarray:
        """Another utterance's audio (babble), drawn by ``rng``; an unreadable one gives silence."""
        try:
            return self.audio(int(rng.integers(len(self))))
        except AudioError:
            return np.zeros(1, np.float32)

    def _augment(
        self, values: np.ndarray, index: int, epoch: int, gaps: Sequence[tuple[int, int]] | None = None
    ) -> np.ndarray:
        """The noise and reverberation, then the recording conditions (pauses in ``gaps``, the word gaps
        in samples of ``values``, where known), normalised again (when the feature extractor
        normalises) if anything changed the audio."""
        room = None
        if self.noise_and_reverb is not None:
            room = lambda audio: self.noise_and_reverb(audio, epoch, index)  # noqa: E731
        if self.conditions is None:
            augmented = room(values)
        else:
            plan = self._plan(epoch, index, values.size)
            augmented = self.conditions(
                values, epoch, index, other=self._other_audio, room=room, plan=plan, gaps=gaps
            )
        if augmented is values or not self.feature_extractor.do_normalize:
            return augmented
        return ((augmented - augmented.mean()) / np.sqrt(augmented.var() + 1e-7)).astype(np.float32)

    def _perturb(
        self, values: np.ndarray, labels: Sequence[int], index: int, epoch: int
    ) -> tuple[np.ndarray, float]:
        factor = self.speed_perturbation.factor(epoch, index)
        if factor == 1.0:
            return values, factor
        perturbed = SpeedPerturbation.apply(values, factor)
        frames = self.frames_for_samples
        if frames is not None and labels and int(frames(perturbed.size)) < ctc_frames_needed(labels):
            return values, 1.0
        return perturbed, factor


@dataclass
class DataCollatorCTCWithPadding:
    """Pads ``input_values`` (with ``attention_mask``) and ``labels`` (with -100).

    Returns ``input_values`` ``(batch, samples)``, ``attention_mask`` ``(batch, samples)``, ``labels``
    ``(batch, target_len)``, ``utt_index`` ``(batch,)`` and, with speed perturbation, ``speed`` ``(batch,)``; plus ``skipped_audio`` (a list of
    ``(path, reason)``) when an item stands in for unreadable audio.
    """

    feature_extractor: Wav2Vec2FeatureExtractor
    pad_to_multiple_of: int | None = None
    return_attention_mask: bool = True

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor.pad(
            [{"input_values": f["input_values"]} for f in features],
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=True,
            return_tensors="pt",
        )
        if not self.return_attention_mask:
            batch.pop("attention_mask")
        if "labels" in features[0]:
            batch["labels"] = pad_labels([f["labels"] for f in features])
        if "utt_index" in features[0]:
            batch["utt_index"] = torch.as_tensor([f["utt_index"] for f in features], dtype=torch.long)
        if "speed" in features[0]:
            batch["speed"] = torch.as_tensor([f["speed"] for f in features], dtype=torch.float32)
        skipped = [s for f in features for s in f.get("skipped_audio", ())]
        if skipped:
            batch["skipped_audio"] = skipped
        return dict(batch)
