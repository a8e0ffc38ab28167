"""Long recordings made of test utterances: WER against the same utterances one by one, and segment times.

Builds long recordings from a corpus split's utterances (each trimmed to its speech, joined with pauses
of several lengths drawn in turn from ``--pauses``; the speech onset and offset of every utterance are
known): clean at 44.1 kHz stereo (the reader resamples and downmixes it), and with pink background
noise at ``--noise-snr`` dB (16 kHz mono; the noise runs through the pauses too). Then:

- ``one by one``: every utterance transcribed alone (the reference point): the corpus's files for the
  clean recording, each utterance cut out of the noisy recording (with its file's own silence around it)
  for a noisy one, so that both ways hear the same noise at the same level;
- ``split (pad p)``: the long recording through ``Transcriber`` (what ``transcribe`` runs) split at its
  pauses, for every ``--pads`` value (the audio kept around each stretch of speech);
- ``windows 30 s``: fixed 30 s windows with strides (``--chunk-seconds 30``), for contrast;
- ``true cuts (pad p)``: the recording cut at the true speech bounds (an oracle splitter) with the
  default pad and none: what of the gap is the splitter's and what the model's;
- ``lite``: ``python -m wav2vec2_ee.lite EXPORT`` on the same files (with ``--export``), and its peak
  resident memory on a ``--hour-minutes`` long file made by repeating the noisy recording.

WER is jiwer's over the joined references (the recording's words against its transcript) and the
target is WER within +10 % relative of one by one. Segment edges are scored against the true pauses:
an edge inside a pause is 0 s off, else its distance to the nearest pause (target: within 0.3 s); the
distance to the nearest speech edge is reported beside it. Prints the CPU and a table; writes
``long_recording.json`` and ``long_recording.txt`` into ``--output-dir``.

    python benchmarks/check_long_recording.py demo_out/ee --data demo_out/corpus --split test \\
        --output-dir demo_out/long [--export demo_out/onnx] [--utterances 150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wav2vec2_ee.audio import SAMPLING_RATE, load_audio
from wav2vec2_ee.ctc.metrics import split_errors
from wav2vec2_ee.data.sources import load_split
from wav2vec2_ee.device import cpu_description
from wav2vec2_ee.io import atomic_write_text
from wav2vec2_ee.segmentation import SplitOptions
from wav2vec2_ee.vocab import normalize_transcript

FRAME = 160  # 10 ms at 16 kHz


@dataclass
class Recording:
    """A long recording: its file, the utterances' (onset, offset) seconds and their joined text."""

    name: str
    path: Path
    speech: list[tuple[float, float]]
    reference: str
    singles: list[str]  # the same utterances one by one (the reference point)


def speech_bounds(audio: np.ndarray, floor_db: float = -45.0) -> tuple[int, int]:
    """First and last sample of the 10 ms frames within ``floor_db`` of the loudest frame (the
    synthesizer's silence around an utterance is far below)."""
    frames = len(audio) // FRAME
    rms = np.sqrt(np.mean(audio[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > floor_db)
    return int(loud[0]) * FRAME, int(loud[-1] + 1) * FRAME


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS 1/f noise (white noise shaped in the frequency domain)."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
    noise = np.fft.irfft(spectrum, samples)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def join_utterances(
    audios: list[np.ndarray], pauses: list[float], lead: float = 0.5
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The utterances (already trimmed) joined with ``pauses`` (cycled), ``lead`` s of silence at both
    ends; returns the audio and each utterance's (onset, offset) in seconds."""
    parts, speech, at = [np.zeros(round(lead * SAMPLING_RATE), np.float32)], [], round(lead * SAMPLING_RATE)
    for i, audio in enumerate(audios):
        if i:
            gap = np.zeros(round(pauses[(i - 1) % len(pauses)] * SAMPLING_RATE), np.float32)
            parts.append(gap)
            at += len(gap)
        speech.append((at / SAMPLING_RATE, (at + len(audio)) / SAMPLING_RATE))
        parts.append(audio)
        at += len(audio)
    parts.append(np.zeros(round(lead * SAMPLING_RATE), np.float32))
    return np.concatenate(parts), speech


def add_noise(audio: np.ndarray, speech: list[tuple[float, float]], snr_db: float, seed: int) -> np.ndarray:
    """``audio`` plus pink noise at ``snr_db`` below the speech's mean power (pauses included)."""
    voiced = np.concatenate([audio[round(a * SAMPLING_RATE) : round(b * SAMPLING_RATE)] for a, b in speech])
    power = float(np.mean(voiced**2))
    noise = pink_noise(len(audio), np.random.default_rng(seed)) * np.sqrt(power / 10 ** (snr_db / 10))
    mixed = audio + noise
    return (mixed / max(1.0, float(np.abs(mixed).max()) / 0.99)).astype(np.float32)


def edge_errors(segments: list[dict], speech: list[tuple[float, float]]) -> dict:
    """How far each segment edge lies from the true pauses (0 inside one; the recording's lead-in and
    tail count as pauses) and from the nearest speech edge (onsets for starts, offsets for ends)."""
    onsets = np.array([a for a, _ in speech])
    offsets = np.array([b for _, b in speech])
    pauses = [(0.0, onsets[0])] + list(zip(offsets[:-1], onsets[1:])) + [(offsets[-1], np.inf)]
    to_pause, to_edge = [], []
    for segment in segments:
        for t, edges in ((segment["start"], onsets), (segment["end"], offsets)):
            to_pause.append(min(0.0 if a <= t <= b else min(abs(t - a), abs(t - b)) for a, b in pauses))
            to_edge.append(float(np.min(np.abs(edges - t))))
    to_pause, to_edge = np.array(to_pause), np.array(to_edge)
    return {
        "segments": len(segments),
        "utterances": len(speech),
        "edges_in_a_pause_or_within_0.3s": float(np.mean(to_pause <= 0.3)),
        "edge_to_pause_p95_s": float(np.percentile(to_pause, 95)),
        "edge_to_pause_max_s": float(to_pause.max()),
        "edge_to_speech_edge_median_s": float(np.median(to_edge)),
        "edge_to_speech_edge_p95_s": float(np.percentile(to_edge, 95)),
    }


def cut_utterances(
    audio: np.ndarray,
    speech: list[tuple[float, float]],
    margins: list[tuple[int, int]],
    folder: Path,
) -> list[str]:
    """Each utterance cut out of a long recording with the silence its own file had before and after
    its speech (``margins``, samples; at most up to the middle of a pause): the same audio, noise and
    level as in the recording, one file per utterance."""
    folder.mkdir(exist_ok=True)
    bounds = [(round(a * SAMPLING_RATE), round(b * SAMPLING_RATE)) for a, b in speech]
    paths = []
    for i, ((a, b), (before, after)) in enumerate(zip(bounds, margins)):
        lo = (bounds[i - 1][1] + a) // 2 if i else 0
        hi = (b + bounds[i + 1][0]) // 2 if i + 1 < len(bounds) else len(audio)
        path = folder / f"{i:04d}.wav"
        sf.write(path, audio[max(lo, a - before) : min(hi, b + after)], SAMPLING_RATE, subtype="PCM_16")
        paths.append(str(path))
    return paths


def build_recordings(args, out: Path) -> tuple[list[Recording], list[str]]:
    """The long recordings (files in ``out``) and the utterances' references. Clean: the one-by-one
    files are the corpus's own; noisy: cut from the noisy recording (:func:`cut_utterances`), so both
    ways hear the same noise at the same level."""
    utterances = sorted(load_split(args.data, args.split), key=lambda u: u.id)[: args.utterances]
    if not utterances:
        sys.exit(f"{args.data}: no utterances in split {args.split!r}")
    files = [str(u.audio) for u in utterances]
    references = [normalize_transcript(u.text) for u in utterances]
    trimmed, margins = [], []
    for f in files:
        audio = load_audio(f)
        lo, hi = speech_bounds(audio)
        trimmed.append(audio[lo:hi])
        margins.append((lo, len(audio) - hi))
    rng = np.random.default_rng(args.seed)
    pauses = [float(p) for p in rng.permutation(np.repeat(args.pauses, len(files) // len(args.pauses) + 1))]
    audio, speech = join_utterances(trimmed, pauses)
    reference = " ".join(references)
    recordings = []
    clean = out / "long_clean_44k_stereo.wav"
    resampled = soxr.resample(audio, SAMPLING_RATE, 44_100).astype(np.float32)
    sf.write(clean, np.stack([resampled, 0.8 * resampled], axis=1), 44_100, subtype="PCM_16")
    recordings.append(Recording("clean (44.1 kHz stereo)", clean, speech, reference, files))
    for snr in args.noise_snr:
        path = out / f"long_pink_{snr:g}dB.wav"
        noisy = add_noise(audio, speech, snr, args.seed + 1)
        sf.write(path, noisy, SAMPLING_RATE, subtype="PCM_16")
        singles = cut_utterances(noisy, speech, margins, out / f"utterances_pink_{snr:g}dB")
        recordings.append(Recording(f"pink noise {snr:g} dB", path, speech, reference, singles))
    return recordings, references


def run_lite(export: str, files: list[str], out: Path, name: str) -> tuple[list[dict], float]:
    """``python -m wav2vec2_ee.lite`` on ``files`` (JSON lines out); its rows and wall seconds."""
    target = out / f"lite_{name}.jsonl"
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "wav2vec2_ee.lite", export, *files, "--output", str(target)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
    order = {str(Path(f).resolve()): i for i, f in enumerate(files)}
    rows.sort(key=lambda r: order.get(r.get("path") or "", len(order)))
    return rows, time.perf_counter() - start


def lite_hour_peak(export: str, noisy: Path, minutes: float, out: Path) -> dict:
    """Peak resident memory of lite on a ``minutes`` long file (the noisy recording repeated)."""
    audio, rate = sf.read(noisy, dtype="float32")
    path = out / f"long_{minutes:g}min.wav"
    total = round(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        written = 0
        while written < total:
            block = audio[: total - written]
            f.write(block)
            written += len(block)
    script = (
        "import resource, subprocess, sys; "
        f"subprocess.run([sys.executable, '-m', 'wav2vec2_ee.lite', {export!r}, {str(path)!r}, "
        "'--format', 'jsonl'], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    peak_kib = int(
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    )
    seconds = time.perf_counter() - start
    path.unlink()
    return {"minutes": minutes, "peak_rss_mib": peak_kib / 1024, "wall_seconds": seconds}


def wer_of(references: list[str], hypotheses: list[str]) -> dict:
    errors = split_errors(references, hypotheses)
    return {"wer": errors.wer, "cer": errors.cer}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--data", required=True, help="a LibriSpeech-layout corpus (the demo's) or a manifest"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--utterances", type=int, default=150)
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.5, 0.8, 1.2, 2.0, 3.0])
    parser.add_argument("--noise-snr", type=float, nargs="*", default=[20.0])
    parser.add_argument("--pads", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--export", default=None, help="an export folder: run lite too")
    parser.add_argument("--hour-minutes", type=float, default=60.0, help="lite's memory check (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from wav2vec2_ee.inference.transcriber import Transcriber

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_description()}")
    recordings, references = build_recordings(args, out)
    seconds = sf.info(recordings[0].path).duration
    print(f"{len(references)} utterances joined into {seconds / 60:.1f} min (pauses {args.pauses} s)")

    rows: list[dict] = []
    alone = Transcriber.from_pretrained(args.checkpoint, split=None)
    for rec in recordings:
        start = time.perf_counter()
        hyps = [t.text for t in alone.transcribe(rec.singles)]
        base = {"recording": rec.name, "how": "one by one", "seconds": time.perf_counter() - start}
        rows.append(base | wer_of(references, hyps))
        reference_wer = rows[-1]["wer"]
        runs = [(f"split (pad {p:g} s)", {"split": SplitOptions(pad=p)}) for p in args.pads]
        runs.append(("windows 30 s", {"chunk_seconds": 30.0}))
        for how, kwargs in runs:
            model = Transcriber(alone.model, alone.policy, alone.processor, **kwargs)
            start = time.perf_counter()
            result = model.transcribe(str(rec.path))
            row = {"recording": rec.name, "how": how, "seconds": time.perf_counter() - start}
            row |= wer_of([rec.reference], [result.text])
            row["vs_one_by_one"] = row["wer"] / reference_wer if reference_wer else float("nan")
            if result.segments and kwargs.get("split"):
                row |= edge_errors([s.to_dict() for s in result.segments], rec.speech)
            rows.append(row)
        # the splitter's part of the gap: the same recording cut at the true speech bounds (an oracle
        # splitter) with the default pad and none
        whole = load_audio(rec.path)
        for pad in sorted({0.0, SplitOptions().pad}):
            cuts = [
                whole[max(0, round((a - pad) * SAMPLING_RATE)) : round((b + pad) * SAMPLING_RATE)]
                for a, b in rec.speech
            ]
            start = time.perf_counter()
            hyps = [t.text for t in alone.transcribe(cuts)]
            row = {
                "recording": rec.name,
                "how": f"true cuts (pad {pad:g})",
                "seconds": time.perf_counter() - start,
            }
            row |= wer_of(references, hyps)
            row["vs_one_by_one"] = row["wer"] / reference_wer if reference_wer else float("nan")
            rows.append(row)
        if args.export:
            lite_rows, wall = run_lite(args.export, [str(rec.path)], out, rec.path.stem)
            row = {"recording": rec.name, "how": "lite (split)", "seconds": wall}
            row |= wer_of([rec.reference], [lite_rows[0]["text"]])
            row["vs_one_by_one"] = row["wer"] / reference_wer if reference_wer else float("nan")
            if lite_rows[0].get("segments"):
                row |= edge_errors(lite_rows[0]["segments"], rec.speech)
            rows.append(row)
            singles_rows, wall = run_lite(args.export, rec.singles, out, rec.path.stem + "_singles")
            rows.append(
                {"recording": rec.name, "how": "lite one by one", "seconds": wall}
                | wer_of(references, [r["text"] for r in singles_rows])
            )
    memory = None
    if args.export and args.hour_minutes > 0:
        memory = lite_hour_peak(args.export, recordings[-1].path, args.hour_minutes, out)

    lines = [
        f"CPU: {cpu_description()}",
        f"{len(references)} utterances, {seconds / 60:.1f} min per recording",
    ]
    lines.append(
        f"{'recording':24s} {'how':18s} {'WER':>7s} {'CER':>7s} {'x 1-by-1':>8s} {'edges ok':>8s} "
        f"{'p95 off':>7s} {'segs':>5s} {'s':>6s}"
    )
    for r in rows:
        ok = f"{100 * r['edges_in_a_pause_or_within_0.3s']:7.1f}%" if "segments" in r else " " * 8
        p95 = f"{r['edge_to_pause_p95_s']:7.2f}" if "segments" in r else " " * 7
        segs = f"{r['segments']:5d}" if "segments" in r else " " * 5
        ratio = f"{r['vs_one_by_one']:8.2f}" if "vs_one_by_one" in r else " " * 8
        lines.append(
            f"{r['recording']:24s} {r['how']:18s} {100 * r['wer']:6.1f}% {100 * r['cer']:6.1f}% {ratio} {ok} "
            f"{p95} {segs} {r['seconds']:6.1f}"
        )
    if memory:
        lines.append(
            f"lite on a {memory['minutes']:g} min file: peak RSS {memory['peak_rss_mib']:.0f} MiB, "
            f"{memory['wall_seconds']:.0f} s"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(out / "long_recording.txt", text + "\n")
    record = {"cpu": cpu_description(), "args": vars(args), "rows": rows, "lite_memory": memory}
    atomic_write_text(out / "long_recording.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
