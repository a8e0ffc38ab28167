"""Generators of good and bad audio files and of small LibriSpeech-layout corpora for tests.

Everything is synthesised (tones plus noise), so a corpus of a dozen utterances takes milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000

# a tiny wav2vec2 config for training tests: 160 samples per CTC frame (100 frames per second)
TINY_MODEL = {
    "vocab_size": 32,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32, 32, 32],
    "conv_stride": [5, 4, 4, 2],
    "conv_kernel": [10, 4, 4, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "do_stable_layer_norm": True,
    "feat_extract_norm": "layer",
    "exit_layers": [2, 4],
    "mask_time_prob": 0.0,
    "ctc_loss_reduction": "mean",
}


def write_model_json(path: Path, **overrides) -> Path:
    """The tiny config as a config-only ``--model`` JSON file."""
    path.write_text(json.dumps({**TINY_MODEL, **overrides}))
    return path


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` float32: a tone plus a little noise."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)


# ---- writers: each writes one file at ``path`` (suffix chosen by the caller) ----------------------
def write_good(path: Path, seconds: float = 1.0, seed: int = 0) -> None:
    sf.write(path, tone(seconds, seed=seed, freq=150.0 + 40 * (seed % 7)), SR)


def write_stereo_44k(path: Path, seconds: float = 1.0) -> None:
    """A stereo 44.1 kHz FLAC: must be accepted (mixed to mono, resampled to 16 kHz)."""
    sf.write(path, tone(seconds, sr=44_100, channels=2), 44_100)


def write_empty(path: Path) -> None:
    """A zero-byte file."""
    path.write_bytes(b"")


def write_not_audio(path: Path) -> None:
    """Text named like audio."""
    path.write_text("this is not audio, just text in a file named .flac\n" * 20)


def write_truncated_flac(path: Path, seconds: float = 1.0, keep: float = 0.5) -> None:
    """A FLAC cut after ``keep`` of its bytes: the header is sound, decoding fails."""
    write_good(path, seconds)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_nan_wav(path: Path, seconds: float = 1.0) -> None:
    """A float WAV whose samples include NaN and infinity: decodes, but is not usable audio."""
    x = tone(seconds)
    x[100:200] = np.nan
    x[300] = np.inf
    sf.write(path, x, SR, subtype="FLOAT")


@dataclass
class Item:
    """One utterance of a test corpus: its writer (``None``: no audio file at all), text and suffix."""

    utt: str
    text: str
    writer: Callable[[Path], None] | None = write_good
    suffix: str = ".flac"


def write_librispeech(
    root: Path, split: str, items: list[Item], speaker: str = "1", chapter: str = "1"
) -> Path:
    """``root/split/speaker/chapter/<utt><suffix>`` plus ``<speaker>-<chapter>.trans.txt``.

    Utterance ids become ``<speaker>-<chapter>-<utt>``. Returns the chapter folder.
    """
    folder = root / split / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        utt_id = f"{speaker}-{chapter}-{item.utt}"
        if item.writer is not None:
            item.writer(folder / f"{utt_id}{item.suffix}")
        lines.append(f"{utt_id} {item.text}".rstrip())
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def good_items(n: int, seconds: float = 1.0, prefix: str = "g") -> list[Item]:
    """``n`` readable utterances of ``seconds`` with short distinct transcripts."""
    words = ["HELLO WORLD", "EARLY EXIT", "SPEECH TEST", "GOOD AUDIO", "TINY MODEL", "CTC LOSS", "SINE WAVE"]
    return [
        Item(
            f"{prefix}{i:03d}",
            words[i % len(words)],
            lambda p, i=i: write_good(p, seconds + 0.05 * i, seed=i),
        )
        for i in range(n)
    ]


# What each bad item is, and where it is caught: "prepare" (skipped while checking the data),
# "train" (header passes, decoding fails: skipped when training reads it, or at preparation with
# --verify-audio), or "kept" (must be accepted).
BAD_ITEMS: dict[str, tuple[Item, str]] = {
    "empty file": (Item("b_empty", "EMPTY FILE", write_empty), "prepare"),
    "not audio": (Item("b_text", "NOT AUDIO", write_not_audio), "prepare"),
    "missing file": (Item("b_missing", "NO FILE AT ALL", None), "prepare"),
    "truncated flac": (Item("b_trunc", "CUT SHORT", write_truncated_flac), "train"),
    "nan samples": (Item("b_nan", "NOT A NUMBER", write_nan_wav, ".wav"), "train"),
    "stereo 44.1 kHz": (Item("b_stereo", "STEREO AUDIO", write_stereo_44k), "kept"),
    "empty transcript": (Item("b_notext", "", write_good), "prepare"),
    "transcript outside the vocabulary": (Item("b_oov", "日本語のテキスト 123 A", write_good), "prepare"),
    "too short for its transcript": (
        Item("b_short", "A VERY LONG TRANSCRIPT FOR A TINY CLIP", lambda p: write_good(p, 0.08)),
        "prepare",
    ),
}


def write_bad_corpus(root: Path, split: str = "train", num_good: int = 8) -> dict[str, str]:
    """A split of ``num_good`` good utterances plus every item of :data:`BAD_ITEMS`.

    Returns ``{utterance id: where it is caught}`` for the bad items.
    """
    items = good_items(num_good) + [item for item, _ in BAD_ITEMS.values()]
    write_librispeech(root, split, items)
    return {f"1-1-{item.utt}": where for item, where in BAD_ITEMS.values()}
