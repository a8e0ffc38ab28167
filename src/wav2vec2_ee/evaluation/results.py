"""Result files in the seed's formats, written atomically, and parsers that read them back.

Files of an evaluation output folder (``<split>`` is the split's name, e.g. ``test-clean``):

* ``wer_results.txt``: per split ``split: <name>``, then ``layer_<l> WER: <float>`` per exit
  (``predicted WER: <float>`` for checkpoints without exits), then a blank line.
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

Floats are written with ``repr`` (``str``), so every number reads back exactly.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .metrics import WordErrors

WER_LINE = re.compile(r"^(?P<label>layer_\d+|predicted) WER: (?P<wer>\S+)$")
SPLIT_LINE = re.compile(r"^split: (?P<split>.+)$")
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
# atomic writing


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    A crash or Ctrl-C leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------------
# formatting (the seed's formats)


def format_wer_results(results: Mapping[str, Mapping[str, float]]) -> str:
    """``wer_results.txt``: ``{split: {label: wer}}`` with labels ``layer_<l>`` or ``predicted``."""
    out = []
    for split, wers in results.items():
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


def parse_wer_results(text: str) -> dict[str, dict[str, float]]:
    """Read ``wer_results.txt`` back: ``{split: {label: wer}}`` (also reads the seed's own files)."""
    results: dict[str, dict[str, float]] = {}
    current: dict[str, float] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := SPLIT_LINE.match(line):
            current = results.setdefault(m["split"], {})
        elif (m := WER_LINE.match(line)) and current is not None:
            current[m["label"]] = float(m["wer"])
        else:
            raise ValueError(f"wer_results.txt line {lineno}: unexpected {line!r}")
    return results


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
            raise ValueError(f"results file line {lineno}: unexpected {line!r}")
    return items


def parse_stat_lines(text: str, pattern: re.Pattern) -> list[dict[str, str]]:
    """Per-utterance ``wer_<l>.txt`` lines as dicts of strings (``ENTROPY_WER_LINE`` / ``POSTERIOR_WER_LINE``)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = pattern.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: unexpected {line!r}")
        out.append(m.groupdict())
    return out
