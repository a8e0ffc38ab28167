"""Splits spoken by other synthesizers (Flite, Festival): planning, the engines' controls, the layout.

The engines are Debian packages (``.ci/run`` installs them where it can); tests that run them are
skipped, naming the package, where they are absent.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from wav2vec2_ee.corpus import external
from wav2vec2_ee.corpus.external import (
    SPEAKER_ID_BASE,
    STRETCH_RANGE,
    VOICES,
    SynthesizerUnavailableError,
    build_external_split,
    check_engine,
    plan_external,
    speak,
    voice_by_name,
)
from wav2vec2_ee.data import load_split
from wav2vec2_ee.vocab import SAMPLING_RATE

needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite not installed (apt-get install flite)"
)
needs_festival = pytest.mark.skipif(
    shutil.which("text2wave") is None,
    reason="festival not installed (apt-get install festival festvox-kdlpc16k)",
)


def pitch_hz(audio: np.ndarray, rate: int = SAMPLING_RATE) -> float:
    """Median autocorrelation pitch over 40 ms voiced windows (an estimate independent of the engine)."""
    n, values = int(0.04 * rate), []
    lo, hi = rate // 400, rate // 60
    for start in range(0, audio.size - n, n // 2):
        w = audio[start : start + n].astype(np.float64)
        if np.sqrt((w**2).mean()) < 0.02:
            continue
        ac = np.correlate(w, w, "full")[n - 1 :]
        values.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(values))


def test_plan_round_robin_and_every_voice():
    voices = [voice_by_name("awb"), voice_by_name("rms"), voice_by_name("ked_diphone")]
    plan = plan_external(["a b", "c", "d", "e"], voices, seed=3)
    assert [u.voice for u in plan] == ["awb", "rms", "ked_diphone", "awb"]
    assert [u.utt_id for u in plan] == [f"{SPEAKER_ID_BASE + 1}-1-0000", f"{SPEAKER_ID_BASE + 2}-1-0000",
                                        f"{SPEAKER_ID_BASE + 4}-1-0000", f"{SPEAKER_ID_BASE + 1}-1-0001"]  # fmt: skip
    # prosody: Flite voices get a stretch in range and a pitch from their own range; rms ignores pitch,
    # Festival voices keep their own pace and pitch
    awb = plan[0]
    assert STRETCH_RANGE[0] <= awb.stretch <= STRETCH_RANGE[1] and 85 <= awb.f0_mean <= 135
    assert plan[1].f0_mean is None and plan[1].stretch != 1.0
    assert (plan[2].stretch, plan[2].f0_mean) == (1.0, None)
    assert plan_external(["a b", "c", "d", "e"], voices, seed=3) == plan  # deterministic
    assert plan_external(["a b", "c", "d", "e"], voices, seed=4) != plan
    flat = plan_external(["x", "y"], voices, every_voice=True, prosody=False)
    assert [(u.text, u.voice) for u in flat] == [(t, v.name) for t in ("x", "y") for v in voices]
    assert all((u.stretch, u.f0_mean) == (1.0, None) for u in flat)


def test_unknown_voice_and_missing_engine(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown voice 'nobody'.*awb"):
        voice_by_name("nobody")
    with pytest.raises(ValueError, match="unknown synthesizer"):
        check_engine("espeak2")
    monkeypatch.setattr(external.shutil, "which", lambda name: None)
    with pytest.raises(SynthesizerUnavailableError, match="apt-get install flite"):
        check_engine("flite")
    with pytest.raises(SynthesizerUnavailableError, match="text2wave.*apt-get install festival"):
        build_external_split(tmp_path, "x", ["hello"], engine="festival")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    assert {v.engine for v in VOICES} == {"flite", "festival"}


@needs_flite
def test_flite_follows_stretch_and_pitch():
    voice = voice_by_name("awb")
    text = "the friends are ready and the fox is almost long"
    slow, fast = speak(text, voice, stretch=1.2), speak(text, voice, stretch=0.85)
    assert slow.dtype == np.float32 and np.abs(slow).max() <= 1.0
    assert slow.size / fast.size == pytest.approx(1.2 / 0.85, rel=0.1)
    low, high = pitch_hz(speak(text, voice, f0_mean=90)), pitch_hz(speak(text, voice, f0_mean=180))
    assert low == pytest.approx(90, rel=0.15) and high == pytest.approx(180, rel=0.15)


@needs_flite
def test_build_flite_split_layout_and_cache(tmp_path):
    record = build_external_split(
        tmp_path, "train_flite", 4, ["kal16", "awb"], seed=1, workers=2, progress=False
    )
    utts = load_split(tmp_path, ["train_flite"])
    assert len(utts) == record["num_utterances"] == 4
    assert {u.id.split("-")[0] for u in utts} == {str(SPEAKER_ID_BASE), str(SPEAKER_ID_BASE + 1)}
    for u in utts:
        audio, rate = sf.read(u.audio)
        assert rate == SAMPLING_RATE and audio.size > SAMPLING_RATE // 5
        assert u.text == u.text.upper() and u.text.strip()
    assert record["hours"] == pytest.approx(
        sum(sf.info(u.audio).frames for u in utts) / SAMPLING_RATE / 3600, abs=1e-4
    )
    again = build_external_split(tmp_path, "train_flite", 4, ["kal16", "awb"], seed=1, progress=False)
    assert again["cached"] and again["params"] == record["params"]
    other = build_external_split(tmp_path, "train_flite", 4, ["kal16", "awb"], seed=2, progress=False)
    assert "cached" not in other and [u.text for u in load_split(tmp_path, ["train_flite"])] != [
        u.text for u in utts
    ]


def test_missing_voice_is_named_with_its_package(monkeypatch, tmp_path, capsys):
    """A voice the engine lacks (Festival without festvox-kallpc16k) is refused before anything is
    written, naming the voice and its Debian package; the listings of both engines parse."""
    flite = external._parse_voice_list("flite", "Voices available: kal awb_time kal16 awb rms slt \n")
    assert flite == {"kal", "awb_time", "kal16", "awb", "rms", "slt"}
    festival = external._parse_voice_list("festival", "(cmu_us_slt_arctic_hts ked_diphone kal_diphone)\n")
    assert festival == {"cmu_us_slt_arctic_hts", "ked_diphone", "kal_diphone"}
    monkeypatch.setattr(external.shutil, "which", lambda name: f"/usr/bin/{name}")
    installed = {"flite": frozenset({"kal16", "awb"}), "festival": frozenset({"ked_diphone"})}
    monkeypatch.setattr(external, "installed_voices", installed.__getitem__)
    external.check_voices([voice_by_name("kal16"), voice_by_name("ked_diphone")])  # all there: no error
    with pytest.raises(SynthesizerUnavailableError) as err:
        external.check_voices([voice_by_name(name) for name in ("kal16", "rms", "slt")])
    assert str(err.value) == "flite: voice(s) rms, slt not installed (Debian: apt-get install flite)"
    needs = "kal_diphone, cmu_us_slt_arctic_hts not installed .*apt-get install festvox-kallpc16k festvox-us-slt-hts"
    with pytest.raises(SynthesizerUnavailableError, match=needs):
        build_external_split(tmp_path, "check", ["hello"], engine="festival")
    assert not (tmp_path / "check").exists()

    from wav2vec2_ee.cli import main

    argv = ["make-corpus", "--output-dir", str(tmp_path), "--synthesizer", "festival"]
    argv += ["--num-utterances", "2"]
    assert main(argv) == 2
    assert "apt-get install festvox-kallpc16k festvox-us-slt-hts" in capsys.readouterr().err


@needs_flite
def test_flite_lists_its_voices():
    external.installed_voices.cache_clear()
    assert {"kal16", "awb", "rms", "slt"} <= external.installed_voices("flite")


@needs_festival
def test_festival_voice_speaks():
    assert "ked_diphone" in external.installed_voices("festival")
    audio = speak("good morning", voice_by_name("ked_diphone"))
    assert audio.dtype == np.float32 and 0.3 * SAMPLING_RATE < audio.size < 3 * SAMPLING_RATE


def test_make_corpus_cli_other_synthesizer(monkeypatch, tmp_path, capsys):
    from wav2vec2_ee.corpus.cli import main

    with pytest.raises(ValueError, match="exactly one of --num-utterances and --texts-from"):
        main(["--output-dir", str(tmp_path), "--synthesizer", "flite"])
    monkeypatch.setattr(external.shutil, "which", lambda name: None)
    assert main(["--output-dir", str(tmp_path), "--synthesizer", "festival", "--num-utterances", "2"]) == 2
    assert "apt-get install festival" in capsys.readouterr().err


@needs_flite
def test_make_corpus_cli_speaks_a_split_texts(tmp_path, capsys):
    from wav2vec2_ee.corpus.cli import main

    folder = tmp_path / "test" / "1000" / "1"
    folder.mkdir(parents=True)
    sf.write(folder / "1000-1-0000.flac", np.zeros(1600, np.float32), SAMPLING_RATE)
    sf.write(folder / "1000-1-0001.flac", np.zeros(1600, np.float32), SAMPLING_RATE)
    (folder / "1000-1.trans.txt").write_text(
        "1000-1-0000 GOOD MORNING\n1000-1-0001 CALL HELEN\n", encoding="utf-8"
    )
    argv = ["--output-dir", str(tmp_path), "--synthesizer", "flite", "--texts-from", "test", "--every-voice"]
    assert main([*argv, "--voices", "awb", "slt", "--split-name", "check", "--progress", "false"]) == 0
    assert "check of" in capsys.readouterr().out
    utts = load_split(tmp_path, ["check"])
    assert sorted(u.text for u in utts) == ["CALL HELEN", "CALL HELEN", "GOOD MORNING", "GOOD MORNING"]
    assert {u.id.split("-")[0] for u in utts} == {str(SPEAKER_ID_BASE + 1), str(SPEAKER_ID_BASE + 3)}
