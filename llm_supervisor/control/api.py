"""The control API: a Starlette app over a ControlBackend.

Endpoints (JSON unless noted)::

    GET  /v1/status                             the status document (control/backend.py)
    GET  /v1/gpus                               {"available", "reason", "gpus"}
    POST /v1/services/{name}/start|stop|restart ?wait=1
    POST /v1/reload                             ?wait=1&dry_run=1
    POST /v1/upgrade                            re-exec in place; {"from", "to", "pid", ...}
    GET  /v1/services/{name}/logs               ?lines=N&since=SECONDS|10m&follow=1 (NDJSON)
    GET  /metrics                               Prometheus text format
    GET  /v1/events                             ?after=SEQ&limit=N&follow=1 (SSE) (page.py)
    GET  /  and  /ui                            the status page (page.py)

Errors are ``{"error": {"type": ..., "message": ...}}`` plus ``service``/``reason``/``cause``/
``hint`` for start failures; ``client.py`` turns them back into the typed errors.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..durations import parse_duration
from ..errors import (
    AdmissionError,
    PortInUseError,
    ServiceError,
    StartFailedError,
    SupervisorError,
    UnknownServiceError,
    UpgradeError,
)
from ..logsetup import get_logger
from .backend import ControlBackend, LogLine
from .logstream import NDJSON, FollowResponse, encode_line
from .metrics import build_registry
from .page import BrowserGuard, page_routes

log = get_logger("llm_supervisor.control")

DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 1_000_000
_TRUE = {"1", "true", "yes", "on"}

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(ValueError):
    """A query parameter the API cannot use; answered with 400."""


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """Map a typed error to (HTTP status, JSON body). Order matters: subclasses first."""
    err: dict[str, Any] = {"type": "internal", "message": str(exc) or type(exc).__name__}
    status = 500
    if isinstance(exc, BadRequest):
        status, err["type"] = 400, "bad_request"
    elif isinstance(exc, UnknownServiceError):
        status, err["type"], err["service"] = 404, "unknown_service", exc.name
    elif isinstance(exc, StartFailedError):
        kind = {AdmissionError: "admission", PortInUseError: "port_in_use"}.get(type(exc))
        status = 409 if kind else 500
        err.update(type=kind or "start_failed", service=exc.name, reason=exc.reason)
        err.update(cause=exc.cause, hint=exc.hint)
    elif isinstance(exc, UpgradeError):
        status, err["type"] = 409, "upgrade_failed"
    elif isinstance(exc, ServiceError):
        status, err["type"] = 409, "service_error"
    elif isinstance(exc, SupervisorError):
        err["type"] = "error"
    return status, {"error": err}


def _guarded(handler: Handler) -> Handler:
    """Turn the errors a handler raises into the JSON error shape, and log the unexpected."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except (SupervisorError, BadRequest) as exc:
            status, body = error_body(exc)
        except Exception as exc:
            log.exception("control.error", path=request.url.path)
            status, body = error_body(exc)
        return JSONResponse(body, status_code=status)

    return wrapper


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in _TRUE


def _lines(request: Request) -> int:
    raw = request.query_params.get("lines", str(DEFAULT_LOG_LINES))
    if raw == "all":
        return MAX_LOG_LINES
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"lines must be an integer or 'all', got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"lines must not be negative, got {value}")
    return min(value, MAX_LOG_LINES)


def _since(request: Request) -> float | None:
    """``since`` is how far back (seconds or a duration like 10m); returns an absolute time."""
    raw = request.query_params.get("since")
    if not raw:
        return None
    try:
        return time.time() - parse_duration(raw)
    except ValueError as exc:
        raise BadRequest(f"since: {exc}") from None


class BearerAuth:
    """Pure ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            body = {"error": {"type": "unauthorized", "message": "missing or wrong bearer token"}}
            headers = {"WWW-Authenticate": 'Bearer realm="llm-supervisor"'}
            await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        sent = dict(scope.get("headers", [])).get(b"authorization", b"")
        return hmac.compare_digest(sent, self._expected)


def create_app(
    backend: ControlBackend,
    *,
    token: str | None = None,
    closing: asyncio.Event | None = None,
    collectors: Sequence[Collector] = (),
) -> ASGIApp:
    """The ASGI app. ``closing`` (set by the server on shutdown) ends follow streams;
    ``collectors`` (e.g. the gateway's counters) are added to ``/metrics``."""
    ending = closing or asyncio.Event()
    registry = build_registry(backend, collectors)

    async def status(_: Request) -> Response:
        return JSONResponse(backend.status())

    async def gpus(_: Request) -> Response:
        return JSONResponse(backend.gpus())

    def service_action(action: str) -> Handler:
        async def handler(request: Request) -> Response:
            name, wait = request.path_params["name"], _flag(request, "wait")
            log.info("control.action", service=name, action=action, wait=wait)
            if action == "start":
                await backend.start(name, wait)
            elif action == "restart":
                await backend.restart(name, wait)
            else:
                await backend.stop(name)
            entry = backend.status().get("services", {}).get(name, {})
            return JSONResponse({"service": name, "action": action, "state": entry.get("state")})

        return handler

    async def reload(request: Request) -> Response:
        result = await backend.reload(_flag(request, "wait"), _flag(request, "dry_run"))
        return JSONResponse(result)

    async def upgrade(_: Request) -> Response:
        log.info("control.upgrade")
        return JSONResponse(await backend.upgrade())

    async def logs(request: Request) -> Response:
        name = request.path_params["name"]
        lines, since = _lines(request), _since(request)
        if not _flag(request, "follow"):
            tail = backend.log_tail(name, lines, since)
            return Response(b"".join(encode_line(x) for x in tail), media_type=NDJSON)
        backend.log_tail(name, 0, None)  # unknown names fail here, before anything subscribes
        follow = backend.follow_logs(name)  # subscribe first: nothing slips between the two
        try:
            head: list[LogLine] = backend.log_tail(name, lines, since) if lines else []
        except BaseException:
            aclose = getattr(follow, "aclose", None)
            if aclose is not None:
                await aclose()
            raise
        return FollowResponse(head, follow, ending)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v1/status", _guarded(status), methods=["GET"]),
        Route("/v1/gpus", _guarded(gpus), methods=["GET"]),
        *(
            Route(
                f"/v1/services/{{name}}/{action}",
                _guarded(service_action(action)),
                methods=["POST"],
            )
            for action in ("start", "stop", "restart")
        ),
        Route("/v1/reload", _guarded(reload), methods=["POST"]),
        Route("/v1/upgrade", _guarded(upgrade), methods=["POST"]),
        Route("/v1/services/{name}/logs", _guarded(logs), methods=["GET"]),
        Route("/metrics", _guarded(metrics), methods=["GET"]),
        *page_routes(ending),
    ]
    app: ASGIApp = Starlette(routes=routes)
    return BrowserGuard(BearerAuth(app, token) if token else app, token)
