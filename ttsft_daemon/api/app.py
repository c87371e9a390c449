"""The API's routes, their OpenAPI description (one table: `ENDPOINTS`) and its error replies.

Every reply of a refused request is JSON `{"error": "...", "status": N}` with a 4xx status that says what to fix;
a bug answers 500 and is logged, and never stops the daemon. Reads run in a thread pool (they read files); an
upload streams in the event loop, its fsync and rename in the thread pool: the stage workers are other threads of
the process and never wait for the API.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ttsft_daemon import __version__
from ttsft_daemon.api import docs, views
from ttsft_daemon.api.auth import AuthError, check_bearer
from ttsft_daemon.api.uploads import MULTIPART_OVERHEAD, InboxWriter, MultipartSink, UploadError, check_filename, chunks
from ttsft_daemon.config import Config, parse_listen
from ttsft_daemon.core.spool import Layout
from ttsft_daemon.dataset import read_rows
from ttsft_daemon.status import collect, training_state

log = structlog.get_logger(__name__)

MAX_JSON_BYTES = 64 * 1024
RAW_TYPES = ("application/octet-stream", "audio/", "video/")
REPORT_CSP = ("default-src 'self' data: blob:; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data: blob:; media-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'")
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


class DaemonLike(Protocol):
    """What the API needs of the daemon it runs in (daemon.service.Daemon)."""

    config: Config
    trainer: Any  # training.scheduler.TrainerWorker, or None while workers restart

    def wake(self, stage: str) -> None: ...


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, close: bool = False) -> JSONResponse:
    hdrs = {}
    if close:
        hdrs["Connection"] = "close"  # the rest of the body is not read: the connection cannot be reused
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=hdrs)


# ------------------------------------------------------------------------------------------------ endpoints
@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    summary: str
    description: str = ""
    params: tuple[Param, ...] = ()
    responses: dict[str, str] = field(default_factory=dict)
    auth: bool = False
    body: dict[str, Any] | None = None
    produces: str = "application/json"


VOICE = Param("voice", "path", "voice name: letters, digits, - and _", required=True)
CLIP = Param("clip", "path", "clip id, as listed by /voices/{voice}/clips", required=True)


def _daemon(request: Request) -> DaemonLike:
    d: DaemonLike = request.app.state.daemon
    return d


def _config(request: Request) -> Config:
    return _daemon(request).config


def _voice(request: Request) -> str:
    voice = str(request.path_params["voice"])
    if not views.valid_voice(voice):
        raise ApiError(400, f"invalid voice name {voice!r}: use 1-64 letters, digits, - and _ (starting with a "
                            "letter or digit)")
    return voice


def _int_query(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name}: got {raw!r}, expected an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name}: got {value}, must be between {lo} and {hi}")
    return value


async def root(request: Request) -> Response:
    return JSONResponse({"name": "ttsft-daemon", "version": __version__, "docs": "/docs",
                         "openapi": "/openapi.json"})


async def get_status(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(collect, _config(request)))


async def get_voices(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(views.voices, _config(request)))


async def get_voice(request: Request) -> Response:
    voice = _voice(request)
    detail = await run_in_threadpool(views.voice_detail, _config(request), voice)
    if detail is None:
        raise ApiError(404, f"no voice {voice!r} (no dataset and no training folder of that name)")
    return JSONResponse(detail)


async def get_clips(request: Request) -> Response:
    voice = _voice(request)
    order = request.query_params.get("order") or "worst"
    if order not in views.ORDERS:
        raise ApiError(400, f"query parameter order: got {order!r}, allowed: {', '.join(views.ORDERS)}")
    status = request.query_params.get("status") or "all"
    if status not in ("all", "accepted", "rejected"):
        raise ApiError(400, f"query parameter status: got {status!r}, allowed: all, accepted, rejected")
    reason = request.query_params.get("reason") or None
    offset = _int_query(request, "offset", 0, 0, 10**9)
    limit = _int_query(request, "limit", 50, 1, 500)
    page = await run_in_threadpool(views.clips, _config(request), voice, order, reason, status, offset, limit)
    if page is None:
        raise ApiError(404, f"no voice {voice!r}")
    return JSONResponse(page)


async def get_clip_audio(request: Request) -> Response:
    voice = _voice(request)
    clip = str(request.path_params["clip"])
    if not views.valid_clip(clip):
        raise ApiError(400, f"invalid clip id {clip!r}")
    path = await run_in_threadpool(views.clip_file, _config(request), voice, clip)
    if path is None:
        raise ApiError(404, f"no clip {clip!r} of voice {voice!r}")
    return FileResponse(path, media_type="audio/wav", filename=path.name, content_disposition_type="inline")


async def get_report(request: Request) -> Response:
    voice = _voice(request)
    path = await run_in_threadpool(views.report_file, _config(request), voice)
    if path is None:
        raise ApiError(404, f"no report for voice {voice!r} yet (training/{voice}/report.html)")
    return FileResponse(path, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP})


async def get_metrics(request: Request) -> Response:
    counters = dict(request.app.state.counters)
    text = await run_in_threadpool(views.metrics, _config(request), counters)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def get_openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.schema)


async def get_docs(request: Request) -> Response:
    return HTMLResponse(docs.render(request.app.state.schema), headers={"Content-Security-Policy": DOCS_CSP})


def _authorize(request: Request) -> None:
    try:
        check_bearer(_config(request).api, request.headers.get("authorization"))
    except AuthError as exc:
        raise ApiError(exc.status, exc.message) from None


async def post_inbox(request: Request) -> Response:
    _authorize(request)
    voice = _voice(request)
    counters = request.app.state.counters
    config = _config(request)
    limit = int(config.api.max_upload_mb * 1024 * 1024)
    ctype = request.headers.get("content-type", "").strip()
    media = ctype.split(";", 1)[0].strip().lower()
    declared_raw = request.headers.get("content-length")
    declared: int | None = None
    if declared_raw is not None:
        if not declared_raw.isdigit():
            raise ApiError(400, f"invalid Content-Length {declared_raw!r}")
        declared = int(declared_raw)
    multipart = media == "multipart/form-data"
    if not multipart and not (media == "" or media.startswith(RAW_TYPES)):
        raise ApiError(415, f"Content-Type {media!r} is not an upload: send multipart/form-data with the field "
                            "'file', or the raw file (application/octet-stream, audio/*, video/*) with ?filename=")
    if declared is not None and declared > limit + (MULTIPART_OVERHEAD if multipart else 0):
        counters["upload_too_large"] = counters.get("upload_too_large", 0) + 1
        return error(413, f"upload of {declared} bytes is larger than api.max_upload_mb "
                          f"({config.api.max_upload_mb:g} MB)", close=True)
    inbox = Layout(config.paths.root).inbox
    writer: InboxWriter | None = None

    def open_writer(name: str | None) -> InboxWriter:
        nonlocal writer
        w = InboxWriter(inbox, voice, check_filename(name, config.inbox), limit)
        writer = w
        w.open()
        return w

    timeout = config.api.client_timeout_seconds
    try:
        received = 0
        if multipart:
            from python_multipart.multipart import parse_options_header

            _, options = parse_options_header(ctype)
            boundary = options.get(b"boundary")
            if not boundary:
                raise UploadError(400, "multipart/form-data without a boundary")
            sink = MultipartSink(boundary, open_writer)
            async for chunk in chunks(request.stream(), timeout):
                received += len(chunk)
                if received > limit + MULTIPART_OVERHEAD:
                    raise UploadError(413, f"upload larger than api.max_upload_mb ({config.api.max_upload_mb:g} MB)")
                sink.feed(chunk)
            if not sink.done or (not sink.file_complete and sink.writer is not None):
                raise UploadError(400, "truncated multipart body (no closing boundary)")
            if sink.writer is None:
                raise UploadError(400, "no field 'file' in the multipart body")
        else:
            open_writer(request.query_params.get("filename"))
            assert writer is not None
            async for chunk in chunks(request.stream(), timeout):
                writer.write(chunk)
            if declared is not None and writer.size != declared:
                raise UploadError(400, f"truncated body: {writer.size} of {declared} bytes")
        assert writer is not None
        w = writer
        name = await anyio.to_thread.run_sync(w.commit)
    except UploadError as exc:
        counters[f"upload_{exc.status}"] = counters.get(f"upload_{exc.status}", 0) + 1
        log.info("upload refused", voice=voice, status=exc.status, error=exc.message)
        return error(exc.status, exc.message, close=exc.status in (400, 408, 413))
    except ClientDisconnect:
        counters["upload_disconnected"] = counters.get("upload_disconnected", 0) + 1
        log.info("upload cut off by the client; nothing kept", voice=voice)
        return error(400, "the client disconnected before the upload was complete", close=True)
    except OSError as exc:
        counters["upload_failed"] = counters.get("upload_failed", 0) + 1
        log.error("upload failed", voice=voice, error=str(exc))
        if exc.errno == 28:  # ENOSPC
            return error(507, "no space left on the inbox's disk", close=True)
        return error(500, f"the upload could not be written: {exc.strerror or exc}", close=True)
    finally:
        if writer is not None:
            writer.abort()
    counters["upload_ok"] = counters.get("upload_ok", 0) + 1
    log.info("upload received", voice=voice, name=name, bytes=w.size, sha256=w.sha256.hexdigest())
    _daemon(request).wake("ingest")
    return JSONResponse({"voice": voice, "name": name, "path": f"inbox/{voice}/{name}", "bytes": w.size,
                         "sha256": w.sha256.hexdigest()}, status_code=201)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (empty body: {}); 400 for bad JSON, 413 past 64 KiB, 415 for another type."""
    data = b""
    try:
        async for chunk in chunks(request.stream(), _config(request).api.client_timeout_seconds):
            data += chunk
            if len(data) > MAX_JSON_BYTES:
                raise ApiError(413, f"JSON body larger than {MAX_JSON_BYTES} bytes")
    except UploadError as exc:
        raise ApiError(exc.status, exc.message) from None
    if not data.strip():
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, f"send a JSON body as application/json (got {media or 'no Content-Type'!r})")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the JSON body must be an object")
    return value


async def post_train(request: Request) -> Response:
    _authorize(request)
    voice = _voice(request)
    body = await _json_body(request)
    if body:
        raise ApiError(400, f"unknown keys {sorted(body)}: this request takes no options (send {{}} or nothing)")
    daemon = _daemon(request)
    config = daemon.config
    layout = Layout(config.paths.root)
    rows = await run_in_threadpool(read_rows, layout.dataset(voice))
    if not (layout.dataset(voice) / "metadata.csv").exists():
        raise ApiError(404, f"voice {voice!r} has no dataset yet: nothing to train")
    if not rows:
        raise ApiError(409, f"voice {voice!r} has no accepted clips yet: nothing to train")
    trainer = daemon.trainer
    if trainer is not None:
        await run_in_threadpool(trainer.request, voice)
    else:  # workers restarting (reload): the request file is read when the trainer is back
        from ttsft_daemon.training.scheduler import request_training

        await run_in_threadpool(request_training, layout, voice)
    counters = request.app.state.counters
    counters["train_requested"] = counters.get("train_requested", 0) + 1
    log.info("training requested through the API", voice=voice, stage="train")
    return JSONResponse({"voice": voice, "requested": True,
                         "training": training_state(config, layout, voice, len(rows)),
                         "note": "the daemon's trainer starts or resumes it now (after a run of another voice "
                                 "ends); follow it at /voices/" + voice}, status_code=202)


async def _review(request: Request, action: str) -> Response:
    from filelock import Timeout

    from ttsft_daemon.report import review

    _authorize(request)
    voice = _voice(request)
    clip = str(request.path_params["clip"])
    if not views.valid_clip(clip):
        raise ApiError(400, f"invalid clip id {clip!r}")
    body = await _json_body(request)
    config = _config(request)
    root = config.paths.root
    unknown = sorted(set(body) - ({"reason"} if action == "reject" else {"text"}))
    if unknown:
        raise ApiError(400, f"unknown keys {unknown}")
    try:
        if action == "reject":
            why = body.get("reason", "")
            if not isinstance(why, str) or len(why) > 1000:
                raise ApiError(400, "reason: a string of at most 1000 characters")
            result = await run_in_threadpool(lambda: review.reject(root, voice, clip, why, lock_timeout=30.0))
        else:
            text = body.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > 2000:
                raise ApiError(400, "text: the corrected transcript, a non-empty string of at most 2000 characters")
            language = config.transcription.language or "en"
            result = await run_in_threadpool(
                lambda: review.relabel(root, voice, clip, text, language=language, lock_timeout=30.0))
    except review.ReviewError as exc:
        missing = "not in the dataset" in str(exc) or "has no dataset" in str(exc)
        raise ApiError(404 if missing else 400, str(exc)) from None
    except Timeout:
        raise ApiError(503, f"the dataset of voice {voice!r} is busy; try again") from None
    log.info("clip reviewed through the API", voice=voice, clip=result.clip, action=result.action)
    return JSONResponse({"voice": voice, "clip": result.clip, "action": result.action, "detail": result.detail})


async def post_reject(request: Request) -> Response:
    return await _review(request, "reject")


async def post_relabel(request: Request) -> Response:
    return await _review(request, "relabel")


WRITE_ERRORS = {"401": "no or wrong bearer token", "403": "writes disabled (no api.token_file)"}
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/", root, "Where the documentation is", responses={"200": "name, version, links"}),
    Endpoint("GET", "/status", get_status, "The daemon's status (the object of `ttsft-daemon status --json`)",
             responses={"200": "stages, voices, daemon"}),
    Endpoint("GET", "/voices", get_voices, "Every voice with a dataset or a training folder",
             responses={"200": "voices: name, clips, seconds, training state"}),
    Endpoint("GET", "/voices/{voice}", get_voice, "One voice: dataset, speakers, rejects, training, exports",
             "Exports list each exported ONNX voice with the word error rate of its test sentences.",
             params=(VOICE,), responses={"200": "the voice", "400": "invalid voice name", "404": "no such voice"}),
    Endpoint("GET", "/voices/{voice}/clips", get_clips, "A page of the voice's clips, accepted and rejected",
             "Accepted clips come from dataset/<voice>/metadata.csv, rejected ones from failed/*.error.json. "
             "order=worst lists the lowest quality first (clips without a score first of all).",
             params=(VOICE,
                     Param("order", "query", "worst (default) | best | name",
                           {"type": "string", "enum": list(views.ORDERS)}),
                     Param("status", "query", "all (default) | accepted | rejected",
                           {"type": "string", "enum": ["all", "accepted", "rejected"]}),
                     Param("reason", "query", "only rejected clips of this reason (reasons: see the reply)"),
                     Param("offset", "query", "clips skipped (default 0)", {"type": "integer", "minimum": 0}),
                     Param("limit", "query", "clips per page, 1-500 (default 50)",
                           {"type": "integer", "minimum": 1, "maximum": 500})),
             responses={"200": "total, reasons, clips, next_offset", "400": "bad parameter", "404": "no such voice"}),
    Endpoint("GET", "/voices/{voice}/clips/{clip}/audio", get_clip_audio, "A clip's WAV",
             params=(VOICE, CLIP), responses={"200": "audio/wav (ranges supported)", "400": "invalid name",
                                              "404": "no such clip"}, produces="audio/wav"),
    Endpoint("GET", "/voices/{voice}/report", get_report, "The voice's report page (training/<voice>/report.html)",
             params=(VOICE,), responses={"200": "text/html", "404": "no report yet"}, produces="text/html"),
    Endpoint("GET", "/metrics", get_metrics, "Prometheus metrics",
             "Items per stage, processed seconds, rejects by reason, dataset size, training epoch, step and "
             "losses, word error rate of exported voices, free disk, API write outcomes.",
             responses={"200": "text/plain; version=0.0.4"}, produces="text/plain"),
    Endpoint("GET", "/openapi.json", get_openapi, "This description (OpenAPI 3.0)", responses={"200": "OpenAPI"}),
    Endpoint("GET", "/docs", get_docs, "This description as a page (no external assets)",
             responses={"200": "text/html"}, produces="text/html"),
    Endpoint("POST", "/inbox/{voice}", post_inbox, "Upload a recording into the voice's inbox folder",
             "The file is the multipart/form-data field 'file' (its filename names it), or the raw body "
             "(application/octet-stream, audio/*, video/*) with ?filename=. It is streamed to a hidden temporary "
             "name, fsynced and renamed into inbox/<voice>/ (as name.N.ext if the name is taken), so the daemon "
             "never sees half a file. The inbox's checks apply: a listed extension, a plain visible name.",
             params=(VOICE, Param("filename", "query", "file name, for a raw body")),
             responses={"201": "stored: voice, name, path, bytes, sha256", "400": "bad request or truncated body",
                        **WRITE_ERRORS, "408": "client too slow", "409": "inbox folder blocked",
                        "413": "larger than api.max_upload_mb", "415": "extension or Content-Type not accepted",
                        "507": "disk full"},
             auth=True, body={"multipart/form-data": {"schema": {"type": "object", "properties": {
                 "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
    Endpoint("POST", "/voices/{voice}/train", post_train, "Train or resume the voice now, whatever the threshold",
             "Like `ttsft-daemon train --voice`, done by the running daemon's trainer. The request is kept in "
             "training/<voice>/train.request.json until a run finishes, so a restart does not lose it.",
             params=(VOICE,), responses={"202": "requested", "400": "bad voice or JSON", **WRITE_ERRORS,
                                         "404": "no dataset", "409": "no clips yet", "415": "body not JSON"},
             auth=True, body={"application/json": {"schema": {"type": "object"}}}),
    Endpoint("POST", "/voices/{voice}/clips/{clip}/reject", post_reject, "Take a clip out of the dataset for good",
             "Like `ttsft-daemon review reject`: its row leaves metadata.csv, its files go to failed/ (stage review), "
             "and a redo of its recording does not bring it back. Rejecting it again changes nothing.",
             params=(VOICE, CLIP), responses={"200": "clip, action (rejected | unchanged), detail",
                                              "400": "bad name or JSON", **WRITE_ERRORS, "404": "no such clip",
                                              "415": "body not JSON", "503": "dataset busy"},
             auth=True, body={"application/json": {"schema": {"type": "object", "properties": {
                 "reason": {"type": "string", "maxLength": 1000}}}}}),
    Endpoint("POST", "/voices/{voice}/clips/{clip}/relabel", post_relabel, "Correct a clip's transcript",
             "Like `ttsft-daemon review relabel`: the text is normalised as transcripts are (numbers spelled out) "
             "and replaces the transcript in metadata.csv; the next training run uses it.",
             params=(VOICE, CLIP), responses={"200": "clip, action (relabeled | unchanged), detail",
                                              "400": "bad name, JSON or empty text", **WRITE_ERRORS,
                                              "404": "no such clip", "415": "body not JSON", "503": "dataset busy"},
             auth=True, body={"application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
                 "text": {"type": "string", "maxLength": 2000}}}}}),
)


def openapi_schema(endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for e in endpoints:
        op: dict[str, Any] = {"summary": e.summary, "operationId": e.handler.__name__}
        if e.description:
            op["description"] = e.description
        if e.params:
            op["parameters"] = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                                 "description": p.description, "schema": p.schema} for p in e.params]
        if e.body:
            op["requestBody"] = {"content": e.body}
        op["responses"] = {code: {"description": text} for code, text in e.responses.items()}
        if e.auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "ttsft-daemon API", "version": __version__,
                 "description": "The local HTTP API of ttsft-daemon: read its state; upload recordings and start "
                                "training with a bearer token (api.token_file). Errors are JSON {error, status}."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


# ------------------------------------------------------------------------------------------------ app
class SecurityHeaders:
    """nosniff, no referrer, no caching of API answers; pages set their own Content-Security-Policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for k, v in ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                             (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY")):
                    if k not in names:
                        headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(listen: str) -> list[str]:
    """Host headers accepted: on a loopback address only the loopback names (a web page that rebinds its DNS
    name to 127.0.0.1 cannot read the API); on another address, any."""
    host, _ = parse_listen(listen)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return ["*"]
    return sorted({"localhost", "127.0.0.1", "::1", "[::1]", host})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status == 401:
        response = error(exc.status, exc.message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="ttsft-daemon"'
        return response
    return error(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such endpoint (see /docs)", 405: "method not allowed here (see /docs)"}.get(
        exc.status_code, str(exc.detail))
    response = error(exc.status_code, message)
    response.headers.update(exc.headers or {})
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("API request failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    return error(500, "internal error (logged by the daemon)")


def build_app(daemon: DaemonLike) -> Starlette:
    routes = [Route(e.path, e.handler, methods=[e.method]) for e in ENDPOINTS]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders),
                    Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(daemon.config.api.listen))],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.state.daemon = daemon
    app.state.counters = {}
    app.state.schema = openapi_schema(ENDPOINTS)
    return app
