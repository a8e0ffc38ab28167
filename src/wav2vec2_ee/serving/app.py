"""The HTTP API (FastAPI): OpenAI's ``POST /v1/audio/transcriptions`` and ``GET /v1/models``, the probes
``/health`` and ``/ready``, ``/metrics`` (Prometheus), ``/status`` and the page at ``/``.

Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 (a bad field,
corrupt or too long audio), 401 (a missing or wrong API key), 408 (an upload not sent within
``request_timeout``), 413 (an upload over the size limit, refused from its ``Content-Length`` before it is
read), 415 (audio the server cannot decode), 422 (a missing or mistyped form field), 503 with
``Retry-After`` (the queue is full, the latency objective cannot be kept, warming up, draining). An error
inside the server answers 500 and the server goes on.

Authentication: with an API key, the ``/v1/`` routes need ``Authorization: Bearer <key>`` (as OpenAI's
and vLLM's); the probes, the metrics, the status and the page stay open (the page asks for the key and
sends it). No request field is ever used as a path: the upload's bytes are all that is read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metrics import CONTENT_TYPE
from .responses import RESPONSE_FORMATS, render
from .scheduler import Overloaded
from .service import ClientGone, TranscriptionService
from .uploads import InputError

logger = logging.getLogger(__name__)

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def error_body(
    message: str, code: str, param: str | None = None, kind: str = "invalid_request_error"
) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, code: str, param: str | None = None, headers=None
) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(error_body(message, code, param, kind), status_code=status, headers=headers)


async def _send_error(scope, receive, send, status: int, message: str, code: str) -> None:
    """An error response from a pure ASGI middleware."""
    response = error_response(status, message, code, "file" if status in (408, 413) else None)
    await response(scope, receive, send)


class BodyLimits:
    """Reads a request's body before the app does, within ``max_bytes`` (413; a ``Content-Length`` over it
    is refused before anything is read) and ``timeout`` seconds (408: a slow client cannot hold an upload
    open, and waiting for it costs the server a coroutine, never the model worker). The app receives the
    body as it came, then the connection's later messages (a disconnect)."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, int(max_bytes), float(timeout)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = f"the upload is larger than this server's limit of {self.max_bytes} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_error(
                scope, receive, send, 413, f"{too_large} ({int(declared)} bytes)", "file_too_large"
            )
        chunks: list[bytes] = []
        total = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await _send_error(
                    scope,
                    receive,
                    send,
                    408,
                    f"the upload was not received within {self.timeout:g} s",
                    "request_timeout",
                )
            if message["type"] == "http.disconnect":
                return None  # the client went away while uploading: nothing to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await _send_error(scope, receive, send, 413, too_large, "file_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        scope.setdefault("state", {})["received"] = time.monotonic()  # the upload is in: the clock starts
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class Admission:
    """Admits a transcription request before its upload is read, or answers 503 with ``Retry-After`` at
    once (:meth:`~.service.TranscriptionService.admit`): under overload a refusal costs no reading,
    parsing or decoding."""

    def __init__(self, app, service: TranscriptionService):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("path") != TRANSCRIPTIONS:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            ticket = self.service.admit(
                int(declared) if declared is not None and declared.isdigit() else None
            )
        except Overloaded as err:
            return await _overloaded_response(err)(scope, receive, send)
        scope.setdefault("state", {})["ticket"] = ticket
        try:
            return await self.app(scope, receive, send)
        finally:
            self.service.finished(ticket)


def _overloaded_response(err: Overloaded) -> JSONResponse:
    retry = str(max(1, math.ceil(err.retry_after)))
    return error_response(503, err.reason, err.kind, headers={"Retry-After": retry})


class RequestMetrics:
    """Counts every response by endpoint (the route, ``other`` for unknown paths) and status."""

    def __init__(self, app, service: TranscriptionService, routes: set[str]):
        self.app, self.service, self.routes = app, service, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = (
            path
            if path in self.routes
            else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        )
        status = [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.service.metrics.requests.labels(endpoint, str(status[0])).inc()


def _page() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _field_of(error: dict) -> str | None:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header")]
    return loc[0] if loc else None


def create_app(
    service: TranscriptionService,
    api_key: str | None = None,
    warm_up: bool = True,
    drain_seconds: float = 30.0,
) -> FastAPI:
    """The app serving ``service``; the model is warmed up in a thread at startup (``/ready`` answers 503
    until it is) and what is queued is answered before shutdown (at most ``drain_seconds``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.get_running_loop().run_in_executor(None, service.start, warm_up)
        watching = asyncio.create_task(service.watch_loop())
        try:
            yield
        finally:
            watching.cancel()
            service.drain()
            await starting
            await run_in_threadpool(service.stop, drain_seconds)

    app = FastAPI(
        title="wav2vec2-ee transcription server",
        summary="OpenAI-compatible speech recognition whose early exits absorb load",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    page = _page()

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise _Unauthorized()

    needs_key = [Depends(authorized)]

    # -------------------------------------------------------------------------------------------
    # errors

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: _Unauthorized):
        return error_response(
            401,
            "a valid API key is needed: send Authorization: Bearer <key>",
            "invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return _overloaded_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        name = _field_of(first)
        if first.get("type") == "missing":
            message = f"the form field '{name}' is required"
        else:
            message = f"the form field '{name}': {first.get('msg', 'is not valid')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return error_response(422, message, "invalid_field", name)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("an error answering %s %s", request.method, request.url.path)
        return error_response(
            500, f"the server failed on this request ({type(exc).__name__})", "internal_error"
        )

    # -------------------------------------------------------------------------------------------
    # routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        """Alive (the process answers and its model did not fail): the liveness probe."""
        if service.failed is not None:
            return JSONResponse({"status": "failed", "error": service.failed}, status_code=503)
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Model loaded and warm, not draining: the readiness probe (503 otherwise)."""
        if service.failed is not None:
            return JSONResponse({"status": "failed", "error": service.failed}, status_code=503)
        if service.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not service.ready.is_set():
            return JSONResponse({"status": "warming up"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/status")
    async def status():
        return service.status()

    def model_card() -> dict:
        return {
            "id": service.settings.model_id,
            "object": "model",
            "created": int(service.started_at),
            "owned_by": "wav2vec2-ee",
            "exit_layers": service.exit_layers,
            "operating_points": [p.label for p in service.points],
        }

    @app.get("/v1/models", dependencies=needs_key)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=needs_key)
    async def model(model_id: str):
        if model_id != service.settings.model_id:
            return error_response(
                404,
                f"no model {model_id!r}: this server serves {service.settings.model_id!r}",
                "model_not_found",
                "model",
            )
        return model_card()

    @app.post(TRANSCRIPTIONS, dependencies=needs_key)
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File(description="the audio file")],
        model: Annotated[str | None, Form(description="accepted; the server serves one model")] = None,
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[str | None, Form(description="accepted and ignored")] = None,
        prompt: Annotated[str | None, Form(description="accepted and ignored")] = None,
        temperature: Annotated[float | None, Form(description="accepted and ignored")] = None,
        timestamp_granularities: Annotated[
            list[str] | None, Form(alias="timestamp_granularities[]", description="segment, word")
        ] = None,
        max_layer: Annotated[int | None, Form(description="never compute beyond this exit layer")] = None,
        threshold: Annotated[float | None, Form(description="the exit policy's threshold")] = None,
        all_exits: Annotated[bool, Form(description="also the transcript at every exit")] = False,
    ):
        """Transcribe an uploaded file (OpenAI's fields; ``max_layer``, ``threshold`` and ``all_exits``
        are this server's own)."""
        received = getattr(request.state, "received", None)
        lag = 0.0 if received is None else max(0.0, time.monotonic() - received)  # waiting for the event loop
        ticket = getattr(request.state, "ticket", None)
        service.refuse_if_unavailable(admitted=ticket is not None)
        if response_format not in RESPONSE_FORMATS:
            raise InputError(
                400,
                "invalid_response_format",
                f"response_format {response_format!r}: choose one of {', '.join(RESPONSE_FORMATS)}",
                "response_format",
            )
        granularities = set(timestamp_granularities or [])
        if granularities - {"segment", "word"}:
            raise InputError(
                400,
                "invalid_timestamp_granularities",
                f"timestamp_granularities {sorted(granularities)}: choose from segment, word",
                "timestamp_granularities[]",
            )
        words = "word" in granularities
        if granularities and response_format != "verbose_json":
            raise InputError(
                400,
                "invalid_timestamp_granularities",
                "timestamp_granularities needs response_format verbose_json",
                "timestamp_granularities[]",
            )
        options = service.check_options(max_layer, threshold, all_exits, words)
        data = await file.read()
        name = file.filename or "the upload"
        pieces, duration = await run_in_threadpool(service.prepare, data, name)
        try:
            result = await service.transcribe(
                pieces,
                options,
                duration,
                lambda: _disconnect(request),
                waited=lag,
                received=received,
                ticket=ticket,
            )
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        service.metrics.latency.observe(result.latency_seconds)
        body, media_type = render(result, response_format, words)
        return Response(body, media_type=media_type)

    routes = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(BodyLimits, max_bytes=service.settings.max_upload_bytes + 64 * 1024,
                       timeout=service.settings.request_timeout)  # fmt: skip
    app.add_middleware(Admission, service=service)
    app.add_middleware(RequestMetrics, service=service, routes=routes)
    return app


class _Unauthorized(Exception):
    pass


async def _disconnect(request: Request) -> None:
    """Completes when the client disconnects (the connection's next message after the body)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
