"""The status page and the daemon's event tail on the control API.

    GET /  and  /ui           the page (llm_supervisor/web/status.html, one self-contained file)
    GET /v1/events            {"events": [...], "last_seq": N}   ?after=SEQ&limit=N
    GET /v1/events?follow=1   server-sent events: the tail, then each new event (id = seq)

Whoever gets the page from the control API may act (the socket's permissions or the token
already said so), so it shows the start/stop/restart buttons; the read-only variant
(``controls=False``) has none. Who may load it, and from where, is ``guard.py``'s business.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources

from aiohttp import web

from ..events import EVENTS, Event, EventRing
from .guard import PAGE_PATHS
from .logstream import close_iterator, race

HEARTBEAT_S = 15.0
DEFAULT_EVENTS = 200
_CONFIG_MARK = "/*__CONFIG__*/"
_TRUE = {"1", "true", "yes", "on"}


@cache
def page_html() -> str:
    return resources.files("llm_supervisor.web").joinpath("status.html").read_text("utf-8")


def render_page(*, controls: bool, base: str = "") -> str:
    """The page with its settings injected (the page has no other way to learn them)."""
    config = json.dumps({"controls": controls, "base": base})
    return page_html().replace(_CONFIG_MARK, f"window.LLM_SUPERVISOR = {config};", 1)


def _page_response(controls: bool) -> web.Response:
    headers = {
        "Cache-Control": "no-store",
        # Everything is inline; nothing may be loaded from anywhere else.
        "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(
        text=render_page(controls=controls), content_type="text/html", headers=headers
    )


def _int_param(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


async def event_stream(
    request: web.Request, head: list[Event], follow: AsyncIterator[Event], closing: asyncio.Event
) -> web.StreamResponse:
    """``text/event-stream``: ``head``, then live events, heartbeats while quiet."""
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    }
    response = web.StreamResponse(headers=headers)
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n" + b"".join(map(encode_sse, head)))
        newest = head[-1]["seq"] if head else 0
        await race(_pump(response, follow, newest), closing.wait())
        await response.write_eof()
    except ConnectionError:
        pass  # the browser went away mid-write
    finally:
        await close_iterator(follow)
    return response


async def _pump(response: web.StreamResponse, follow: AsyncIterator[Event], newest: int) -> None:
    events = aiter(follow)
    while True:
        try:
            event = await asyncio.wait_for(anext(events), HEARTBEAT_S)
        except TimeoutError:
            await response.write(b": ping\n\n")  # proxies and browsers see we live
            continue
        if event["seq"] > newest:  # subscribed before the tail was taken: skip repeats
            await response.write(encode_sse(event))


def encode_sse(event: Event) -> bytes:
    return f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def add_page_routes(
    router: web.UrlDispatcher,
    closing: asyncio.Event,
    *,
    controls: bool = True,
    ring: EventRing = EVENTS,
) -> None:
    """The page and ``/v1/events`` for ``create_app``."""

    async def page(_: web.Request) -> web.StreamResponse:
        return _page_response(controls)

    async def events(request: web.Request) -> web.StreamResponse:
        query = request.query
        limit = max(0, _int_param(query.get("limit"), DEFAULT_EVENTS))
        # EventSource sends Last-Event-ID when it reconnects: resume after what it saw.
        after = _int_param(query.get("after") or request.headers.get("Last-Event-ID"), 0)
        if query.get("follow", "").lower() not in _TRUE:
            return web.json_response({"events": ring.tail(limit, after), "last_seq": ring.last_seq})
        follow = ring.follow()  # subscribe first, then take the tail: nothing slips between
        return await event_stream(request, ring.tail(limit, after), follow, closing)

    for path in PAGE_PATHS:
        router.add_get(path, page)
    router.add_get("/v1/events", events)
