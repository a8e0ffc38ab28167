"""Data: sources (LibriSpeech folder, manifest, HF dataset), audio reading, preparation, collator."""

from ..audio import SAMPLING_RATE, AudioError, audio_duration, load_audio, to_mono_16k
from .dataset import (
    BadItemError,
    DataCollatorCTCWithPadding,
    PreparationReport,
    PreparedUtterance,
    SpeechDataset,
    prepare_utterances,
)
from .sources import (
    DataError,
    Utterance,
    load_split,
    read_hf_dataset,
    read_librispeech,
    read_manifest,
    source_kind,
)
from .splits import DEFAULT_LIBRISPEECH_SPLITS, load_prepared_split, read_texts, resolve_splits

__all__ = [
    "DEFAULT_LIBRISPEECH_SPLITS",
    "SAMPLING_RATE",
    "AudioError",
    "BadItemError",
    "DataCollatorCTCWithPadding",
    "DataError",
    "PreparationReport",
    "PreparedUtterance",
    "SpeechDataset",
    "Utterance",
    "audio_duration",
    "load_audio",
    "load_prepared_split",
    "load_split",
    "prepare_utterances",
    "read_hf_dataset",
    "read_librispeech",
    "read_manifest",
    "read_texts",
    "resolve_splits",
    "source_kind",
    "to_mono_16k",
]
