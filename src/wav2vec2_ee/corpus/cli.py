"""`wav2vec2-ee make-corpus`: synthesise the embedded eSpeak NG speech corpus (a thin CLI over
:func:`wav2vec2_ee.corpus.build_corpus`).

    wav2vec2-ee make-corpus --output-dir data/espeak            # default size: 4000 / 200 / 200 utterances
    wav2vec2-ee make-corpus --output-dir data/espeak --hours 3  # ~3 h of train audio
    wav2vec2-ee make-corpus --output-dir data/tiny --size quick # 300 / 40 / 40, for smoke tests
    wav2vec2-ee make-corpus --output-dir data/espeak --synthesizer flite --split-name train_flite \
        --num-utterances 2000 --voices kal16 awb rms          # another engine's split beside it
    wav2vec2-ee make-corpus --output-dir data/espeak --synthesizer festival --split-name check_festival \
        --texts-from test --every-voice                         # the test sentences, by every voice

The folder is in LibriSpeech layout (``train``, ``dev``, ``test``), ready for
``wav2vec2-ee train --data <dir> --train-splits train`` and ``wav2vec2-ee evaluate ... --splits test``.
A second call with the same parameters finds the finished build and returns at once.

``--synthesizer flite|festival`` writes one more split in the same layout, spoken by CMU Flite or
Festival (Debian packages; :mod:`wav2vec2_ee.corpus.external`): more variety for training, or speech the
eSpeak corpus builder did not make, for a robustness check.
"""

from __future__ import annotations

import argparse
import sys

from ..command_line import HelpFormatter, add_output_dir, finish_parser, output_dir_of
from ..errors import UserError
from .build import PRESETS, CorpusSummary, build_corpus
from .external import ENGINES, SynthesizerUnavailableError, build_external_split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wav2vec2-ee make-corpus",
        description="Synthesise the English eSpeak NG speech corpus (train / dev / test, LibriSpeech "
        "layout; dev and test voices never occur in train).",
        formatter_class=HelpFormatter,
    )
    add_output_dir(parser, "Folder to write the corpus to (created if needed).")
    parser.add_argument(
        "--size",
        choices=sorted(PRESETS),
        default="default",
        help="Preset utterance counts (train/dev/test): "
        + ", ".join(f"{name} = {'/'.join(map(str, counts))}" for name, counts in PRESETS.items())
        + ".",
    )
    parser.add_argument(
        "--hours",
        type=float,
        default=None,
        help="Approximate hours of train audio (replaces the preset's count).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of every random choice.")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="Worker processes synthesising audio (default: the number of CPU cores).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Allow replacing train/dev/test folders that another tool wrote into the output folder.",
    )
    parser.add_argument(
        "--progress", type=_to_bool, nargs="?", const=True, default=True, help="Show a progress bar."
    )
    other = parser.add_argument_group("another synthesizer's split (--synthesizer flite|festival)")
    other.add_argument(
        "--synthesizer",
        choices=["espeak", *sorted(ENGINES)],
        default="espeak",
        help="espeak: the train/dev/test corpus; flite or festival: one split spoken by that engine "
        "(Debian packages flite; festival festvox-kdlpc16k festvox-kallpc16k festvox-us-slt-hts).",
    )
    other.add_argument(
        "--split-name", default=None, help="Name of that split (default: the synthesizer's name)."
    )
    other.add_argument(
        "--num-utterances",
        type=int,
        default=None,
        help="Sentences drawn from the corpus grammar (with --seed).",
    )
    other.add_argument(
        "--texts-from", default=None, help="Speak the transcripts of this split of the output folder instead."
    )
    other.add_argument(
        "--voices", nargs="+", default=None, help="Voice names (default: every voice of the synthesizer)."
    )
    other.add_argument(
        "--every-voice",
        action="store_true",
        help="Each sentence by every voice (default: voices take turns).",
    )
    other.add_argument(
        "--no-prosody", action="store_true", help="Flite: the voices' own pace and pitch (default: drawn)."
    )
    # exact counts, for tests and scripted builds
    for split in ("train", "dev", "test"):
        parser.add_argument(f"--num-{split}", type=int, default=None, help=argparse.SUPPRESS)
    return finish_parser(parser, "make-corpus")


def _to_bool(value: str) -> bool:
    from transformers.hf_argparser import string_to_bool

    return string_to_bool(value)


def format_summary(summary: CorpusSummary) -> str:
    """A few lines: where the corpus is, utterances / hours / speakers per split, the build time."""
    state = "already built (cached)" if summary.cached else f"built in {summary.elapsed_s:.1f} s"
    lines = [f"corpus {summary.output_dir}: {state}, seed {summary.seed}, backend {summary.backend or '?'}"]
    lines.append(f"  {'split':<6}{'utterances':>12}{'hours':>9}{'speakers':>10}")
    for split, count in summary.num_utterances.items():
        hours = summary.hours.get(split, 0.0)
        speakers = summary.num_speakers.get(split, 0)
        lines.append(f"  {split:<6}{count:>12}{hours:>9.3f}{speakers:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the corpus and print its summary; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.output_dir = output_dir_of("make-corpus", args)
    if args.num_workers is not None and args.num_workers < 1:
        raise UserError(f"--num-workers must be >= 1, got {args.num_workers}")
    if args.synthesizer != "espeak":
        return _build_external(args)
    try:
        summary = _build(args)
    except FileExistsError as err:  # a folder with someone else's train/dev/test: say so in one line
        print(f"wav2vec2-ee make-corpus: error: {err} (on the command line: --overwrite)", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def _build_external(args: argparse.Namespace) -> int:
    """``--synthesizer flite|festival``: one split; prints its record's summary line."""
    from ..data import read_texts

    if (args.num_utterances is None) == (args.texts_from is None):
        raise UserError("--synthesizer flite|festival needs exactly one of --num-utterances and --texts-from")
    texts = read_texts(args.output_dir, [args.texts_from]) if args.texts_from else args.num_utterances
    split = args.split_name or args.synthesizer
    try:
        record = build_external_split(
            args.output_dir,
            split,
            texts,
            args.voices,
            engine=args.synthesizer,
            every_voice=args.every_voice,
            prosody=not args.no_prosody,
            seed=args.seed,
            workers=args.num_workers,
            progress=args.progress,
        )
    except SynthesizerUnavailableError as err:
        print(f"wav2vec2-ee make-corpus: error: {err}", file=sys.stderr)
        return 2
    state = "already built (cached)" if record.get("cached") else "built"
    voices = ", ".join(record["speakers"].values())
    print(
        f"split {split} of {args.output_dir}: {state}, {record['num_utterances']} utterances, "
        f"{record['hours']:.3f} h, voices {voices}"
    )
    return 0


def _build(args: argparse.Namespace) -> CorpusSummary:
    return build_corpus(
        args.output_dir,
        hours=args.hours,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
        size=args.size,
        seed=args.seed,
        workers=args.num_workers,
        progress=args.progress,
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    sys.exit(main())
