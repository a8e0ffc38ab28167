"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own (one per app).

========================================================= ====================================================
series                                                    what
========================================================= ====================================================
``wav2vec2_ee_requests_total{endpoint, status}``           requests answered, by endpoint and HTTP status
``wav2vec2_ee_request_latency_seconds``                    transcription latency, arrival to answer (histogram)
``wav2vec2_ee_queue_depth``                                pieces of audio waiting for the model
``wav2vec2_ee_queue_audio_seconds``                        seconds of audio waiting
``wav2vec2_ee_queue_delay_seconds``                        how long each piece waited for its batch (histogram)
``wav2vec2_ee_batch_size``                                 pieces per batch (histogram)
``wav2vec2_ee_audio_seconds_total``                        seconds of audio transcribed
``wav2vec2_ee_layers_run``                                 layers run per piece (histogram; buckets: the exits)
``wav2vec2_ee_exit_layer_total{layer}``                    pieces served from each exit
``wav2vec2_ee_operating_point``                            index of the current point (0: the most accurate)
``wav2vec2_ee_operating_point_info{label}``                1 for the current point's label
``wav2vec2_ee_operating_point_mean_layers``                its mean layers on the dev split
``wav2vec2_ee_operating_point_dev_wer``                    its WER on the dev split
``wav2vec2_ee_operating_point_floor``                      the cheapest point allowed (the accuracy check)
``wav2vec2_ee_shed_requests_total{reason}``                requests refused with 503 (``queue_full``,
                                                           ``objective``, ``draining``)
``wav2vec2_ee_live_cer``                                   live character error rate, served vs last exit
``wav2vec2_ee_feedback_samples_total``                     pieces also run to the last exit (the check)
``wav2vec2_ee_ready``                                      1 once the model is loaded and warm
========================================================= ====================================================

An autoscaler scales on ``wav2vec2_ee_queue_delay_seconds`` (or the operating point: a server that
has stepped down the frontier is short of compute) and ``wav2vec2_ee_shed_requests_total``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from .controller import ServePoint

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

disable_created_metrics()  # the *_created series of every counter only double the exposition

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """The series of the module docstring; :meth:`render` gives the exposition text."""

    def __init__(self, exit_layers: Sequence[int], points: Sequence[ServePoint]):
        r = self.registry = CollectorRegistry()
        p = "wav2vec2_ee_"
        self.requests = Counter(p + "requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            p + "request_latency_seconds", "Transcription latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            p + "requests_in_flight", "Transcription requests admitted and not answered yet", registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Pieces of audio waiting for the model", registry=r)
        self.queue_audio = Gauge(p + "queue_audio_seconds", "Seconds of audio waiting", registry=r)
        self.queue_delay = Histogram(
            p + "queue_delay_seconds", "Wait of each piece for its batch", buckets=_DELAY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(p + "batch_size", "Pieces per batch", buckets=_BATCH_BUCKETS, registry=r)
        self.audio_seconds = Counter(p + "audio_seconds", "Seconds of audio transcribed", registry=r)
        self.layers = Histogram(
            p + "layers_run", "Layers run per piece", buckets=[float(x) for x in exit_layers], registry=r
        )
        self.exits = Counter(p + "exit_layer", "Pieces served from each exit", ["layer"], registry=r)
        self.point = Gauge(
            p + "operating_point", "Index of the operating point (0: most accurate)", registry=r
        )
        self.point_info = Gauge(
            p + "operating_point_info", "The current operating point", ["label"], registry=r
        )
        self.point_layers = Gauge(
            p + "operating_point_mean_layers", "Mean layers of the current point on dev", registry=r
        )
        self.point_wer = Gauge(p + "operating_point_dev_wer", "WER of the current point on dev", registry=r)
        self.floor = Gauge(p + "operating_point_floor", "The cheapest operating point allowed", registry=r)
        self.shed = Counter(p + "shed_requests", "Requests refused with 503", ["reason"], registry=r)
        self.live_cer = Gauge(p + "live_cer", "Live CER of what was served against the last exit", registry=r)
        self.feedback = Counter(p + "feedback_samples", "Pieces also run to the last exit", registry=r)
        self.ready = Gauge(p + "ready", "1 once the model is loaded and warm", registry=r)
        self._points = list(points)
        self._labels = [point.label for point in self._points]
        for reason in ("queue_full", "objective", "draining"):
            self.shed.labels(reason)
        for layer in exit_layers:
            self.exits.labels(str(layer))
        self.set_point(0, len(self._points) - 1)

    def set_point(self, index: int, floor: int) -> None:
        point = self._points[index]
        self.point.set(index)
        for i, label in enumerate(self._labels):
            self.point_info.labels(label).set(1 if i == index else 0)
        self.point_layers.set(point.mean_layers if point.mean_layers is not None else float("nan"))
        self.point_wer.set(point.dev_wer if point.dev_wer is not None else float("nan"))
        self.floor.set(floor)

    def render(self) -> bytes:
        return generate_latest(self.registry)
