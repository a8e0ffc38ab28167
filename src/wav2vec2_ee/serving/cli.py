"""``wav2vec2-ee serve MODEL``: the transcription server from the command line.

The model, its operating points and the port are set up before anything is served, so a bad folder, a
calibration of another model or a port in use ends the command with one line (exit 2). Then uvicorn
serves the app with one model worker in this process (scale with more processes or replicas, never
uvicorn ``--workers``: each would load its own model and the batching would split). SIGTERM (or Ctrl-C)
makes ``/ready`` answer 503, refuses new requests and answers those in flight for at most
``--drain-seconds`` before the process ends.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from ..command_line import parsing_flags
from ..errors import UserError, require
from ..options import DeviceArguments
from ..policy_core import POLICIES, ThresholdPolicy, policy_from_flags, wants_saved_policy
from .arguments import ServeArguments, build_parser, check_exposure
from .controller import ControllerSettings
from .scheduler import BatchSettings

logger = logging.getLogger(__name__)

#: The [serve] extra's packages, by the module each is imported as.
SERVE_PACKAGES = ("fastapi", "uvicorn", "python_multipart", "prometheus_client")


def _raise_user_error(message: str):
    raise UserError(message)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (bound here, so that a port in use is one line, not a log)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: cannot be resolved ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def build_service(args: ServeArguments, device: DeviceArguments, folder: str):
    """Load the model and its operating points: the :class:`~.service.TranscriptionService`."""
    from ..inference.transcriber import saved_policy_values
    from .engine import ServingEngine, load_transcriber, model_fingerprint
    from .frontier import load_frontier, static_point
    from .service import ServiceSettings, TranscriptionService

    if args.num_threads:
        import torch

        torch.set_num_threads(int(args.num_threads))
    transcriber = load_transcriber(
        folder, args.backend, args.precision, device.device, device.dtype, args.split_options()
    )
    layers = [int(x) for x in transcriber.model.config.exit_layers]
    if args.calibration is not None:
        frontier = load_frontier(
            args.calibration,
            layers,
            model_fingerprint(folder),
            args.max_wer_increase,
            args.max_layer,
            args.max_operating_points,
        )
    else:
        saved = saved_policy_values(folder) if wants_saved_policy(args.policy) else None
        policy = policy_from_flags(
            args.policy, args.threshold, args.patience, args.layer, args.max_layer, saved
        )
        frontier = static_point(policy, layers, saved if args.policy is None else None)
    name = frontier.policy
    threshold_policy = name if name in POLICIES and issubclass(POLICIES[name], ThresholdPolicy) else None
    span = args.threshold_range
    values = [p.value for p in frontier.points if p.policy == threshold_policy and p.value is not None]
    if span is None and values:
        span = [min(values), max(values)]
    engine = ServingEngine(transcriber, frontier.points, threshold_policy, frontier.fitted, args.max_layer)
    settings = ServiceSettings(
        model_id=args.model_name or Path(folder).resolve().name,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        split=args.split_options(),
        allow_overrides=args.allow_overrides,
        max_layer=args.max_layer,
        threshold_policy=threshold_policy if span is not None else None,
        threshold_range=(float(span[0]), float(span[1])) if span is not None else None,
        request_timeout=args.request_timeout,
        feedback_fraction=args.feedback_fraction if len(frontier.points) > 1 else 0.0,
    )
    controller = ControllerSettings(objective=args.latency_objective, adaptive=args.adaptive)
    batching = BatchSettings(
        args.batch_size, args.max_batch_seconds, args.max_queue_delay_ms / 1000.0, args.max_queue
    )
    service = TranscriptionService(engine, frontier.points, settings, controller, batching)
    return service, frontier


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.error = _raise_user_error  # type: ignore[method-assign]
    with parsing_flags():
        args, device, positional = parser.parse_args_into_dataclasses(
            args=sys.argv[1:] if argv is None else argv
        )
    api_key = args.resolved_api_key()
    check_exposure(args.host, api_key)
    for module in SERVE_PACKAGES:
        require(module, "serve", "wav2vec2-ee serve")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sock = bind(args.host, args.port)
    try:
        service, frontier = build_service(args, device, positional.model)
        return run(service, frontier, args, api_key, sock)
    finally:
        sock.close()


def run(service, frontier, args: ServeArguments, api_key: str | None, sock: socket.socket) -> int:
    """Serve until SIGTERM / Ctrl-C, then drain."""
    import uvicorn

    from .app import create_app

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose exit signal first makes the service refuse new requests."""

        def handle_exit(self, sig, frame) -> None:
            service.drain()
            super().handle_exit(sig, frame)

    app = create_app(service, api_key, warm_up=args.warm_up, drain_seconds=args.drain_seconds)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(max(1, args.drain_seconds)),
        timeout_keep_alive=5,
        limit_concurrency=args.max_connections or max(64, 4 * args.max_queue),
        access_log=args.log_level == "debug",
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.info(
        "serving %s (%s) at http://%s:%d: %d operating point(s) from %s: %s",
        service.settings.model_id,
        "adaptive" if service.controller.settings.adaptive else "fixed",
        host,
        sock.getsockname()[1],
        len(frontier.points),
        frontier.source,
        ", ".join(p.label for p in frontier.points),
    )
    DrainingServer(config).run(sockets=[sock])
    return 0
