"""The options of ``wav2vec2-ee serve`` and its parser, without torch or the server's packages:
``wav2vec2-ee serve --help`` builds the parser from here alone."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from ..command_line import HelpFormatter, finish_parser
from ..errors import UserError
from ..options import DeviceArguments
from ..policy_core import POLICY_NAMES
from ..segmentation import SplitOptions

#: The environment variable that gives the API key when ``--api-key`` does not.
API_KEY_ENV = "WAV2VEC2_EE_API_KEY"


@dataclass
class ServeArguments:
    """Options of ``wav2vec2-ee serve`` (the positional model folder comes first)."""

    host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "address to listen on; any other than a loopback address (127.0.0.1, ::1, localhost) "
            f"needs an API key (--api-key or {API_KEY_ENV})"
        },
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)"})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": f"clients must send Authorization: Bearer KEY on /v1/ routes (default: ${API_KEY_ENV}; "
            "the probes, /metrics, /status and the page stay open)"
        },
    )
    model_name: str | None = field(
        default=None, metadata={"help": "the model's id in /v1/models (default: the folder's name)"}
    )
    backend: Literal["torch", "onnxruntime"] | None = field(
        default=None,
        metadata={
            "help": "torch: a checkpoint folder; onnxruntime: a folder written by `wav2vec2-ee export` "
            "(default: whichever the folder is)"
        },
    )
    precision: Literal["float", "int8"] | None = field(
        default=None,
        metadata={"help": "--backend onnxruntime: float or int8 segments (default: int8 where exported)"},
    )
    calibration: str | None = field(
        default=None,
        metadata={
            "help": "the --output-dir of `wav2vec2-ee calibrate` (or its calibration_<policy>.json): the "
            "operating points within the accuracy budget, from its dev exit table; the server serves the most "
            "accurate one at light load and steps down them as the queue delay grows. Without it: one point, "
            "--policy's or the folder's saved policy or the last exit"
        },
    )
    max_wer_increase: float | None = field(
        default=None,
        metadata={
            "help": "the accuracy budget: the largest relative dev WER increase over the last exit a point may "
            "have (0.05 = 5 %%; default: the calibration's own)"
        },
    )
    latency_objective: float = field(
        default=2.0,
        metadata={
            "help": "p95 latency objective (seconds): the queue delay is kept well under it by stepping down the "
            "operating points, and a request that even the cheapest point would answer later is refused at once "
            "(503, Retry-After)"
        },
    )
    adaptive: bool = field(
        default=True,
        metadata={
            "help": "move along the operating points with the load (with --calibration) and refuse (503) what "
            "even the cheapest would answer after --latency-objective; --no-adaptive: serve the first point, "
            "refuse only when the queue is full"
        },
    )
    max_operating_points: int = field(
        default=8, metadata={"help": "at most this many points of the calibration's frontier"}
    )
    feedback_fraction: float = field(
        default=0.05,
        metadata={
            "help": "share of requests also run to the last exit: the live CER between what was served and the "
            "last exit (/metrics); a point that drifts past its dev figure is taken off (0: off)"
        },
    )
    policy: str | None = field(
        default=None,
        metadata={
            "help": f"without --calibration: the exit policy ({', '.join(POLICY_NAMES[:-1])} or budget; default: "
            "the folder's saved policy, else the last exit)"
        },
    )
    threshold: float | None = field(default=None, metadata={"help": "--policy's threshold"})
    patience: int | None = field(default=None, metadata={"help": "--policy patience: exits that must agree"})
    layer: int | None = field(default=None, metadata={"help": "--policy fixed: the exit layer"})
    max_layer: int | None = field(
        default=None,
        metadata={"help": "never compute beyond this layer: caps every operating point and every request"},
    )
    allow_overrides: bool = field(
        default=True,
        metadata={
            "help": "let a request set max_layer (an exit layer up to --max-layer) and threshold (within "
            "--threshold-range) as form fields"
        },
    )
    threshold_range: list[float] | None = field(
        default=None,
        metadata={
            "help": "LOW HIGH: the thresholds a request may set (default: the span of the operating points' "
            "thresholds, all within the budget)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "pieces of audio per batch at most"})
    max_batch_seconds: float = field(
        default=320.0, metadata={"help": "seconds of padded audio per batch at most"}
    )
    max_queue_delay_ms: float = field(
        default=10.0,
        metadata={
            "help": "milliseconds the oldest waiting piece waits for others before its batch runs anyway"
        },
    )
    max_queue: int = field(
        default=64,
        metadata={"help": "pieces of audio waiting at most; beyond, requests get 503 with Retry-After"},
    )
    max_connections: int | None = field(
        default=None,
        metadata={
            "help": "connections and requests in progress at most, beyond which uvicorn answers 503 at once "
            "(default: 4 x --max-queue, at least 64)"
        },
    )
    max_upload_mb: float = field(default=25.0, metadata={"help": "the largest upload (MB; 413 beyond)"})
    max_audio_seconds: float = field(
        default=1200.0,
        metadata={"help": "the longest recording (seconds; 400 beyond, refused from its header)"},
    )
    request_timeout: float = field(
        default=60.0, metadata={"help": "seconds a client has to send its upload (408 after)"}
    )
    max_segment_seconds: float = field(
        default=20.0,
        metadata={
            "help": "a recording longer than this is split at its pauses into pieces of at most this many "
            "seconds, as `transcribe` does; the pieces of all queued requests batch together; 0: off"
        },
    )
    vad: Literal["auto", "silero", "energy"] = field(
        default="auto", metadata={"help": "what finds the pauses (as `transcribe --vad`)"}
    )
    vad_threshold: float | None = field(
        default=None,
        metadata={"help": "speech probability that starts speech (default: the detector's, 0.5 / 0.35)"},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    drain_seconds: float = field(
        default=30.0,
        metadata={"help": "on SIGTERM: refuse new requests and answer those in flight for at most this long"},
    )
    warm_up: bool = field(default=True, metadata={"help": "run a few batches before /ready says ready"})
    log_level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata={"help": "log level"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise UserError(f"--port must lie in 0..65535 (0: any free port), got {self.port}")
        for name in ("latency_objective", "max_upload_mb", "max_audio_seconds", "request_timeout"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_operating_points < 1 or self.batch_size < 1 or self.max_queue < 1:
            raise UserError("--max-operating-points, --batch-size and --max-queue must be >= 1")
        if not 0.0 <= self.feedback_fraction <= 1.0:
            raise UserError(f"--feedback-fraction must lie in [0, 1], got {self.feedback_fraction}")
        if self.max_queue_delay_ms < 0:
            raise UserError(f"--max-queue-delay-ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.threshold_range is not None and (
            len(self.threshold_range) != 2 or not self.threshold_range[0] <= self.threshold_range[1]
        ):
            raise UserError(
                f"--threshold-range LOW HIGH needs two numbers, LOW <= HIGH; got {self.threshold_range}"
            )
        if self.calibration is not None and any(
            v is not None for v in (self.policy, self.threshold, self.patience, self.layer)
        ):
            raise UserError("--calibration gives the policy and its thresholds: drop --policy and its value")

    def split_options(self) -> SplitOptions | None:
        if self.max_segment_seconds == 0:
            return None
        return SplitOptions(
            max_seconds=float(self.max_segment_seconds), vad=self.vad, threshold=self.vad_threshold
        )

    def resolved_api_key(self) -> str | None:
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV)
        return key or None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise UserError(
            f"--host {host} lets other machines connect: give an API key (--api-key KEY or {API_KEY_ENV}=KEY; "
            "clients send Authorization: Bearer KEY), or listen on 127.0.0.1"
        )


def build_parser() -> HfArgumentParser:
    """The parser of ``wav2vec2-ee serve``."""
    parser = HfArgumentParser(
        (ServeArguments, DeviceArguments),
        prog="wav2vec2-ee serve",
        description="Serve a checkpoint or export folder over HTTP: OpenAI's POST /v1/audio/transcriptions, "
        "GET /v1/models, /health, /ready, /metrics, a page at /; dynamic batching with one model worker, and "
        "with --calibration early exits that step down the operating points as the load grows.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", help="a checkpoint folder, or a folder written by `wav2vec2-ee export`")
    return finish_parser(parser, "serve")
