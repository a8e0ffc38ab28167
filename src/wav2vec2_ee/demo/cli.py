"""`wav2vec2-ee demo`: the embedded default, end to end on a laptop CPU.

    wav2vec2-ee demo                  # ~10 min on 2 CPU cores: corpus, EE fine-tuning of the base, evaluation
    wav2vec2-ee demo --quick          # < 2 min smoke test of the same pipeline (tiny corpus and model)
    wav2vec2-ee demo --reproduce      # the seed's table of objectives and baselines on this corpus (~45 min)
    wav2vec2-ee demo --build-base     # (re)train the pretrained CTC base the demo starts from (~2.5 h)

Steps (each skipped when a previous run finished it, so an interrupted demo resumes where it stopped):

1. synthesise the eSpeak NG corpus (:func:`wav2vec2_ee.corpus.build_corpus`; held-out voices in dev/test);
2. fine-tune the packaged pretrained CTC base (``wav2vec2_ee/resources/demo_base``, made by ``--build-base``,
   :mod:`.base`) into an early-exit model with the library's training code
   (:func:`wav2vec2_ee.training.run.run_training`, the ``wav2vec2-ee train`` command), from a train
   config written to ``<output_dir>/configs/<run>.json`` (``wav2vec2-ee train <that file>`` reruns it);
3. evaluate every exit on the held-out test voices with the evaluation suite
   (:func:`wav2vec2_ee.evaluation.evaluate.evaluate_checkpoint`) and print the WER-by-exit table;
4. with ``--reproduce``: the base read through its final head, KD, DKD, confidence and
   manual-activation runs starting from the EE model, baselines of 2, 4, 6 and 8 layers (the base
   truncated, fine-tuned with the EE run's budget), and ``reproduce.md`` (the layout of the seed's
   result table); the command exits 1 when any of these runs failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from ..command_line import parsing_flags
from ..corpus import build_corpus
from ..ctc.decoding import require_flashlight
from ..errors import UserError
from ..io import atomic_write_text
from .arguments import DemoArguments, build_parser
from .base import base_model_dir, build_base
from .presets import PRESETS, DemoPreset
from .reproduce import run_reproduce
from .runs import (
    RunSpec,
    ee_run,
    evaluate_run,
    format_wer_by_exit,
    say,
    train_run,
    write_training_word_times,
)

logger = logging.getLogger(__name__)


def busy_cores(interval: float = 0.5) -> float | None:
    """Cores kept busy by other processes, sampled from ``/proc/stat`` over ``interval`` seconds while
    this process waits (``None`` where there is no ``/proc/stat``)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


def idle_threads() -> int | None:
    """Threads for a busy machine: the cores that other processes leave idle right now, or ``None``
    (torch's default, the physical cores) when they are all idle or this cannot be measured.

    Two threads sharing one free core with other processes spin and wait for each other: a training
    step took 3x longer than with one thread on this project's 2-core machine under load.
    """
    import torch

    default = torch.get_num_threads()
    busy = busy_cores()
    if busy is None:
        return None
    idle = int((os.cpu_count() or default) - busy + 0.5)
    return max(1, idle) if idle < default else None


def _setup(args: DemoArguments) -> tuple[DemoPreset, Path, Path]:
    """The preset, the output folder and the corpus folder of ``args``; sets torch's threads and the logs."""
    preset = PRESETS["quick" if args.quick else "default"]
    out = Path(args.output_dir) / "quick" if args.quick else Path(args.output_dir)
    corpus = Path(args.corpus_dir) if args.corpus_dir else out / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    import torch

    threads = args.num_threads or idle_threads()
    if threads:
        torch.set_num_threads(int(threads))
    say(f"torch threads: {torch.get_num_threads()} ({os.cpu_count()} cores)")
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()  # weight loading / saving bars
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
    return preset, out, corpus


def build_demo_corpus(preset: DemoPreset, corpus: Path, progress: bool = True) -> dict:
    """Step 1: the corpus (a finished build with the same parameters is reused at once)."""

    start = time.perf_counter()
    summary = build_corpus(corpus, **preset.corpus, progress=progress and sys.stderr.isatty())
    seconds = time.perf_counter() - start
    n = summary.num_utterances
    state = "reused" if summary.cached else f"built in {seconds:.0f} s"
    say(
        f"corpus {corpus}: {state}; train {n['train']} utterances ({summary.hours['train']:.2f} h), "
        f"dev {n['dev']}, test {n['test']} (dev/test voices unseen in training)"
    )
    return {
        "seconds": round(seconds, 1),
        "cached": summary.cached,
        "num_utterances": n,
        "hours": summary.hours,
    }


def _train_budget(args: DemoArguments, preset: DemoPreset, start: float) -> float | None:
    """Seconds for the EE run's training: what ``--time-budget-minutes`` leaves after the time since ``start``
    and the preset's share for the evaluation (at least a minute); ``None`` without a budget."""
    if not (args.time_budget_minutes and args.time_budget_minutes > 0):
        return None
    left = 60 * args.time_budget_minutes - (time.perf_counter() - start) - preset.evaluation_seconds
    train_budget = max(left, 60.0)
    say(f"time budget {args.time_budget_minutes:g} min: {train_budget:.0f} s for training")
    return train_budget


def _columns(preset: DemoPreset, result: dict) -> dict[str, dict[int, float]]:
    """The columns of the WER-by-exit table: greedy, lexicon and lexicon + LM per evaluated split."""
    columns = {f"{s} greedy": wer for s, wer in result["greedy"].items()}
    columns.update({f"{s} lexicon": wer for s, wer in result["lexicon"].items()})
    columns.update({f"{s} lexicon+{preset.lm_order}-gram": wer for s, wer in result["lexicon_lm"].items()})
    return columns


def _base_read_through(base: Path) -> str | None:
    """The base's greedy test WER per layer read through its final head, from its ``build_record.json``
    (written by ``--build-base``), as one line; ``None`` when the base has no record."""
    try:
        wer = json.loads((base / "build_record.json").read_text(encoding="utf-8"))["wer"]["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cells = ", ".join(
        f"layer {layer} {100 * float(v):.1f} %" for layer, v in sorted(wer.items(), key=lambda kv: int(kv[0]))
    )
    return f"  before EE training, the base read through its final head (greedy, its model card): {cells}"


def _print_table(
    preset: DemoPreset, result: dict, columns: dict[str, dict[int, float]], base: Path | None = None
) -> None:
    """Step 4: the WER-by-exit table on the first evaluated split and what its columns are (and, when
    ``base`` has a build record, its WER per layer before the EE training)."""
    split = preset.eval_splits[0]
    print()
    print(f"WER by exit on held-out voices ({split}: {result['utterances'][split]} utterances)")
    print(format_wer_by_exit(columns))
    if result["lexicon"]:
        print(
            "  greedy: best path; lexicon: beam search restricted to the words of the training transcripts\n"
            f"  (flashlight, beam {preset.lexicon_beam_size}, no language model, as the seed)"
        )
    if result["lexicon_lm"]:
        print(
            f"  lexicon+{preset.lm_order}-gram: the same search with a Kneser-Ney {preset.lm_order}-gram model of "
            f"the training transcripts\n  (LM weight {preset.lm_weight}, word score {preset.lm_word_score})"
        )
    before = _base_read_through(base) if base is not None else None
    if before and split == "test":
        print(before)
    print()


def _print_files(timings: dict, total: float, result: dict, model_dir: Path, split: str) -> None:
    """Step 4: where the time went and where the model and the result files are."""
    eval_dir = model_dir / "eval"
    per_step = timings["train"].get("seconds_per_step")
    precision = f" in {timings['train']['precision']}" if "precision" in timings["train"] else ""
    times = f", word times {timings['word_times']['seconds']:.0f} s" if "word_times" in timings else ""
    say(
        f"time: corpus {timings['corpus']['seconds']:.0f} s{times}, training {timings['train']['seconds']:.0f} s "
        f"({timings['train']['steps']} steps, {per_step:.2f} s/step{precision}), evaluation {result['seconds']:.0f} s; "
        f"total {total:.0f} s"
    )
    say(f"model:            {model_dir}")
    say(f"WER per exit:     {eval_dir / 'wer_results.txt'}, {eval_dir / 'wer_results.json'}")
    say(f"per utterance:    {eval_dir / f'{split}_results.txt'}")
    if result["lexicon"]:
        say(f"lexicon decoding: {eval_dir / 'posterior_wer' / split}/wer_<layer>.txt")
    if result["lexicon_lm"]:
        say(f"with the LM:      {eval_dir / 'lm' / 'posterior_wer' / split}/wer_<layer>.txt (lm.arpa beside)")
    say(f"plot:             {eval_dir / 'wer_by_exit.png'}")


def _write_summary(preset: DemoPreset, out: Path, corpus: Path, spec: RunSpec, results: dict) -> None:
    """``<out>/demo_summary.json``; ``results``: ``wer`` (the table's columns), ``timings`` and ``total``."""
    model_dir = out / spec.name
    summary = {
        "preset": preset.name,
        "output_dir": str(out),
        "corpus": str(corpus),
        "model_dir": str(model_dir),
        "eval_dir": str(model_dir / "eval"),
        "wer": {name: {str(k): v for k, v in by.items()} for name, by in results["wer"].items()},
        "timings": results["timings"],
        "total_seconds": round(results["total"], 1),
        "model_config": preset.model,
        "training": spec.train,
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    say(f"summary:          {out / 'demo_summary.json'}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status: 0, or 1 when ``--reproduce`` had a failed run (its row
    in ``reproduce.md`` says why; rerunning retries only the unfinished runs)."""
    with parsing_flags():
        args, device = build_parser().parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    preset, out, corpus = _setup(args)
    if args.build_base:
        start_from = None
        if args.continue_base:  # the packaged base (--quick: the smoke-test base, built first if missing)
            start_from = base_model_dir(preset, out, args.base)
        build_base(
            out / "base",
            quick=args.quick,
            train_minutes=args.base_minutes,
            overwrite=args.overwrite,
            demo_corpus=corpus,
            continue_from=start_from,
            progress=args.progress,
        )
        return 0
    if args.continue_base:
        raise UserError("--continue trains a stage of the base: use it with --build-base")
    decoding = preset.decoding(lexicon=not args.no_lexicon)
    if decoding.lexicon_beam_size:  # refused before the corpus and the training, not after them
        require_flashlight("the demo's lexicon beam search (--no-lexicon: greedy decoding only)")

    # 1. corpus
    quiet = {} if args.progress else {"progress": False}  # (the default: a bar on a terminal)
    timings: dict = {"corpus": build_demo_corpus(preset, corpus, **quiet)}

    # 2. EE fine-tuning of the pretrained base (within what the time budget leaves for it)

    base = base_model_dir(preset, out, args.base)
    say(f"base model: {base}")
    spec = ee_run(preset, base, corpus, args.max_steps)
    if spec.train.get("silence_prob"):  # the training's pauses go between words: the base times them, once
        timings["word_times"] = write_training_word_times(base, corpus, spec.train["train_splits"])
    train_budget = _train_budget(args, preset, start)
    timings["train"] = train_run(
        spec, out, overwrite=args.overwrite, time_budget=train_budget, progress=args.progress
    )

    # 3. evaluation on the held-out voices
    model_dir = out / spec.name
    result = evaluate_run(
        model_dir,
        model_dir / "eval",
        corpus,
        preset.eval_splits,
        decoding,
        overwrite=args.overwrite,
        device=device.device,
        dtype=device.dtype,
    )
    timings["evaluate"] = {"seconds": result["seconds"]}
    total = time.perf_counter() - start

    # 4. the table and where everything is
    columns = _columns(preset, result)
    _print_table(preset, result, columns, base)
    _print_files(timings, total, result, model_dir, preset.eval_splits[0])
    _write_summary(preset, out, corpus, spec, {"wer": columns, "timings": timings, "total": total})

    if args.reproduce:
        return run_reproduce(
            preset, out, corpus, spec, base, overwrite=args.overwrite, progress=args.progress
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
