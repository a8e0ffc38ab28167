"""Transcribing real recordings (issue 30): long inputs split at their pauses, timed segments, the output
formats, rows in input order as they are done, per-file time, Ctrl-C, and the lexicon decoders' text.

The model here is a tiny early-exit model made *frame-local*: its attention, feed-forward outputs and
positional convolution are zeroed, so each CTC frame depends on its own 85 samples only, and its heads are
biased so that digital silence is the blank. Its feature extractor does not normalise. So it hears an
utterance the same wherever it stands in a recording: its "known utterances" are synthetic voiced buzzes
whose transcripts, each read alone with the splitter's margins of silence, a long recording made of them
must reproduce.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import wav2vec2_ee.inference.transcriber as transcriber_module
from wav2vec2_ee.cli import main as cli_main
from wav2vec2_ee.inference import Transcriber
from wav2vec2_ee.inference.arguments import TranscribeArguments
from wav2vec2_ee.inference.transcriber import DEFAULT_MAX_SECONDS, DEFAULT_SPLIT
from wav2vec2_ee.modeling import Wav2Vec2EEForCTC
from wav2vec2_ee.segmentation import SplitOptions
from wav2vec2_ee.transcripts import (
    InputOrder,
    TranscriptionLog,
    row_segments,
    subtitles,
    text_line,
    tsv_header,
)
from wav2vec2_ee.vocab import build_processor

from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only cost

SR = 16_000
HOP = 320  # the energy detector's hop: utterances start and end on it
PAD = SplitOptions().pad  # silence the splitter keeps around speech
PAUSES = [1.0, 0.6, 1.5, 0.8, 1.2, 0.7, 1.0]  # seconds between the 8 utterances
SPLIT = SplitOptions(vad="energy", max_seconds=5.0)  # a 17.6 s recording is "long"


def _local_model() -> Wav2Vec2EEForCTC:
    torch.manual_seed(0)
    config = tiny_config(exit_layers=[2, 4], feat_extract_norm="layer", do_stable_layer_norm=True)
    model = Wav2Vec2EEForCTC(config).eval()
    with torch.no_grad():
        for name, parameter in model.wav2vec2.encoder.pos_conv_embed.named_parameters():
            if name.endswith(("original0", "weight_g", "bias")):  # weight norm's g: the weight is 0
                parameter.zero_()
        for layer in model.wav2vec2.encoder.layers:
            for module in (layer.attention.out_proj, layer.feed_forward.output_dense):
                module.weight.zero_()
                module.bias.zero_()
        for k in range(model.config.num_exits):
            model.head(k).weight.mul_(40.0)  # sharp: speech frames give letters
        for k, step in enumerate(model.iter_exits(torch.zeros(1, SR))):
            silent = step.logits[0, 0]
            assert torch.allclose(step.logits[0], silent.expand_as(step.logits[0]), atol=1e-4)
            model.head(k).bias.sub_(silent)
            model.head(k).bias[0] += 5.0  # silence: the blank
    return model


def _processor():
    processor = build_processor(None)
    processor.feature_extractor.do_normalize = False
    return processor


def _talk(seconds: float, seed: int) -> np.ndarray:
    """A voiced buzz with syllables, a whole number of detector hops long."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR) // HOP * HOP
    t = np.arange(n) / SR
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    f0 = 110 + 60 * rng.random()
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    x = 0.3 * envelope * voice / 2 + 0.005 * rng.standard_normal(n)
    return (x - x.mean()).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR / HOP) * HOP, np.float32)


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pauses")
    model, processor = _local_model(), _processor()
    rng = np.random.default_rng(3)
    utterances = [_talk(rng.uniform(0.8, 2.0), seed) for seed in range(len(PAUSES) + 1)]
    parts, bounds, t = [_silence(0.5)], [], _silence(0.5).size
    for i, speech in enumerate(utterances):
        parts.append(speech)
        bounds.append((t / SR, (t + speech.size) / SR))
        gap = _silence(PAUSES[i] if i < len(PAUSES) else 0.5)
        parts.append(gap)
        t += speech.size + gap.size
    recording = np.concatenate(parts)
    # each utterance alone, as a recording of it with the splitter's margins of silence would be
    alone = Transcriber(model, processor=processor, split=None)
    texts = [alone.transcribe(np.concatenate([_silence(PAD), u, _silence(PAD)])).text for u in utterances]
    assert all(texts) and len(set(texts)) == len(texts)
    checkpoint = root / "model"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    long16 = root / "talk.wav"
    sf.write(long16, recording, SR, subtype="FLOAT")
    return {
        "root": root,
        "model": model,
        "processor": processor,
        "recording": recording,
        "bounds": bounds,
        "texts": texts,
        "utterances": utterances,
        "checkpoint": checkpoint,
        "long": long16,
    }


def _transcriber(talk, **kwargs) -> Transcriber:
    return Transcriber(talk["model"], processor=talk["processor"], **{"split": SPLIT, **kwargs})


def _near(segments, bounds, tolerance: float = 0.3) -> bool:
    return len(segments) == len(bounds) and all(
        abs(s.start - a) <= tolerance and abs(s.end - b) <= tolerance for s, (a, b) in zip(segments, bounds)
    )


# --------------------------------------------------------------------------------------------------
# 1. split at pauses


def test_a_recording_split_at_its_pauses_reads_as_its_utterances_one_by_one(talk):
    result = _transcriber(talk, word_timestamps=True).transcribe(talk["recording"])
    assert result.ok and result.text == " ".join(talk["texts"])
    assert result.chunks == len(talk["texts"]) and result.exit_layer == 4
    assert result.audio_seconds == pytest.approx(talk["recording"].size / SR)
    assert _near(result.segments, talk["bounds"])  # each segment within 0.3 s of its utterance
    assert [s.text for s in result.segments] == talk["texts"]
    # the silence between the pieces is not run: only the speech and its margins are
    run = sum(s.end - s.start for s in result.segments)
    speech = sum(b - a for a, b in talk["bounds"])
    assert run == pytest.approx(speech + 2 * PAD * len(talk["bounds"]), abs=0.05)
    # words timed from the CTC alignment: inside their segment, over its speech (5 ms frames here)
    for segment, (a, b) in zip(result.segments, talk["bounds"]):
        assert " ".join(w.text for w in segment.words) == segment.text
        assert all(a - 0.02 <= w.start < w.end <= b + 0.02 for w in segment.words)
    # fixed windows, the old default for long files, glue the words at the pauses (the finding)
    windowed = _transcriber(talk, chunk_seconds=5.0).transcribe(talk["recording"])
    assert len(windowed.text.split()) < len(result.text.split())


def test_a_file_is_split_as_it_is_read_whatever_its_format(talk, tmp_path):
    t = _transcriber(talk)
    array = t.transcribe(talk["recording"])
    from_file = t.transcribe(str(talk["long"]))  # 16 kHz, read block by block
    assert from_file.text == array.text and from_file.segments == array.segments
    # 44.1 kHz stereo and MP3: resampled as a stream; the same pieces, at the same times
    import soxr

    stereo = soxr.resample(np.stack([talk["recording"]] * 2, axis=1), SR, 44_100).astype(np.float32)
    sf.write(tmp_path / "talk44.wav", stereo, 44_100, subtype="PCM_16")
    files = [tmp_path / "talk44.wav"]
    if "MP3" in sf.available_formats():
        sf.write(tmp_path / "talk.mp3", talk["recording"], SR, format="MP3")
        files.append(tmp_path / "talk.mp3")
    for path in files:
        result = t.transcribe(str(path))
        assert result.ok and _near(result.segments, talk["bounds"]), path.name
        assert result.audio_seconds == pytest.approx(array.audio_seconds, abs=0.1)


def test_the_api_and_the_command_share_their_defaults(talk):
    cli = TranscribeArguments()
    assert cli.split_options() == DEFAULT_SPLIT == SplitOptions()  # 20 s pieces, --vad auto
    assert cli.chunk_seconds is None and cli.max_seconds == DEFAULT_MAX_SECONDS
    signature = Transcriber.__init__.__defaults__
    t = Transcriber(talk["model"], processor=talk["processor"])
    assert t.split == DEFAULT_SPLIT and t.chunk_seconds is None and signature is not None
    assert (t.batch_size, t.max_batch_seconds) == (cli.batch_size, cli.max_batch_seconds)
    # a long input is split, not refused: 3 x 17.6 s, beyond both the 20 s pieces and --max-seconds 30
    long = np.concatenate([talk["recording"]] * 3)
    assert Transcriber(talk["model"], processor=talk["processor"], max_seconds=30).transcribe(long).ok
    energy = SplitOptions(vad="energy")  # (the default detector is Silero where installed: not for buzzes)
    t = Transcriber(talk["model"], processor=talk["processor"], max_seconds=30, split=energy)
    result = t.transcribe(long)
    assert result.ok and result.text == " ".join(talk["texts"] * 3) and result.audio_seconds > 50
    # short inputs run whole, as before: one segment over the whole input
    short = _transcriber(talk).transcribe(talk["utterances"][0])
    assert short.chunks == 1 and [(s.start, s.end) for s in short.segments] == [(0.0, short.audio_seconds)]


def test_pieces_are_batched_within_the_bounds_and_exit_on_their_own(talk, monkeypatch):
    batches = []
    real = transcriber_module.run_early_exit

    def spy(model, values, mask, policy, decoders, return_logits=False):
        batches.append((values.shape[0], values.shape[1] / SR))
        return real(model, values, mask, policy, decoders, return_logits)

    monkeypatch.setattr(transcriber_module, "run_early_exit", spy)
    t = _transcriber(talk, batch_size=3, max_batch_seconds=5.0)
    result = t.transcribe(talk["recording"])
    assert result.text == " ".join(talk["texts"])  # batching changes nothing
    assert len(batches) >= 3 and all(n <= 3 and n * seconds <= 5.0 + 1e-9 for n, seconds in batches)
    assert sum(n * seconds for n, seconds in batches) < 0.8 * result.audio_seconds  # no pause is run
    # each piece takes its own exit decision: a policy that stops the shorter half of them at layer 2
    from wav2vec2_ee.policy_core import ExitPolicy

    median = float(np.median([s.end - s.start for s in result.segments]))

    class ShortStopsEarly(ExitPolicy):
        name = "short-stops-early"

        def should_exit(self, history):
            return history[-1].output_lengths < median * 200  # frames of 5 ms

    t.policy = ShortStopsEarly()
    mixed = t.transcribe(talk["recording"])
    layers = {s.exit_layer for s in mixed.segments}
    assert layers == {2, 4} and mixed.exit_layer == 4
    short = [s for s in mixed.segments if s.exit_layer == 2]
    assert len(short) == 4 and all(s.end - s.start < median for s in short)
    assert 2 < mixed.layers_computed < 4


# --------------------------------------------------------------------------------------------------
# 2. formats, order, time, Ctrl-C


def _files(root: Path, seconds: list[float]) -> list[str]:
    """Files of the local model's utterances, named in input order (u0, u1, ...)."""
    paths = []
    for i, s in enumerate(seconds):
        path = root / f"u{i}.wav"
        sf.write(path, np.concatenate([_silence(PAD), _talk(s, 10 + i), _silence(PAD)]), SR, subtype="FLOAT")
        paths.append(str(path))
    return paths


def _srt_cues(text: str) -> list[tuple[float, float, str]]:
    clock = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        match = next(re.fullmatch(rf"{clock} --> {clock}", line) for line in lines if "-->" in line)
        h1, m1, s1, f1, h2, m2, s2, f2 = map(int, match.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + f1 / 1000, h2 * 3600 + m2 * 60 + s2 + f2 / 1000
        cues.append((start, end, lines[-1]))
    return cues


def test_subtitles_of_one_input_are_printed_of_several_written_per_input(talk, tmp_path, capsys):
    base = ["transcribe", str(talk["checkpoint"]), "--vad", "energy", "--max-segment-seconds", "5"]
    assert cli_main([*base, str(talk["long"]), "--format", "srt"]) == 0
    out = capsys.readouterr().out
    cues = _srt_cues(out)
    numbers = [int(block.split("\n")[0]) for block in out.strip().split("\n\n")]
    assert out.startswith("1\n") and numbers == list(range(1, 9))
    assert len(cues) == len(talk["bounds"])
    assert all(abs(a - s) <= 0.3 and abs(b - e) <= 0.3 for (s, e, _), (a, b) in zip(cues, talk["bounds"]))
    assert " ".join(text for _, _, text in cues).split() == talk["texts"]

    short = _files(tmp_path, [1.0])[0]
    argv = [*base, str(talk["long"]), short, "--format", "vtt"]
    assert cli_main(argv) == 2  # several inputs, one document each: where?
    assert "--output-dir" in capsys.readouterr().err
    assert cli_main([*argv, "--output-dir", str(tmp_path / "subs")]) == 0
    assert capsys.readouterr().out == ""
    written = sorted(p.name for p in (tmp_path / "subs").iterdir())
    assert written == ["talk.vtt", "u0.vtt"]
    vtt = (tmp_path / "subs" / "talk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and len(_srt_cues(vtt.split("\n\n", 1)[1])) == len(talk["bounds"])


def test_rows_come_in_input_order_with_a_header_and_their_segments(talk, tmp_path, capsys):
    paths = _files(tmp_path, [0.6, 0.9, 1.2, 1.5])  # longest last: batches run it first
    base = ["transcribe", str(talk["checkpoint"]), *paths, "--batch-size", "1", "--no-progress"]
    assert cli_main([*base, "--format", "tsv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == tsv_header() and [line.split("\t")[0] for line in lines[1:]] == paths
    assert cli_main([*base, "--format", "jsonl", "--word-timestamps"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == paths and all(r["decoder"] == "greedy" for r in rows)
    for row in rows:
        (segment,) = row["segments"]
        assert segment["start"] == 0.0 and segment["end"] == pytest.approx(row["audio_seconds"])
        assert " ".join(w["text"] for w in segment["words"]) == row["text"]
    # --output: appended in input order too; a CSV log holds the segments as JSON
    log = tmp_path / "log.csv"
    assert cli_main([*base, "--output", str(log)]) == 0
    logged = TranscriptionLog(log).rows()
    assert [r["source"] for r in logged] == paths
    assert row_segments(logged[0])[0].text == logged[0]["text"]
    assert subtitles(logged[0], "srt").startswith("1\n00:00:00,000 --> ")


def test_each_file_is_timed_by_its_share_of_the_compute(talk, tmp_path, capsys):
    paths = _files(tmp_path, [0.5, 1.0, 2.0, 0.7, 1.4, 1.1])
    argv = ["transcribe", str(talk["checkpoint"]), *paths, "--format", "jsonl", "--batch-size", "3"]
    started = time.perf_counter()
    assert cli_main([*argv, "--no-progress"]) == 0
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seconds = [r["seconds"] for r in rows]
    # shares of their batches' time: they add up to the compute, within the run's wall time (the
    # issue: each file had its batch's whole time, and the column summed to 4x the wall time)
    assert all(s > 0 for s in seconds) and sum(seconds) <= wall
    # in one batch (batches of 3, longest first: the three longest), a longer file takes a larger share
    longest = sorted(range(len(rows)), key=lambda i: rows[i]["audio_seconds"])[-3:]
    shares = [rows[i]["seconds"] for i in longest]
    assert shares == sorted(shares) and len(set(shares)) == 3
    # beside it, the time until its answer, labelled
    assert all(r["latency_seconds"] >= r["seconds"] * 0.999 for r in rows)
    first = rows[0]
    assert f"{first['seconds']:.3f} s (answer after {first['latency_seconds']:.3f} s)" in text_line(first)


def test_ctrl_c_keeps_what_was_written_in_one_line(talk, tmp_path, capsys, monkeypatch):
    paths = _files(tmp_path, [1.5, 1.2, 0.9, 0.6])  # longest first: batches run in input order
    calls = []
    real = transcriber_module.run_early_exit

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(transcriber_module, "run_early_exit", interrupted)
    out = tmp_path / "out.jsonl"
    argv = ["transcribe", str(talk["checkpoint"]), *paths, "--batch-size", "1", "--no-progress"]
    assert cli_main([*argv, "--output", str(out)]) == 130
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if line.strip() and "Loading weights" not in line]
    assert said == [f"wav2vec2-ee transcribe: interrupted: 2 of 4 files written to {out}"]  # no traceback
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == paths[:2]
    assert [r["source"] for r in TranscriptionLog(out).rows()] == paths[:2]
    calls.clear()
    assert cli_main([*argv, "--output", str(out), "--resume"]) == 0  # the lock was released; the rest
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == paths[2:]
    calls.clear()
    assert cli_main(argv) == 130
    captured = capsys.readouterr()
    said = captured.err.splitlines()[-1]
    assert said == "wav2vec2-ee transcribe: interrupted: 2 of 4 files written to stdout"
    assert len(captured.out.splitlines()) == 2


def test_a_stream_gives_results_in_input_order_as_they_are_ready(talk):
    t = _transcriber(talk, batch_size=1)
    inputs = [talk["utterances"][i] for i in (3, 0, 5)]  # not sorted by length
    computed = [r.source for batch in t.transcribe_batches(inputs) for r in batch]
    stream = t.transcribe_stream(inputs)
    assert stream.total == 3
    assert [r.source for r in stream] == ["<array 0>", "<array 1>", "<array 2>"] != computed
    order = InputOrder()
    assert order.add(1, "b") == [] and order.add(0, "a") == ["a", "b"] and order.add(2, "c") == ["c"]


# --------------------------------------------------------------------------------------------------
# 3. the lexicon decoders' text


def test_the_decoder_flag_prints_the_lexicon_searchs_text(talk, tmp_path, capsys):
    pytest.importorskip("flashlight.lib.text.decoder")
    paths = _files(tmp_path, [0.8, 1.0])
    words = ["wrwr", "were", "rew", "err", "wer"]
    manifest = tmp_path / "texts.jsonl"
    rows = [{"audio": p, "text": " ".join(words[i:] + words[:i]).upper()} for i, p in enumerate(paths)]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["transcribe", str(talk["checkpoint"]), *paths, "--json", "--no-progress"]
    assert cli_main(base) == 0
    greedy = json.loads(capsys.readouterr().out)
    for decoder, extra in [("lexicon", []), ("lexicon-lm", ["--lm-order", "2"])]:
        argv = [*base, "--decoder", decoder, "--lexicon-from", str(manifest), "--word-timestamps", *extra]
        assert cli_main(argv) == 0, capsys.readouterr().err
        rows = json.loads(capsys.readouterr().out)
        assert all(r["decoder"] == decoder for r in rows)
        assert all(set(r["text"].split()) <= set(words) for r in rows)  # lexicon words only
        assert [r["text"] for r in rows] != [r["text"] for r in greedy]  # not the greedy text
        for row in rows:
            (segment,) = row["segments"]
            assert [w["text"] for w in segment["words"]] == row["text"].split()
    # usage errors, before the model loads
    lm_without_lm_decoder = ["--decoder", "lexicon", "--lexicon-from", str(manifest), "--lm-order", "2"]
    for flags, message in [
        (["--decoder", "lexicon"], "--decoder lexicon needs --lexicon FILE or --lexicon-from"),
        (["--lm-order", "2"], "add --decoder lexicon or lexicon-lm"),
        (lm_without_lm_decoder, "need --decoder lexicon-lm"),
        (["--decoder", "lexicon-lm", "--lexicon", str(manifest)], "lexicon-lm needs --lm FILE.arpa"),
    ]:
        assert cli_main([*base, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_ctm_gives_each_word_its_time_and_reads_back_as_word_gaps(talk, tmp_path, capsys):
    """``--format ctm``: a NIST CTM line per word (word times on without ``--word-timestamps``), the ids the
    files' names, the words those of ``--format jsonl``; :func:`read_ctm` reads it back and the gaps
    between words lie in the recording's true pauses."""
    from wav2vec2_ee.data.alignments import read_ctm, word_gaps

    base = [
        "transcribe",
        str(talk["checkpoint"]),
        "--vad",
        "energy",
        "--max-segment-seconds",
        "5",
        "--no-progress",
    ]
    assert cli_main([*base, str(talk["long"]), "--format", "ctm"]) == 0
    out = capsys.readouterr().out
    assert all(line.split()[:2] == ["talk", "1"] and len(line.split()) == 5 for line in out.splitlines())
    assert " ".join(line.split()[4] for line in out.splitlines()) == " ".join(talk["texts"])
    ctm = tmp_path / "words.ctm"
    ctm.write_text(out)
    spans = read_ctm(ctm)["talk"]
    assert len(spans) == len(" ".join(talk["texts"]).split())
    assert all(0 <= a <= b <= len(talk["recording"]) / SR for a, b in spans)
    # each utterance of this model is one word: the gaps between words are the pauses between utterances
    gaps = word_gaps(spans)
    for (a, b), (_, end), (start, _) in zip(gaps, talk["bounds"], talk["bounds"][1:]):
        assert end - 0.3 <= a / SR and b / SR <= start + 0.3
