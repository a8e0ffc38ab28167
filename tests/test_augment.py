"""Augmentation: speed perturbation (the resampled audio, deterministic factors per epoch, the dataset and collator,
teacher pseudo-labels per speed, the train command's option); noise and reverberation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.data import DataCollatorCTCWithPadding, PreparedUtterance, SpeechDataset
from wav2vec2_ee.data.augment import (
    NoiseAndReverb,
    SpeedPerturbation,
    add_noise,
    colored_noise,
    reverberate,
    room_impulse_response,
)
from wav2vec2_ee.training.teacher import TeacherLabels
from wav2vec2_ee.vocab import build_feature_extractor

from helpers_audio import good_items, tone, write_librispeech, write_model_json

SR = 16_000


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spectrum)])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_perturbed_audio_is_shorter_and_higher_by_the_factor(factor):
    t = np.arange(SR) / SR
    x = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    y = SpeedPerturbation.apply(x, factor)
    assert y.dtype == np.float32
    assert abs(len(y) - SR / factor) <= 2
    assert _peak_hz(y) == pytest.approx(440.0 * factor, abs=2.0)
    assert SpeedPerturbation.apply(x, 1.0) is x


def test_factors_are_deterministic_per_epoch_and_uniform():
    sp = SpeedPerturbation((0.9, 1.0, 1.1), seed=5)
    epoch0 = [sp.factor(0, i) for i in range(600)]
    assert epoch0 == [SpeedPerturbation((0.9, 1.0, 1.1), seed=5).factor(0, i) for i in range(600)]
    assert epoch0 != [sp.factor(1, i) for i in range(600)]  # another epoch, other draws
    assert epoch0 != [SpeedPerturbation((0.9, 1.0, 1.1), seed=6).factor(0, i) for i in range(600)]
    counts = Counter(epoch0)
    assert set(counts) == {0.9, 1.0, 1.1} and min(counts.values()) > 150  # ~200 each


@pytest.mark.parametrize("factors", [(), (0.0,), (1.0, 3.0)])
def test_bad_factors_are_refused_with_their_values(factors):
    with pytest.raises(ValueError, match="factors must lie in"):
        SpeedPerturbation(factors)


def _dataset(seconds: list[float], labels: list[list[int]], **kwargs) -> SpeechDataset:
    items = [
        PreparedUtterance(f"u{i}", None, "X", lab, s, audio_bytes=None)
        for i, (s, lab) in enumerate(zip(seconds, labels))
    ]
    ds = SpeechDataset(items, build_feature_extractor(), **kwargs)
    for i, s in enumerate(seconds):  # audio given directly (no files needed)
        ds._cache[i] = tone(s, seed=i)
    return ds


def test_dataset_items_carry_their_speed_and_follow_the_epoch():
    sp = SpeedPerturbation((0.9, 1.0, 1.1), seed=0)
    ds = _dataset([1.0] * 12, [[5, 6, 7]] * 12, speed_perturbation=sp)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        for i in range(12):
            item = ds[i]
            factor = sp.factor(epoch, i)
            assert item["speed"] == factor
            assert abs(len(item["input_values"]) - round(SR / factor)) <= 2
            # what the length-grouped sampler groups by in this epoch
            assert abs(ds.lengths_in_epoch(epoch)[i] - len(item["input_values"])) <= 2
    batch = DataCollatorCTCWithPadding(build_feature_extractor())([ds[0], ds[1], ds[2]])
    assert batch["speed"].tolist() == pytest.approx([sp.factor(3, i) for i in range(3)])
    assert "speed" not in DataCollatorCTCWithPadding(build_feature_extractor())([_dataset([1.0], [[5]])[0]])


def test_a_speed_up_that_leaves_too_few_ctc_frames_falls_back_to_one():
    # 100 samples per frame: 0.1 s = 16 frames; 16 labels fit at speed 1.0 but not at 1.1 (14 frames)
    sp = SpeedPerturbation((1.1,), seed=0)
    ds = _dataset(
        [0.1, 0.1], [list(range(1, 17)), [1, 2]], speed_perturbation=sp, frames_for_samples=lambda n: n // 100
    )
    assert ds[0]["speed"] == 1.0 and len(ds[0]["input_values"]) == 1600
    assert ds[1]["speed"] == 1.1 and len(ds[1]["input_values"]) < 1600


class _CountingTeacher(torch.nn.Module):
    """Stands in for a teacher: greedy labels = one token per 'frame' of 100 samples; counts calls."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, values, attention_mask=None):
        self.calls += 1
        frames = values.shape[1] // 100
        logits = torch.full((values.shape[0], frames, 4), -10.0)
        logits[:, ::2, 2] = 10.0  # token 2 on even frames, blank (0) between
        logits[:, 1::2, 0] = 10.0
        lengths = (
            (attention_mask.sum(-1) // 100)
            if attention_mask is not None
            else torch.full((values.shape[0],), frames)
        )
        return type("Out", (), {"logits": logits, "output_lengths": lengths})()


def test_teacher_labels_are_cached_per_utterance_and_speed():
    teacher = TeacherLabels(_CountingTeacher(), blank_id=0, word_delimiter_id=None)
    batch = {
        "input_values": torch.zeros(2, 1000),
        "attention_mask": torch.ones(2, 1000, dtype=torch.long),
        "utt_index": torch.tensor([0, 1]),
        "speed": torch.tensor([0.9, 1.1]),
    }
    teacher(batch)
    teacher(batch)
    assert teacher.teacher.calls == 1
    assert sorted((i, round(speed, 3)) for i, speed in teacher.cache) == [(0, 0.9), (1, 1.1)]
    teacher({**batch, "speed": torch.tensor([1.0, 1.1])})  # utterance 0 at another speed: computed anew
    assert teacher.teacher.calls == 2 and len(teacher.cache) == 3


def test_train_command_with_speed_perturbation(tmp_path):
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    args = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(tmp_path / "out"), "--per-device-train-batch-size", "2", "--max-steps", "2",
            "--report-to", "none", "--disable-tqdm", "true", "--no-freeze-feature-encoder"]  # fmt: skip
    assert cli_main([*args, "--speed-perturbation", "0.9", "1.0", "1.1"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli_main([*args, "--speed-perturbation", "0.9", "5"]) == 2
    # batches padded to a multiple of 0.1 s, as the demo trains
    out = tmp_path / "padded"
    args[args.index("--output-dir") + 1] = str(out)
    assert cli_main([*args, "--pad-to-multiple-of", "1600"]) == 0
    assert (out / "model.safetensors").is_file()
    assert cli_main([*args, "--pad-to-multiple-of", "0"]) == 2


# --- additive noise and reverberation -----------------------------------------------------------


def _speechlike(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (envelope * (np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size))).astype(np.float32)


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_is_added_at_the_requested_snr(snr):
    rng = np.random.default_rng(1)
    x = _speechlike()
    noise = colored_noise(x.size, "pink", rng)
    y = add_noise(x, noise, snr)
    added = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(added**2))
    assert measured == pytest.approx(snr, abs=0.01)
    assert y.dtype == np.float32 and y.shape == x.shape


@pytest.mark.parametrize(("kind", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slopes(kind, slope):
    """Power ~ f^slope: the least-squares slope of log power over log frequency (100 Hz - 4 kHz), averaged
    over draws."""
    rng = np.random.default_rng(2)
    for n in (SR, 16007):  # (16007 is prime: the noise is shaped over a power of two and cut)
        freqs = np.fft.rfftfreq(n, 1 / SR)
        band = (freqs >= 100) & (freqs <= 4000)
        power = np.mean([np.abs(np.fft.rfft(colored_noise(n, kind, rng))) ** 2 for _ in range(20)], axis=0)
        fitted = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
        assert fitted == pytest.approx(slope, abs=0.15)
        noise = colored_noise(n, kind, rng)
        assert noise.shape == (n,) and noise.dtype == np.float32
        assert np.mean(noise**2) == pytest.approx(1.0, rel=1e-3) and abs(noise.mean()) < 1e-3


@pytest.mark.parametrize("rt60", [0.2, 0.5])
def test_room_impulse_response_decays_by_60_db_in_rt60(rt60):
    """Schroeder's backward-integrated energy decay, fitted between -5 and -25 dB and extrapolated to
    -60 dB (the T20 method of ISO 3382), gives back the RT60 asked for; the direct path comes first."""
    rir = room_impulse_response(rt60, np.random.default_rng(3)).astype(np.float64)
    assert np.argmax(np.abs(rir)) == 0 and np.sum(rir**2) == pytest.approx(1.0, rel=1e-5)
    tail = rir.copy()
    tail[0] = 0.0  # the decay of the reverberant part
    edc = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / np.sum(tail**2))
    t = np.arange(rir.size) / SR
    fit = (edc <= -5) & (edc >= -25)
    decay_per_second = np.polyfit(t[fit], edc[fit], 1)[0]
    assert -60 / decay_per_second == pytest.approx(rt60, rel=0.1)


def test_reverberation_keeps_length_and_level():
    x = _speechlike()
    y = reverberate(x, room_impulse_response(0.4, np.random.default_rng(4)))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.mean(y.astype(np.float64) ** 2) == pytest.approx(np.mean(x.astype(np.float64) ** 2), rel=1e-4)
    assert not np.allclose(x, y)
    np.testing.assert_allclose(reverberate(x, np.array([1.0], np.float32)), x, atol=1e-6)  # a pure delta
    # an echo of half amplitude 100 samples later, computed directly
    rir = np.zeros(101, np.float32)
    rir[0], rir[100] = 1.0, 0.5
    direct = x.astype(np.float64).copy()
    direct[100:] += 0.5 * x[:-100]
    direct *= np.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(direct**2))
    np.testing.assert_allclose(reverberate(x, rir), direct, atol=1e-5)


def test_noise_and_reverb_draws_are_deterministic_and_follow_their_probabilities():
    x = _speechlike(0.5)
    aug = NoiseAndReverb(noise_prob=0.5, reverb_prob=0.5, seed=7)
    outs = [aug(x, 0, i) for i in range(200)]
    np.testing.assert_array_equal(outs[3], NoiseAndReverb(noise_prob=0.5, reverb_prob=0.5, seed=7)(x, 0, 3))
    assert not np.array_equal(aug(x, 1, 3), outs[3]) or np.array_equal(outs[3], x)
    untouched = sum(o is x for o in outs)
    assert 30 <= untouched <= 70  # (1 - 0.5) ** 2 of 200 = 50
    assert all(o.shape == x.shape and o.dtype == np.float32 for o in outs)
    assert NoiseAndReverb()(x, 0, 0) is x and not NoiseAndReverb().enabled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_prob": 1.5}, "noise_prob must lie in"),
        ({"snr_db": (30.0, 5.0)}, "snr_db must be two increasing"),
        ({"rt60": (0.0, 0.5)}, "rt60 must be two increasing"),
        ({"rt60": (0.5, 3.0)}, "not a room"),
    ],
)
def test_bad_noise_and_reverb_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseAndReverb(**kwargs)


def test_dataset_items_are_augmented_then_normalised_again():
    x = _speechlike(0.5)
    clean = _dataset([0.5], [[5, 6]])
    noisy = _dataset([0.5], [[5, 6]], noise_and_reverb=NoiseAndReverb(noise_prob=1.0, snr_db=(0.0, 0.0)))
    for ds in (clean, noisy):
        ds._cache[0] = ds.feature_extractor(x, sampling_rate=SR).input_values[0].astype(np.float32)
        ds.cache_audio = True
    a, b = clean[0]["input_values"], noisy[0]["input_values"]
    assert a.shape == b.shape and not np.allclose(a, b)
    assert abs(float(b.mean())) < 1e-4 and float(b.var()) == pytest.approx(1.0, rel=1e-3)
    # at 0 dB the noise is as loud as the speech: half the normalised power is noise
    assert float(np.mean(a * b)) == pytest.approx(np.sqrt(0.5), abs=0.05)


def test_train_command_with_noise_and_reverb(tmp_path):
    corpus = tmp_path / "corpus"
    write_librispeech(corpus, "train", good_items(4, seconds=0.5))
    model_json = write_model_json(tmp_path / "tiny.json")
    args = ["train", "--model", str(model_json), "--data", str(corpus), "--train-splits", "train",
            "--output-dir", str(tmp_path / "out"), "--per-device-train-batch-size", "2", "--max-steps", "2",
            "--report-to", "none", "--disable-tqdm", "true"]  # fmt: skip
    opts = [
        "--noise-prob",
        "0.5",
        "--noise-snr-db",
        "10",
        "20",
        "--reverb-prob",
        "0.5",
        "--reverb-rt60",
        "0.2",
        "0.4",
    ]
    assert cli_main([*args, *opts]) == 0
    settings = json.loads((tmp_path / "out" / "run_settings.json").read_text())["settings"]
    assert settings["noise"] == [0.5, [10.0, 20.0]] and settings["reverb"] == [0.5, [0.2, 0.4]]
    assert cli_main([*args, "--overwrite-output-dir", "--reverb-prob", "2"]) == 2
