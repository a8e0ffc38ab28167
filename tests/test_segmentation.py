"""Long recordings split at their pauses (wav2vec2_ee.segmentation): where the cuts fall, that a stream
gives what the whole recording gives, bounded pieces, the file reader, and the detectors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from wav2vec2_ee.errors import UserError
from wav2vec2_ee.segmentation import (
    EnergyVAD,
    PauseSplitter,
    SplitOptions,
    cut_long,
    iter_audio_blocks,
    merge_runs,
    silero_available,
    speech_runs,
    split_at_pauses,
)

SR = 16_000


def _talk(seconds: float, seed: int) -> np.ndarray:
    """A voiced buzz with syllables (4 Hz envelope, short dips between them): speech-like energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    f0 = 110 + 60 * rng.random()
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    return (0.3 * envelope * voice / 2 + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def _recording(pauses: list[float], lead: float = 0.5, noise_db: float | None = None):
    """Utterances of 0.8-2.0 s separated by ``pauses``; returns the audio and the true (start, end)."""
    rng = np.random.default_rng(1)
    parts, bounds, t = [np.zeros(int(lead * SR), np.float32)], [], int(lead * SR)
    for i in range(len(pauses) + 1):
        speech = _talk(rng.uniform(0.8, 2.0), seed=i)
        parts.append(speech)
        bounds.append((t, t + speech.size))
        t += speech.size
        gap = int((pauses[i] if i < len(pauses) else lead) * SR)
        parts.append(np.zeros(gap, np.float32))
        t += gap
    audio = np.concatenate(parts)
    if noise_db is not None:  # steady background noise, noise_db below the speech
        speech_rms = np.sqrt(np.mean(np.concatenate([audio[a:b] for a, b in bounds]) ** 2))
        audio = audio + rng.standard_normal(audio.size).astype(np.float32) * speech_rms * 10 ** (
            -noise_db / 20
        )
    return audio.astype(np.float32), bounds


def test_hysteresis_merging_and_cutting():
    probs = np.array([0, 0.6, 0.3, 0.3, 0.1, 0, 0.7, 0.7, 0, 0, 0, 0.9], np.float32)
    assert speech_runs(probs, on=0.5, off=0.25) == [(1, 4), (6, 8), (11, 12)]
    assert speech_runs(probs, on=0.5, off=0.25, in_speech=True) == [(1, 4), (6, 8), (11, 12)]  # ends at once
    probs[0] = 0.3
    assert speech_runs(probs, on=0.5, off=0.25, in_speech=True) == [(0, 4), (6, 8), (11, 12)]
    assert merge_runs([(1, 4), (6, 8), (11, 12)], min_gap=3, min_length=2) == [(1, 8)]
    assert merge_runs([(1, 4), (6, 8), (11, 12)], min_gap=2, min_length=2) == [(1, 4), (6, 8)]
    dips = np.ones(100, np.float32)
    dips[[30, 70]] = 0.1
    cuts = [end for _, end in cut_long((0, 100), dips, longest=40)[:-1]]
    assert len(cuts) == 2 and abs(cuts[0] - 30) <= 1 and abs(cuts[1] - 70) <= 1  # at the dips
    assert all(b - a <= 40 for a, b in cut_long((0, 100), np.ones(100, np.float32), longest=40))


@pytest.mark.parametrize("noise_db", [None, 20.0])
def test_pieces_fall_at_the_pauses(noise_db):
    """Every utterance is one piece whose edges lie within 0.3 s of the utterance's (pauses of 0.35 s or
    more; steady noise 20 dB below the speech too)."""
    audio, bounds = _recording([0.35, 0.5, 1.0, 2.0, 0.4, 3.0], noise_db=noise_db)
    pieces = split_at_pauses(audio, SplitOptions(vad="energy"))
    assert len(pieces) == len(bounds)
    for piece, (start, end) in zip(pieces, bounds):
        assert abs(piece.start - start) <= 0.3 * SR and abs(piece.end - end) <= 0.3 * SR
        assert piece.start <= start + 0.05 * SR and piece.end >= end - 0.05 * SR  # no speech lost
        np.testing.assert_array_equal(piece.audio, audio[piece.start : piece.end])
    assert all(a.end <= b.start for a, b in zip(pieces, pieces[1:]))  # no overlap


def test_a_stream_gives_what_the_whole_recording_gives():
    audio, _ = _recording([0.4, 1.0, 2.5, 0.6, 1.5] * 3)
    whole = split_at_pauses(audio, SplitOptions(vad="energy"))
    for block in (3_333, 48_000, 800_000):
        splitter = PauseSplitter(SplitOptions(vad="energy"))
        pieces = [p for i in range(0, audio.size, block) for p in splitter.feed(audio[i : i + block])]
        pieces += splitter.finish()
        assert [(p.start, p.end) for p in pieces] == [(p.start, p.end) for p in whole], block


def test_long_speech_is_cut_into_bounded_pieces_at_quiet_moments():
    talk = np.concatenate([_talk(3.0, seed=s) for s in range(9)])  # 27 s without a pause
    talk[int(12.5 * SR) : int(12.6 * SR)] *= 0.01  # a quiet moment
    options = SplitOptions(vad="energy", max_seconds=15.0)
    pieces = split_at_pauses(talk, options)
    assert len(pieces) >= 2 and all(p.end - p.start <= 15.0 * SR for p in pieces)
    assert pieces[0].start == 0 and pieces[-1].end == talk.size
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # cut, nothing lost or repeated
    assert 12.4 * SR <= pieces[0].end <= 12.7 * SR  # at the quiet moment


def test_a_click_after_a_cut_stretch_gives_no_piece():
    """The continuation of a stretch cut at its quietest moment is kept whatever its length; a click later
    in the same buffer is still dropped (it became a piece: the short-run filter skipped every run)."""
    talk = np.concatenate([np.zeros(SR, np.float32)] + [_talk(3.0, seed=s) for s in range(4)])
    click = np.zeros(4 * SR, np.float32)
    click[2 * SR : 2 * SR + 400] = 0.5  # 25 ms, 2 s after the speech
    audio = np.concatenate([talk, click])
    pieces = split_at_pauses(audio, SplitOptions(vad="energy", max_seconds=8.0))
    assert len(pieces) == 2 and pieces[0].end == pieces[1].start  # cut once, nothing lost
    assert pieces[0].start <= SR and talk.size <= pieces[1].end < talk.size + SR  # no piece at the click
    splitter = PauseSplitter(SplitOptions(vad="energy", max_seconds=8.0))
    streamed = [p for i in range(0, audio.size, 7_000) for p in splitter.feed(audio[i : i + 7_000])]
    assert [(p.start, p.end) for p in streamed + splitter.finish()] == [(p.start, p.end) for p in pieces]


def test_silence_and_clicks_give_no_piece():
    quiet = np.zeros(5 * SR, np.float32)
    assert split_at_pauses(quiet, SplitOptions(vad="energy")) == []
    click = quiet.copy()
    click[SR : SR + 400] = 0.5  # 25 ms
    assert split_at_pauses(click, SplitOptions(vad="energy", min_speech=0.15)) == []


def test_energy_probabilities_do_not_depend_on_the_blocks():
    audio, _ = _recording([1.0, 2.0] * 8)  # ~40 s: several 10-second statistics stretches
    whole = EnergyVAD()
    reference = np.concatenate([whole(audio), whole.flush()])
    cut = EnergyVAD()
    parts = [cut(audio[i : i + 12_345]) for i in range(0, audio.size, 12_345)] + [cut.flush()]
    np.testing.assert_array_equal(np.concatenate(parts), reference)
    assert reference.size == -(-audio.size // EnergyVAD.hop)


@pytest.mark.skipif(not silero_available(), reason="the [vad] extra (silero-vad) is not installed")
def test_silero_finds_the_utterances_of_synthetic_speech():
    """Silero hears eSpeak NG's speech (not a buzz): each utterance, 0.6-2 s apart, is one piece."""
    synthesize = pytest.importorskip("wav2vec2_ee.corpus.espeak").synthesize
    texts = ["turn the light on", "go left at the door", "seven green boxes", "stop the music now"]
    parts, bounds, t = [np.zeros(SR // 2, np.float32)], [], SR // 2
    for text, pause in zip(texts, [0.6, 1.0, 2.0, 0.5]):
        speech = synthesize(text, "en-us+m3")
        parts += [speech, np.zeros(int(pause * SR), np.float32)]
        bounds.append((t, t + speech.size))
        t += speech.size + int(pause * SR)
    audio = np.concatenate(parts)
    pieces = split_at_pauses(audio, SplitOptions(vad="silero"))
    assert len(pieces) == len(bounds)
    for piece, (start, end) in zip(pieces, bounds):
        assert piece.start <= start + 0.1 * SR and piece.end >= end - 0.1 * SR


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_seconds": 0.5}, "max-segment-seconds must be"),
        ({"pad": 30.0}, "pad must be"),
        ({"threshold": 1.5}, "vad-threshold must lie in"),
        ({"vad": "webrtc"}, "--vad must be one of auto, silero, energy"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        SplitOptions(**kwargs)


def test_files_are_read_block_by_block_at_16k_mono(tmp_path):
    audio, _ = _recording([1.0, 2.0, 0.5])
    stereo_44k = np.stack([audio, audio], axis=1)
    import soxr

    stereo_44k = soxr.resample(stereo_44k, SR, 44_100).astype(np.float32)
    sf.write(tmp_path / "long.wav", stereo_44k, 44_100)
    blocks = list(iter_audio_blocks(tmp_path / "long.wav", block_seconds=1.0))
    assert len(blocks) > 3 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    joined = np.concatenate(blocks)
    assert abs(joined.size - audio.size) <= 2
    n = min(joined.size, audio.size)
    assert np.corrcoef(joined[:n], audio[:n])[0, 1] > 0.99  # the same signal, resampled back
    sf.write(tmp_path / "16k.flac", audio, SR)
    np.testing.assert_allclose(
        np.concatenate(list(iter_audio_blocks(tmp_path / "16k.flac", 0.7))), audio, atol=1e-4
    )
