"""Recording conditions as training augmentation (wav2vec2_ee.data.conditions), their place in the
dataset (lengths, prefetching), the train command's options, and the conditions check."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.data import PreparedUtterance, SpeechDataset
from wav2vec2_ee.data.augment import NoiseAndReverb, SpeedPerturbation
from wav2vec2_ee.data.conditions import (
    CONDITIONS,
    RecordingConditions,
    add_babble,
    add_silence,
    change_tempo,
    clip,
    lossy_codec,
    shift_voice,
    telephone_band,
    tempo_length,
)
from wav2vec2_ee.vocab import build_feature_extractor

from helpers_audio import good_items, tone, write_librispeech, write_model_json

SR = 16_000


def _sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spectrum)])


def _speechlike(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A 220 Hz buzz with a 3 Hz syllable envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (envelope * (np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size))).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, np.float64) ** 2))


# ----------------------------------------------------------------------------------------------
# the conditions, one by one


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_tempo_changes_the_length_and_keeps_the_pitch(factor):
    x = _sine(440.0, 1.0)
    y = change_tempo(x, factor)
    assert y.size == tempo_length(x.size, factor) == round(x.size / factor)
    assert _peak_hz(y) == pytest.approx(440.0, abs=3.0)  # resampling would give 440 * factor
    assert _power(y[2000:-2000]) == pytest.approx(_power(x), rel=0.1)  # no level loss in the overlap-add
    assert change_tempo(x, 1.0) is x


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_voice_shift_moves_every_frequency_and_keeps_the_length(factor):
    # two partials stand for pitch and formant: both move by the factor, the length stays
    x = _sine(300.0, 1.0) + 0.25 * _sine(2000.0, 1.0)
    y = shift_voice(x, factor)
    assert y.size == x.size
    assert _peak_hz(y) == pytest.approx(300.0 * factor, abs=4.0)
    upper = np.fft.rfftfreq(y.size, 1 / SR) > 1000  # the second partial
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert np.fft.rfftfreq(y.size, 1 / SR)[upper][np.argmax(spectrum[upper])] == pytest.approx(
        2000 * factor, abs=8.0
    )
    assert _power(y[2000:-2000]) == pytest.approx(_power(x), rel=0.15)
    # with a tempo in the same pass: the tempo's length, the voice's pitch
    z = shift_voice(x, factor, tempo=1.2)
    assert z.size == tempo_length(x.size, 1.2)
    assert _peak_hz(z) == pytest.approx(300.0 * factor, abs=4.0)
    assert np.array_equal(shift_voice(x, 1.0, tempo=0.9), change_tempo(x, 0.9))


def test_telephone_band_keeps_the_voice_band_and_removes_the_rest():
    low, voice, high = _sine(100.0), _sine(1000.0), _sine(6000.0)
    for x, kept in ((low, False), (voice, True), (high, False)):
        y = telephone_band(x)
        assert y.shape == x.shape
        ratio = _power(y[1000:-1000]) / _power(x)
        assert (ratio > 0.5) if kept else (ratio < 0.01), (_peak_hz(x), ratio)
    y = telephone_band(voice)
    assert np.corrcoef(y[1000:-1000], voice[1000:-1000])[0, 1] > 0.95  # same timing: no delay
    # mu-law companding to 8 bits: a quiet sine comes back with quantisation noise, louder relatively
    quiet = _sine(1000.0, amplitude=0.5)
    residual = telephone_band(quiet) - quiet
    assert 1e-6 < _power(residual[1000:-1000]) / _power(quiet) < 0.05


@pytest.mark.parametrize("codec", ["vorbis", "mp3"])
def test_lossy_codecs_keep_length_timing_and_level(codec):
    x = _speechlike(1.0)
    y = lossy_codec(x, codec, 0.9)
    assert y.shape == x.shape and y.dtype == np.float32
    assert not np.allclose(x, y)
    assert np.corrcoef(x, y)[0, 1] > 0.9
    assert _power(y) == pytest.approx(_power(x), rel=0.2)
    with pytest.raises(ValueError, match="codec must be one of"):
        lossy_codec(x, "wma", 0.5)


def test_clipping_hard_and_soft():
    x = _sine(300.0, amplitude=1.0)
    hard = clip(x, "hard", 12.0)
    assert np.max(np.abs(hard)) == pytest.approx(1.0)
    assert np.mean(np.abs(hard) >= 1.0) > 0.5  # +12 dB: most of a sine's cycle is clipped
    np.testing.assert_allclose(clip(x, "soft", 6.0), np.tanh(x * 10 ** (6 / 20)), rtol=1e-6)
    with pytest.raises(ValueError, match="clipping kind"):
        clip(x, "fuzz", 3.0)


def test_the_room_and_babble_run_through_the_talkers_silences():
    """The talker pauses, the room does not: noise and babble are added after the silence, so a lead-in
    of a noisy recording is noise (a model trained otherwise hears it as words)."""
    x = _speechlike(0.5)
    conditions = RecordingConditions(silence_prob=1.0, silence_floor_db=(120.0, 120.0), max_pauses=0)
    plan = conditions.plan(0, 0)
    lead = plan.silence[0]
    out = conditions(x, 0, 0, room=lambda audio: audio + np.float32(0.25), plan=plan)
    assert out.size == conditions.planned_length(x.size, 0, 0) and lead > 0
    np.testing.assert_allclose(out[:lead], 0.25, atol=1e-4)  # the room's "noise" covers the lead silence
    other = np.full(8000, 1.0, np.float32)
    babbled = RecordingConditions(silence_prob=1.0, babble_prob=1.0, silence_floor_db=(120.0, 120.0))
    plan = babbled.plan(0, 0)
    out = babbled(x, 0, 0, other=lambda rng: other, plan=plan)
    assert np.abs(out[: plan.silence[0]]).max() > 1e-3  # babble underneath the silence too


def test_the_silence_floor_lies_the_drawn_decibels_below_the_speech():
    """``silence_floor_db`` (``--silence-floor-db``) sets the noise of the lead-in and the tail against the
    speech's own level: 10 dB below it is a noisy room, 60 dB a quiet one."""
    x = _speechlike(0.5)
    speech_db = 10 * np.log10(np.mean(x.astype(np.float64) ** 2))
    levels = []
    for floor in (10.0, 60.0):
        conditions = RecordingConditions(silence_prob=1.0, silence_floor_db=(floor, floor), max_pauses=0)
        plan = conditions.plan(0, 0)
        out = conditions(x, 0, 0, plan=plan)
        lead = out[: plan.silence[0]].astype(np.float64)
        levels.append(10 * np.log10(np.mean(lead**2)) - speech_db)
        assert levels[-1] == pytest.approx(-floor, abs=3.0)  # (a short stretch of pink noise varies)
    assert levels[0] - levels[1] == pytest.approx(50.0, abs=0.01)  # the same noise, 50 dB apart
    with pytest.raises(ValueError, match="silence_floor_db"):
        RecordingConditions(silence_prob=1.0, silence_floor_db=(30.0, 10.0))


def test_silence_before_after_and_inside_at_the_quiet_moments():
    rng = np.random.default_rng(0)
    # speech, a 0.2 s gap of silence in the middle, speech
    x = np.concatenate([_speechlike(0.5), np.zeros(3200, np.float32), _speechlike(0.5, seed=1)])
    y = add_silence(x, 1600, 4800, (8000,), None, rng)
    assert y.size == x.size + 1600 + 4800 + 8000
    assert not y[:1600].any() and not y[-4800:].any()
    # the pause went into the gap: 8000 + 3200 zeros in one run, starting inside the gap
    middle = np.concatenate([[1.0], y[1600:-4800], [1.0]]) == 0.0
    edges = np.flatnonzero(np.diff(middle.astype(int)))
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    assert ends[longest] - starts[longest] == 8000 + 3200 and 8000 <= starts[longest] <= 8000 + 3200
    floored = add_silence(x, 1600, 0, (), 40.0, np.random.default_rng(1))
    assert 0 < _power(floored[:1600]) / _power(x) == pytest.approx(1e-4, rel=0.5)  # 40 dB below the speech


@pytest.mark.parametrize("snr", [10.0, 20.0])
def test_babble_is_mixed_at_the_requested_ratio(snr):
    x = _speechlike(1.0)
    others = [_speechlike(0.7, seed=s) for s in (3, 4, 5)]
    y = add_babble(x, others, snr, np.random.default_rng(2))
    measured = 10 * np.log10(_power(x) / _power(y - x))
    assert measured == pytest.approx(snr, abs=0.05)
    assert add_babble(x, [], snr, np.random.default_rng(2)) is x


# ----------------------------------------------------------------------------------------------
# the draws


def test_draws_are_deterministic_independent_and_follow_their_probabilities():
    everything = RecordingConditions(**{f"{n}_prob": 0.3 for n in CONDITIONS}, seed=4)
    plans = [everything.plan(0, i) for i in range(2000)]
    assert plans[7] == RecordingConditions(**{f"{n}_prob": 0.3 for n in CONDITIONS}, seed=4).plan(0, 7)
    assert plans[7] != everything.plan(1, 7) or plans[7].names == []
    for name in CONDITIONS:
        share = sum(name in p.names for p in plans) / len(plans)
        assert share == pytest.approx(0.3, abs=0.04), name
    # turning telephone off leaves every other draw as it was
    no_phone = RecordingConditions(**{f"{n}_prob": 0.3 for n in CONDITIONS if n != "telephone"}, seed=4)
    for i in range(50):
        a, b = everything.plan(0, i), no_phone.plan(0, i)
        assert [n for n in a.names if n != "telephone"] == b.names and a.tempo == b.tempo
    assert not RecordingConditions().enabled
    # a condition added later (the voice) draws after the others: their draws are those of runs before it
    no_voice = RecordingConditions(**{f"{n}_prob": 0.3 for n in CONDITIONS if n != "voice"}, seed=4)
    for i in range(50):
        a, b = everything.plan(0, i), no_voice.plan(0, i)
        assert a.seed == b.seed and [n for n in a.names if n != "voice"] == b.names and a.silence == b.silence
        assert a.voice is None or 0.8 <= a.voice <= 1.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"telephone_prob": 1.5}, "telephone_prob must lie in"),
        ({"tempo_range": (1.3, 0.8)}, "tempo_range must be two increasing"),
        ({"tempo_range": (0.2, 1.0)}, r"tempo_range must be two increasing numbers in \[0.5, 2\]"),
        ({"babble_speakers": 0}, "babble_speakers must be at least 1"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecordingConditions(**kwargs)


def test_planned_length_is_the_length_the_chain_gives():
    conditions = RecordingConditions(**{f"{n}_prob": 0.5 for n in CONDITIONS}, seed=1)
    x = _speechlike(1.2)
    others = [_speechlike(0.8, seed=9)]
    for i in range(40):
        y = conditions(x, 2, i, other=lambda rng: others[0])
        assert y.size == conditions.planned_length(x.size, 2, i), conditions.plan(2, i)
        assert y.dtype == np.float32 and np.isfinite(y).all()
    untouched = RecordingConditions()
    assert untouched(x, 0, 0) is x


# ----------------------------------------------------------------------------------------------
# in the dataset


def _dataset(n: int, seconds: float, labels: list[int], **kwargs) -> SpeechDataset:
    items = [PreparedUtterance(f"u{i}", None, "X", labels, seconds, audio_bytes=None) for i in range(n)]
    ds = SpeechDataset(items, build_feature_extractor(), cache_audio=True, **kwargs)
    for i in range(n):
        ds._cache[i] = tone(seconds, seed=i)
    return ds


def _frames(samples: int) -> int:
    return samples // 320


def test_dataset_lengths_in_epoch_include_the_conditions_and_items_match_them():
    conditions = RecordingConditions(tempo_prob=0.5, silence_prob=0.5, babble_prob=0.5, telephone_prob=0.3)
    ds = _dataset(24, 0.6, [5, 6, 7], speed_perturbation=SpeedPerturbation((0.9, 1.1)),
                  noise_and_reverb=NoiseAndReverb(0.5, reverb_prob=0.5), conditions=conditions,
                  frames_for_samples=_frames)  # fmt: skip
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        lengths = ds.lengths_in_epoch(epoch)
        items = [ds[i]["input_values"] for i in range(len(ds))]
        # (speed perturbation's resampler may give one sample more or less than size / factor)
        assert all(abs(x.size - n) <= 2 for x, n in zip(items, lengths))
        changed = [i for i, x in enumerate(items) if x.size != int(ds.lengths[i] / ds[i]["speed"])]
        assert changed  # silence and tempo change lengths
        for x in items:  # normalised again after the conditions
            assert abs(float(x.mean())) < 1e-3 and float(x.var()) == pytest.approx(1.0, rel=1e-2)


def test_a_tempo_that_leaves_too_few_ctc_frames_is_not_applied():
    conditions = RecordingConditions(tempo_prob=1.0, tempo_range=(1.25, 1.25))
    # 0.4 s = 20 frames of 320 samples; 20 labels fit at 1.0x but not at 1.25x (16 frames)
    tight = _dataset(4, 0.4, list(range(5, 25)), conditions=conditions, frames_for_samples=_frames)
    loose = _dataset(4, 0.4, [5, 6], conditions=conditions, frames_for_samples=_frames)
    assert [tight[i]["input_values"].size for i in range(4)] == [6400] * 4
    assert [loose[i]["input_values"].size for i in range(4)] == [tempo_length(6400, 1.25)] * 4


def test_items_prepared_ahead_equal_items_made_on_demand():
    conditions = RecordingConditions(tempo_prob=0.5, silence_prob=0.5, codec_prob=0.3)
    make = lambda: _dataset(20, 0.5, [5, 6], conditions=conditions, speed_perturbation=SpeedPerturbation())  # noqa: E731
    on_demand, ahead = make(), make()
    ahead.prefetch = 4
    order = list(np.random.default_rng(0).permutation(20))
    for ds in (on_demand, ahead):
        ds.set_epoch(3)
        ds.schedule(order)
    first = [on_demand[i] for i in order]
    second = [ahead[i] for i in order[:5]] + [
        ahead[i] for i in order[9:]
    ]  # 4 items skipped, as a resume does
    for a, b in zip(first[:5] + first[9:], second):
        np.testing.assert_array_equal(a["input_values"], b["input_values"])
        assert a["utt_index"] == b["utt_index"] and a["speed"] == b["speed"]
    assert ahead._executor is not None and not ahead._futures  # nothing left pending at the end
    clone = pickle.loads(pickle.dumps(ahead))  # data loader workers get a copy without the thread
    assert clone._executor is None and clone._positions == {}
    np.testing.assert_array_equal(clone[order[0]]["input_values"], first[0]["input_values"])


def test_train_command_with_recording_conditions(tmp_path):
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(6, seconds=0.6))
    model_json = write_model_json(tmp_path / "tiny.json")
    args = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(tmp_path / "out"), "--per-device-train-batch-size", "2", "--max-steps", "3",
            "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip
    opts = ["--voice-prob", "0.5", "--voice-range", "0.9", "1.2",
            "--tempo-prob", "0.5", "--tempo-range", "0.9", "1.1", "--silence-prob", "0.5",
            "--silence-floor-db", "10", "30", "--babble-prob",
            "0.5", "--telephone-prob", "0.5", "--codec-prob", "0.5", "--clipping-prob", "0.5", "--gain-prob", "0.5"]  # fmt: skip
    assert cli_main([*args, *opts]) == 0
    settings = json.loads((tmp_path / "out" / "run_settings.json").read_text())["settings"]
    assert settings["conditions"] == {
        "voice": 0.5, "voice_range": [0.9, 1.2], "tempo": 0.5, "babble": 0.5, "silence": 0.5, "gain": 0.5, "clipping": 0.5, "telephone": 0.5,
        "codec": 0.5, "tempo_range": [0.9, 1.1], "babble_snr_db": [10.0, 25.0], "silence_floor_db": [10.0, 30.0],
    }  # fmt: skip
    assert cli_main([*args, "--overwrite-output-dir", "--codec-prob", "2"]) == 2
    assert (
        cli_main([*args, "--overwrite-output-dir", "--silence-prob", "0.5", "--silence-floor-db", "30", "10"])
        == 2
    )


# ----------------------------------------------------------------------------------------------
# the conditions check (wav2vec2_ee.evaluation.conditions, benchmarks/check_conditions.py)


def _benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_condition_splits_mirror_the_source_split(tmp_path):
    import soundfile as sf

    from wav2vec2_ee.data import load_split
    from wav2vec2_ee.evaluation.conditions import build_condition_splits

    write_librispeech(tmp_path / "corpus", "test", good_items(3, seconds=0.5))
    names = ["clean", "silence_2s_3s", "telephone", "tempo_1.25x", "babble_15db"]
    splits = build_condition_splits(tmp_path / "corpus", "test", tmp_path / "cond", names)
    assert splits == [f"cond_{n}" for n in names]
    source = {u.id: u for u in load_split(tmp_path / "corpus", ["test"])}
    for split in splits:
        rows = {u.id: u for u in load_split(tmp_path / "cond", [split])}
        assert sorted(rows) == sorted(source) and all(rows[k].text == source[k].text for k in rows)
    for uid, utt in source.items():
        clean, _ = sf.read(utt.audio, dtype="float32")
        silent, _ = sf.read(
            str(tmp_path / "cond" / "cond_silence_2s_3s" / "1" / "1" / f"{uid}.flac"), dtype="float32"
        )
        fast, _ = sf.read(
            str(tmp_path / "cond" / "cond_tempo_1.25x" / "1" / "1" / f"{uid}.flac"), dtype="float32"
        )
        copy, _ = sf.read(str(tmp_path / "cond" / "cond_clean" / "1" / "1" / f"{uid}.flac"), dtype="float32")
        assert silent.size == clean.size + 5 * SR and not silent[: 2 * SR].any()
        assert fast.size == tempo_length(clean.size, 1.25)
        np.testing.assert_allclose(copy, clean, atol=1e-4)
    marker = tmp_path / "cond" / "cond_telephone" / "condition.json"
    stamp = marker.stat().st_mtime_ns
    build_condition_splits(tmp_path / "corpus", "test", tmp_path / "cond", ["telephone"])
    assert marker.stat().st_mtime_ns == stamp  # already built: kept
    with pytest.raises(ValueError, match="unknown condition 'underwater'"):
        build_condition_splits(tmp_path / "corpus", "test", tmp_path / "cond", ["underwater"])


def test_check_conditions_table_and_plot(tmp_path, monkeypatch, capsys):
    from conftest import sharpened_model

    model_dir = tmp_path / "model"
    sharpened_model().save_pretrained(model_dir)
    from wav2vec2_ee.vocab import build_processor

    build_processor(None).save_pretrained(model_dir)
    write_librispeech(tmp_path / "corpus", "test", good_items(3, seconds=0.5))
    script = _benchmark("check_conditions")
    out = tmp_path / "check"
    monkeypatch.setattr(
        "sys.argv",
        ["check_conditions.py", str(model_dir), "--data", str(tmp_path / "corpus"), "--output-dir", str(out),
         "--conditions", "telephone", "silence_2s_3s"],
    )  # fmt: skip
    script.main()
    wer = json.loads((out / "conditions.json").read_text())
    assert list(wer) == ["clean", "telephone", "silence_2s_3s"] and list(wer["clean"]) == ["1", "2", "3", "4"]
    assert (out / "conditions.png").read_bytes()[:4] == b"\x89PNG"
    table = script.format_table({"clean": {8: 0.2}, "telephone": {8: 0.5}, "silence_2s_3s": {8: 0.21}})
    assert "telephone" in table and "2.50x   2.0x  MISSED" in table and "1.05x   1.1x  ok" in table
    assert "conditions.txt" in [p.name for p in out.iterdir()]
    assert "cores" in (out / "conditions.txt").read_text() and "x clean" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# pauses between words (word times: wav2vec2_ee.data.alignments)


def _two_words() -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Two "words" of a loud tone, each with a near-silent stop closure inside, and a short quieter gap
    between them: the gap (its samples returned) is not the quietest moment."""
    word = np.concatenate([_sine(300, 0.3), np.zeros(960, np.float32), _sine(300, 0.3)])  # closure 60 ms
    gap = _sine(300, 0.1, amplitude=0.05)
    return np.concatenate([word, gap, word]), [(word.size, word.size + gap.size)]


def _pause_start(out: np.ndarray, samples: int, level: float = 1e-4) -> int:
    """Where the first run of ``samples`` samples under ``level`` begins."""
    silent = np.convolve(np.abs(out) < level, np.ones(samples), "valid") >= samples
    return int(np.flatnonzero(silent)[0])


def test_pauses_go_between_words_where_their_times_are_known():
    from wav2vec2_ee.data.conditions import quiet_points

    audio, gaps = _two_words()
    rng = np.random.default_rng(0)
    anywhere = quiet_points(audio, 1, rng)
    assert not gaps[0][0] <= anywhere[0] < gaps[0][1]  # without word times: a closure inside a word
    for seed in range(5):
        (position,) = quiet_points(audio, 2, np.random.default_rng(seed), gaps=gaps)  # one gap: one pause
        assert gaps[0][0] <= position < gaps[0][1]
    assert quiet_points(audio, 2, rng, gaps=[]) == []  # one word: nowhere to pause
    # a pause with no gap left goes to the end: the length is the plan's whatever the gaps
    out = add_silence(audio, 100, 200, (1600, 3200), None, np.random.default_rng(1), gaps=gaps)
    assert out.size == audio.size + 100 + 200 + 1600 + 3200
    assert gaps[0][0] <= _pause_start(out[100:], 1600) < gaps[0][1]
    assert not out[-(200 + 3200) :].any()  # the second pause joined the trailing silence


def test_pauses_follow_the_words_through_a_tempo_change():
    audio, gaps = _two_words()
    conditions = RecordingConditions(
        silence_prob=1.0, tempo_prob=1.0, tempo_range=(0.8, 0.8), lead_silence=(0.0, 0.0),
        trail_silence=(0.0, 0.0), max_pauses=1, pause_seconds=(0.5, 0.5), silence_floor_db=(120.0, 120.0),
    )  # fmt: skip
    hits = 0
    for index in range(12):
        plan = conditions.plan(0, index)
        if not plan.silence[2]:
            continue  # no pause drawn
        out = conditions(audio, 0, index, plan=plan, gaps=gaps)
        a, b = (round(g / 0.8) for g in gaps[0])  # the gap, 1.25x longer at tempo 0.8
        assert a - 320 <= _pause_start(out, 4000) <= b
        hits += 1
    assert hits >= 3


def test_read_ctm_and_the_gaps_between_words(tmp_path):
    from wav2vec2_ee.data import DataError
    from wav2vec2_ee.data.alignments import load_word_gaps, read_ctm, word_gaps

    ctm = tmp_path / "corpus" / "train" / "words.ctm"
    ctm.parent.mkdir(parents=True)
    ctm.write_text(
        ";; a comment\n1-1-0000 1 0.50 0.25 world\n1-1-0000 1 0.10 0.30 hello\n\n1-1-0001 1 0.2 0.1 one\n"
    )
    assert read_ctm(ctm) == {
        "1-1-0000": [(0.10, 0.40), (0.50, 0.75)],
        "1-1-0001": [(0.2, pytest.approx(0.3))],
    }
    assert word_gaps([(0.10, 0.40), (0.50, 0.75)]) == [(6400, 8000)]
    assert word_gaps([(0.1, 0.5), (0.5, 0.6)]) == [(8000, 8001)]  # touching words: a one-sample gap
    assert load_word_gaps(tmp_path / "corpus", ["train", "dev"]) == {
        "1-1-0000": [(6400, 8000)],
        "1-1-0001": [],
    }
    for line, problem in [("1-1-0000 1 0.5 world", "5 fields"), ("1-1-0000 1 x 0.2 w", "numbers"),
                          ("1-1-0000 1 0.5 -0.2 w", ">= 0")]:  # fmt: skip
        ctm.write_text(f"1-1-0009 1 0.0 0.1 ok\n{line}\n")
        with pytest.raises(DataError, match=rf"words.ctm:2: .*{problem}"):
            read_ctm(ctm)


def test_the_training_dataset_puts_its_pauses_between_the_words(tmp_path):
    import soundfile as sf

    audio, gaps = _two_words()
    sf.write(tmp_path / "u0.wav", audio, SR, subtype="FLOAT")
    items = [PreparedUtterance("u0", str(tmp_path / "u0.wav"), "ab", [5, 6], audio.size / SR)]
    fe = build_feature_extractor()
    fe.do_normalize = False
    conditions = RecordingConditions(
        silence_prob=1.0, lead_silence=(0.0, 0.0), trail_silence=(0.0, 0.0), max_pauses=1,
        pause_seconds=(0.5, 0.5), silence_floor_db=(120.0, 120.0),
    )  # fmt: skip
    index = next(i for i in range(50) if conditions.plan(0, i).silence[2])
    for word_gaps, inside in (({"u0": gaps}, True), ({}, False)):
        dataset = SpeechDataset(items * (index + 1), fe, conditions=conditions, word_gaps=word_gaps)
        out = dataset[index]["input_values"]
        assert (gaps[0][0] <= _pause_start(out, 4000) < gaps[0][1]) is inside


def test_the_word_pause_check_needs_the_splits_word_times(tmp_path):
    import soundfile as sf

    from wav2vec2_ee.errors import UserError
    from wav2vec2_ee.evaluation.conditions import WORD_TIME_CHECKS, build_condition_splits

    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "test", good_items(2, seconds=0.5))
    ids = sorted(p.stem for p in (corpus / "test").rglob("*.flac"))
    built = build_condition_splits(corpus, "test", tmp_path / "cond", None)
    assert "cond_word_pauses_2x0.8s" not in built and "cond_pauses_2x0.8s" in built  # all there can be
    with pytest.raises(UserError, match="words.ctm: no word times for word_pauses_2x0.8s"):
        build_condition_splits(corpus, "test", tmp_path / "cond", list(WORD_TIME_CHECKS))
    # word times: the pauses go into the gap between the two "words" of each utterance
    (corpus / "test" / "words.ctm").write_text(
        "".join(f"{uid} 1 0.00 0.20 a\n{uid} 1 0.30 0.20 b\n" for uid in ids)
    )
    (split,) = build_condition_splits(corpus, "test", tmp_path / "cond", ["word_pauses_2x0.8s"])
    for uid in ids:
        clean, _ = sf.read(next((corpus / "test").rglob(f"{uid}.flac")), dtype="float32")
        paused, _ = sf.read(next((tmp_path / "cond" / split).rglob(f"{uid}.flac")), dtype="float32")
        assert paused.size == clean.size + 2 * int(0.8 * SR)
        start = _pause_start(paused, int(0.8 * SR) - 400, level=0.01)  # (over a floor 60 dB down)
        assert int(0.2 * SR) - 400 <= start <= int(0.3 * SR) + 400
        assert np.abs(paused[-int(0.8 * SR) + 400 :]).max() < 1e-3  # one gap: the second pause at the end


def test_word_times_are_written_by_a_models_greedy_alignment(tmp_path):
    from wav2vec2_ee.data.alignments import read_ctm
    from wav2vec2_ee.inference.word_times import write_word_times
    from wav2vec2_ee.vocab import build_processor

    from conftest import sharpened_model

    model_dir = tmp_path / "model"
    sharpened_model().save_pretrained(model_dir)
    build_processor(None).save_pretrained(model_dir)
    write_librispeech(tmp_path / "corpus", "test", good_items(3, seconds=0.5))
    path = write_word_times(model_dir, tmp_path / "corpus", "test")
    assert path == tmp_path / "corpus" / "test" / "words.ctm"
    spans = read_ctm(path)
    ids = sorted(p.stem for p in (tmp_path / "corpus" / "test").rglob("*.flac"))
    assert set(spans) <= set(ids) and spans  # utterances in which the model hears words
    assert all(0 <= a <= b <= 0.65 for s in spans.values() for a, b in s)
    stamp = path.stat().st_mtime_ns
    assert (
        write_word_times(model_dir, tmp_path / "corpus", "test") == path and path.stat().st_mtime_ns == stamp
    )
