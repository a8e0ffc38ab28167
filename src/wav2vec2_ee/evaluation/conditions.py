"""WER under the recording conditions of real audio: a test split rebuilt under each condition.

:data:`CONDITION_CHECKS` are fixed, named versions of what real recordings bring and the corpus builder
never makes (each a function of the clean audio, a random generator and other utterances of the split,
for babble), built from :mod:`wav2vec2_ee.data.conditions`' functions at one setting each, inside the
ranges training draws from. :func:`build_condition_splits` writes one LibriSpeech-layout split per
condition (``cond_<name>``, the same speakers, ids and transcripts as the source split);
:func:`check_conditions` evaluates a checkpoint on all of them with the evaluation suite.
``benchmarks/check_conditions.py`` prints the table and draws the plot.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import SAMPLING_RATE, load_audio
from ..data.alignments import CTM_NAME, read_ctm, word_gaps
from ..data.augment import add_noise, colored_noise, reverberate, room_impulse_response
from ..data.conditions import add_babble, add_silence, change_tempo, clip, lossy_codec, telephone_band
from ..errors import UserError
from ..io import atomic_write_text
from .evaluate import evaluate_checkpoint

#: One condition: ``(audio, rng, others, gaps) -> audio`` (``others``: a few other utterances of the split;
#: ``gaps``: the ``(start, end)`` samples between its words, from the split's ``words.ctm``, or ``None``).
Condition = Callable[[np.ndarray, np.random.Generator, list[np.ndarray], list | None], np.ndarray]

_SECOND = SAMPLING_RATE


def _peak_normalised(audio: np.ndarray) -> np.ndarray:
    return audio / max(float(np.max(np.abs(audio))), 1e-9)


#: The checks, by name (the split is ``cond_<name>``); ``clean`` is the source audio itself.
CONDITION_CHECKS: dict[str, Condition] = {
    "clean": lambda a, rng, o, g: a,
    "silence_2s_3s": lambda a, rng, o, g: add_silence(a, 2 * _SECOND, 3 * _SECOND, (), None, rng),
    # two pauses at the quietest moments: in synthetic speech as often a stop's closure inside a word
    "pauses_2x0.8s": lambda a, rng, o, g: add_silence(a, 0, 0, (int(0.8 * _SECOND),) * 2, 60.0, rng),
    # two pauses between words (the split's word times; a one-word utterance's go to its end)
    "word_pauses_2x0.8s": lambda a, rng, o, g: add_silence(a, 0, 0, (int(0.8 * _SECOND),) * 2, 60.0, rng, g),
    "telephone": lambda a, rng, o, g: telephone_band(a),
    "mp3": lambda a, rng, o, g: lossy_codec(a, "mp3", 0.9),
    "vorbis": lambda a, rng, o, g: lossy_codec(a, "vorbis", 0.9),
    "reverb_rt60_0.6s": lambda a, rng, o, g: reverberate(a, room_impulse_response(0.6, rng)),
    "clipping_12db": lambda a, rng, o, g: clip(_peak_normalised(a), "hard", 12.0),
    "saturation_12db": lambda a, rng, o, g: clip(_peak_normalised(a), "soft", 12.0),
    "gain_-30db_dc": lambda a, rng, o, g: _peak_normalised(a) * 10 ** (-30 / 20) + 0.05,
    "tempo_0.8x": lambda a, rng, o, g: change_tempo(a, 0.8),
    "tempo_1.25x": lambda a, rng, o, g: change_tempo(a, 1.25),
    "babble_15db": lambda a, rng, o, g: add_babble(a, o, 15.0, rng),
    "noise_15db": lambda a, rng, o, g: add_noise(a, colored_noise(a.size, "pink", rng), 15.0),
}

#: The checks that need the split's word times (``<split>/words.ctm``); left out of "all" without them.
WORD_TIME_CHECKS = ("word_pauses_2x0.8s",)

#: What each check may cost at most, as a multiple of the clean WER (the base issue's targets).
CONDITION_TARGETS: dict[str, float] = {"silence_2s_3s": 1.1, "telephone": 2.0}
DEFAULT_TARGET = 1.5


def condition_split(name: str) -> str:
    """The split name of condition ``name``."""
    return f"cond_{name}"


def _transcript_files(split_dir: Path) -> list[Path]:
    return sorted(split_dir.rglob("*.trans.txt"))


def build_condition_splits(
    corpus: str | Path,
    split: str,
    output: str | Path,
    names: list[str] | None = None,
    seed: int = 0,
) -> list[str]:
    """Write ``split`` of the LibriSpeech-layout ``corpus`` under each condition of ``names`` (default:
    all of :data:`CONDITION_CHECKS`, those of :data:`WORD_TIME_CHECKS` only where the split has its word
    times, ``words.ctm``) into ``output/cond_<name>`` (same layout, ids and transcripts; FLAC). A split
    already written with the same source, seed (and word times) is kept. Returns the split names. Every
    random choice (noise, room, babble partners) is a function of ``seed`` and the utterance."""
    source = Path(corpus) / split
    ctm = source / CTM_NAME
    if names is None:
        names = [n for n in CONDITION_CHECKS if n not in WORD_TIME_CHECKS or ctm.is_file()]
    elif not ctm.is_file() and (wanted := [n for n in names if n in WORD_TIME_CHECKS]):
        raise UserError(
            f"{ctm}: no word times for {', '.join(wanted)} (write them with `wav2vec2-ee transcribe MODEL "
            f"{source} --format ctm > {ctm}`, or leave the check out)"
        )
    gaps, word_times = {}, None
    if ctm.is_file():
        gaps = {utt: word_gaps(spans) for utt, spans in read_ctm(ctm).items()}
        word_times = hashlib.sha256(ctm.read_bytes()).hexdigest()
    files = _transcript_files(source)
    if not files:
        raise FileNotFoundError(f"{source}: no LibriSpeech-layout transcripts (*.trans.txt)")
    utterances = [
        (trans, line.split(" ", 1)[0])
        for trans in files
        for line in trans.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    audio = {uid: load_audio(_audio_file(trans.parent, uid)) for trans, uid in utterances}
    ids = list(audio)
    out = Path(output)
    splits = []
    for name in names:
        if name not in CONDITION_CHECKS:
            raise UserError(f"unknown condition {name!r}: choose from {', '.join(CONDITION_CHECKS)}")
        target = out / condition_split(name)
        marker = target / "condition.json"
        record = {"source": str(source.resolve()), "seed": seed, "condition": name, "utterances": len(ids)}
        if name in WORD_TIME_CHECKS:
            record["word_times"] = word_times
        splits.append(condition_split(name))
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == record:
            continue
        if target.exists():
            shutil.rmtree(target)
        for k, (trans, uid) in enumerate(utterances):
            rng = np.random.default_rng((seed, k))
            partners = [
                audio[ids[int(j)]] for j in rng.choice(len(ids), size=min(3, len(ids)), replace=False)
            ]
            degraded = CONDITION_CHECKS[name](audio[uid], rng, partners, gaps.get(uid, []))
            folder = target / trans.parent.relative_to(source)
            folder.mkdir(parents=True, exist_ok=True)
            peak = max(float(np.max(np.abs(degraded))), 1e-9)
            scale = 0.99 / peak if peak > 0.99 else 1.0  # FLAC holds [-1, 1]; the scale is normalised away
            sf.write(folder / f"{uid}.flac", (degraded * scale).astype(np.float32), SAMPLING_RATE)
        for trans in files:
            folder = target / trans.parent.relative_to(source)
            shutil.copyfile(trans, folder / trans.name)
        atomic_write_text(marker, json.dumps(record) + "\n")
    return splits


def _audio_file(folder: Path, uid: str) -> Path:
    for ext in (".flac", ".wav"):
        if (folder / f"{uid}{ext}").is_file():
            return folder / f"{uid}{ext}"
    raise FileNotFoundError(f"{folder}: no audio for {uid}")


def check_conditions(
    checkpoint: str | Path,
    corpus: str | Path,
    split: str,
    output_dir: str | Path,
    names: list[str] | None = None,
    exits: list[int] | None = None,
    overwrite: bool = False,
) -> dict[str, dict[int, float]]:
    """Greedy WER per exit layer of ``checkpoint`` on ``split`` under each condition: ``{name: {layer:
    wer}}`` (the splits are built into ``output_dir/corpus``, the evaluations go to ``output_dir/eval``).
    ``exits``: the layers (default: the checkpoint's exits; a plain CTC checkpoint's read through its
    final head)."""
    out = Path(output_dir)
    splits = build_condition_splits(corpus, split, out / "corpus", names)
    names = [s.removeprefix("cond_") for s in splits]
    overview = evaluate_checkpoint(
        str(checkpoint), str(out / "eval"), data=str(out / "corpus"), splits=splits, progress=False,
        overwrite=overwrite, exits=exits, plot=False,
    )  # fmt: skip
    return {
        name: {int(e["layer"]): float(e["wer"]) for e in overview["splits"][s]["exits"].values()}
        for name, s in zip(names, splits)
    }


def condition_ratios(wer: dict[str, dict[int, float]], layer: int) -> dict[str, float]:
    """Each condition's WER at ``layer`` as a multiple of the clean WER there."""
    clean = wer["clean"][layer]
    return {name: by_layer[layer] / clean if clean > 0 else float("inf") for name, by_layer in wer.items()}
