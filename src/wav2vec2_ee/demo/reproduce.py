"""`wav2vec2-ee demo --reproduce`: the seed's result table, re-run on the synthetic corpus.

Rows, as in the seed's ``wer_results`` (see ``reproduce.md`` for the budgets actually used):

* the pretrained CTC base read at every exit layer through its final head (the seed's first row,
  ``wav2vec2-base-960h`` without early-exit training);
* EE fine-tuning of the base (the demo's model);
* starting from the EE model, like the seed's fine-tuning runs: EE + KD (``ee_alpha`` 0.3, the
  objective's default, the EE model as the frozen teacher), EE + dynamic KD (one ``ee_alpha`` per exit, see
  :func:`~wav2vec2_ee.demo.presets.dkd_alphas`), confidence-weighted CTC (inverse and not), manual exit
  activation with one exit (plain and with inverse confidence);
* baselines without exits: the base truncated to its first N layers (``num_hidden_layers``; N = 2, 4,
  ... each exit layer) and fine-tuned with CTC at that last layer, with the EE run's budget.

Every run is skipped when its final model exists (``demo_run.json`` in its folder), and every
evaluation when its result files exist, so an interrupted reproduction resumes where it stopped. A
failed run costs only its row; :func:`run_reproduce` then returns 1, the exit status of the command.
"""

from __future__ import annotations

import gc
import json
import logging
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from ..io import atomic_write_text
from ..objectives import DEFAULT_KD_ALPHA
from .presets import DemoPreset, dkd_alphas
from .runs import RunSpec, evaluate_run, say, show, train_run

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What one row of the table needs."""

    spec: RunSpec
    wer: dict[str, dict[str, dict[int, float]]] | None = None  # decoder -> split -> layer -> WER
    timing: dict | None = None
    eval_seconds: float | None = None
    error: str | None = None


def reproduce_runs(preset: DemoPreset, ee: RunSpec, ee_dir: Path) -> tuple[list[RunSpec], list[RunSpec]]:
    """The runs of the table after the EE run: those starting from the EE model, and the baselines
    (the EE run's base, ``ee.train["model"]``, truncated)."""
    exit_layers = list(preset.model["exit_layers"])
    finetune = {**ee.train, **preset.finetune, "model": str(ee_dir)}
    n = finetune["max_steps"]
    alphas = dkd_alphas(len(exit_layers))
    start = f"+{n} steps from EE"
    from_ee = [
        RunSpec(
            "kd",
            f"EE + KD, ee_alpha {DEFAULT_KD_ALPHA:g} (teacher: the EE model), {start}",
            {**finetune, "objective": "kd", "ee_alpha": [DEFAULT_KD_ALPHA], "teacher": str(ee_dir)},
        ),
        RunSpec(
            "dkd",
            f"EE + dynamic KD, ee_alpha [{', '.join(f'{a:.2f}' for a in alphas)}], {start}",
            {**finetune, "objective": "dkd", "ee_alpha": alphas},
        ),
        RunSpec(
            "confidence_inverse",
            f"confidence-weighted CTC, inverse, {start}",
            {**finetune, "objective": "confidence", "inverse_confidence": True},
        ),
        RunSpec(
            "confidence",
            f"confidence-weighted CTC, not inverse, {start}",
            {**finetune, "objective": "confidence", "inverse_confidence": False},
        ),
        RunSpec(
            "manual_activation_1",
            f"manual exit activation, num_exits=1, {start}",
            {**finetune, "objective": "ee", "num_exits": 1},
        ),
        RunSpec(
            "manual_activation_1_confidence",
            f"manual activation + inverse confidence, num_exits=1, {start}",
            {**finetune, "objective": "confidence", "num_exits": 1, "inverse_confidence": True},
        ),
    ]
    baselines = [
        RunSpec(
            f"non-ee_{layers}layer",
            f"{layers} layers",
            {**ee.train, "objective": "ee", "num_hidden_layers": layers, "exit_layers": [layers]},
        )
        for layers in exit_layers
    ]
    return from_ee, baselines


def _cell(wer: dict[str, dict[int, float]] | None, layer: int, splits: tuple[str, ...]) -> str:
    if wer is None:
        return "failed"
    values = [wer.get(s, {}).get(layer) for s in splits]
    if all(v is None for v in values):
        return "-"
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def format_reproduce_table(
    rows: list[RunResult],
    baselines: list[RunResult],
    exit_layers: list[int],
    splits: tuple[str, ...],
    decoder: str = "greedy",
) -> str:
    """Markdown in the layout of the seed's ``seed-results.md``: a run x exit table, then the baselines.

    Cells are ``<split 1> / <split 2>`` WERs in percent, decoded with ``decoder`` (a key of
    :attr:`RunResult.wer`).
    """
    lines = ["| run | " + " | ".join(f"layer {x}" for x in exit_layers) + " |"]
    lines.append("|---|" + "---|" * len(exit_layers))
    for r in rows:
        label = r.spec.label + (f" ({r.error})" if r.error else "")
        wer = None if r.wer is None else r.wer.get(decoder, {})
        lines.append(f"| {label} | " + " | ".join(_cell(wer, x, splits) for x in exit_layers) + " |")
    lines += ["", "Baselines without early exits, trained with N encoder layers (final layer only):", ""]
    lines.append("| layers | " + " | ".join(splits) + " |")
    lines.append("|---|" + "---|" * len(splits))
    for r in baselines:
        layers = int(r.spec.train["num_hidden_layers"])
        wer = None if r.wer is None else r.wer.get(decoder, {})
        cells = [_cell(wer, layers, (s,)) for s in splits]
        lines.append(f"| {layers} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_findings(
    rows: list[RunResult],
    baselines: list[RunResult],
    exit_layers: list[int],
    split: str,
    decoder: str = "greedy",
) -> str:
    """The seed's qualitative findings, each checked on this table (``decoder`` WERs on ``split``):
    a markdown list whose items say *holds* or *does not hold* with the numbers behind the verdict.

    ``rows``: the base read through its final head first, then the EE run, then the runs from it (found
    by name: ``kd``, ``dkd``, ``confidence_inverse``, ``confidence``, ``manual_activation_1``);
    ``baselines``: the N-layer runs. A finding whose runs failed or are missing is said so.
    """
    by_name = {r.spec.name: r for r in rows}
    base, ee = rows[0], rows[1]

    def wer(run: RunResult | None, layer: int) -> float | None:
        if run is None or run.wer is None:
            return None
        return run.wer.get(decoder, {}).get(split, {}).get(layer)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    def verdict(ok: bool) -> str:
        return "**holds**" if ok else "**does not hold**"

    first = exit_layers[0]
    items = []
    b, e = wer(base, first), wer(ee, first)
    if b is None or e is None:
        items.append("Shallow exits are usable only after EE training: not measured (a run failed).")
    else:
        items.append(
            f"Shallow exits are usable only after EE training (the base at layer {first}: {pct(b)}, the EE "
            f"model: {pct(e)}; the seed: ~100 % against 31-34 %): {verdict(e <= 0.5 * b)} (EE at most half "
            f"the base's WER: {e / b:.2f}x)."
        )
    refined = [
        n for n in ("kd", "dkd", "confidence_inverse", "confidence") if wer(by_name.get(n), first) is not None
    ]
    if e is None or not refined:
        items.append("Refinements help shallow exits: not measured (a run failed).")
    else:
        better = [n for n in refined if wer(by_name[n], first) < e]
        cells = ", ".join(f"{n} {pct(wer(by_name[n], first))}" for n in refined)
        items.append(
            f"The refinements (KD, DKD, confidence) help the shallow exits (layer {first}: EE {pct(e)}; {cells}): "
            f"{verdict(len(better) > len(refined) / 2)} ({len(better)} of {len(refined)} below EE)."
        )
    manual = by_name.get("manual_activation_1")
    m_first = wer(manual, first)
    rivals = [wer(r, first) for r in rows[1:] if r is not manual and not r.spec.name.startswith("manual")]
    rivals = [v for v in rivals if v is not None]
    deeper = [(x, wer(manual, x), wer(ee, x)) for x in exit_layers[1:]]
    if m_first is None or not rivals or any(m is None or v is None for _, m, v in deeper):
        items.append(
            "Manual activation with N=1 wins layer 2 and loses the rest: not measured (a run failed)."
        )
    else:
        wins = m_first <= min(rivals)
        loses = all(m > v for _, m, v in deeper)
        cells = ", ".join(f"layer {x}: {pct(m)} vs EE {pct(v)}" for x, m, v in deeper)
        items.append(
            f"Manual activation with N=1 (only the first exit trained) wins layer {first} ({pct(m_first)}, best of "
            f"the other runs {pct(min(rivals))}) and loses the rest ({cells}): {verdict(wins and loses)}."
        )
    pairs = [(x, wer(ee, x), next((wer(r, x) for r in baselines if int(r.spec.train["num_hidden_layers"]) == x), None))
             for x in exit_layers]  # fmt: skip
    pairs = [(x, v, n) for x, v, n in pairs if v is not None and n is not None]
    if not pairs:
        items.append("EE exit k against the k-layer baseline: not measured (a run failed).")
    else:
        cells = ", ".join(f"layer {x}: EE {pct(v)} vs {pct(n)}" for x, v, n in pairs)
        worse = [x for x, v, n in pairs if v > n]
        items.append(
            f"EE exit k is close to (the seed: slightly worse than) a model trained with k layers ({cells}): "
            + (
                f"EE is worse at {len(worse)} of {len(pairs)} exits, by at most "
                f"{100 * max(v - n for _, v, n in pairs):.1f} points."
                if worse
                else "EE is at least as good at every exit."
            )
        )
    return "\n".join(f"- {item}" for item in items)


def _error(err: Exception) -> str:
    return f"failed: {type(err).__name__}: {err}".splitlines()[0][:200]


def _evaluate(
    result: RunResult,
    model_dir: Path,
    corpus: Path,
    preset: DemoPreset,
    overwrite: bool,
    eval_dir: Path | None = None,
    exits: list[int] | None = None,
) -> None:
    """Evaluate ``model_dir`` into ``eval_dir`` (default ``<model_dir>/eval``) at ``exits`` (default its
    own exits; a plain CTC checkpoint's layers read through its final head)."""
    evaluated = evaluate_run(
        model_dir,
        eval_dir or model_dir / "eval",
        corpus,
        preset.reproduce_splits,
        preset.decoding(),
        overwrite=overwrite,
        exits=exits,
    )
    result.wer = {
        "greedy": evaluated["greedy"],
        "lexicon": evaluated["lexicon"],
        "lexicon_lm": evaluated["lexicon_lm"],
    }
    result.eval_seconds = evaluated["seconds"]


def _run_one(
    spec: RunSpec, out: Path, corpus: Path, preset: DemoPreset, overwrite: bool, progress: bool = True
) -> RunResult:
    result = RunResult(spec)
    try:
        result.timing = train_run(spec, out, overwrite=overwrite, progress=progress)
        _evaluate(result, out / spec.name, corpus, preset, overwrite)
    except Exception as err:  # one failed run must not cost the others: it is reported in the table
        logger.error("%s failed:\n%s", spec.name, traceback.format_exc())
        result.error = _error(err)
        say(f"{spec.name}: {result.error}")
    gc.collect()
    return result


def _train_all(
    preset: DemoPreset, out: Path, corpus: Path, ee: RunSpec, overwrite: bool, progress: bool = True
) -> tuple[list[RunResult], list[RunResult]]:
    """Train and evaluate the EE run, the runs starting from its model and the baselines (finished ones
    are skipped); returns the rows (the EE run first) and the baselines.

    When a time budget cut the EE run short, its row says how far it went and the baselines get as
    many steps.
    """
    runs_dir = out / "reproduce"
    from_ee, baseline_specs = reproduce_runs(preset, ee, out / ee.name)
    say(
        f"reproduce: {1 + len(from_ee) + len(baseline_specs)} runs into {runs_dir} "
        "(finished runs are skipped; rerun to resume)"
    )
    ee_result = _run_one(ee, out, corpus, preset, overwrite, progress)
    ee_steps = (ee_result.timing or {}).get("steps")
    if ee_steps and ee_steps < ee.train["max_steps"]:
        planned = f"{ee.train['max_steps']} steps"
        ee_result.spec = replace(ee, label=ee.label.replace(planned, f"{ee_steps} of {planned}"))
        say(f"reproduce: baselines trained for the EE run's {ee_steps} steps (its time budget)")
        baseline_specs = [replace(b, train={**b.train, "max_steps": ee_steps}) for b in baseline_specs]
    rows = [ee_result] + [_run_one(spec, runs_dir, corpus, preset, overwrite, progress) for spec in from_ee]
    baselines = [_run_one(spec, runs_dir, corpus, preset, overwrite, progress) for spec in baseline_specs]
    return rows, baselines


def _base_row(base: Path, corpus: Path, preset: DemoPreset, out: Path, overwrite: bool) -> RunResult:
    """The seed's first row: the pretrained base read at every exit layer through its final head."""
    row = RunResult(
        RunSpec(
            "base_read_through",
            "pretrained CTC base, no early-exit training (exits read through its final head)",
            {"model": str(base)},
        )
    )
    try:
        eval_dir = out / "reproduce" / row.spec.name / "eval"
        _evaluate(row, base, corpus, preset, overwrite, eval_dir, list(preset.model["exit_layers"]))
    except Exception as err:
        logger.error("evaluation of the base failed:\n%s", traceback.format_exc())
        row.error = _error(err)
    return row


def _notes(preset: DemoPreset, all_runs: list[RunResult], runs_dir: Path, seconds: float) -> str:
    """The budgets and the list of runs under the tables (``all_runs[0]`` is the EE run)."""
    ee = all_runs[0].spec.train
    ee_steps = (all_runs[0].timing or {}).get("steps")
    per_run = "\n".join(
        f"- `{r.spec.name}`: "
        + (
            f"{r.timing['steps']} steps, {r.timing['seconds']:.0f} s training"
            f" ({r.timing['seconds_per_step']:.2f} s/step){' (from an earlier run)' if r.timing.get('cached') else ''}"
            if r.timing
            else r.error or "-"
        )
        for r in all_runs
    )
    ft = preset.finetune
    trained = [r.timing for r in all_runs if r.timing]
    total = sum(t["seconds"] for t in trained) / 60
    earlier = sum(1 for t in trained if t.get("cached"))
    elapsed = f"this command {seconds / 60:.1f} min; the runs' training {total:.1f} min in all" + (
        f", {earlier} of them in an earlier invocation" if earlier else ""
    )
    return (
        "Budgets: the EE run and the baselines fine-tune the pretrained base with the same schedule "
        f"({ee_steps or ee['max_steps']} steps, batch {ee['per_device_train_batch_size']}, peak learning rate "
        f"{ee['learning_rate']}); the KD, DKD, confidence and manual-activation runs start from the EE model "
        f"(as the seed's started from its EE fine-tuned model) and train {ft['max_steps']} more steps at "
        f"peak learning rate {ft['learning_rate']}. The baselines are the base truncated to N layers (its final "
        "head on layer N), as the seed's N-layer models.\n\n"
        f"Runs (folders under `{runs_dir}`, train configs under `{runs_dir / 'configs'}`; {elapsed}):"
        f"\n\n{per_run}"
    )


def _report(
    preset: DemoPreset,
    corpus: Path,
    rows: list[RunResult],
    baselines: list[RunResult],
    runs_dir: Path,
    seconds: float,
) -> str:
    """``reproduce.md``: the header, one table per decoder, the notes (``rows[1]`` is the EE run)."""
    splits = preset.reproduce_splits
    exit_layers = list(preset.model["exit_layers"])
    header = (
        "# Reproduction of the seed's results on the synthetic eSpeak NG corpus\n\n"
        f"Word error rates (%) on the held-out voices of the corpus `{corpus}`: "
        f"{' / '.join(splits)} (voices never heard in training). Model: the demo's pretrained CTC "
        f"base ({preset.model['num_hidden_layers']} layers, hidden size "
        f"{preset.model['hidden_size']}, `wav2vec2-ee demo --build-base`) fine-tuned on this CPU; exits after layers "
        f"{', '.join(map(str, exit_layers))}."
    )
    parts = [
        header,
        "",
        "## Greedy decoding",
        "",
        format_reproduce_table(rows, baselines, exit_layers, splits),
    ]
    if preset.lexicon_beam_size:
        parts += [
            "",
            f"## Lexicon-constrained beam search (words of the training transcripts, beam "
            f"{preset.lexicon_beam_size}, no language model)",
            "",
            format_reproduce_table(rows, baselines, exit_layers, splits, "lexicon"),
        ]
        if preset.lm_order:
            parts += [
                "",
                f"## The same search with a Kneser-Ney {preset.lm_order}-gram model of the training transcripts "
                f"(weight {preset.lm_weight}, word score {preset.lm_word_score}, chosen on dev for the EE model)",
                "",
                format_reproduce_table(rows, baselines, exit_layers, splits, "lexicon_lm"),
            ]
    parts += [
        "",
        f"## The seed's findings, checked here (greedy, {splits[0]})",
        "",
        format_findings(rows, baselines, exit_layers, splits[0]),
    ]
    notes = _notes(preset, [*rows[1:], *baselines], runs_dir, seconds)
    return "\n".join([*parts, "", notes, ""])


def run_reproduce(
    preset: DemoPreset,
    out: Path,
    corpus: Path,
    ee: RunSpec,
    base: Path,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Train and evaluate every run of the table (skipping finished ones); write ``reproduce.md`` and
    ``reproduce.json``. ``base``: the pretrained model ``ee`` fine-tunes; ``progress=False``: no
    Trainer progress bars.

    Returns 0, or 1 when a run failed (its row says why; rerunning retries only the unfinished runs).
    """
    start = time.perf_counter()
    runs_dir = out / "reproduce"
    rows, baselines = _train_all(preset, out, corpus, ee, overwrite, progress)
    rows.insert(0, _base_row(base, corpus, preset, out, overwrite))
    seconds = time.perf_counter() - start
    text = _report(preset, corpus, rows, baselines, runs_dir, seconds)
    atomic_write_text(out / "reproduce.md", text)
    record = {
        "splits": list(preset.reproduce_splits),
        "exit_layers": list(preset.model["exit_layers"]),
        "rows": [
            {"name": r.spec.name, "label": r.spec.label, "wer": r.wer, "timing": r.timing, "error": r.error}
            for r in rows + baselines
        ],
        "seconds": round(seconds, 1),
    }
    atomic_write_text(out / "reproduce.json", json.dumps(record, indent=2) + "\n")
    show(f"\n{text}")
    say(f"reproduction table: {out / 'reproduce.md'} (and reproduce.json)")
    failed = [r.spec.name for r in rows + baselines if r.error]
    if failed:
        say(
            f"reproduce: {len(failed)} of {len(rows + baselines)} rows failed ({', '.join(failed)}); rerun to retry"
        )
    return 1 if failed else 0
