"""Build the synthetic eSpeak NG corpus on disk in the LibriSpeech folder layout.

Layout written by :func:`build_corpus`::

    <out>/<split>/<speaker_id>/<chapter_id>/<speaker_id>-<chapter_id>-<utt:04d>.flac   16 kHz mono FLAC (PCM_16)
    <out>/<split>/<speaker_id>/<chapter_id>/<speaker_id>-<chapter_id>.trans.txt       "<utt_id> <TRANSCRIPT>"
    <out>/SPEAKERS.txt                                                                 "id | split | voice"
    <out>/corpus.json                                                                  parameters + statistics

with ``split`` in ``train``, ``dev`` and ``test``. ``corpus.json`` is written last (atomically), so its
presence marks a complete build; a second call with the same parameters returns at once.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from ..audio import SAMPLING_RATE
from ..errors import UserError
from ..io import atomic_write_json
from .espeak import ESpeakSynthesizer, detect_backend
from .text import UtteranceGenerator, to_transcript
from .voices import PITCH_RANGE, RATE_RANGE, SPLITS, Speaker, speakers_by_split

__all__ = [
    "AVG_UTTERANCE_SECONDS",
    "CORPUS_VERSION",
    "PRESETS",
    "CorpusSummary",
    "PlannedUtterance",
    "build_corpus",
    "load_summary",
    "plan_corpus",
]

#: Bump when the generator changes in a way that changes the output for the same parameters.
CORPUS_VERSION = 1
#: Chapter id used for every speaker (one "chapter" per synthetic speaker).
CHAPTER_ID = 1
#: Utterance counts ``(train, dev, test)`` of the named sizes.
PRESETS: dict[str, tuple[int, int, int]] = {
    "default": (4000, 200, 200),  # ~1.2 h of train audio, ~20 s to build on 2 cores
    "quick": (300, 40, 40),  # smoke tests: a few seconds
}
#: Mean utterance duration in seconds (measured on the default build); used to convert ``hours``.
AVG_UTTERANCE_SECONDS = 1.08
_MARKER = ".corpus_incomplete"
_SUMMARY = "corpus.json"


@dataclass(frozen=True)
class PlannedUtterance:
    """Everything needed to render one utterance."""

    split: str
    speaker_id: int
    chapter_id: int
    index: int
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int

    @property
    def utt_id(self) -> str:
        return f"{self.speaker_id}-{self.chapter_id}-{self.index:04d}"

    @property
    def relative_dir(self) -> Path:
        return Path(self.split, str(self.speaker_id), str(self.chapter_id))


@dataclass
class CorpusSummary:
    """Result of :func:`build_corpus` (also stored in ``corpus.json``)."""

    output_dir: Path
    seed: int
    num_utterances: dict[str, int]
    hours: dict[str, float]
    num_speakers: dict[str, int]
    params: dict = field(default_factory=dict)
    backend: str = ""
    elapsed_s: float = 0.0
    cached: bool = False

    def split_dir(self, split: str) -> Path:
        """Folder of one split (``train``, ``dev`` or ``test``) in LibriSpeech layout."""
        return self.output_dir / split


def plan_corpus(num_train: int, num_dev: int, num_test: int, seed: int = 0) -> list[PlannedUtterance]:
    """Deterministically choose text, speaker, rate, pitch and synthesis seed of every utterance.

    Each split has its own random streams, so e.g. the dev set does not depend on ``num_train``.
    Utterances go round-robin over the split's speakers in a seeded random order.
    """
    speakers = speakers_by_split()
    plan: list[PlannedUtterance] = []
    for split, count in zip(SPLITS, (num_train, num_dev, num_test)):
        rng = random.Random(f"wav2vec2-ee-corpus/{seed}/{split}/voices")
        texts = UtteranceGenerator(f"wav2vec2-ee-corpus/{seed}/{split}/text")
        order: list[Speaker] = list(speakers[split])
        rng.shuffle(order)
        next_index: dict[int, int] = {}
        for i in range(count):
            speaker = order[i % len(order)]
            index = next_index.get(speaker.id, 0)
            next_index[speaker.id] = index + 1
            rate, pitch = rng.randint(*RATE_RANGE), rng.randint(*PITCH_RANGE)
            plan.append(
                PlannedUtterance(
                    split=split,
                    speaker_id=speaker.id,
                    chapter_id=CHAPTER_ID,
                    index=index,
                    text=texts.sample(),
                    voice=speaker.voice,
                    rate=rate,
                    pitch=pitch,
                    seed=rng.getrandbits(31),
                )
            )
    return plan


_synth: ESpeakSynthesizer | None = None


def _render(item: PlannedUtterance, root: str) -> tuple[str, int]:
    """Synthesise one utterance and write its FLAC; returns ``(split, num_samples)``."""
    global _synth
    if _synth is None:
        _synth = ESpeakSynthesizer()
    audio = _synth.synthesize(item.text, item.voice, item.rate, item.pitch, seed=item.seed)
    if audio.size < SAMPLING_RATE // 20:
        raise RuntimeError(f"eSpeak produced no audio for {item.text!r} with voice {item.voice}")
    path = Path(root, item.relative_dir, f"{item.utt_id}.flac")
    sf.write(path, audio, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return item.split, int(audio.size)


def _run(plan: list[PlannedUtterance], root: Path, workers: int, progress: bool) -> Iterator[tuple[str, int]]:
    render = partial(_render, root=str(root))
    with tqdm(total=len(plan), desc="Synthesising corpus", unit="utt", disable=not progress) as bar:
        if workers <= 1:
            for item in plan:
                yield render(item)
                bar.update()
            return
        method = "fork" if sys.platform.startswith("linux") else "spawn"  # fork avoids re-importing torch
        with mp.get_context(method).Pool(workers) as pool:
            for result in pool.imap_unordered(render, plan, chunksize=8):
                yield result
                bar.update()


def _resolve_counts(
    size: str, hours: float | None, num_train: int | None, num_dev: int | None, num_test: int | None
) -> tuple[int, int, int]:
    if size not in PRESETS:
        raise UserError(f"unknown corpus size {size!r}; choose one of {sorted(PRESETS)}")
    train, dev, test = PRESETS[size]
    if hours is not None:
        if hours <= 0:
            raise UserError("hours must be positive")
        train = max(1, round(hours * 3600 / AVG_UTTERANCE_SECONDS))
    train = train if num_train is None else num_train
    dev = dev if num_dev is None else num_dev
    test = test if num_test is None else num_test
    if min(train, dev, test) < 0 or train + dev + test == 0:
        raise UserError(f"invalid utterance counts train={train} dev={dev} test={test}")
    return train, dev, test


def load_summary(output_dir: str | os.PathLike) -> CorpusSummary | None:
    """Read ``<output_dir>/corpus.json`` of a complete build, or ``None`` if there is none."""
    path = Path(output_dir) / _SUMMARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CorpusSummary(
            output_dir=Path(output_dir),
            seed=data["seed"],
            num_utterances=data["num_utterances"],
            hours=data["hours"],
            num_speakers=data["num_speakers"],
            params=data["params"],
            backend=data.get("backend", ""),
            elapsed_s=data.get("elapsed_s", 0.0),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Remove the products of an earlier (other or unfinished) build; refuse to clobber foreign files."""
    ours = [out / name for name in (*SPLITS, "SPEAKERS.txt", _SUMMARY, _MARKER)]
    existing = [p for p in ours if p.exists()]
    built_by_us = (out / _SUMMARY).exists() or (out / _MARKER).exists()
    if existing and not (built_by_us or overwrite):
        raise FileExistsError(
            f"{out} already contains {[p.name for p in existing]} not written by build_corpus; "
            "pass overwrite=True or choose another folder"
        )
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def build_corpus(
    output_dir: str | os.PathLike,
    hours: float | None = None,
    num_train: int | None = None,
    num_dev: int | None = None,
    num_test: int | None = None,
    *,
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> CorpusSummary:
    """Synthesise the English eSpeak NG corpus into ``output_dir`` (LibriSpeech layout, see module doc).
    (Ten parameters and about 100 lines: the size options, then plan, synthesise and write in one pass
    whose completion marker is written last.)

    Sizes: ``size="default"`` gives 4000 train / 200 dev / 200 test utterances (~1.2 h of train audio,
    ~20 s on 2 CPU cores); ``size="quick"`` gives 300 / 40 / 40 (a few seconds) for smoke tests.
    ``hours`` replaces the preset's train count by ``hours * 3600 / AVG_UTTERANCE_SECONDS`` utterances;
    explicit ``num_train`` / ``num_dev`` / ``num_test`` override both.

    The output is deterministic: the same seed and counts give the same texts, speakers, prosody and
    byte-identical FLAC files, whatever the number of workers. Dev and test speakers never occur in train
    (see :mod:`wav2vec2_ee.corpus.voices`).

    Args:
        output_dir: corpus root folder (created if needed).
        hours: approximate amount of train audio to generate.
        num_train: number of train utterances.
        num_dev: number of dev utterances.
        num_test: number of test utterances.
        size: preset name, a key of :data:`PRESETS`.
        seed: seed of all random choices.
        workers: synthesis processes (default ``os.cpu_count()``; ``1`` renders in this process).
        progress: show a tqdm progress bar.
        overwrite: allow deleting ``train``/``dev``/``test``/``SPEAKERS.txt`` in ``output_dir`` left by
            something other than an earlier ``build_corpus`` run.

    Returns:
        Counts, hours and speakers per split. ``cached=True`` when a complete build with the same
        parameters already existed and nothing was done.

    Raises:
        BackendUnavailableError: if neither ``espeakng-loader`` nor an ``espeak-ng`` binary is installed.
        FileExistsError: if ``output_dir`` holds foreign split folders and ``overwrite`` is false.
    """
    start = time.perf_counter()
    out = Path(output_dir)
    train, dev, test = _resolve_counts(size, hours, num_train, num_dev, num_test)
    params = {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "num_train": train,
        "num_dev": dev,
        "num_test": test,
        "rate_range": list(RATE_RANGE),
        "pitch_range": list(PITCH_RANGE),
        "sample_rate": SAMPLING_RATE,
    }
    cached = load_summary(out)
    if cached is not None and cached.params == params:
        cached.cached = True
        return cached

    backend = detect_backend()  # fail early, before touching the folder
    plan = plan_corpus(train, dev, test, seed)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_output_dir(out, overwrite)
    (out / _MARKER).write_text(json.dumps(params), encoding="utf-8")

    by_dir: dict[Path, list[PlannedUtterance]] = {}
    for item in plan:
        by_dir.setdefault(item.relative_dir, []).append(item)
    for rel_dir, items in by_dir.items():
        (out / rel_dir).mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{u.utt_id} {to_transcript(u.text)}\n" for u in items)
        (out / rel_dir / f"{items[0].speaker_id}-{items[0].chapter_id}.trans.txt").write_text(
            lines, encoding="utf-8"
        )

    workers = max(1, min(workers or os.cpu_count() or 1, len(plan) // 8))
    samples = dict.fromkeys(SPLITS, 0)
    for split, num_samples in _run(plan, out, workers, progress):
        samples[split] += num_samples

    speakers = {s.id: s for members in speakers_by_split().values() for s in members}
    used = sorted({(u.split, u.speaker_id) for u in plan}, key=lambda x: x[1])
    speaker_lines = [";ID   | SPLIT | VOICE (accent+variant)\n"]
    speaker_lines += [f"{sid:<4} | {split:<5} | {speakers[sid].voice}\n" for split, sid in used]
    (out / "SPEAKERS.txt").write_text("".join(speaker_lines), encoding="utf-8")

    summary = CorpusSummary(
        output_dir=out,
        seed=int(seed),
        num_utterances={"train": train, "dev": dev, "test": test},
        hours={s: round(samples[s] / SAMPLING_RATE / 3600, 4) for s in SPLITS},
        num_speakers={s: len({sid for split, sid in used if split == s}) for s in SPLITS},
        params=params,
        backend=backend,
        elapsed_s=round(time.perf_counter() - start, 2),
    )
    record = {k: v for k, v in asdict(summary).items() if k not in ("output_dir", "cached")}
    record = {"format": "wav2vec2-ee synthetic eSpeak NG corpus (LibriSpeech layout)", **record}
    atomic_write_json(out / _SUMMARY, record)
    (out / _MARKER).unlink()
    return summary
