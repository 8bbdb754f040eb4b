"""The status page and the daemon's event tail on the control API.

    GET /  and  /ui           the page (llm_supervisor/web/status.html, one self-contained file)
    GET /v1/events            {"events": [...], "last_seq": N}   ?after=SEQ&limit=N
    GET /v1/events?follow=1   server-sent events: the tail, then each new event (id = seq)

Browsers cannot send a bearer header on a page load, so with a token (TCP control API) the
operator opens ``/?token=TOKEN`` once: ``BrowserGuard`` answers with a cookie (HttpOnly,
SameSite=Strict) and a redirect to the bare URL, and turns that cookie back into the
``Authorization`` header that ``BearerAuth`` checks. Whoever gets the page from the control
API may act (the socket's permissions or the token already said so), so it shows the
start/stop/restart buttons; the read-only variant (``controls=False``) has none.

Without a token the API is open to whoever reaches it (the Unix socket, or loopback TCP), so
the guard also refuses what a web page in the operator's browser could send there: requests
whose ``Origin`` is another site (cross-site POSTs) and ``Host`` names that are not local
(DNS rebinding: names with dots that are not IP addresses), much as Ollama does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from collections.abc import AsyncIterator
from functools import cache
from http.cookies import SimpleCookie
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..events import EVENTS, Event, EventRing
from .logstream import FollowResponse, _wait_disconnect

COOKIE = "llm_supervisor_token"
PAGE_PATHS = ("/", "/ui")
HEARTBEAT_S = 15.0
DEFAULT_EVENTS = 200
_CONFIG_MARK = "/*__CONFIG__*/"


@cache
def page_html() -> str:
    return resources.files("llm_supervisor.web").joinpath("status.html").read_text("utf-8")


def render_page(*, controls: bool, base: str = "") -> str:
    """The page with its settings injected (the page has no other way to learn them)."""
    config = json.dumps({"controls": controls, "base": base})
    return page_html().replace(_CONFIG_MARK, f"window.LLM_SUPERVISOR = {config};", 1)


def _page_response(controls: bool) -> Response:
    headers = {
        "Cache-Control": "no-store",
        # Everything is inline; nothing may be loaded from anywhere else.
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(render_page(controls=controls), headers=headers)


def _int_param(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


class EventStream(Response):
    """``text/event-stream``: ``head``, then live events, heartbeats while quiet."""

    media_type = "text/event-stream"

    def __init__(
        self, head: list[Event], follow: AsyncIterator[Event], closing: asyncio.Event
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._head, self._follow, self._closing = head, follow, closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._send(send, b"retry: 2000\n\n" + b"".join(map(encode_sse, self._head)))
            newest = self._head[-1]["seq"] if self._head else 0
            pump = self._pump(send, newest)
            await FollowResponse._race(pump, _wait_disconnect(receive), self._closing.wait())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the browser went away mid-write
        finally:
            aclose = getattr(self._follow, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _pump(self, send: Send, newest: int) -> None:
        follow = aiter(self._follow)
        while True:
            try:
                event = await asyncio.wait_for(anext(follow), HEARTBEAT_S)
            except TimeoutError:
                await self._send(send, b": ping\n\n")  # proxies and browsers see we live
                continue
            if event["seq"] > newest:  # subscribed before the tail was taken: skip repeats
                await self._send(send, encode_sse(event))

    @staticmethod
    async def _send(send: Send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})


def encode_sse(event: Event) -> bytes:
    return f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def page_routes(
    closing: asyncio.Event, *, controls: bool = True, ring: EventRing = EVENTS
) -> list[Route]:
    """The page and ``/v1/events`` for ``create_app``."""

    async def page(_: Request) -> Response:
        return _page_response(controls)

    async def events(request: Request) -> Response:
        limit = max(0, _int_param(request.query_params.get("limit"), DEFAULT_EVENTS))
        # EventSource sends Last-Event-ID when it reconnects: resume after what it saw.
        resume = request.query_params.get("after") or request.headers.get("last-event-id")
        after = _int_param(resume, 0)
        if request.query_params.get("follow", "").lower() not in {"1", "true", "yes", "on"}:
            return JSONResponse({"events": ring.tail(limit, after), "last_seq": ring.last_seq})
        follow = ring.follow()  # subscribe first, then take the tail: nothing slips between
        return EventStream(ring.tail(limit, after), follow, closing)

    return [
        *(Route(path, page, methods=["GET"]) for path in PAGE_PATHS),
        Route("/v1/events", events, methods=["GET"]),
    ]


# -- browser guard ---------------------------------------------------------------------


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope.get("headers", []))


def _hostname(hostport: str) -> str:
    return (urlsplit(f"//{hostport}").hostname or "").lower()


def _local_name(name: str) -> bool:
    """IP literals and single-label names (localhost, the CLI's "llm-supervisor") are local;
    a rebinding attack needs a DNS name of the attacker's, which has dots."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name)
        return True
    return "." not in name or name.endswith(".localhost")


class BrowserGuard:
    """Cookie login for the page, cookie → bearer header, and the cross-site refusals."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(headers)
        if refusal:
            body = {"error": {"type": "forbidden", "message": refusal}}
            await JSONResponse(body, status_code=403)(scope, receive, send)
            return
        if self.token and scope["path"] in PAGE_PATHS and self._login(scope):
            await self._set_cookie(scope)(scope, receive, send)
            return
        if self.token and b"authorization" not in headers:
            scope = self._cookie_as_bearer(scope, headers)
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-origin request from {origin} refused"
        if not self.token and host and not _local_name(_hostname(host)):
            return f"host {host!r} is not a local name; use a token to serve other names"
        return None

    def _login(self, scope: Scope) -> bool:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        sent = (query.get("token") or [""])[0]
        assert self.token is not None
        return bool(sent) and hmac.compare_digest(sent.encode(), self.token.encode())

    def _set_cookie(self, scope: Scope) -> Response:
        response = RedirectResponse(scope["path"], status_code=303)
        assert self.token is not None
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
        return response

    def _cookie_as_bearer(self, scope: Scope, headers: dict[bytes, bytes]) -> Scope:
        jar: SimpleCookie = SimpleCookie()
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
        morsel = jar.get(COOKIE)
        if morsel is None:
            return scope
        extra = (b"authorization", f"Bearer {morsel.value}".encode())
        return {**scope, "headers": [*scope.get("headers", []), extra]}
