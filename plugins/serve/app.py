"""The Starlette application of ``geo-os pixel-llm serve``: routes, the request gate (drain, bearer
token, access log, metrics) and the caption and system-call endpoints. Imported only when the
command runs (it needs the ``serve`` extra)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import torch
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from geometry_os.errors import GeometryOSError, format_validation_error, one_line
from geometry_os.systems.pixel_llm.plugin_api import DataError, build_transform, load_image

from .batcher import Batcher, Job, QueueFull
from .metrics import Metrics
from .requests import (
    BodyTooLarge,
    RequestError,
    Upload,
    form_uploads,
    json_uploads,
    limited_receive,
    parse_options,
    read_json,
    too_large,
)
from .settings import SETTINGS_ENV, ServeSettings

PAGE = Path(__file__).with_name("static") / "index.html"
OPEN_PATHS = {"/", "/healthz", "/readyz"}  # reachable without the bearer token
access_log = logging.getLogger("geometry_os.serve.access")


@dataclass
class ServeState:
    """What the app's handlers share: settings, the batcher, metrics, the host, the image transform and size,
    a limiter for image preparation threads, and whether the server is draining (shutting down).
    """

    settings: ServeSettings
    batcher: Batcher
    metrics: Metrics
    host: Any
    transform: Any
    image_size: int
    preparing: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))
    )
    draining: bool = False


CURRENT: ServeState | None = None  # the state of this process's app, for the server's signal handling


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response ``{"error": message}`` (message on one line) with HTTP ``status``."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


# ---- the gate: every HTTP request passes here --------------------------------------------------------


class Gate:
    """ASGI middleware: 503 while draining, bearer token, in-flight count, metrics, JSON access log."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, started = self.state, time.perf_counter()
        path = scope["path"]
        route = _route_label(path)
        status, sent = 500, 0

        async def record(message: MutableMapping[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        state.metrics.in_flight += 1
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, record)
            else:
                await self.app(scope, receive, record)
        finally:
            state.metrics.in_flight -= 1
            seconds = time.perf_counter() - started
            state.metrics.request_done(scope["method"], route, status, seconds)
            client = scope.get("client") or ("", 0)
            access_log.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
                        "client": client[0],
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "bytes": sent,
                        "duration_ms": round(seconds * 1000, 3),
                    }
                )
            )

    def _refusal(self, scope: dict, path: str) -> Response | None:
        settings = self.state.settings
        if self.state.draining and path not in ("/healthz", "/readyz"):
            return error(503, "the server is shutting down", {"Connection": "close", "Retry-After": "1"})
        if settings.token and path not in OPEN_PATHS:
            given = Headers(scope=scope).get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                return error(
                    401, "missing or wrong bearer token (Authorization: Bearer TOKEN)", {"WWW-Authenticate": "Bearer"}
                )
        return None


def _route_label(path: str) -> str:
    """Bounded label values: route templates, never raw paths."""
    if path.startswith("/v1/calls/"):
        return "/v1/calls/{name}"
    return path if path in {"/", "/healthz", "/readyz", "/metrics", "/v1/captions", "/v1/calls"} else "other"


# ---- endpoints ---------------------------------------------------------------------------------------


def _state(request: Request) -> ServeState:
    return request.app.state.serve


async def page(request: Request) -> Response:
    """``GET /``: the web page."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 while the process serves."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when requests are taken, 503 while the server drains."""
    if _state(request).draining:
        return error(503, "the server is shutting down")
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: request, latency and batch metrics in the Prometheus text format."""
    return PlainTextResponse(_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


async def _body_request(request: Request, limit: int) -> Request:
    """The request with a body-size guard: refused at once by Content-Length, else while streaming."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, f"Content-Length: not a number ({length!r})")
        if int(length) > limit:
            raise too_large(limit)
    return Request(request.scope, limited_receive(request.receive, limit))


async def _read_caption_request(request: Request, settings: ServeSettings) -> tuple[list[Upload], Any, Any]:
    guarded = await _body_request(request, settings.max_upload_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await guarded.form(max_files=settings.max_images, max_fields=8, max_part_size=64 * 1024)
        except (MultiPartException, HTTPException) as exc:
            message = getattr(exc, "message", None) or getattr(exc, "detail", "") or str(exc)
            if "Too many files" in message:
                raise RequestError(
                    413, f"too many images: at most {settings.max_images} per request (--max-images)"
                ) from None
            raise RequestError(400, f"malformed multipart body: {message}") from None
        try:
            uploads, options = form_uploads(form)
        except BaseException:
            await form.close()
            raise
        return uploads, options, form
    if kind == "application/json":
        uploads, options = json_uploads(await read_json(guarded.stream(), settings.max_upload_bytes))
        return uploads, options, None
    raise RequestError(415, f"Content-Type {kind or '(none)'!r}: send multipart/form-data or application/json")


def _prepare(state: ServeState, uploads: list[Upload]) -> torch.Tensor:
    """Decode and preprocess every image exactly as ``caption`` does; the first bad one is named."""
    tensors = []
    for i, upload in enumerate(uploads):
        label = f"image {i} ({upload.name!r})"
        image = load_image(upload.data, state.settings.max_image_pixels, label=label, draft_size=state.image_size)
        tensors.append(state.transform(image))
    return torch.stack(tensors)


async def captions(request: Request) -> Response:
    """``POST /v1/captions``: caption the uploaded images (multipart files or a JSON body of base64 images).

    Errors are JSON responses (a ``RequestError`` inside): 400 for a malformed request, 413 for a body or
    image count over the limits, 415 for another content type, 422 for an unreadable image, 429 when the
    queue is full, 504 past the request timeout (503 while draining, from the gate).
    """
    state = _state(request)
    settings, started = state.settings, time.perf_counter()
    form = None
    try:
        try:
            uploads, raw_options, form = await _read_caption_request(request, settings)
        except BodyTooLarge:
            raise too_large(settings.max_upload_bytes) from None
        if len(uploads) > settings.max_images:
            raise RequestError(
                413, f"too many images: {len(uploads)}, at most {settings.max_images} per request (--max-images)"
            )
        options = parse_options(raw_options, settings.max_num_beams)
        try:
            pixels = await anyio.to_thread.run_sync(_prepare, state, uploads, limiter=state.preparing)
        except DataError as exc:
            raise RequestError(422, str(exc)) from None
        loop = asyncio.get_running_loop()
        job = Job(
            pixels,
            options.generation,
            loop.create_future(),
            loop,
            options.return_token_ids,
            [u.data for u in uploads] if options.explain else None,
        )
        try:
            state.batcher.submit(job)
        except QueueFull as exc:
            raise RequestError(429, str(exc)) from None
        try:
            result = await asyncio.wait_for(job.future, settings.request_timeout)
        except (asyncio.TimeoutError, TimeoutError):  # distinct classes before Python 3.11
            raise RequestError(504, f"no result within {settings.request_timeout:g} s (--request-timeout)") from None
        except GeometryOSError as exc:
            raise RequestError(400, one_line(exc)) from None
    except RequestError as exc:
        return error(exc.status, str(exc))
    except ClientDisconnect:
        return error(400, "the client closed the connection before sending the whole body")
    finally:
        if form is not None:
            await form.close()
    for upload, row in zip(uploads, result["results"]):
        row["image"] = upload.name
    result["timings"]["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return JSONResponse(result)


def _offered_calls(state: ServeState) -> dict[str, Any]:
    return {
        name: call
        for name, call in ((c.name, c) for s in state.host.systems.values() for c in s.calls.values())
        if call.remote_params is not None and (name != "pixel_llm.train" or state.settings.allow_train)
    }


async def list_calls(request: Request) -> Response:
    """``GET /v1/calls``: the system calls offered over HTTP with their parameter schemas."""
    offered = _offered_calls(_state(request))
    return JSONResponse(
        {
            "calls": [
                {"name": n, "doc": c.doc, "parameters": c.remote_params.model_json_schema()}
                for n, c in sorted(offered.items())
            ]
        }
    )


async def system_call(request: Request) -> Response:
    """``POST /v1/calls/{name}``: run a system call offered over HTTP with the JSON body's parameters.

    Errors are JSON responses (a ``RequestError`` inside): 404 for an unknown call, 403 for one not offered
    over HTTP, 400 for invalid parameters or a failing call, 413 for a body over the limit.
    """
    state = _state(request)
    name = request.path_params["name"]
    offered = _offered_calls(state)
    call = offered.get(name)
    if call is None:
        names = ", ".join(sorted(offered)) or "(none)"
        if name == "pixel_llm.train":
            return error(403, f"{name} is off: start the server with --allow-train; offered calls: {names}")
        if name in state.host.call_names():
            return error(403, f"{name} is not offered over HTTP (it reads files on the server); offered calls: {names}")
        return error(404, f"unknown system call {name!r}; known calls: {names}")
    try:
        guarded = await _body_request(request, state.settings.max_upload_bytes)
        try:
            body = await read_json(guarded.stream(), state.settings.max_upload_bytes)
        except RequestError as exc:
            if not exc.args[0].startswith("empty body"):
                raise
            body = {}
        except BodyTooLarge:
            raise too_large(state.settings.max_upload_bytes) from None
        if not isinstance(body, dict):
            raise RequestError(400, f"{name}: expected a JSON object of parameters, got {type(body).__name__}")
        try:
            params = call.remote_params.model_validate(body)
        except ValidationError as exc:
            raise RequestError(400, format_validation_error(exc, source=name)) from None
        try:
            result = await anyio.to_thread.run_sync(
                lambda: state.host.call(name, **params.model_dump(exclude_unset=True))
            )
        except (GeometryOSError, OSError, ValueError) as exc:
            raise RequestError(400, f"{name}: {one_line(exc)}") from None
    except RequestError as exc:
        return error(exc.status, str(exc))
    return JSONResponse({"call": name, "result": result})


async def not_found(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors (404, 405) as JSON error responses naming the method and path."""
    status = getattr(exc, "status_code", 404)
    return error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}")


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unhandled exception: logged with its traceback, answered with a JSON 500 naming its type only."""
    logging.getLogger(__name__).exception("unhandled error", exc_info=exc)
    return error(500, f"internal error: {type(exc).__name__}")


# ---- building the app --------------------------------------------------------------------------------


def configure_access_log() -> None:
    """Send the JSON access log lines to stdout (once per process)."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


def create_app(settings: ServeSettings, model: Any, tokenizer: Any, host: Any) -> tuple[Any, ServeState]:
    """The ASGI app (the Starlette app inside its ``Gate``) and its state; the model worker starts now."""
    global CURRENT
    from geometry_os.systems.pixel_llm.plugin_api import preprocessing_config

    config = preprocessing_config(model)
    metrics_ = Metrics()
    with host.active():  # the batcher's worker thread decodes with this host's components
        batcher = Batcher(model, tokenizer, metrics_, settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
    state = ServeState(settings, batcher, metrics_, host, build_transform(config), config.image_size)
    routes = [
        Route("/", page),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/captions", captions, methods=["POST"]),
        Route("/v1/calls", list_calls),
        Route("/v1/calls/{name}", system_call, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: internal_error})
    app.state.serve = state
    configure_access_log()
    CURRENT = state
    return Gate(app, state), state


def app_from_env() -> Any:
    """Factory for the worker processes of ``--workers N``: settings from ``GEO_OS_SERVE_SETTINGS``."""
    from geometry_os.systems.pixel_llm.plugin_api import get_host, load_checkpoint

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    model, tokenizer = load_checkpoint(settings.checkpoint, settings.device, settings.dtype)
    app, _ = create_app(settings, model, tokenizer, get_host())
    return app
