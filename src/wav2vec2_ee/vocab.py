"""The character vocabulary, tokenizer and feature extractor, built locally (no hub).

The package ships the standard 32-symbol English character vocabulary of wav2vec2 CTC models
(``facebook/wav2vec2-base-960h``): ``<pad>`` (id 0, the CTC blank), ``<s>``, ``</s>``, ``<unk>``,
``|`` (the word delimiter) and the upper-case letters plus apostrophe.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor
from transformers.utils import FEATURE_EXTRACTOR_NAME, PROCESSOR_NAME

from .audio import SAMPLING_RATE
from .errors import UserError

logger = logging.getLogger(__name__)


def normalize_transcript(text: str) -> str:
    """Lower case, single spaces, no leading/trailing space (how result files store and jiwer scores text)."""
    return " ".join(text.lower().split())


def default_vocab_file() -> str:
    """Path of the bundled ``vocab.json``."""
    return str(resources.files("wav2vec2_ee").joinpath("resources/vocab.json"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def has_tokenizer_files(model_dir: str | os.PathLike) -> bool:
    """Whether a folder holds a CTC tokenizer (``vocab.json``)."""
    return Path(model_dir, "vocab.json").is_file()


def has_feature_extractor_files(model_dir: str | os.PathLike) -> bool:
    """Whether a folder holds feature-extractor settings where ``transformers`` reads them: the
    ``feature_extractor`` entry of ``processor_config.json`` (what ``Wav2Vec2Processor.save_pretrained``
    writes in transformers 5) or a ``preprocessor_config.json`` (transformers 4 and
    ``Wav2Vec2FeatureExtractor.save_pretrained``)."""
    if Path(model_dir, FEATURE_EXTRACTOR_NAME).is_file():
        return True
    file = Path(model_dir, PROCESSOR_NAME)
    if not file.is_file():
        return False
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{file}: not a valid JSON file ({_first_line(err)})") from err
    return isinstance(values, dict) and ("feature_extractor" in values or "audio_processor" in values)


def _load(what: str, model_dir: str | os.PathLike, load):
    try:
        return load(str(model_dir))
    except (OSError, ValueError) as err:
        raise UserError(f"{model_dir}: cannot read its {what} ({_first_line(err)})") from err


def build_tokenizer(model_dir: str | os.PathLike | None = None) -> Wav2Vec2CTCTokenizer:
    """The tokenizer of ``model_dir`` when it has one, else the bundled 32-symbol vocabulary."""
    if model_dir is not None and has_tokenizer_files(model_dir):
        return _load("tokenizer", model_dir, Wav2Vec2CTCTokenizer.from_pretrained)
    return Wav2Vec2CTCTokenizer(
        default_vocab_file(),
        unk_token="<unk>",
        pad_token="<pad>",
        word_delimiter_token="|",
        do_lower_case=False,
    )


def build_feature_extractor(model_dir: str | os.PathLike | None = None) -> Wav2Vec2FeatureExtractor:
    """The feature extractor of ``model_dir`` when it has one (read as ``AutoProcessor`` reads it:
    ``processor_config.json`` first, else ``preprocessor_config.json``), else wav2vec2's 16 kHz default."""
    if model_dir is not None and has_feature_extractor_files(model_dir):
        return _load("feature extractor", model_dir, Wav2Vec2FeatureExtractor.from_pretrained)
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def build_processor(model_dir: str | os.PathLike | None = None) -> Wav2Vec2Processor:
    """The processor of ``model_dir``: ``Wav2Vec2Processor.from_pretrained`` (the files ``AutoProcessor``
    reads) when the folder has both parts; a part it lacks is the default (:func:`build_tokenizer`,
    :func:`build_feature_extractor`); a folder without processor files (or ``None``) gets the bundled
    vocabulary and wav2vec2's 16 kHz feature extractor."""
    if model_dir is not None and has_tokenizer_files(model_dir) and has_feature_extractor_files(model_dir):
        return _load("processor", model_dir, Wav2Vec2Processor.from_pretrained)
    return Wav2Vec2Processor(
        feature_extractor=build_feature_extractor(model_dir), tokenizer=build_tokenizer(model_dir)
    )


@dataclass
class TextNormalizer:
    """Maps raw transcripts onto the tokenizer's character set.

    Case follows the tokenizer (upper case for the bundled vocabulary), runs of white space become
    one space, and characters outside the vocabulary are dropped and counted in
    :attr:`dropped` so that a run can report them once with their counts.
    """

    tokenizer: Wav2Vec2CTCTokenizer
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab()
        letters = [t for t in vocab if len(t) == 1 and t != self.tokenizer.word_delimiter_token]
        self._allowed = set(letters)
        self._upper = sum(c.isupper() for c in letters) >= sum(c.islower() for c in letters)

    def __call__(self, text: str) -> str:
        text = text.upper() if self._upper else text.lower()
        out = []
        for ch in text:
            if ch.isspace():
                out.append(" ")
            elif ch in self._allowed:
                out.append(ch)
            else:
                self.dropped[ch] += 1
                out.append(" " if ch in "-_/" else "")
        return re.sub(r" +", " ", "".join(out)).strip()

    def report(self) -> str | None:
        """One line naming the dropped characters and their counts (``None`` when none were)."""
        if not self.dropped:
            return None
        items = ", ".join(f"{ch!r}: {n}" for ch, n in self.dropped.most_common())
        return f"characters outside the vocabulary were dropped from transcripts ({items})"
