"""What a transcription request answers, in OpenAI's ``response_format`` s: ``json``, ``text``,
``verbose_json``, ``srt``, ``vtt``.

``verbose_json`` has OpenAI's fields (``task``, ``language``, ``duration``, ``text``, ``segments`` with
``id``, ``seek``, ``start``, ``end``, ``text``, ``tokens``, ``temperature``; ``words`` when asked for) and
what an early-exit model adds: per segment the exit that answered (``exit_layer``), the layers run
(``layers_computed``) and the policy's score at that exit (``score``), the operating point it was served
at, with every exit's transcript when the request traced them (``exits``); and an ``early_exit`` object
for the request. Whisper's ``avg_logprob``, ``compression_ratio`` and ``no_speech_prob`` have no CTC
counterpart: they are ``null``.

The standard library and the torch-free timestamps module only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..timestamps import Segment, format_srt, format_vtt

#: The ``response_format`` values, as OpenAI's API names them.
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")

#: The language reported (the model's vocabulary is English letters).
LANGUAGE = "english"


@dataclass
class Result:
    """A request's transcript and what it cost.

    Args:
        text: the pieces' transcripts joined.
        duration: seconds of audio uploaded.
        segments: one per piece (:class:`~wav2vec2_ee.timestamps.Segment`: times, text, exit layer,
            layers, score, words; ``extra``: ``operating_point``, ``exits`` when traced, ``exit_seconds``,
            ``full_seconds``).
        num_layers: the model's full depth.
        compute_seconds: the pieces' shares of their batches' compute; queue_seconds: the longest wait
            of a piece for its batch; latency_seconds: from the request's arrival to its answer.
    """

    text: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    num_layers: int = 0
    compute_seconds: float = 0.0
    queue_seconds: float = 0.0
    latency_seconds: float = 0.0

    @property
    def layers_computed(self) -> float:
        """Layers run, the pieces' mean weighted by their audio (0 without speech)."""
        weights = [max(1e-9, s.end - s.start) for s in self.segments]
        if not self.segments:
            return 0.0
        return sum(w * (s.layers or 0) for w, s in zip(weights, self.segments)) / sum(weights)

    @property
    def served_layers(self) -> float:
        """The served exits' layers, weighted like :attr:`layers_computed` (what a request that was not
        traced would have run)."""
        weights = [max(1e-9, s.end - s.start) for s in self.segments]
        if not self.segments:
            return 0.0
        return sum(w * (s.exit_layer or 0) for w, s in zip(weights, self.segments)) / sum(weights)

    def early_exit(self) -> dict:
        """The ``early_exit`` object of ``verbose_json``."""
        exits = [s.exit_layer for s in self.segments if s.exit_layer is not None]
        points = sorted({s.extra.get("operating_point") for s in self.segments} - {None})
        out = {
            "num_layers": self.num_layers,
            "exit_layer": max(exits) if exits else None,
            "layers_computed": round(self.layers_computed, 4),
            "served_layers": round(self.served_layers, 4),
            "layers_saved_fraction": round(1 - self.served_layers / self.num_layers, 4) if exits else None,
            "operating_points": points,
            "compute_seconds": round(self.compute_seconds, 4),
            "queue_seconds": round(self.queue_seconds, 4),
            "latency_seconds": round(self.latency_seconds, 4),
        }
        traced = [s for s in self.segments if "exits" in s.extra]
        if traced and len(traced) == len(self.segments):
            layers = sorted({int(layer) for s in traced for layer in s.extra["exits"]})
            out["exits"] = {
                str(layer): " ".join(t for t in (s.extra["exits"].get(layer, "") for s in traced) if t)
                for layer in layers
            }
            out["exit_seconds"] = round(sum(s.extra.get("exit_seconds", 0.0) for s in traced), 4)
            out["full_seconds"] = round(sum(s.extra.get("full_seconds", 0.0) for s in traced), 4)
        return out


def _segment(i: int, s: Segment) -> dict:
    out = {
        "id": i,
        "seek": int(round(s.start * 100)),
        "start": s.start,
        "end": s.end,
        "text": s.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": None,
        "compression_ratio": None,
        "no_speech_prob": None,
        "exit_layer": s.exit_layer,
        "layers_computed": s.layers,
        "score": None if s.score is None or not math.isfinite(s.score) else round(float(s.score), 6),
    }
    extra = dict(s.extra)
    if "exits" in extra:
        extra["exits"] = {str(k): v for k, v in extra["exits"].items()}
    out.update(extra)
    return out


def verbose_json(result: Result, words: bool = False) -> dict:
    out = {
        "task": "transcribe",
        "language": LANGUAGE,
        "duration": round(result.duration, 3),
        "text": result.text,
        "segments": [_segment(i, s) for i, s in enumerate(result.segments)],
    }
    if words:
        out["words"] = [
            {"word": w.text, "start": w.start, "end": w.end} for s in result.segments for w in (s.words or [])
        ]
    out["early_exit"] = result.early_exit()
    return out


def render(result: Result, response_format: str, words: bool = False) -> tuple[str, str]:
    """``(body, media type)`` of ``result`` in ``response_format`` (one of :data:`RESPONSE_FORMATS`)."""
    if response_format == "json":
        usage = {"type": "duration", "seconds": math.ceil(result.duration)}
        return json.dumps({"text": result.text, "usage": usage}), "application/json"
    if response_format == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if response_format == "verbose_json":
        return json.dumps(verbose_json(result, words)), "application/json"
    if response_format == "srt":
        return format_srt(result.segments), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return format_vtt(result.segments), "text/vtt; charset=utf-8"
    raise ValueError(f"unknown response_format {response_format!r}")
