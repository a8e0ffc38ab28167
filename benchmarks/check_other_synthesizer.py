"""WER on speech the corpus builder did not make: the test sentences spoken by CMU Flite's voices.

The demo corpus is eSpeak NG speech; a model that only learned eSpeak's rendering of words would fail
on another synthesizer's. This script speaks the first ``--num`` transcripts of a corpus split with
Flite (Debian package ``flite``: voices ``kal16``, ``awb``, ``rms``, ``slt``, two American and a
Scottish male and an American female, diphone and unit-selection engines unlike eSpeak's formant
synthesis), writes them as a LibriSpeech-layout split ``flite`` (one speaker per voice, 16 kHz FLAC)
and evaluates the checkpoint on it with the evaluation suite (every exit, greedy WER over all voices;
per utterance in ``<output-dir>/eval/flite_results.txt``).

    python benchmarks/check_other_synthesizer.py demo_out/ee --data demo_out/corpus --split test \\
        --output-dir demo_out/flite [--num 100] [--voices kal16 awb rms slt]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from wav2vec2_ee.data import read_texts, to_mono_16k
from wav2vec2_ee.evaluation.evaluate import evaluate_checkpoint


def speak(text: str, voice: str, path: Path) -> None:
    """``text`` spoken by Flite's ``voice`` into ``path`` (16 kHz mono FLAC)."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["flite", "-voice", voice, "-t", text.lower(), "-o", wav.name], check=True)
        audio, rate = sf.read(wav.name, dtype="float32")
    sf.write(path, to_mono_16k(audio, rate, source=wav.name), 16_000, format="FLAC", subtype="PCM_16")


def build_split(texts: list[str], voices: list[str], root: Path) -> Path:
    """The ``flite`` split under ``root``: speaker ``9000 + v`` for voice ``v``, one chapter each."""
    split = root / "flite"
    if split.exists():
        shutil.rmtree(split)
    for v, voice in enumerate(voices):
        speaker = 9000 + v
        folder = split / str(speaker) / "1"
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt = f"{speaker}-1-{i:04d}"
            speak(text, voice, folder / f"{utt}.flac")
            lines.append(f"{utt} {text}\n")
        (folder / f"{speaker}-1.trans.txt").write_text("".join(lines), encoding="utf-8")
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the corpus whose transcripts are spoken")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num", type=int, default=100, help="transcripts per voice")
    parser.add_argument("--voices", nargs="+", default=["kal16", "awb", "rms", "slt"])
    args = parser.parse_args()
    if shutil.which("flite") is None:
        raise SystemExit("flite is not installed (Debian: apt-get install flite)")
    texts = read_texts(args.data, [args.split])[: args.num]
    out = Path(args.output_dir)
    build_split(texts, args.voices, out / "corpus")
    with contextlib.redirect_stdout(io.StringIO()):
        result = evaluate_checkpoint(
            args.checkpoint, out / "eval", data=str(out / "corpus"), splits=["flite"], progress=False
        )
    exits = result["splits"]["flite"]["exits"]
    print(f"{args.checkpoint} on {len(texts)} {args.split} sentences x {len(args.voices)} Flite voices")
    print("exit layer  WER (all voices)")
    for entry in exits.values():
        print(f"{entry['layer']:>10}  {100 * entry['wer']:.1f} %")
    print(f"per utterance: {out / 'eval' / 'flite_results.txt'}")


if __name__ == "__main__":
    main()
