"""Speech from other synthesizers than eSpeak NG: CMU Flite and Festival, through their command-line programs.

A model trained on one synthesizer can learn that synthesizer's rendering of words rather than
speech; splits spoken by other engines serve two purposes:

* **more variety in training**: a Flite split beside the eSpeak corpus (``--train-splits train
  train_flite``), diphone and statistical-parametric voices unlike eSpeak's formant synthesis;
* **a check on speech the corpus builder did not make**: a split of held-out sentences spoken by an
  engine (or voices) no training split used (``benchmarks/check_other_synthesizer.py``).

The engines are Debian packages, not Python ones: ``apt-get install flite`` (voices ``kal16``,
``awb``, ``rms``, ``slt``) and ``apt-get install festival festvox-kdlpc16k festvox-kallpc16k
festvox-us-slt-hts`` (``ked_diphone``, ``kal_diphone``, ``cmu_us_slt_arctic_hts``; each voice is its own
package). A missing program or voice raises :class:`SynthesizerUnavailableError` naming the package,
before anything is written.

A split is written in the LibriSpeech layout of :mod:`.build` (``<root>/<split>/<speaker>/1/...``), one
speaker per voice (ids :data:`SPEAKER_ID_BASE` + the voice's index in :data:`VOICES`), with
``external.json`` (its parameters) written last: a finished split with the same parameters is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..audio import SAMPLING_RATE, to_mono_16k
from ..errors import UserError
from ..io import atomic_write_json
from .espeak import trim_silence
from .text import UtteranceGenerator, to_transcript

__all__ = [
    "ENGINES",
    "SPEAKER_ID_BASE",
    "VOICES",
    "ExternalUtterance",
    "ExternalVoice",
    "SynthesizerUnavailableError",
    "build_external_split",
    "check_engine",
    "check_voices",
    "installed_voices",
    "plan_external",
    "voices_for",
    "speak",
]

#: The engines: the program each needs and the Debian packages that provide it (and its voices).
ENGINES: dict[str, tuple[str, str]] = {
    "flite": ("flite", "flite"),
    "festival": ("text2wave", "festival festvox-kdlpc16k festvox-kallpc16k festvox-us-slt-hts"),
}


@dataclass(frozen=True)
class ExternalVoice:
    """One voice of an engine.

    Args:
        engine: ``"flite"`` or ``"festival"``.
        name: the engine's voice name (``flite -voice NAME``; Festival ``(voice_NAME)``).
        package: the Debian package that installs the voice.
        f0_range: mean pitch in Hz drawn per utterance (Flite's ``int_f0_target_mean``); ``None``: the
            voice's own (Festival's voices, and Flite's ``rms``, which ignores it).
    """

    engine: str
    name: str
    package: str
    f0_range: tuple[float, float] | None = None


#: Every voice, in id order (append-only: a voice's index fixes its speaker id).
VOICES: tuple[ExternalVoice, ...] = (
    ExternalVoice("flite", "kal16", "flite", (85.0, 135.0)),
    ExternalVoice("flite", "awb", "flite", (85.0, 135.0)),
    ExternalVoice("flite", "rms", "flite"),
    ExternalVoice("flite", "slt", "flite", (150.0, 220.0)),
    ExternalVoice("festival", "ked_diphone", "festvox-kdlpc16k"),
    ExternalVoice("festival", "kal_diphone", "festvox-kallpc16k"),
    ExternalVoice("festival", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
)
#: Speaker id of ``VOICES[0]``; the others follow (9000-9006: apart from the eSpeak ids, 1000-1999).
SPEAKER_ID_BASE = 9000
#: Duration stretch drawn per utterance when prosody varies (Flite's ``duration_stretch``; > 1 slower).
STRETCH_RANGE = (0.85, 1.2)
_MARKER = "external.json"


class SynthesizerUnavailableError(UserError, RuntimeError):
    """An engine's program or voice is not installed (the message names its Debian package): a
    :class:`~wav2vec2_ee.errors.UserError` (one line on the command line) and, as before, a
    :class:`RuntimeError`."""


def voice_by_name(name: str) -> ExternalVoice:
    """The voice called ``name`` (otherwise a :class:`~wav2vec2_ee.errors.UserError` listing the known
    ones)."""
    for voice in VOICES:
        if voice.name == name:
            return voice
    raise UserError(f"unknown voice {name!r}; known: {', '.join(v.name for v in VOICES)}")


def voices_for(names: Sequence[str] | None, engine: str) -> list[ExternalVoice]:
    """The voices called ``names`` (any engine's), or without names every voice of ``engine``."""
    return [voice_by_name(v) for v in names] if names else [v for v in VOICES if v.engine == engine]


def speaker_id(voice: ExternalVoice) -> int:
    return SPEAKER_ID_BASE + VOICES.index(voice)


def check_engine(engine: str) -> None:
    """Raise :class:`SynthesizerUnavailableError` (naming the Debian packages) if ``engine`` cannot run."""
    if engine not in ENGINES:
        raise UserError(f"unknown synthesizer {engine!r}; choose one of {sorted(ENGINES)}")
    program, packages = ENGINES[engine]
    if shutil.which(program) is None:
        raise SynthesizerUnavailableError(
            f"{engine}: the program {program!r} is not installed (Debian: apt-get install {packages})"
        )


#: How each engine lists its installed voices: the command, and what it reads on standard input.
_VOICE_LIST_COMMANDS: dict[str, tuple[list[str], str | None]] = {
    "flite": (["flite", "-lv"], None),
    "festival": (["festival", "--pipe"], "(print (voice.list))\n"),
}


def _parse_voice_list(engine: str, output: str) -> frozenset[str]:
    """The voice names in what ``engine``'s voice listing printed (``flite -lv``: ``Voices available: kal
    awb ...``; Festival's ``(print (voice.list))``: ``(ked_diphone kal_diphone ...)``)."""
    if engine == "flite":
        _, _, output = output.partition(":")
    return frozenset(output.replace("(", " ").replace(")", " ").split())


@cache
def installed_voices(engine: str) -> frozenset[str]:
    """The voices ``engine`` has installed (asked of the engine itself, once per process).

    Raises:
        SynthesizerUnavailableError: the engine's program is missing or its listing failed.
    """
    check_engine(engine)
    command, stdin = _VOICE_LIST_COMMANDS[engine]
    try:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SynthesizerUnavailableError(
            f"{engine}: could not list its voices with {' '.join(command)} ({err})"
        ) from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()[-300:]
        raise SynthesizerUnavailableError(
            f"{engine}: {' '.join(command)} failed listing its voices: {message}"
        )
    return _parse_voice_list(engine, result.stdout)


def check_voices(voices: Iterable[ExternalVoice]) -> None:
    """Raise :class:`SynthesizerUnavailableError` naming the Debian packages if an engine or a voice in
    ``voices`` is not installed (e.g. Festival without ``festvox-kallpc16k`` has no ``kal_diphone``)."""
    voices = list(voices)
    for engine in sorted({v.engine for v in voices}):
        check_engine(engine)
        missing = [v for v in voices if v.engine == engine and v.name not in installed_voices(engine)]
        if missing:
            names = ", ".join(dict.fromkeys(v.name for v in missing))
            packages = " ".join(dict.fromkeys(v.package for v in missing))
            raise SynthesizerUnavailableError(
                f"{engine}: voice(s) {names} not installed (Debian: apt-get install {packages})"
            )


def speak(
    text: str, voice: ExternalVoice, *, stretch: float = 1.0, f0_mean: float | None = None
) -> np.ndarray:
    """``text`` spoken by ``voice``: ``(samples,)`` float32 at 16 kHz, leading/trailing silence trimmed.

    Args:
        stretch: duration factor (> 1 slower; Flite only, Festival voices speak at their own pace).
        f0_mean: mean pitch in Hz (Flite only).

    Raises:
        SynthesizerUnavailableError: the engine is not installed.
        RuntimeError: the program failed or produced no audio (its message included).
    """
    check_engine(voice.engine)
    text = " ".join(text.lower().split())
    with tempfile.TemporaryDirectory(prefix="w2v2ee-tts-") as tmp:
        wav = Path(tmp, "out.wav")
        if voice.engine == "flite":
            command = ["flite", "-voice", voice.name, "-t", text, "-o", str(wav)]
            command += ["--setf", f"duration_stretch={stretch:.4f}"]
            if f0_mean is not None:
                command += ["--setf", f"int_f0_target_mean={f0_mean:.1f}"]
            stdin = None
        else:
            command = ["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(wav)]
            stdin = text
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wav.is_file():
            message = (result.stderr or result.stdout).strip()[-300:]
            raise RuntimeError(f"{voice.engine} voice {voice.name} failed on {text!r}: {message}")
        audio, rate = sf.read(wav, dtype="float32")
    audio = trim_silence(to_mono_16k(audio, rate, source=f"{voice.engine}:{voice.name}"), SAMPLING_RATE)
    if audio.size < SAMPLING_RATE // 20:
        raise RuntimeError(f"{voice.engine} voice {voice.name} produced no audio for {text!r}")
    peak = float(np.abs(audio).max())
    return (audio * (0.9 / peak)).astype(np.float32) if peak > 0.9 else audio


@dataclass(frozen=True)
class ExternalUtterance:
    """One planned utterance of an external split."""

    voice: str
    speaker_id: int
    index: int
    text: str
    stretch: float = 1.0
    f0_mean: float | None = None

    @property
    def utt_id(self) -> str:
        return f"{self.speaker_id}-1-{self.index:04d}"


def plan_external(
    texts: Sequence[str],
    voices: Sequence[ExternalVoice],
    *,
    every_voice: bool = False,
    prosody: bool = True,
    seed: int = 0,
) -> list[ExternalUtterance]:
    """Who says what: each text by the next voice in turn (``every_voice``: by every voice), with a
    duration stretch and a mean pitch drawn per utterance from ``seed`` when ``prosody`` (Flite voices)."""
    if not voices:
        raise ValueError("no voices")
    rng = random.Random(f"wav2vec2-ee-external/{seed}")
    plan, counts = [], {}
    pairs = [(t, v) for t in texts for v in voices] if every_voice else [
        (t, voices[i % len(voices)]) for i, t in enumerate(texts)
    ]  # fmt: skip
    for text, voice in pairs:
        sid = speaker_id(voice)
        index = counts.get(sid, 0)
        counts[sid] = index + 1
        stretch, f0 = 1.0, None
        if prosody and voice.engine == "flite":
            stretch = round(rng.uniform(*STRETCH_RANGE), 3)
            f0 = round(rng.uniform(*voice.f0_range), 1) if voice.f0_range else None
        plan.append(ExternalUtterance(voice.name, sid, index, " ".join(text.lower().split()), stretch, f0))
    return plan


def _render(item: ExternalUtterance, split_dir: Path) -> int:
    audio = speak(item.text, voice_by_name(item.voice), stretch=item.stretch, f0_mean=item.f0_mean)
    path = split_dir / str(item.speaker_id) / "1" / f"{item.utt_id}.flac"
    sf.write(path, audio, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return int(audio.size)


def build_external_split(
    root: str | os.PathLike,
    split: str,
    texts: Sequence[str] | int,
    voices: Sequence[str] | None = None,
    *,
    engine: str = "flite",
    every_voice: bool = False,
    prosody: bool = True,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write ``<root>/<split>`` spoken by other synthesizers (LibriSpeech layout); returns its record.

    Args:
        texts: the sentences, or a number of sentences to draw from the corpus grammar (seeded by ``seed``
            and ``split``, so they differ from the eSpeak splits' for another seed or split name).
        voices: voice names (default: every voice of ``engine``).
        engine: the engine whose voices are the default; ``voices`` may name any engine's.
        every_voice, prosody, seed: see :func:`plan_external`.
        workers: synthesis processes running at once (default: the CPU count).

    Raises:
        SynthesizerUnavailableError: an engine or a voice is not installed (before anything is written).
    """
    chosen = voices_for(voices, engine)
    if not chosen:
        raise UserError(f"no voices for synthesizer {engine!r}")
    check_voices(chosen)
    if isinstance(texts, int):
        generator = UtteranceGenerator(f"wav2vec2-ee-external/{seed}/{split}/text")
        texts = [generator.sample() for _ in range(texts)]
    plan = plan_external(texts, chosen, every_voice=every_voice, prosody=prosody, seed=seed)
    params = {
        "split": split,
        "voices": [v.name for v in chosen],
        "every_voice": every_voice,
        "prosody": prosody,
        "seed": seed,
        "plan_sha1": hashlib.sha1(json.dumps([asdict(u) for u in plan]).encode()).hexdigest(),
    }
    split_dir = Path(root, split)
    marker = split_dir / _MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            record = {}
        if record.get("params") == params:
            return {**record, "cached": True}
    if split_dir.exists():
        shutil.rmtree(split_dir)
    by_speaker: dict[int, list[ExternalUtterance]] = {}
    for item in plan:
        by_speaker.setdefault(item.speaker_id, []).append(item)
    for sid, items in by_speaker.items():
        folder = split_dir / str(sid) / "1"
        folder.mkdir(parents=True)
        lines = "".join(f"{u.utt_id} {to_transcript(u.text)}\n" for u in items)
        (folder / f"{sid}-1.trans.txt").write_text(lines, encoding="utf-8")
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # each utterance is its own process; threads only wait
        samples = list(
            tqdm(
                pool.map(lambda u: _render(u, split_dir), plan),
                total=len(plan),
                desc=f"Synthesising {split}",
                unit="utt",
                disable=not progress,
            )
        )
    record = {
        "format": "wav2vec2-ee external-synthesizer split (LibriSpeech layout)",
        "params": params,
        "num_utterances": len(plan),
        "hours": round(sum(samples) / SAMPLING_RATE / 3600, 4),
        "speakers": {str(speaker_id(v)): f"{v.engine}:{v.name}" for v in chosen},
    }
    atomic_write_json(marker, record)
    return record
