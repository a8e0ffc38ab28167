"""Result files in the seed's formats, written atomically, and parsers that read them back.

Files of an evaluation output folder (``<split>`` is the split's name, e.g. ``test-clean``):

* ``wer_results.txt``: per split ``split: <name>``, then ``layer_<l> WER: <float>`` per exit
  (``predicted WER: <float>`` for checkpoints without exits), then a blank line: the WER of the
  exits' transcripts (greedy, or ``--decoder beam``'s), in the seed's layout. Then the same blocks for
  each other decoder that ran (the lexicon decoder of ``--exit-stats posterior``, with or without a
  word n-gram LM), their split lines naming it: ``split: <name>[lexicon]``,
  ``split: <name>[lexicon+3-gram-LM]`` (:func:`decoder_key`); :func:`parse_wer_results` reads the
  seed's blocks, or one decoder's.
* ``<split>_results.txt``: per utterance ``file: <id>``, ``expected: <reference>``, a tab-indented
  ``layer_<l>: <hypothesis>`` line per exit (``predicted: ...``), then a blank line.
* ``entropy_wer/<split>/entropy_<l>.txt``: per utterance ``<entropy> <wer>``;
  ``entropy_wer/<split>/wer_<l>.txt``: per utterance
  ``expect_len: N pred_len: N hit: N sub: N ins: N del: N wer: F`` (the seed's ``eval_with_entropy.py``).
* ``posterior_wer/<split>/posterior_<l>.txt``: per utterance ``<posterior>``;
  ``posterior_wer/<split>/wer_<l>.txt``: per utterance
  ``expect_len: N pred_len: N hits: N errors: N wer: F`` (the seed's ``eval_posteriors.py``; these
  WERs are those of the lexicon decoder's best hypothesis).
* ``<split>_summary.json``: the split's numbers and settings, written last: the completion marker.
* ``wer_results.json``, ``wer_by_exit.png``: all splits, machine-readable and plotted.
  ``wer_results.*`` and ``wer_by_exit.png`` cover every finished split of the folder that belongs
  with the run that writes them, not only that run's splits (:func:`merge_finished_splits`).
* ``.evaluate.lock``: held by the ``evaluate`` run writing the folder (its pid inside).

Files of ``sweep`` / ``calibrate``: ``<split>_sweep.csv`` / ``.json`` / ``.png`` (operating points),
``<split>_decisions.csv`` (every point's exit layer per utterance), ``<split>_exit_table.jsonl`` (every
exit's outputs per utterance: what the simulation replays), ``calibration_<policy>.json``.

Files of ``transcribe --output``: ``results.jsonl`` / ``results.csv``, one row per file, appended as
files finish, keyed by the file's resolved path (:class:`TranscriptionLog`); ``.<name>.lock`` beside it,
held by the run writing it (its pid inside).

Every result file of the package is formatted and written here, through the one atomic writer of
:mod:`wav2vec2_ee.io` (or, for a log that grows as a run goes, its append-and-flush writer). Floats
are written with ``repr`` (``str``), so every number reads back exactly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ctc.metrics import WordErrors, split_errors, word_errors
from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

WER_LINE = re.compile(r"^(?P<label>layer_\d+|predicted) WER: (?P<wer>\S+)$")
SPLIT_LINE = re.compile(r"^split: (?P<split>.+)$")
#: The split line of another decoder's block in ``wer_results.txt``: ``split: <name>[<decoder key>]``.
DECODER_SPLIT_LINE = re.compile(r"^split: (?P<split>.+)\[(?P<decoder>lexicon[^\]\s]*)\]$")
FILE_LINE = re.compile(r"^file: (?P<file>.*)$")
EXPECTED_LINE = re.compile(r"^expected: ?(?P<text>.*)$")
HYPOTHESIS_LINE = re.compile(r"^\t(?P<label>layer_\d+|predicted): ?(?P<text>.*)$")
ENTROPY_WER_LINE = re.compile(
    r"^expect_len: (?P<expect_len>\d+) pred_len: (?P<pred_len>\d+) hit: (?P<hit>\d+) sub: (?P<sub>\d+) "
    r"ins: (?P<ins>\d+) del: (?P<del>\d+) wer: (?P<wer>\S+)$"
)
POSTERIOR_WER_LINE = re.compile(
    r"^expect_len: (?P<expect_len>\d+) pred_len: (?P<pred_len>\d+) hits: (?P<hits>\d+) "
    r"errors: (?P<errors>\d+) wer: (?P<wer>\S+)$"
)


# --------------------------------------------------------------------------------------------------
# formatting (the seed's formats)


def main_decoder_name(settings: Mapping) -> str:
    """The decoder of the exits' transcripts of an evaluation (a split's settings): ``greedy``, ``beam``
    or ``beam + LM`` (``--decoder beam --kenlm``)."""
    decoder = str(settings.get("decoder", "greedy"))
    return f"{decoder} + LM" if decoder == "beam" and settings.get("kenlm") else decoder


def lexicon_decoder_name(settings: Mapping) -> str:
    """The lexicon decoder of a split's settings (``--exit-stats posterior``): ``lexicon`` (no LM, as
    the seed), ``lexicon + 3-gram LM`` (one estimated from transcripts) or ``lexicon + LM`` (a file)."""
    lm = settings.get("lexicon_lm")
    if not lm:
        return "lexicon"
    order = re.match(r"(\d+)-gram", str(lm))
    return f"lexicon + {order[1]}-gram LM" if order else "lexicon + LM"


def decoder_key(name: str) -> str:
    """A decoder's name as ``wer_results.txt`` writes it in its blocks' split lines, without spaces:
    ``lexicon + 3-gram LM`` -> ``lexicon+3-gram-LM``."""
    return name.replace(" + ", "+").replace(" ", "-")


def format_wer_results(
    results: Mapping[str, Mapping[str, float]],
    decoders: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> str:
    """``wer_results.txt``: ``{split: {label: wer}}`` with labels ``layer_<l>`` or ``predicted`` (the
    seed's blocks), then for each other decoder of ``decoders`` (``{decoder name: {split: {label:
    wer}}}``) its blocks, ``split: <split>[<decoder key>]``."""
    out = []
    blocks = [(split, wers) for split, wers in results.items()]
    for name, by_split in (decoders or {}).items():
        blocks += [(f"{split}[{decoder_key(name)}]", wers) for split, wers in by_split.items()]
    for split, wers in blocks:
        out.append(f"split: {split}\n")
        out += [f"{label} WER: {float(wer)!r}\n" for label, wer in wers.items()]
        out.append("\n")
    return "".join(out)


def format_split_results(
    ids: Sequence[str], references: Sequence[str], hypotheses: Mapping[str, Sequence[str]]
) -> str:
    """``<split>_results.txt``: per utterance its id, reference and one hypothesis line per exit label."""
    out = []
    for i, (utt_id, ref) in enumerate(zip(ids, references)):
        out.append(f"file: {utt_id}\nexpected: {ref}\n")
        out += [f"\t{label}: {hyps[i]}\n" for label, hyps in hypotheses.items()]
        out.append("\n")
    return "".join(out)


def format_entropy_wer_line(reference: str, hypothesis: str, errors: WordErrors) -> str:
    """One line of ``entropy_wer/<split>/wer_<l>.txt`` (the seed's ``eval_with_entropy.py`` format)."""
    return (
        f"expect_len: {len(reference.split())} pred_len: {len(hypothesis.split())} hit: {errors.hits} "
        f"sub: {errors.substitutions} ins: {errors.insertions} del: {errors.deletions} wer: {errors.wer!r}\n"
    )


def format_posterior_wer_line(reference: str, hypothesis: str, errors: WordErrors) -> str:
    """One line of ``posterior_wer/<split>/wer_<l>.txt`` (the seed's ``eval_posteriors.py`` format)."""
    return (
        f"expect_len: {len(reference.split())} pred_len: {len(hypothesis.split())} hits: {errors.hits} "
        f"errors: {errors.errors} wer: {errors.wer!r}\n"
    )


# --------------------------------------------------------------------------------------------------
# parsing


def parse_wer_results(text: str, decoder: str | None = None) -> dict[str, dict[str, float]]:
    """Read ``wer_results.txt`` back: ``{split: {label: wer}}`` of the seed's blocks (also reads the
    seed's own files), or of another decoder's (``decoder``: its name or key, e.g. ``lexicon``)."""
    return parse_decoder_wer_results(text).get(decoder_key(decoder) if decoder else None, {})


def parse_decoder_wer_results(text: str) -> dict[str | None, dict[str, dict[str, float]]]:
    """Every table of ``wer_results.txt``: ``{None: the seed's blocks, decoder key: its blocks}``, each
    ``{split: {label: wer}}``."""
    tables: dict[str | None, dict[str, dict[str, float]]] = {}
    current: dict[str, float] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := DECODER_SPLIT_LINE.match(line):
            current = tables.setdefault(m["decoder"], {}).setdefault(m["split"], {})
        elif m := SPLIT_LINE.match(line):
            current = tables.setdefault(None, {}).setdefault(m["split"], {})
        elif (m := WER_LINE.match(line)) and current is not None:
            current[m["label"]] = float(m["wer"])
        else:
            raise UserError(f"wer_results.txt line {lineno}: unexpected {line!r}")
    return tables


def parse_split_results(text: str) -> list[dict]:
    """Read ``<split>_results.txt`` back: ``[{"file", "expected", "hypotheses": {label: text}}]``."""
    items: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := FILE_LINE.match(line):
            items.append({"file": m["file"], "expected": None, "hypotheses": {}})
        elif (m := EXPECTED_LINE.match(line)) and items:
            items[-1]["expected"] = m["text"]
        elif (m := HYPOTHESIS_LINE.match(line)) and items:
            items[-1]["hypotheses"][m["label"]] = m["text"]
        else:
            raise UserError(f"results file line {lineno}: unexpected {line!r}")
    return items


def parse_stat_lines(text: str, pattern: re.Pattern) -> list[dict[str, str]]:
    """Per-utterance ``wer_<l>.txt`` lines as dicts of strings (``ENTROPY_WER_LINE`` / ``POSTERIOR_WER_LINE``)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = pattern.match(line)
        if m is None:
            raise UserError(f"line {lineno}: unexpected {line!r}")
        out.append(m.groupdict())
    return out


# --------------------------------------------------------------------------------------------------
# writing an evaluation's files

SUMMARY_SUFFIX = "_summary.json"


@dataclass
class UtteranceResult:
    """Everything evaluated for one utterance (per evaluated exit, in exit order): one row of the files."""

    id: str
    reference: str
    hypotheses: list[str]
    entropy: list[float] | None = None
    lexicon_hypotheses: list[str] | None = None
    posterior: list[float] | None = None


def write_split_files(
    output_dir: Path,
    name: str,
    labels: Sequence[str],
    layers: Sequence[int],
    results: Sequence[UtteranceResult],
) -> tuple[list[str], dict]:
    """Write the split's per-utterance files; returns their relative paths and the split's metrics."""
    refs = [r.reference for r in results]
    files = [f"{name}_results.txt"]
    hyps = {label: [r.hypotheses[k] for r in results] for k, label in enumerate(labels)}
    atomic_write_text(output_dir / files[0], format_split_results([r.id for r in results], refs, hyps))
    metrics: dict = {"exits": {}}
    for k, label in enumerate(labels):
        metrics["exits"][label] = {"layer": layers[k], **split_errors(refs, hyps[label]).to_dict()}

    if results and results[0].entropy is not None:
        metrics["mean_entropy"] = {}
        for k, layer in enumerate(layers):
            errors = [word_errors(r.reference, r.hypotheses[k]) for r in results]
            entropy = [r.entropy[k] for r in results]
            folder = Path("entropy_wer", name)
            ent_text = "".join(f"{e!r} {err.wer!r}\n" for e, err in zip(entropy, errors))
            wer_text = "".join(
                format_entropy_wer_line(r.reference, r.hypotheses[k], err) for r, err in zip(results, errors)
            )
            for fname, text in ((f"entropy_{layer}.txt", ent_text), (f"wer_{layer}.txt", wer_text)):
                atomic_write_text(output_dir / folder / fname, text)
                files.append(str(folder / fname))
            metrics["mean_entropy"][labels[k]] = sum(entropy) / len(entropy)

    if results and results[0].posterior is not None:
        metrics["lexicon_beam"], metrics["mean_posterior"] = {}, {}
        for k, layer in enumerate(layers):
            lex_hyps = [r.lexicon_hypotheses[k] for r in results]
            errors = [word_errors(r.reference, h) for r, h in zip(results, lex_hyps)]
            posterior = [r.posterior[k] for r in results]
            folder = Path("posterior_wer", name)
            post_text = "".join(f"{p!r}\n" for p in posterior)
            wer_text = "".join(
                format_posterior_wer_line(r.reference, h, e) for r, h, e in zip(results, lex_hyps, errors)
            )
            for fname, text in ((f"posterior_{layer}.txt", post_text), (f"wer_{layer}.txt", wer_text)):
                atomic_write_text(output_dir / folder / fname, text)
                files.append(str(folder / fname))
            metrics["lexicon_beam"][labels[k]] = {"layer": layer, **split_errors(refs, lex_hyps).to_dict()}
            metrics["mean_posterior"][labels[k]] = sum(posterior) / len(posterior)
    return files, metrics


def _read_summary(marker: Path) -> dict | None:
    try:
        summary = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def _files_exist(output_dir: Path, summary: dict) -> bool:
    return all((output_dir / f).is_file() for f in summary.get("files", []))


def completed_summary(output_dir: Path, name: str, settings: dict) -> dict | None:
    """The split's summary when a previous run completed it with the same settings and its files exist."""
    marker = output_dir / f"{name}{SUMMARY_SUFFIX}"
    if not marker.is_file():
        return None
    summary = _read_summary(marker)
    if summary is None or summary.get("settings") != settings:
        return None
    if not _files_exist(output_dir, summary):
        return None
    return summary


#: Settings in which the splits of one overview (``wer_results.*``, ``wer_by_exit.png``) may differ:
#: the split and where it was read from, and the optional per-split statistics (exit statistics and the
#: lexicon decoder: ``mean_entropy``, ``lexicon_beam``, ``mean_posterior``, each described by the
#: split's own summary). Every other setting must be equal: the checkpoint (its resolved path), the
#: exits (labels and layers), the decoder and its options, the precision, the text normalisation; so
#: the overview's WER table compares like with like.
PER_SPLIT_SETTINGS = frozenset(
    {"split", "data", "exit_stats", "nbest", "lexicon_beam_size", "word_score", "lexicon", "lexicon_lm",
     "lexicon_lm_weight"}
)  # fmt: skip


def overview_settings(settings: Mapping) -> dict:
    """The part of a split's settings that all splits of one overview share (:data:`PER_SPLIT_SETTINGS`)."""
    return {k: v for k, v in settings.items() if k not in PER_SPLIT_SETTINGS}


def merge_finished_splits(
    output_dir: Path, settings: Mapping, summaries: Mapping[str, dict]
) -> dict[str, dict]:
    """This run's ``summaries`` plus the splits that earlier runs finished in ``output_dir`` and that belong
    in the same overview: a ``<split>_summary.json`` that reads, whose files all exist, and whose
    :func:`overview_settings` equal those of ``settings`` (this run's, any split's). Others (another
    checkpoint, other exits or decoder, files deleted) are left out with a warning that says why; their
    files stay.

    Order: that of the previous ``wer_results.json``, then the other earlier splits by name, then this
    run's new ones in run order; a split of this run replaces its earlier result in place.
    """
    wanted = json.loads(json.dumps(overview_settings(settings)))  # as the summaries store it
    labels = wanted.get("labels", [])
    earlier: dict[str, dict] = {}
    for marker in sorted(output_dir.glob(f"*{SUMMARY_SUFFIX}")):
        name = marker.name[: -len(SUMMARY_SUFFIX)]
        if name in summaries:
            continue
        summary = _read_summary(marker)
        if summary is not None and (summary.get("split") != name or "settings" not in summary):
            continue  # another command's file (training's run_summary.json), not a split's
        exits = summary.get("exits") if summary is not None else None
        if summary is None or not isinstance(summary["settings"], dict) or not isinstance(exits, dict):
            reason = "its summary cannot be read"
        elif overview_settings(summary["settings"]) != wanted:
            theirs = overview_settings(summary["settings"])
            differ = sorted(k for k in wanted.keys() | theirs.keys() if wanted.get(k) != theirs.get(k))
            reason = f"evaluated with other settings: {', '.join(differ)}"
        elif not all(isinstance(exits.get(label), dict) and "wer" in exits[label] for label in labels):
            reason = "its summary lacks the WER of some exits"
        elif not _files_exist(output_dir, summary):
            reason = "some of its files are missing"
        else:
            earlier[name] = summary
            continue
        logger.warning("%s: left out of wer_results in %s (%s)", name, output_dir, reason)
    previous = _read_summary(output_dir / "wer_results.json") or {}
    previous_splits = previous.get("splits")
    order = (
        [n for n in previous_splits if n in earlier or n in summaries]
        if isinstance(previous_splits, dict)
        else []
    )
    order += [n for n in earlier if n not in order]
    order += [n for n in summaries if n not in order]
    return {n: summaries[n] if n in summaries else earlier[n] for n in order}


def write_overview(
    output_dir: Path,
    checkpoint: str | os.PathLike,
    has_exits: bool,
    layers: Sequence[int],
    labels: Sequence[str],
    summaries: Mapping[str, dict],
) -> dict:
    """Write ``wer_results.txt`` and ``wer_results.json`` for all ``summaries`` (split name ->
    ``<split>_summary.json`` content); returns the JSON's content: besides each split's numbers, the
    decoder of the exits' transcripts (``decoder``: :func:`main_decoder_name`) and, for a split
    evaluated with the lexicon decoder too (``lexicon_beam``), its name (``lexicon_decoder``:
    :func:`lexicon_decoder_name`)."""
    wers = {name: {label: s["exits"][label]["wer"] for label in labels} for name, s in summaries.items()}
    splits = {}
    for name, s in summaries.items():
        split = {
            k: s[k]
            for k in ("utterances", "exits", "lexicon_beam", "mean_entropy", "mean_posterior")
            if k in s
        }
        if "lexicon_beam" in s:
            split["lexicon_decoder"] = lexicon_decoder_name(s.get("settings", {}))
        splits[name] = split | {"skipped": len(s.get("skipped", []))}
    overview = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "has_exits": has_exits,
        "layers": list(layers),
        "labels": list(labels),
        "decoder": main_decoder_name(next(iter(summaries.values()), {}).get("settings", {})),
        "splits": splits,
    }
    atomic_write_text(output_dir / "wer_results.txt", format_wer_results(wers, decoder_tables(overview)))
    atomic_write_json(output_dir / "wer_results.json", overview)
    return overview


def decoder_tables(overview: Mapping) -> dict[str, dict[str, dict[str, float]]]:
    """The WER tables of an overview's other decoders: ``{decoder name: {split: {label: wer}}}``, in the
    order the splits first name them (the lexicon decoder, with its LM if any)."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for name, split in overview["splits"].items():
        if "lexicon_beam" in split:
            decoder = split.get("lexicon_decoder", "lexicon")
            tables.setdefault(decoder, {})[name] = {lb: v["wer"] for lb, v in split["lexicon_beam"].items()}
    return tables


def format_table(wers: Mapping[str, Mapping[str, float]], labels: Sequence[str], title: str = "") -> str:
    """A split x exit table of WER in percent (``title``: what its first cell says after ``WER (%)``,
    e.g. the decoder)."""
    corner = f"WER (%) {title}" if title else "WER (%)"
    width = max([len(corner)] + [len(n) for n in wers])
    cols = [max(7, len(label)) for label in labels]
    lines = [corner.ljust(width) + "".join(f"  {lb:>{c}}" for lb, c in zip(labels, cols))]
    for name, by_label in wers.items():
        lines.append(
            name.ljust(width) + "".join(f"  {100 * by_label[lb]:>{c}.2f}" for lb, c in zip(labels, cols))
        )
    return "\n".join(lines)


def format_overview_table(overview: Mapping) -> str:
    """:func:`format_table` of an overview (``wer_results.json``'s content, what
    :func:`~.evaluate.evaluate_checkpoint` returns): its splits x its exits, for the exits' transcripts
    (greedy or beam), then for each other decoder that ran (:func:`decoder_tables`), each table's first
    cell naming its decoder when there is more than one."""
    labels = list(overview["labels"])
    wers = {
        name: {label: split["exits"][label]["wer"] for label in labels}
        for name, split in overview["splits"].items()
    }
    others = decoder_tables(overview)
    tables = [format_table(wers, labels, overview.get("decoder", "greedy") if others else "")]
    for decoder, by_split in others.items():
        tables.append(format_table(by_split, labels, decoder))
    return "\n\n".join(tables)


# --------------------------------------------------------------------------------------------------
# sweep and calibrate files

#: Columns of ``<split>_sweep.csv``, one row per operating point.
SWEEP_CSV_COLUMNS = (
    "policy",
    "parameter",
    "value",
    "max_layer",
    "wer",
    "errors",
    "reference_words",
    "utterances",
    "mean_exit_layer",
    "mean_layers_computed",
    "depth_fraction",
    "wall_seconds",
    "wall_relative",
    "wall_relative_engine",
    "engine_wer",
    "engine_mean_layers",
    "pareto_layers",
    "pareto_wall",
    "exit_counts",
)


def format_points_csv(points: Sequence) -> str:
    """``<split>_sweep.csv``: one row per operating point (``OperatingPoint.to_dict()``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SWEEP_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in points:
        row = p.to_dict()
        row["exit_counts"] = " ".join(f"{k}:{v}" for k, v in p.exit_counts.items())
        writer.writerow({k: "" if row[k] is None else row[k] for k in SWEEP_CSV_COLUMNS})
    return buffer.getvalue()


def format_decisions_csv(ids: Sequence[str], labels: Sequence[str], layers: Sequence[Sequence[int]]) -> str:
    """``<split>_decisions.csv``: per utterance, the exit layer of every operating point (``labels``,
    ``layers[j][i]`` = layer of point ``j`` for utterance ``i``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", *labels])
    for i, utt in enumerate(ids):
        writer.writerow([utt, *[col[i] for col in layers]])
    return buffer.getvalue()


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """One JSON object per line (the exit tables: every simulated number traces back to them)."""
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def save_figure(fig, path: str | os.PathLike) -> None:
    """A matplotlib figure as a PNG file, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
