"""Recording conditions of real audio that a speech synthesiser never makes, as training augmentation.

:class:`RecordingConditions` turns a clean training utterance into one recorded the way users' files
are: by another talker's voice (pitch and formants scaled together, the length kept: a longer or shorter
vocal tract, as vocal tract length perturbation does), spoken faster or slower (tempo, pitch kept), with
other speech underneath (babble), with silence
before, after and inside it over a low noise floor, at another gain with a DC offset, clipped or
saturated, through a telephone channel (8 kHz, 300-3400 Hz band, G.711 mu-law companding) or a lossy
codec (Ogg Vorbis or MP3, through ``soundfile``). Each condition is drawn independently with its own
probability (all 0 by default: off). The chain follows a recording: the talker (voice and tempo, then pauses
and silence before and after, over the microphone's noise floor), the room (babble; then the room's
reverberation and noise, :class:`~.augment.NoiseAndReverb`, when given as ``room``), the input stage
(gain, DC, clipping) and the channel (telephone or codec). The talker pauses, the room does not: babble
and noise run through the silences too (a model trained on noise over speech only hears a noisy lead-in
as words; :file:`benchmarks/check_long_recording.py`).

Every random choice is a pure function of ``(seed, epoch, index)``, as for the other augmentations, and
the choices that change the length (tempo, silence) are drawn before any audio is touched, so
:meth:`RecordingConditions.planned_length` gives an utterance's length in an epoch without decoding it
(``group_by_length`` groups what gets padded together).

Level: the model's feature extractor normalises each input to zero mean and unit variance, so gain and
DC offset alone change nothing it sees; they matter through what follows them (clipping is relative to
full scale). Silence does matter: the variance of a file that is mostly silence is mostly the speech's,
diluted, so the speech comes out louder than in a clean file. Training with silence (this module) keeps
the Hugging Face processor semantics (normalisation over the whole input, as ``Wav2Vec2Processor`` and
``pipeline`` do for any checkpoint) and teaches the model the level shift; long recordings are also cut
at pauses before they reach the model (the transcription commands).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLING_RATE
from ..errors import UserError
from .augment import colored_noise

#: The conditions, in the order the chain applies them (the probability fields are ``<name>_prob``).
CONDITIONS = ("voice", "tempo", "babble", "silence", "gain", "clipping", "telephone", "codec")
#: The conditions whose draws come first in :meth:`RecordingConditions.plan`, in this order; a condition
#: added later draws after them (and after the plan's seed), so that the draws of runs made before it
#: stay what they were.
_FIRST_DRAWN = ("tempo", "babble", "silence", "gain", "clipping", "telephone", "codec")


@dataclass(frozen=True)
class ConditionPlan:
    """The draws of one utterance in one epoch: which conditions apply, with what parameters.

    Length-changing draws (``tempo``, ``silence``) are fixed here; ``seed`` seeds what depends on the
    audio (pause positions, noise, babble offsets).
    """

    voice: float | None = None  # pitch and formant factor (1.2 = 20 % higher)
    tempo: float | None = None
    babble: tuple[int, float] | None = None  # (speakers, SNR dB)
    silence: tuple[int, int, tuple[int, ...], float] | None = None  # (lead, trail, pauses, floor dB)
    gain: tuple[float, float] | None = None  # (gain dB, DC offset as a fraction of full scale)
    clipping: tuple[str, float] | None = None  # ("hard" | "soft", drive dB over full scale)
    telephone: bool = False
    codec: tuple[str, float] | None = None  # ("vorbis" | "mp3", compression level 0..1)
    seed: int = 0

    @property
    def names(self) -> list[str]:
        """The conditions that apply, in chain order."""
        return [name for name in CONDITIONS if getattr(self, name) not in (None, False)]

    def length_after(self, samples: int) -> int:
        """The length in samples these draws give a ``samples``-long utterance."""
        if self.tempo is not None:
            samples = tempo_length(samples, self.tempo)
        if self.silence is not None:
            lead, trail, pauses, _ = self.silence
            samples += lead + trail + sum(pauses)
        return samples

    def with_tempo_only(self) -> ConditionPlan:
        """These draws with every condition but the tempo off."""
        return ConditionPlan(tempo=self.tempo, seed=self.seed)


def _check_range(name: str, pair, low: float, high: float) -> tuple[float, float]:
    values = tuple(float(v) for v in pair)
    if len(values) != 2 or values[0] > values[1] or values[0] < low or values[1] > high:
        raise UserError(f"{name} must be two increasing numbers in [{low:g}, {high:g}], got {list(pair)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class RecordingConditions:
    """Real recording conditions as a training augmentation (every probability 0 = off).

    Args:
        voice_prob / voice_range: another talker's voice: pitch and formants scaled together by a factor
            drawn from ``voice_range`` (``1.2`` = 20 % higher), the length and tempo kept
            (:func:`shift_voice`; vocal tract length perturbation on the waveform).
        tempo_prob / tempo_range: play the utterance faster or slower by a factor drawn from
            ``tempo_range`` (``1.25`` = 25 % faster), pitch and formants kept (WSOLA, :func:`change_tempo`).
        babble_prob / babble_snr_db / babble_speakers: 1 to ``babble_speakers`` other utterances (given by
            the caller) summed underneath at a speech-to-babble ratio drawn from ``babble_snr_db``.
        silence_prob / lead_silence / trail_silence / max_pauses / pause_seconds / silence_floor_db:
            silence before (seconds drawn from ``lead_silence``) and after (``trail_silence``), and up to
            ``max_pauses`` pauses of ``pause_seconds`` inserted between words (the call's ``gaps``) or, with
            no word times, at the quietest moments inside, over a noise floor ``silence_floor_db`` below
            the speech's level.
        gain_prob / gain_db / dc_offset: a gain in dB and a DC offset (fraction of full scale), applied
            before clipping.
        clipping_prob / clipping_db: driven ``clipping_db`` dB over full scale, then clipped hard
            (``np.clip``) or saturated softly (``tanh``), half of the time each.
        telephone_prob: the telephone channel (:func:`telephone_band`).
        codec_prob / codec_quality: Ogg Vorbis or MP3 (half each) at a compression level drawn from
            ``codec_quality`` (0 = best quality, 1 = smallest file), encoded and decoded by ``soundfile``.
        seed: with ``(epoch, index)``, determines every choice.
    """

    voice_prob: float = 0.0
    voice_range: tuple[float, float] = (0.8, 1.25)
    tempo_prob: float = 0.0
    tempo_range: tuple[float, float] = (0.8, 1.25)
    babble_prob: float = 0.0
    babble_snr_db: tuple[float, float] = (10.0, 25.0)
    babble_speakers: int = 3
    silence_prob: float = 0.0
    lead_silence: tuple[float, float] = (0.2, 1.5)
    trail_silence: tuple[float, float] = (0.2, 2.0)
    max_pauses: int = 2
    pause_seconds: tuple[float, float] = (0.3, 1.0)
    silence_floor_db: tuple[float, float] = (40.0, 65.0)
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-20.0, 6.0)
    dc_offset: float = 0.05
    clipping_prob: float = 0.0
    clipping_db: tuple[float, float] = (3.0, 15.0)
    telephone_prob: float = 0.0
    codec_prob: float = 0.0
    codec_quality: tuple[float, float] = (0.3, 0.9)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in CONDITIONS:
            value = float(getattr(self, f"{name}_prob"))
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name}_prob must lie in [0, 1], got {value}")
            object.__setattr__(self, f"{name}_prob", value)
        limits = {
            "voice_range": (0.5, 2.0),
            "tempo_range": (0.5, 2.0),
            "babble_snr_db": (-10.0, 60.0),
            "lead_silence": (0.0, 30.0),
            "trail_silence": (0.0, 30.0),
            "pause_seconds": (0.0, 10.0),
            "silence_floor_db": (0.0, 120.0),
            "gain_db": (-60.0, 40.0),
            "clipping_db": (0.0, 40.0),
            "codec_quality": (0.0, 1.0),
        }
        for name, (low, high) in limits.items():
            object.__setattr__(self, name, _check_range(name, getattr(self, name), low, high))
        if int(self.babble_speakers) < 1 or int(self.max_pauses) < 0:
            raise UserError("babble_speakers must be at least 1 and max_pauses at least 0")
        if not 0.0 <= float(self.dc_offset) <= 0.5:
            raise UserError(f"dc_offset must lie in [0, 0.5], got {self.dc_offset}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f"{name}_prob") > 0 for name in CONDITIONS)

    # ------------------------------------------------------------------------------------------
    def plan(self, epoch: int, index: int) -> ConditionPlan:
        """The draws of utterance ``index`` in ``epoch`` (a fixed number of draws per condition, so that
        turning one condition on or off does not change the others' draws)."""
        rng = np.random.default_rng((int(self.seed), int(epoch), int(index), 2))
        u = rng.random(len(_FIRST_DRAWN))
        on = {name: bool(u[i] < getattr(self, f"{name}_prob")) for i, name in enumerate(_FIRST_DRAWN)}
        tempo = float(np.exp(rng.uniform(*np.log(self.tempo_range))))
        babble = (int(rng.integers(1, self.babble_speakers + 1)), float(rng.uniform(*self.babble_snr_db)))
        pauses = int(rng.integers(0, self.max_pauses + 1))
        pause_lengths = tuple(
            int(rng.uniform(*self.pause_seconds) * SAMPLING_RATE) for _ in range(self.max_pauses)
        )
        silence = (
            int(rng.uniform(*self.lead_silence) * SAMPLING_RATE),
            int(rng.uniform(*self.trail_silence) * SAMPLING_RATE),
            pause_lengths[:pauses],
            float(rng.uniform(*self.silence_floor_db)),
        )
        gain = (float(rng.uniform(*self.gain_db)), float(rng.uniform(-self.dc_offset, self.dc_offset)))
        clipping = ("hard" if rng.random() < 0.5 else "soft", float(rng.uniform(*self.clipping_db)))
        codec = ("vorbis" if rng.random() < 0.5 else "mp3", float(rng.uniform(*self.codec_quality)))
        seed = int(rng.integers(2**31))
        on["voice"] = bool(rng.random() < self.voice_prob)
        voice = float(np.exp(rng.uniform(*np.log(self.voice_range))))
        return ConditionPlan(
            voice=voice if on["voice"] else None,
            tempo=tempo if on["tempo"] else None,
            babble=babble if on["babble"] else None,
            silence=silence if on["silence"] else None,
            gain=gain if on["gain"] else None,
            clipping=clipping if on["clipping"] else None,
            telephone=on["telephone"],
            codec=codec if on["codec"] else None,
            seed=seed,
        )

    def planned_length(self, samples: int, epoch: int, index: int) -> int:
        """The length in samples that :meth:`__call__` gives a ``samples``-long utterance in ``epoch``."""
        return self.plan(epoch, index).length_after(samples)

    def __call__(
        self,
        audio: np.ndarray,
        epoch: int,
        index: int,
        other: Callable[[np.random.Generator], np.ndarray] | None = None,
        room: Callable[[np.ndarray], np.ndarray] | None = None,
        plan: ConditionPlan | None = None,
        gaps: Sequence[tuple[int, int]] | None = None,
    ) -> np.ndarray:
        """``(samples,)`` float32 audio of utterance ``index`` in ``epoch`` under its drawn conditions
        (``audio`` itself when none is drawn and ``room`` is ``None``).

        Args:
            other: draws another utterance's ``(samples,)`` audio for babble (babble is skipped without it).
            room: the room's reverberation and noise, applied after silence and babble (e.g. a bound
                :class:`~.augment.NoiseAndReverb`).
            plan: the draws to apply (default :meth:`plan` of ``(epoch, index)``).
            gaps: ``(start, end)`` samples of ``audio`` between its words, where known: the pauses go
                there (:func:`add_silence`; a tempo change moves them with the audio).
        """
        plan = self.plan(epoch, index) if plan is None else plan
        rng = np.random.default_rng(plan.seed)
        out = audio
        if plan.voice is not None or plan.tempo is not None:
            out = shift_voice(out, plan.voice or 1.0, plan.tempo or 1.0)  # one WSOLA pass for both
        if plan.tempo is not None and gaps is not None:
            gaps = scale_positions(gaps, out.size / max(audio.size, 1))
        if plan.silence is not None:
            lead, trail, pauses, floor_db = plan.silence
            out = add_silence(out, lead, trail, pauses, floor_db, rng, gaps=gaps)
        if plan.babble is not None and other is not None:
            out = add_babble(out, [other(rng) for _ in range(plan.babble[0])], plan.babble[1], rng)
        if room is not None:
            out = room(out)
        if plan.gain is not None or plan.clipping is not None:
            out = out / max(float(np.max(np.abs(out))), 1e-9)  # full scale = the clean peak
            if plan.gain is not None:
                out = out * 10 ** (plan.gain[0] / 20) + plan.gain[1]
            if plan.clipping is not None:
                out = clip(out, *plan.clipping)
        if plan.telephone:
            out = telephone_band(out)
        if plan.codec is not None:
            out = lossy_codec(out, *plan.codec)
        return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# the conditions, as pure functions of (samples,) float32 audio


def scale_positions(spans: Sequence[tuple[int, int]], ratio: float) -> list[tuple[int, int]]:
    """Sample ``(start, end)`` spans of an audio whose length changed by ``ratio`` (new / old): where the
    same moments lie now (speed and tempo changes stretch time evenly)."""
    return [(int(round(a * ratio)), int(round(b * ratio))) for a, b in spans]


def tempo_length(samples: int, factor: float) -> int:
    """Length of ``samples`` played ``factor`` times faster by :func:`change_tempo`."""
    return max(1, int(round(samples / factor)))


def shift_voice(audio: np.ndarray, factor: float, tempo: float = 1.0) -> np.ndarray:
    """``audio`` by a voice ``factor`` times higher, pitch and formants together (a vocal tract that much
    shorter), its length kept: resampled to play ``factor`` times faster (what a speed change does),
    then slowed back by :func:`change_tempo`, which also applies ``tempo`` in the same pass. Length
    :func:`tempo_length` of ``tempo``."""
    samples = tempo_length(audio.size, tempo)
    if factor == 1.0:
        return change_tempo(audio, tempo)
    faster = soxr.resample(audio, SAMPLING_RATE, SAMPLING_RATE / factor).astype(np.float32, copy=False)
    return _fit_length(change_tempo(faster, tempo / factor), samples)


def change_tempo(audio: np.ndarray, factor: float, frame: int = 512, tolerance: int = 160) -> np.ndarray:
    """``audio`` played ``factor`` times faster with its pitch kept: WSOLA (waveform-similarity
    overlap-add; Verhelst and Roelands, 1993). Hann frames of ``frame`` samples are laid at half-frame
    hops in the output, each read from around ``factor`` times that position in the input, shifted by
    up to ``tolerance`` samples to continue the previous frame's waveform best. Length
    :func:`tempo_length`."""
    n = audio.size
    out_len = tempo_length(n, factor)
    if factor == 1.0:
        return audio
    if n < 2 * frame:  # too short for frames: resampled (the pitch moves too)
        return _fit_length(soxr.resample(audio, SAMPLING_RATE * factor, SAMPLING_RATE), out_len)
    hop = frame // 2
    window = np.hanning(frame).astype(np.float32)
    padded = np.concatenate([np.zeros(tolerance, np.float32), audio, np.zeros(frame + tolerance, np.float32)])
    frames = out_len // hop + 1
    out = np.zeros(frames * hop + frame, np.float32)
    norm = np.zeros_like(out)
    previous = tolerance  # where the last frame was read in `padded`
    for k in range(frames):
        nominal = int(round(k * hop * factor)) + tolerance
        if k:
            target = padded[previous + hop : previous + hop + frame]  # the natural continuation
            start = max(nominal - tolerance, 0)
            region = padded[start : nominal + tolerance + frame]
            if region.size >= frame and target.size == frame:
                scores = np.correlate(region, target, mode="valid")
                nominal = start + int(np.argmax(scores))
        segment = padded[nominal : nominal + frame]
        if segment.size < frame:
            break
        out[k * hop : k * hop + frame] += segment * window
        norm[k * hop : k * hop + frame] += window
        previous = nominal
    out = out / np.maximum(norm, 1e-3)
    return out[:out_len].astype(np.float32)


def add_babble(
    audio: np.ndarray, others: list[np.ndarray], snr_db: float, rng: np.random.Generator
) -> np.ndarray:
    """``audio`` with ``others`` (other talkers, each looped or cut to the length and started at a random
    offset, each at unit power) summed underneath at a speech-to-babble power ratio of ``snr_db``."""
    if not others:
        return audio
    n = audio.size
    babble = np.zeros(n, np.float32)
    for voice in others:
        voice = np.asarray(voice, np.float32)
        if voice.size == 0:
            continue
        reps = -(-(n + voice.size) // voice.size)
        looped = np.tile(voice, reps)
        offset = int(rng.integers(voice.size))
        piece = looped[offset : offset + n]
        babble += piece / max(float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))), 1e-9)
    power = float(np.mean(audio.astype(np.float64) ** 2))
    babble_power = max(float(np.mean(babble.astype(np.float64) ** 2)), 1e-20)
    return (audio + babble * np.sqrt(power / babble_power / 10 ** (snr_db / 10))).astype(np.float32)


def quiet_points(
    audio: np.ndarray,
    count: int,
    rng: np.random.Generator,
    hop: int = 320,
    gaps: Sequence[tuple[int, int]] | None = None,
) -> list[int]:
    """Up to ``count`` sample positions where a talker could pause, in increasing order.

    With ``gaps`` (``(start, end)`` samples between consecutive words, e.g. from a word alignment:
    :func:`~.alignments.word_gaps`): one position in each of ``count`` gaps drawn at random, at the gap's
    quietest ``hop`` frame (its middle when it is shorter than a frame); fewer when there are fewer gaps
    (a one-word utterance has none). Without: ``count`` positions at the quietest 20 ms frames of the
    middle 80 % of ``audio`` (in synthetic speech these are as often a stop's closure inside a word as a
    gap between words).
    """
    if gaps is not None:
        usable = [(max(int(a), 0), min(int(b), audio.size)) for a, b in gaps]
        usable = [(a, b) for a, b in usable if b > a]
        if count <= 0 or not usable:
            return []
        chosen = rng.choice(len(usable), size=min(count, len(usable)), replace=False)
        positions = []
        for a, b in (usable[int(i)] for i in chosen):
            frames = (b - a) // hop
            if frames < 1:
                positions.append((a + b) // 2)
                continue
            energy = np.square(audio[a : a + frames * hop].reshape(frames, hop)).mean(axis=1)
            positions.append(a + int(np.argmin(energy)) * hop + hop // 2)
        return sorted(positions)
    frames = audio.size // hop
    if count <= 0 or frames < 5:
        return sorted(int(p) for p in rng.integers(0, max(audio.size, 1), size=max(count, 0)))
    energy = np.square(audio[: frames * hop].reshape(frames, hop)).mean(axis=1)
    low, high = int(frames * 0.1), max(int(frames * 0.9), int(frames * 0.1) + 1)
    candidates = low + np.argsort(energy[low:high])[: max(count * 3, 1)]
    chosen = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    return sorted(int(c) * hop + hop // 2 for c in chosen)


def add_silence(
    audio: np.ndarray,
    lead: int,
    trail: int,
    pauses: tuple[int, ...],
    floor_db: float | None,
    rng: np.random.Generator,
    gaps: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """``lead`` samples of silence before ``audio``, ``trail`` after, pauses of the given lengths at its
    :func:`quiet_points` (between words where ``gaps`` gives the word gaps; a pause with no gap left
    goes to the end, so the length is always ``audio.size + lead + trail + sum(pauses)``), and pink noise
    ``floor_db`` dB below the speech's level over the whole result (the recording's noise floor;
    ``None``: digital silence)."""
    positions = quiet_points(audio, len(pauses), rng, gaps=gaps)
    trail += sum(pauses[len(positions) :])
    pieces, last = [np.zeros(lead, np.float32)], 0
    for position, length in zip(positions, pauses):
        pieces += [audio[last:position], np.zeros(length, np.float32)]
        last = position
    pieces += [audio[last:], np.zeros(trail, np.float32)]
    out = np.concatenate(pieces)
    if floor_db is None:
        return out
    level = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    floor = colored_noise(out.size, "pink", rng) * level * 10 ** (-floor_db / 20)
    return (out + floor).astype(np.float32)


def clip(audio: np.ndarray, kind: str, drive_db: float) -> np.ndarray:
    """``audio`` (full scale = 1) driven ``drive_db`` dB louder, then clipped at full scale (``"hard"``) or
    saturated by ``tanh`` (``"soft"``)."""
    driven = audio * 10 ** (drive_db / 20)
    if kind == "hard":
        return np.clip(driven, -1.0, 1.0)
    if kind == "soft":
        return np.tanh(driven)
    raise ValueError(f"clipping kind must be 'hard' or 'soft', got {kind!r}")


def telephone_band(
    audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0, mu: float = 255.0
) -> np.ndarray:
    """The telephone channel: resampled to 8 kHz, band-passed to ``low_hz``-``high_hz`` (raised-cosine
    edges 100 Hz wide), G.711 mu-law companded to 8 bits, and resampled back to 16 kHz (same length)."""
    narrow = soxr.resample(audio.astype(np.float32), SAMPLING_RATE, 8000)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(narrow.size, 1 / 8000)
    edge = 100.0
    rise = np.clip((freqs - (low_hz - edge)) / edge, 0, 1)
    fall = np.clip(((high_hz + edge) - freqs) / edge, 0, 1)
    gain = 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))
    narrow = np.fft.irfft(spectrum * gain, narrow.size)
    peak = max(float(np.max(np.abs(narrow))), 1e-9)
    x = np.clip(narrow / peak * 0.7, -1, 1)  # a line level with headroom
    companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    quantised = np.round(companded * 127) / 127
    expanded = np.sign(quantised) * ((1 + mu) ** np.abs(quantised) - 1) / mu
    wide = soxr.resample(expanded.astype(np.float32), 8000, SAMPLING_RATE)
    return _fit_length(wide, audio.size) * (peak / 0.7)


def lossy_codec(audio: np.ndarray, codec: str, quality: float) -> np.ndarray:
    """``audio`` encoded and decoded by ``soundfile`` (libsndfile): ``"vorbis"`` (Ogg) or ``"mp3"``
    (MPEG layer III), at compression level ``quality`` (0 = best, 1 = smallest); same length and level."""
    formats = {"vorbis": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}
    if codec not in formats:
        raise ValueError(f"codec must be one of {sorted(formats)}, got {codec!r}")
    peak = max(float(np.max(np.abs(audio))), 1e-9)
    buffer = io.BytesIO()
    container, subtype = formats[codec]
    sf.write(buffer, audio / peak * 0.9, SAMPLING_RATE, format=container, subtype=subtype,
             compression_level=float(quality))  # fmt: skip
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return _fit_length(decoded, audio.size) * (peak / 0.9)


def _fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` cut or zero-padded to ``samples``."""
    if audio.size >= samples:
        return audio[:samples]
    return np.concatenate([audio, np.zeros(samples - audio.size, audio.dtype)])
