"""`wav2vec2-ee demo`: the embedded default, end to end on a laptop CPU.

    wav2vec2-ee demo                  # ~10 min on 2 CPU cores: corpus, training from scratch, evaluation
    wav2vec2-ee demo --quick          # < 2 min smoke test of the same pipeline (tiny corpus and model)
    wav2vec2-ee demo --reproduce      # the seed's table of objectives and baselines on this corpus (~1 h)

Steps (each skipped when a previous run finished it, so an interrupted demo resumes where it stopped):

1. synthesise the eSpeak NG corpus (:func:`wav2vec2_ee.corpus.build_corpus`; held-out voices in dev/test);
2. train a small early-exit wav2vec2 model from scratch with the library's training code
   (:func:`wav2vec2_ee.training.run.run_training`, the ``wav2vec2-ee train`` command), from a train
   config written to ``<output_dir>/configs/<run>.json`` (``wav2vec2-ee train <that file>`` reruns it);
3. evaluate every exit on the held-out test voices with the evaluation suite
   (:func:`wav2vec2_ee.evaluation.evaluate.evaluate_checkpoint`) and print the WER-by-exit table;
4. with ``--reproduce``: KD, DKD, confidence and manual-activation runs starting from the EE model,
   baselines without exits of 2, 4 and 6 layers trained with the same budget, and ``reproduce.md``
   (the layout of the seed's result table).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .device import DeviceArguments
from .io import atomic_write_text

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# presets

#: The corpus split the demo trains on (its words are the lexicon of the lexicon decoder).
TRAIN_SPLITS = ("train",)

#: The demo model: a wav2vec2 encoder sized for a CPU. The CNN front end is cheaper than wav2vec2's
#: (5 layers, first stride 10, group norm on the first layer only) with the same 20 ms frame rate;
#: pre-LN (stable layer norm) transformer of 6 layers, exits after layers 2, 4 and 6.
DEMO_MODEL: dict = {
    "hidden_size": 192,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 768,
    "conv_dim": [64, 128, 128, 128, 128],
    "conv_stride": [10, 4, 2, 2, 2],
    "conv_kernel": [20, 4, 4, 4, 2],
    "feat_extract_norm": "group",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 64,
    "num_conv_pos_embedding_groups": 8,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "final_dropout": 0.0,
    "layerdrop": 0.0,
    "mask_time_prob": 0.0,
    "ctc_loss_reduction": "mean",
    "exit_layers": [2, 4, 6],
}

#: Training arguments of the EE run from scratch (names of ``wav2vec2-ee train``'s options).
DEMO_TRAINING: dict = {
    "objective": "ee",
    "freeze_feature_encoder": False,
    "train_splits": list(TRAIN_SPLITS),
    "cache_audio": True,
    "train_sampling_strategy": "group_by_length",
    # held-out voices are the hard part: in 4600-step runs the model reached 5 % WER on training voices
    # and 51 % on unheard ones; speed perturbation (tempo, pitch and formants) took the latter to 44 %
    # (docs/results.md has the runs)
    "speed_perturbation": [0.9, 1.0, 1.1],
    # batches in few shapes: oneDNN reuses its CNN convolution kernels (1.25-1.5x faster steps on CPU)
    "pad_to_multiple_of": 1600,
    "per_device_train_batch_size": 8,
    "learning_rate": 3e-3,
    "warmup_steps": 300,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
    "max_steps": 4500,
    "max_grad_norm": 5.0,
    "weight_decay": 0.0,
    "seed": 0,
}

#: Settings common to every demo run (no intermediate checkpoints: a run is the unit of resumption).
RUN_DEFAULTS: dict = {
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 50,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
}

#: How the ``--reproduce`` runs that start from the EE model differ from it (a shorter, gentler schedule).
DEMO_FINETUNE: dict = {"learning_rate": 5e-4, "warmup_steps": 50, "max_steps": 800}


@dataclass(frozen=True)
class DemoPreset:
    """Everything that defines one demo: corpus size, model, training budget and evaluated splits."""

    name: str
    corpus: dict
    model: dict
    training: dict
    finetune: dict
    eval_splits: tuple[str, ...] = ("test",)
    lexicon_beam_size: int | None = 500
    #: the third column: the lexicon decoder with a word n-gram model of the training transcripts; weight
    #: and word score chosen on the dev split (held-out voices too) of the default corpus, never on test
    lm_order: int | None = 3
    lm_weight: float = 1.0
    lm_word_score: float = 1.0
    reproduce_splits: tuple[str, ...] = ("test", "dev")
    #: what a time budget keeps back for the evaluation after training (greedy, lexicon and LM columns
    #: took 20-30 s on 2 cores) and for saving and loading the model
    evaluation_seconds: float = 45.0


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset("default", {"size": "default"}, DEMO_MODEL, DEMO_TRAINING, DEMO_FINETUNE),
    # smoke test: the same pipeline on a tiny corpus and model, a few steps (WER is not the point)
    "quick": DemoPreset(
        "quick",
        {"size": "quick"},
        {
            **DEMO_MODEL,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "conv_dim": [32, 64, 64, 64, 64],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "exit_layers": [2, 4],
        },
        {**DEMO_TRAINING, "max_steps": 40, "warmup_steps": 5, "learning_rate": 2e-3},
        {**DEMO_FINETUNE, "max_steps": 10, "warmup_steps": 2},
        lexicon_beam_size=20,
    ),
}


def dkd_alphas(num_exits: int) -> list[float]:
    """Per-exit EE weights of dynamic KD: 0.65, 0.70, ... rising by 0.05, and 1.0 at the last exit.

    For 6 exits this is the seed's default ``[0.65, 0.70, 0.75, 0.80, 0.85, 1.00]``.
    """
    return [round(0.65 + 0.05 * k, 2) for k in range(num_exits - 1)] + [1.0]


# --------------------------------------------------------------------------------------------------
# arguments


@dataclass
class DemoArguments:
    """Options of ``wav2vec2-ee demo``."""

    output_dir: str = field(
        default="demo_out",
        metadata={"help": "Folder for the corpus, the models, the result files and the plot."},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Smoke test (< 2 min): tiny corpus and model, a few steps; exercises every step, WER "
            "is not meaningful. Writes to <output-dir>/quick."
        },
    )
    reproduce: bool = field(
        default=False,
        metadata={
            "help": "Also run the seed's table on this corpus (KD, DKD, confidence, manual activation from "
            "the EE model; baselines of 2, 4, 6 layers) and write reproduce.md (~1 h; resumable)."
        },
    )
    corpus_dir: str | None = field(
        default=None, metadata={"help": "Where to build (or find) the corpus (default: <output-dir>/corpus)."}
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Training steps of the EE run and the baselines (default: the preset's)."},
    )
    time_budget: float = field(
        default=10.0,
        metadata={
            "help": "Minutes for the whole demo (corpus, training, evaluation): when this machine's pace "
            "would overrun them, the training plans fewer steps than --max-steps and fits its learning-rate "
            "schedule to them (train --time-budget), so the demo ends on time; the steps it ran are "
            "reported. 0: no budget (the preset's steps, e.g. to compare machines). --reproduce's runs "
            "are not budgeted."
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads (default: torch's choice, the physical cores, lowered to the cores "
            "left idle by other processes when the machine is busy)."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Retrain and re-evaluate even when a previous run finished."}
    )
    no_lexicon: bool = field(
        default=False,
        metadata={"help": "Greedy decoding only (skip the lexicon-constrained beam search column)."},
    )
    verbose: bool = field(default=False, metadata={"help": "Show the library's INFO logs."})


# --------------------------------------------------------------------------------------------------
# runs


@dataclass
class RunSpec:
    """One training run: its folder name, the table row it fills and its train-command arguments."""

    name: str
    label: str
    train: dict
    depends_on: str | None = None


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _model_is_complete(run_dir: Path, train_config: dict) -> bool:
    """Whether ``run_dir`` holds the final model of a finished run with exactly ``train_config``."""
    marker = run_dir / "demo_run.json"
    if not (marker.is_file() and (run_dir / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("train") == train_config
    except json.JSONDecodeError:
        return False


def train_run(spec: RunSpec, out: Path, overwrite: bool = False, time_budget: float | None = None) -> dict:
    """Train ``spec`` into ``out/<name>`` with the library's ``run_training`` unless it is already done.

    The train config is written to ``out/configs/<name>.json`` first (``wav2vec2-ee train <file>``
    reruns it by hand); ``demo_run.json`` in the run folder, written last, marks the run complete.
    ``time_budget`` (seconds, ``train --time-budget``) is not part of what makes a finished run reusable.
    Returns ``{"seconds", "steps", "seconds_per_step", "cached"}``.
    """
    from .training.cli import parse_args
    from .training.run import run_training

    run_dir = out / spec.name
    config = {**spec.train, "output_dir": str(run_dir)}
    marker = run_dir / "demo_run.json"
    if not overwrite and _model_is_complete(run_dir, config):
        record = json.loads(marker.read_text(encoding="utf-8"))
        _say(f"{spec.name}: already trained in {run_dir} ({record['seconds']:.0f} s), skipped")
        return {**record["timing"], "cached": True}
    config_file = out / "configs" / f"{spec.name}.json"
    budgeted = {**config, "time_budget": round(time_budget, 1)} if time_budget else config
    atomic_write_text(config_file, json.dumps(budgeted, indent=2) + "\n")
    _say(f"{spec.name}: training ({spec.label}); config {config_file}")
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    trainer = run_training(*parse_args([str(config_file)]))
    seconds = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    train_seconds = float(trainer.state.log_history[-1].get("train_runtime", seconds)) if steps else seconds
    timing = {
        "seconds": round(seconds, 1),
        "train_runtime": round(train_seconds, 1),
        "steps": steps,
        "seconds_per_step": round(train_seconds / max(steps, 1), 3),
    }
    if time_budget:
        timing["time_budget"] = round(time_budget, 1)
    atomic_write_text(
        marker, json.dumps({"train": config, "seconds": seconds, "timing": timing}, indent=2) + "\n"
    )
    del trainer
    planned = int(config["max_steps"])
    cut = f", {planned - steps} fewer than planned to fit the time budget" if steps < planned else ""
    _say(f"{spec.name}: {steps} steps in {seconds:.0f} s ({timing['seconds_per_step']:.2f} s/step{cut})")
    return {**timing, "cached": False}


def evaluate_run(
    model_dir: Path,
    eval_dir: Path,
    corpus: Path,
    splits: tuple[str, ...],
    lexicon_beam_size: int | None = None,
    overwrite: bool = False,
    lm_order: int | None = None,
    lm_weight: float = 1.0,
    lm_word_score: float = 1.0,
    device: str | None = None,
    dtype: str = "float32",
) -> dict:
    """Layer-wise WER of ``model_dir`` on ``splits`` with the evaluation suite (its printout is captured),
    on ``device`` in ``dtype`` (:class:`~wav2vec2_ee.device.DeviceArguments`).

    Greedy decoding always; with ``lexicon_beam_size`` also flashlight's lexicon-constrained beam search
    (no language model, as the seed) over the words of the corpus's training transcripts (the evaluation
    suite's ``posterior`` exit statistic, whose best hypothesis it scores); with ``lm_order`` too, the
    same search with a Kneser-Ney word n-gram model of those transcripts (in ``<eval_dir>/lm``).

    Returns ``{"seconds", "greedy": {split: {layer: wer}}, "lexicon": {...}, "lexicon_lm": {...},
    "utterances": {split: n}}`` with WER as a fraction (empty dicts for the columns not asked for).
    """
    from .evaluation.evaluate import evaluate_checkpoint

    start = time.perf_counter()
    lexicon = {}
    if lexicon_beam_size:
        lexicon = {
            "exit_stats": ["posterior"],
            "train_splits": list(TRAIN_SPLITS),
            "lexicon_beam_size": int(lexicon_beam_size),
            "nbest": 1,
        }
    with contextlib.redirect_stdout(io.StringIO()):  # the demo prints its own table
        overview = evaluate_checkpoint(
            str(model_dir),
            str(eval_dir),
            str(corpus),
            splits=list(splits),
            progress=False,
            overwrite=overwrite,
            device=device,
            dtype=dtype,
            **lexicon,
        )
        with_lm = None
        if lexicon and lm_order:
            with_lm = evaluate_checkpoint(
                str(model_dir),
                str(eval_dir / "lm"),
                str(corpus),
                splits=list(splits),
                progress=False,
                overwrite=overwrite,
                plot=False,
                **{**lexicon, "word_score": lm_word_score},
                lexicon_lm_order=int(lm_order),
                lexicon_lm_weight=lm_weight,
                device=device,
                dtype=dtype,
            )

    def by_layer(result: dict, key: str) -> dict[str, dict[int, float]]:
        return {
            split: {int(e["layer"]): float(e["wer"]) for e in data[key].values()}
            for split, data in result["splits"].items()
            if key in data
        }

    return {
        "seconds": round(time.perf_counter() - start, 1),
        "greedy": by_layer(overview, "exits"),
        "lexicon": by_layer(overview, "lexicon_beam") if lexicon else {},
        "lexicon_lm": by_layer(with_lm, "lexicon_beam") if with_lm else {},
        "utterances": {split: int(data.get("utterances", 0)) for split, data in overview["splits"].items()},
    }


def format_wer_by_exit(columns: dict[str, dict[int, float]]) -> str:
    """The WER-by-exit table: one row per exit layer, one column per entry of ``columns``, in percent."""
    names = list(columns)
    layers = sorted({layer for by_layer in columns.values() for layer in by_layer})
    width = [max(9, len(n)) for n in names]
    lines = ["exit layer" + "".join(f"  {n:>{w}}" for n, w in zip(names, width))]
    for layer in layers:
        cells = "".join(
            f"  {100 * columns[n][layer]:>{w - 2}.1f} %" if layer in columns[n] else f"  {'-':>{w}}"
            for n, w in zip(names, width)
        )
        lines.append(f"{layer:>10}" + cells)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the demo


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
    preset = PRESETS["quick" if args.quick else "default"]
    out = Path(args.output_dir) / "quick" if args.quick else Path(args.output_dir)
    corpus = Path(args.corpus_dir) if args.corpus_dir else out / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    import torch

    threads = args.threads or idle_threads()
    if threads:
        torch.set_num_threads(int(threads))
    _say(f"torch threads: {torch.get_num_threads()} ({os.cpu_count()} cores)")
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if args.verbose else logging.WARNING,
    )
    if not args.verbose:
        import warnings

        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()  # weight loading / saving bars
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
    return preset, out, corpus


def build_demo_corpus(preset: DemoPreset, corpus: Path) -> dict:
    """Step 1: the corpus (a finished build with the same parameters is reused at once)."""
    from .corpus import build_corpus

    start = time.perf_counter()
    summary = build_corpus(corpus, **preset.corpus, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    n = summary.num_utterances
    state = "reused" if summary.cached else f"built in {seconds:.0f} s"
    _say(
        f"corpus {corpus}: {state}; train {n['train']} utterances ({summary.hours['train']:.2f} h), "
        f"dev {n['dev']}, test {n['test']} (dev/test voices unseen in training)"
    )
    return {
        "seconds": round(seconds, 1),
        "cached": summary.cached,
        "num_utterances": n,
        "hours": summary.hours,
    }


def ee_run(preset: DemoPreset, out: Path, corpus: Path, max_steps: int | None) -> RunSpec:
    """The main run: EE training from scratch of the preset's model."""
    model_file = out / "configs" / "model.json"
    atomic_write_text(model_file, json.dumps(preset.model, indent=2) + "\n")
    train = train_config(preset, model_file, corpus)
    if max_steps is not None:
        train["max_steps"] = max_steps
    steps = train["max_steps"]
    return RunSpec("ee", f"EE training from scratch (sum of exit CTC losses), {steps} steps", train)


def train_config(preset: DemoPreset, model_file: str | os.PathLike, corpus: str | os.PathLike) -> dict:
    """The ``wav2vec2-ee train`` arguments of the preset's EE run (``output_dir`` is set per run)."""
    return {**preset.training, **RUN_DEFAULTS, "model": str(model_file), "data": str(corpus)}


def write_config_files(
    configs_dir: str | os.PathLike = "configs", output_dir: str = "demo_out"
) -> list[Path]:
    """Write ``demo[_quick].json`` + ``demo[_quick]_model.json``: the presets' EE runs as train configs.

    ``wav2vec2-ee train configs/demo.json`` then repeats the demo's training (after ``wav2vec2-ee demo``
    or ``make-corpus demo_out/corpus`` built the corpus). Regenerate after changing a preset::

        python -c "from wav2vec2_ee.demo import write_config_files; write_config_files()"
    """
    written = []
    for name, preset in PRESETS.items():
        stem = "demo" if name == "default" else f"demo_{name}"
        root = Path(output_dir) if name == "default" else Path(output_dir) / name
        model_file = Path(configs_dir) / f"{stem}_model.json"
        config = {**train_config(preset, model_file.as_posix(), (root / "corpus").as_posix())}
        config["output_dir"] = (root / "ee").as_posix()
        for path, data in ((model_file, preset.model), (Path(configs_dir) / f"{stem}.json", config)):
            atomic_write_text(path, json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = HfArgumentParser((DemoArguments, DeviceArguments))
    parser.prog = "wav2vec2-ee demo"
    args, device = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    preset, out, corpus = _setup(args)
    timings: dict = {}

    # 1. corpus
    timings["corpus"] = build_demo_corpus(preset, corpus)

    # 2. training from scratch (within what the time budget leaves for it)
    spec = ee_run(preset, out, corpus, args.max_steps)
    train_budget = None
    if args.time_budget and args.time_budget > 0:
        left = 60 * args.time_budget - (time.perf_counter() - start) - preset.evaluation_seconds
        train_budget = max(left, 60.0)
        _say(f"time budget {args.time_budget:g} min: {train_budget:.0f} s for training")
    timings["train"] = train_run(spec, out, overwrite=args.overwrite, time_budget=train_budget)

    # 3. evaluation on the held-out voices
    model_dir, eval_dir = out / spec.name, out / spec.name / "eval"
    result = evaluate_run(
        model_dir,
        eval_dir,
        corpus,
        preset.eval_splits,
        lexicon_beam_size=None if args.no_lexicon else preset.lexicon_beam_size,
        overwrite=args.overwrite,
        lm_order=preset.lm_order,
        lm_weight=preset.lm_weight,
        lm_word_score=preset.lm_word_score,
        device=device.device,
        dtype=device.dtype,
    )
    timings["evaluate"] = {"seconds": result["seconds"]}
    total = time.perf_counter() - start

    # 4. the table and where everything is
    split = preset.eval_splits[0]
    columns = {f"{s} greedy": wer for s, wer in result["greedy"].items()}
    columns.update({f"{s} lexicon": wer for s, wer in result["lexicon"].items()})
    columns.update({f"{s} lexicon+{preset.lm_order}-gram": wer for s, wer in result["lexicon_lm"].items()})
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
    print()
    per_step = timings["train"].get("seconds_per_step")
    _say(
        f"time: corpus {timings['corpus']['seconds']:.0f} s, training {timings['train']['seconds']:.0f} s "
        f"({timings['train']['steps']} steps, {per_step:.2f} s/step), evaluation {result['seconds']:.0f} s; "
        f"total {total:.0f} s"
    )
    _say(f"model:            {model_dir}")
    _say(f"WER per exit:     {eval_dir / 'wer_results.txt'}, {eval_dir / 'wer_results.json'}")
    _say(f"per utterance:    {eval_dir / f'{split}_results.txt'}")
    if result["lexicon"]:
        _say(f"lexicon decoding: {eval_dir / 'posterior_wer' / split}/wer_<layer>.txt")
    if result["lexicon_lm"]:
        _say(
            f"with the LM:      {eval_dir / 'lm' / 'posterior_wer' / split}/wer_<layer>.txt (lm.arpa beside)"
        )
    _say(f"plot:             {eval_dir / 'wer_by_exit.png'}")
    summary = {
        "preset": preset.name,
        "output_dir": str(out),
        "corpus": str(corpus),
        "model_dir": str(model_dir),
        "eval_dir": str(eval_dir),
        "wer": {name: {str(k): v for k, v in by.items()} for name, by in columns.items()},
        "timings": timings,
        "total_seconds": round(total, 1),
        "model_config": preset.model,
        "training": spec.train,
    }
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2) + "\n")
    _say(f"summary:          {out / 'demo_summary.json'}")

    if args.reproduce:
        from .demo_reproduce import run_reproduce

        run_reproduce(preset, out, corpus, spec, overwrite=args.overwrite)
    return 0


__all__ = [
    "DEMO_FINETUNE",
    "DEMO_MODEL",
    "DEMO_TRAINING",
    "PRESETS",
    "DemoArguments",
    "DemoPreset",
    "RunSpec",
    "dkd_alphas",
    "evaluate_run",
    "format_wer_by_exit",
    "main",
    "train_config",
    "train_run",
    "write_config_files",
]

if __name__ == "__main__":
    sys.exit(main())
