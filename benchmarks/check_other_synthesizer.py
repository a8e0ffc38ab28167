"""WER on speech the corpus builder did not make: a corpus split's sentences spoken by other synthesizers.

The demo corpus is eSpeak NG speech; a model that only learned eSpeak's rendering of words fails on
another engine's. This script speaks the first ``--num`` transcripts of a split with Flite or Festival
voices (``wav2vec2_ee.corpus.external``; Debian packages ``flite``, ``festival festvox-kdlpc16k
festvox-kallpc16k festvox-us-slt-hts``), each sentence by every voice, writes them as a LibriSpeech-
layout split ``check_<synthesizer>`` and evaluates the checkpoint on it with the evaluation suite (every
exit, greedy WER over all voices, and per voice; per utterance in ``<output-dir>/eval``).

    python benchmarks/check_other_synthesizer.py demo_out/ee --data demo_out/corpus --split test \\
        --output-dir demo_out/other [--synthesizer flite|festival] [--num 100] [--voices ...]

Use voices no training split had: a model trained with a Flite split (``make-corpus --synthesizer
flite``) is checked on Festival, or on a Flite voice left out of its training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jiwer

from wav2vec2_ee.corpus.external import ENGINES, build_external_split
from wav2vec2_ee.data import read_texts
from wav2vec2_ee.evaluation.evaluate import evaluate_checkpoint
from wav2vec2_ee.results import parse_split_results
from wav2vec2_ee.vocab import normalize_transcript


def per_voice_wer(items: list[dict], label: str, speakers: dict[str, str]) -> dict[str, float]:
    """WER of one exit (``label``) per voice (speaker id -> voice), from the evaluation's results file
    read back (:func:`~wav2vec2_ee.results.parse_split_results`)."""
    out = {}
    for sid, voice in speakers.items():
        mine = [i for i in items if i["file"].split("-")[0] == sid]
        refs = [normalize_transcript(i["expected"]) for i in mine]
        out[voice] = jiwer.wer(refs, [i["hypotheses"][label] or "" for i in mine]) if mine else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the corpus whose transcripts are spoken")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--synthesizer", choices=sorted(ENGINES), default="flite")
    parser.add_argument("--num", type=int, default=100, help="transcripts, each spoken by every voice")
    parser.add_argument("--voices", nargs="+", default=None, help="default: every voice of the synthesizer")
    args = parser.parse_args()
    texts = read_texts(args.data, [args.split])[: args.num]
    out = Path(args.output_dir)
    split = f"check_{args.synthesizer}"
    record = build_external_split(
        out / "corpus", split, texts, args.voices, engine=args.synthesizer, every_voice=True, prosody=False
    )
    result = evaluate_checkpoint(
        args.checkpoint, out / "eval", data=str(out / "corpus"), splits=[split], progress=False
    )
    exits = result["splits"][split]["exits"]
    voices = record["speakers"]
    print(
        f"{args.checkpoint} on {len(texts)} {args.split} sentences x {len(voices)} {args.synthesizer} voices"
    )
    print("exit layer  WER (all voices)  " + "  ".join(v.split(":")[1] for v in voices.values()))
    items = parse_split_results((out / "eval" / f"{split}_results.txt").read_text(encoding="utf-8"))
    for label, entry in exits.items():
        by_voice = per_voice_wer(items, label, voices)
        print(
            f"{entry['layer']:>10}  {100 * entry['wer']:>15.1f} %  "
            + "  ".join(f"{100 * w:.1f} %" for w in by_voice.values())
        )
    print(f"per utterance: {out / 'eval' / f'{split}_results.txt'}")


if __name__ == "__main__":
    main()
