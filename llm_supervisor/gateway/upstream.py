"""Forwarding one request to an engine and streaming its answer back, chunk by chunk.

Why aiohttp and a plain ASGI path: measured on this project's 2-core machine with
bench/gateway_bench.py, Starlette's StreamingResponse over httpx's own transport collapsed
to ~200 req/s at 64 concurrent clients, while this path over aiohttp's client does
thousands (numbers in README "Gateway and keep_alive policy"). httpx over the httpx-aiohttp
transport only adds a layer on top of the same aiohttp client, so we use aiohttp directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from starlette.types import Receive, Scope, Send

from .backend import Upstream

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the transport recomputes. The client's
# Host is dropped on purpose: Ollama answers 403 to a non-local Host (server/routes.go
# allowedHostsMiddleware); aiohttp then sends Host: 127.0.0.1:port.
_DROP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization proxy-connection te "
    b"trailer transfer-encoding upgrade host content-length".split()
)
_DROP_RESPONSE = _DROP - {b"content-length"}  # body bytes pass unchanged: length stays right

ErrorBody = Callable[[int, str], dict[str, Any]]


def ollama_error(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


async def send_json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _DisconnectWatch:
    """Cancels the request's task when the client goes away (uvicorn's send() then no-ops)."""

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        self._done = False
        self._owner = asyncio.current_task()
        self._task = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._done and self._owner is not None:
            self.disconnected = True
            self._owner.cancel()

    def close(self) -> None:
        self._done = True
        self._task.cancel()


class UpstreamClient:
    """One pooled aiohttp session for all engines; create and close it inside the loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                # Generation may legitimately take minutes: only connecting is bounded.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,  # pass bytes as the engine sent them
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get_json(self, up: Upstream, path: str, timeout: float = 5.0) -> Any:
        """A small side request (merging /api/tags, /api/ps; the pin loop)."""
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with self.session().get(up.base_url + path, timeout=client_timeout) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def post_json(self, up: Upstream, path: str, payload: object, timeout: float) -> Any:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        url = up.base_url + path
        async with self.session().post(url, json=payload, timeout=client_timeout) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def forward(
        self,
        up: Upstream,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
    ) -> bool:
        """Proxy the exchange; False if the client disconnected (upstream then cancelled)."""
        watch = _DisconnectWatch(receive) if isinstance(body, bytes | None) else None
        try:
            await self._exchange(up, scope, send, body, error_body)
            return True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watch is not None and watch.disconnected and task is not None:
                task.uncancel()  # our own cancellation: the client left, nothing to raise
                return False
            raise
        finally:
            if watch is not None:
                watch.close()

    async def _exchange(
        self,
        up: Upstream,
        scope: Scope,
        send: Send,
        body: bytes | AsyncIterator[bytes] | None,
        error_body: ErrorBody,
    ) -> None:
        url = up.base_url + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        try:
            resp = await self.session().request(
                scope["method"],
                url,
                data=body,
                headers=_request_headers(scope),
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as exc:
            message = f"engine {up.service} unreachable on 127.0.0.1:{up.port}: {exc}"
            raise UpstreamUnavailable(message) from exc
        try:
            await _relay(resp, send)
        except BaseException:
            resp.close()  # drop the connection: the engine sees the cancel and stops work
            raise
        finally:
            resp.release()


class UpstreamUnavailable(Exception):
    """The engine did not accept the connection; nothing was sent to the client yet."""


async def _relay(resp: aiohttp.ClientResponse, send: Send) -> None:
    headers = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in _DROP_RESPONSE]
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    if resp.content_length is not None and resp.content_length < 1 << 20:
        await send({"type": "http.response.body", "body": await resp.read(), "more_body": False})
        return
    async for chunk in resp.content.iter_any():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _request_headers(scope: Scope) -> list[tuple[str, str]]:
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in scope["headers"]
        if k.lower() not in _DROP
    ]
    client = scope.get("client")
    if client:
        headers.append(("X-Forwarded-For", str(client[0])))
    return headers
