"""The server's model side: a batch of pieces of several requests, each with its own exit policy, run by the
one early-exit engine (:class:`~wav2vec2_ee.inference.Transcriber`'s batch step, so that a piece served
here is transcribed exactly as ``transcribe`` would).

:class:`BatchPolicy` is the exit policy of a mixed batch: each row carries the policy of its request
(the operating point in force when the batch formed, or the request's own ``threshold`` / ``max_layer``)
and the rows of one policy decide together; a row stops at its policy's decision or its policy's deepest
exit; a cancelled request's rows stop at the next exit; a traced row (the page's "every exit", the sampled
accuracy check) records the exit its policy chose, with that exit's transcript, score and time, and runs
on to the last exit, recording every exit's transcript on the way. Rows that exit leave the batch (the
engine drops them), so an easy utterance never waits for the layers a hard one needs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLING_RATE
from ..errors import UserError
from ..export.runtime import MANIFEST, read_manifest
from ..inference.chunking import pad_to_length
from ..inference.policies import STATISTICS, ExitView
from ..inference.transcriber import Transcriber
from ..policy_core import (
    WEIGHTS_FINGERPRINT,
    ExitPolicy,
    FixedExit,
    check_max_layer,
    policy_with_value,
    weights_fingerprint,
)
from ..segmentation import SplitOptions
from ..timestamps import Word
from .controller import ServePoint
from .scheduler import RequestOptions, WorkItem

logger = logging.getLogger(__name__)


@dataclass
class PieceAnswer:
    """What the model said of one piece.

    Args:
        text: the transcript served (the greedy transcript of the exit the policy chose).
        exit_layer: that exit's layer; layers: transformer layers run for the piece (a traced piece ran
            them all).
        score: the policy's statistic at that exit (mean frame entropy, max-probability, the learned
            score; ``None`` for a policy without one).
        seconds: the piece's share of its batch's compute.
        exit_seconds: seconds from the batch's start until the served exit's answer.
        full_seconds: traced: seconds from the batch's start until the last exit's answer.
        exits: traced: ``{layer: transcript}`` at every exit.
        words: the served transcript's words, timed (when asked for; not for a traced piece).
    """

    text: str
    exit_layer: int
    layers: int
    score: float | None
    seconds: float
    exit_seconds: float
    full_seconds: float | None = None
    exits: dict[int, str] | None = None
    words: list[Word] | None = None

    @property
    def last_text(self) -> str | None:
        """Traced: the last exit's transcript."""
        return self.exits[max(self.exits)] if self.exits else None


@dataclass
class _Row:
    policy: ExitPolicy
    deepest: int  # the policy's deepest exit (index into the exit layers)
    trace: bool
    item: WorkItem | None = None

    @property
    def cancelled(self) -> bool:
        return self.item is not None and self.item.job.cancelled


@dataclass
class _Served:
    exit_index: int
    layer: int
    score: float | None
    time: float
    text: str | None = None


def _score_statistic(policy: ExitPolicy) -> str | None:
    """The view statistic that is a policy's score (a threshold policy's; the learned score too)."""
    return getattr(policy.base_policy, "statistic", None)


class BatchPolicy(ExitPolicy):
    """The exit policy of a batch whose rows carry their own policies (module docstring)."""

    name = "batch"

    def __init__(self, rows: Sequence[_Row], exit_layers: Sequence[int], trace_to: int | None = None):
        self.rows = list(rows)
        self.exit_layers = list(exit_layers)
        #: the exit a traced row runs to (the operator's deepest; default the last)
        self.trace_to = len(self.exit_layers) - 1 if trace_to is None else int(trace_to)
        self.served: list[_Served | None] = [None] * len(self.rows)
        self.exits: list[dict[int, str]] = [{} for _ in self.rows]

    def deepest_exit(self, exit_layers: Sequence[int]) -> int:
        return max(self.trace_to if row.trace else row.deepest for row in self.rows)

    def should_exit(self, history: Sequence[ExitView]) -> torch.Tensor:
        view = history[-1]
        k = view.exit_index
        now = time.perf_counter()
        rows = view.rows.tolist()
        stop = np.zeros(len(rows), dtype=bool)
        groups: dict[int, list[int]] = {}
        for pos, row in enumerate(rows):
            plan = self.rows[row]
            if plan.cancelled:
                stop[pos] = True
            elif self.served[row] is None:
                groups.setdefault(id(plan.policy), []).append(pos)
        traced = [pos for pos, row in enumerate(rows) if self.rows[row].trace and not stop[pos]]
        if traced:
            texts = view.select(torch.tensor(traced)).stat("transcripts")
            for pos, text in zip(traced, texts):
                self.exits[rows[pos]][view.layer] = text
        for positions in groups.values():
            policy = self.rows[rows[positions[0]]].policy
            sub = [v.select(torch.tensor(positions)) for v in history]
            decision = torch.as_tensor(policy.should_exit(sub)).to("cpu", torch.bool).numpy()
            statistic = _score_statistic(policy)
            scores = sub[-1].host(sub[-1].stat(statistic)) if statistic is not None else None
            for j, pos in enumerate(positions):
                row = rows[pos]
                if decision[j] or k >= self.rows[row].deepest:
                    score = None if scores is None else float(scores[j])
                    self.served[row] = _Served(k, view.layer, score, now, self.exits[row].get(view.layer))
                    stop[pos] = not self.rows[row].trace
        return torch.from_numpy(stop)


def is_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by ``wav2vec2-ee export`` (its ``export.json``)."""
    return (Path(folder) / MANIFEST).is_file()


def model_fingerprint(folder: str | os.PathLike) -> str | None:
    """The weights fingerprint a saved policy is checked against: a checkpoint's weights, or the one an
    export recorded of its source."""
    if is_export(folder):
        return read_manifest(folder).get(WEIGHTS_FINGERPRINT)
    return weights_fingerprint(folder)


def load_transcriber(
    folder: str | os.PathLike,
    backend: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
    split: SplitOptions | None = None,
) -> Transcriber:
    """The :class:`~wav2vec2_ee.inference.Transcriber` of a checkpoint folder (``backend`` torch) or an
    export folder (onnxruntime; ``None``: whichever the folder is). Its policy is the server's business
    (:class:`BatchPolicy`); a folder that is neither is refused in one line."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(
            f"{folder}: no such model folder (a checkpoint folder or a `wav2vec2-ee export` folder)"
        )
    exported = is_export(path)
    backend = backend or ("onnxruntime" if exported else "torch")
    if backend == "onnxruntime" and not exported:
        raise UserError(
            f"{folder}: --backend onnxruntime needs a folder written by `wav2vec2-ee export` (no {MANIFEST})"
        )
    if backend == "torch" and exported:
        raise UserError(f"{folder}: an export folder: serve it with --backend onnxruntime")
    if backend == "torch" and not (path / "config.json").is_file():
        raise UserError(f"{folder}: not a checkpoint folder (no config.json)")
    common = dict(split=split if split is not None else SplitOptions(), max_seconds=None)
    if backend == "onnxruntime":
        return Transcriber.from_export(path, FixedExit(), precision, **common)
    return Transcriber.from_pretrained(path, FixedExit(), device=device, dtype=dtype, **common)


class ServingEngine:
    """Runs batches of pieces for the :class:`~.scheduler.Scheduler`: ``run(items, point_index)``.

    Args:
        transcriber: the model, its processor and its batch step (greedy text, no lexicon search).
        points: the operating points (:class:`~.controller.ServePoint`), built into policies once.
        override_policy: the policy a request's ``threshold`` is a value of (``None``: none may be set).
        override_fitted: that policy's fitted arguments.
        max_layer: the operator's deepest layer (a traced piece runs to it; ``None``: the last exit).
    """

    def __init__(
        self,
        transcriber: Transcriber,
        points: Sequence[ServePoint],
        override_policy: str | None = None,
        override_fitted: dict | None = None,
        max_layer: int | None = None,
    ):
        self.t = transcriber
        self.t.decoder = None
        self.t.word_timestamps = False
        self.points = list(points)
        self.exit_layers = [int(x) for x in transcriber.model.config.exit_layers]
        self.num_layers = self.exit_layers[-1]
        self.trace_to = (
            len(self.exit_layers) - 1 if max_layer is None else check_max_layer(max_layer, self.exit_layers)
        )
        self.override_policy = override_policy
        self.override_fitted = dict(override_fitted or {})
        self.min_samples = round(transcriber._min_seconds * SAMPLING_RATE) + 1
        self._policies: dict[tuple, ExitPolicy] = {}
        for index in range(len(self.points)):  # a point the model cannot run is refused at startup
            self.policy_for(index, RequestOptions())

    @property
    def min_seconds(self) -> float:
        """The shortest audio the model takes (shorter pieces of a long recording are padded)."""
        return self.t._min_seconds

    def policy_for(self, index: int, options: RequestOptions) -> ExitPolicy:
        """The policy of a request served at point ``index`` with its ``options`` (cached)."""
        point = self.points[index]
        name, value, fitted = point.policy, point.value, point.fitted
        if options.threshold is not None and self.override_policy is not None:
            name, value, fitted = self.override_policy, options.threshold, self.override_fitted
        max_layer = point.max_layer
        if options.max_layer is not None:
            max_layer = min(max_layer or self.num_layers, options.max_layer)
        key = (name, value, max_layer, id(fitted) if fitted else None)
        if key not in self._policies:
            policy = policy_with_value(name, value, max_layer, **fitted)
            policy.deepest_exit(self.exit_layers)  # a layer the model lacks: refused now
            self._policies[key] = policy
        return self._policies[key]

    def run(self, items: Sequence[WorkItem], index: int) -> list[PieceAnswer]:
        """Run the pieces ``items`` at operating point ``index`` (each with its request's options)."""
        rows = []
        for item in items:
            policy = self.policy_for(index, item.job.options)
            rows.append(_Row(policy, policy.deepest_exit(self.exit_layers), item.job.options.trace, item))
        arrays = [pad_to_length(item.audio, self.min_samples) for item in items]
        return self.run_arrays(
            arrays, rows, [item.start for item in items], [item.job.options for item in items]
        )

    def run_arrays(
        self,
        arrays: Sequence[np.ndarray],
        rows: Sequence[_Row],
        offsets: Sequence[float],
        options: Sequence[RequestOptions],
    ) -> list[PieceAnswer]:
        batch = BatchPolicy(rows, self.exit_layers, self.trace_to)
        self.t.policy = batch  # the worker thread is the transcriber's only user
        answers = self.t._answer_batch(arrays, offsets, keep_logits=True)
        out = []
        for j, answer in enumerate(answers):
            served = batch.served[j]
            exits = batch.exits[j] if rows[j].trace else None
            if exits is not None:
                exits[answer.exit_layer] = answer.text
            if served is None:  # answered at the batch's deepest exit, where the engine asks no policy
                served = _Served(
                    self.exit_layers.index(answer.exit_layer),
                    answer.exit_layer,
                    self._score_from_logits(rows[j].policy, answer.logits),
                    answer.ready,
                    answer.text,
                )
            text = served.text if served.text is not None else answer.text
            words = None
            if options[j].words and not rows[j].trace and answer.logits is not None:
                words = self.t._greedy_words(answer.logits.argmax(-1).tolist(), offsets[j])
            out.append(
                PieceAnswer(
                    text=text,
                    exit_layer=served.layer,
                    layers=int(answer.layers),
                    score=served.score,
                    seconds=answer.seconds,
                    exit_seconds=max(0.0, (served.time if rows[j].trace else answer.ready) - answer.started),
                    full_seconds=answer.ready - answer.started if rows[j].trace else None,
                    exits=exits,
                    words=words,
                )
            )
        return out

    def _score_from_logits(self, policy: ExitPolicy, logits: torch.Tensor | None) -> float | None:
        statistic = _score_statistic(policy)
        if statistic not in STATISTICS or logits is None or statistic == "transcripts":
            return None
        lengths = torch.tensor([len(logits)])
        try:
            value = STATISTICS[statistic](logits.float().unsqueeze(0), lengths, self.t.decoders)
        except UserError:  # a statistic that needs what the server has not (a lexicon decoder)
            return None
        return float(torch.as_tensor(value).reshape(-1)[0])

    def warm_up(self, seconds: Sequence[float] = (1.0, 3.0)) -> float:
        """Run a few batches of noise through every layer (the first batches of a fresh process are slow:
        allocations, oneDNN kernels); returns the seconds it took."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        last = FixedExit()
        for duration in seconds:
            audio = (0.01 * rng.standard_normal(int(duration * SAMPLING_RATE))).astype(np.float32)
            arrays = [audio, audio[: len(audio) // 2]]
            rows = [_Row(last, len(self.exit_layers) - 1, False) for _ in arrays]
            self.run_arrays(arrays, rows, [0.0, 0.0], [RequestOptions()] * 2)
        return time.perf_counter() - started
