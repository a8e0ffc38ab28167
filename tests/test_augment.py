"""Speed perturbation: the resampled audio, deterministic factors per epoch, the dataset and collator,
teacher pseudo-labels per speed, and the train command's option."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.data import DataCollatorCTCWithPadding, PreparedUtterance, SpeechDataset
from wav2vec2_ee.data.augment import SpeedPerturbation
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
