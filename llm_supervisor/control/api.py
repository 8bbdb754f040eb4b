"""The control API: an aiohttp application over a ControlBackend.

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
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

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
from .guard import error_response, guard
from .logstream import NDJSON, close_iterator, encode_line, follow_response
from .metrics import build_registry
from .page import add_page_routes

log = get_logger("llm_supervisor.control")

DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 1_000_000
_TRUE = {"1", "true", "yes", "on"}


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


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn the errors a handler raises into the JSON error shape, and log the unexpected."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # the router's own answers (no such path, wrong method), in the API's shape
        kind = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, kind, f"{request.method} {request.path}: {exc.reason}")
    except (SupervisorError, BadRequest) as exc:
        status, body = error_body(exc)
    except Exception as exc:
        log.exception("control.error", path=request.path)
        status, body = error_body(exc)
    return web.json_response(body, status=status)


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "").lower() in _TRUE


def _lines(query: Mapping[str, str]) -> int:
    raw = query.get("lines", str(DEFAULT_LOG_LINES))
    if raw == "all":
        return MAX_LOG_LINES
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"lines must be an integer or 'all', got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"lines must not be negative, got {value}")
    return min(value, MAX_LOG_LINES)


def _since(query: Mapping[str, str]) -> float | None:
    """``since`` is how far back (seconds or a duration like 10m); returns an absolute time."""
    raw = query.get("since")
    if not raw:
        return None
    try:
        return time.time() - parse_duration(raw)
    except ValueError as exc:
        raise BadRequest(f"since: {exc}") from None


async def _shielded(action: Awaitable[Any]) -> Any:
    """A client that hangs up (Ctrl-C on ``start --wait``) cancels the handler, not the
    start or reload it asked for: that goes on, as if the client were still waiting."""
    return await asyncio.shield(asyncio.ensure_future(action))


def create_app(
    backend: ControlBackend,
    *,
    token: str | None = None,
    closing: asyncio.Event | None = None,
    collectors: Sequence[Collector] = (),
) -> web.Application:
    """The aiohttp app. ``token``: required from every client (TCP); ``closing`` (set by the
    server on shutdown) ends follow streams; ``collectors`` (e.g. the gateway's counters)
    are added to ``/metrics``."""
    ending = closing or asyncio.Event()
    registry = build_registry(backend, collectors)

    async def status(_: web.Request) -> web.StreamResponse:
        return web.json_response(backend.status())

    async def gpus(_: web.Request) -> web.StreamResponse:
        return web.json_response(backend.gpus())

    def service_action(action: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            name, wait = request.match_info["name"], _flag(request.query, "wait")
            log.info("control.action", service=name, action=action, wait=wait)
            if action == "start":
                await _shielded(backend.start(name, wait))
            elif action == "restart":
                await _shielded(backend.restart(name, wait))
            else:
                await _shielded(backend.stop(name))
            entry = backend.status().get("services", {}).get(name, {})
            return web.json_response(
                {"service": name, "action": action, "state": entry.get("state")}
            )

        return handler

    async def reload(request: web.Request) -> web.StreamResponse:
        query = request.query
        result = await _shielded(backend.reload(_flag(query, "wait"), _flag(query, "dry_run")))
        return web.json_response(result)

    async def upgrade(_: web.Request) -> web.StreamResponse:
        log.info("control.upgrade")
        return web.json_response(await _shielded(backend.upgrade()))

    async def logs(request: web.Request) -> web.StreamResponse:
        name, query = request.match_info["name"], request.query
        lines, since = _lines(query), _since(query)
        if not _flag(query, "follow"):
            tail = backend.log_tail(name, lines, since)
            body = b"".join(encode_line(x) for x in tail)
            return web.Response(body=body, headers={"Content-Type": NDJSON})
        backend.log_tail(name, 0, None)  # unknown names fail here, before anything subscribes
        follow = backend.follow_logs(name)  # subscribe first: nothing slips between the two
        try:
            head: list[LogLine] = backend.log_tail(name, lines, since) if lines else []
        except BaseException:
            await close_iterator(follow)
            raise
        return await follow_response(request, head, follow, ending)

    async def metrics(_: web.Request) -> web.StreamResponse:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application(middlewares=[guard(token), json_errors])
    router = app.router
    router.add_get("/v1/status", status)
    router.add_get("/v1/gpus", gpus)
    for action in ("start", "stop", "restart"):
        router.add_post(f"/v1/services/{{name}}/{action}", service_action(action))
    router.add_post("/v1/reload", reload)
    router.add_post("/v1/upgrade", upgrade)
    router.add_get("/v1/services/{name}/logs", logs)
    router.add_get("/metrics", metrics)
    add_page_routes(router, ending)
    return app
