"""Forwarding one request to an engine and streaming its answer back.

Two paths. The common one (HTTP/1.1 client, a body the gateway holds in memory) is
relay.py's: llhttp-parsed keep-alive connections whose answer bytes pass through unchanged.
aiohttp's client takes the rest (HEAD, HTTP/1.0 clients, request bodies streamed through
unread such as model uploads) and the side requests (merged /api/tags, the pin loop).

Why aiohttp for the server and the fallback client: measured with bench/gateway_bench.py
on this project's 2-core machine at 64 clients (nginx with one worker: ~46,000 req/s):
- Starlette's StreamingResponse over httpx's own transport: ~200 req/s;
- a plain ASGI app under uvicorn over aiohttp's client: ~7,000 req/s, because uvicorn
  never cancels an ASGI app whose client left, so every request needed its own
  disconnect-watch task;
- aiohttp's low-level web server over aiohttp's client: ~10,000 req/s. Its
  ``handler_cancellation`` cancels the handler when the client hangs up, which is exactly
  the "client gone → cancel upstream" rule, for free.
httpx over the httpx-aiohttp transport only adds a layer on top of the same aiohttp client.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .backend import Upstream
from .relay import IDEMPOTENT, BrokenAnswer, EngineConnection, EngineGone, EnginePool, Relayed

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the transport recomputes. The client's
# Host is dropped on purpose: Ollama answers 403 to a non-local Host (server/routes.go
# allowedHostsMiddleware); aiohttp then sends Host: 127.0.0.1:port.
_DROP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
        "content-length",
        "expect",  # the gateway answers 100-continue itself and forwards the whole body
    }
)  # fmt: skip
_DROP_AUTH = _DROP | {"authorization", "x-api-key"}  # the client's key stays at the gateway
_DROP_RAW = frozenset(name.encode() for name in _DROP)
_DROP_AUTH_RAW = frozenset(name.encode() for name in _DROP_AUTH)
_DROP_RESPONSE = _DROP - {"content-length"}  # body bytes pass unchanged: length stays right
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_BUFFER_LIMIT = 1 << 20  # answers with a known length below this are sent in one write

ErrorBody = Callable[[int, str], dict[str, Any]]
# perf_counter() when a streamed answer's first body chunk was written (gateway latency stats)
FIRST_BYTE_AT = web.ResponseKey("llm_supervisor_first_byte_at", float)


def ollama_error(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def json_response(status: int, payload: object) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )


class UpstreamUnavailable(Exception):
    """No usable answer from the engine (refused, or not HTTP); nothing sent to the client."""


class UpstreamBroke(Exception):
    """The engine's answer broke off after its start was already sent to the client."""

    def __init__(self, response: web.StreamResponse, message: str) -> None:
        super().__init__(message)
        self.response = response


class UpstreamClient:
    """One pooled aiohttp session for all engines; create and close it inside the loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.pool = EnginePool()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                # Generation may legitimately take minutes: only connecting is bounded.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,  # pass bytes as the engine sent them
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
                cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep clients' cookies
            )
        return self._session

    async def close(self) -> None:
        self.pool.close()
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
        request: web.BaseRequest,
        body: bytes | AsyncIterator[bytes] | None,
        extra_headers: list[tuple[str, str]] | None = None,
        *,
        strip_auth: bool = False,
    ) -> web.StreamResponse:
        """Proxy the exchange. A client hang-up cancels this task (handler_cancellation),
        and the cancellation closes the engine connection, so the engine stops the work."""
        if (body is None or isinstance(body, bytes)) and _leanable(request):  # relay.py's path
            body = body or b""
            conn = await self._send(up, request, _request_head(request, up, body, strip_auth), body)
            try:
                return await _pass_on(conn, request, up, extra_headers or [])
            except BaseException:
                conn.close()  # cancelled: the engine sees the hang-up and stops the work
                raise
            finally:
                self.pool.release(conn)
        try:
            resp = await self.session().request(
                request.method,
                up.base_url + request.raw_path,  # raw_path keeps the query string as sent
                data=body or None,  # b"": no payload object, aiohttp still sends the length
                headers=_request_headers(request, up, strip_auth),
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError as exc:
            message = f"engine {up.service} unreachable on 127.0.0.1:{up.port}: {exc}"
            raise UpstreamUnavailable(message) from exc
        except aiohttp.ClientError as exc:  # it answered, but not with HTTP we can relay
            message = f"engine {up.service} sent a broken answer: {exc}"
            raise UpstreamUnavailable(message) from exc
        try:
            return await _relay(resp, request, extra_headers)
        except BaseException:
            resp.close()  # drop the connection: the engine sees the cancel and stops work
            raise
        finally:
            resp.release()

    async def _send(
        self, up: Upstream, request: web.BaseRequest, head: bytes, body: bytes
    ) -> EngineConnection:
        """The request sent and the answer's head received. Retried once, on a new
        connection, when the engine had closed a kept one before answering anything
        (idempotent requests only, as aiohttp and RFC 9112 §9.3.1 do)."""
        conn = self.pool.spare(up)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(up)
            try:
                conn.send(head, body)
                while not (conn.head_done or conn.error):
                    await conn.wait()
            except BaseException:
                conn.close()
                raise
            error = conn.error
            if error is None:
                return conn
            stale = isinstance(error, EngineGone) and not error.answered
            if not (reused and stale and request.method in IDEMPOTENT):
                raise _unavailable(up, error)
            conn, reused = None, False

    async def _connect(self, up: Upstream) -> EngineConnection:
        try:
            return await self.pool.connect(up)
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            message = f"engine {up.service} unreachable on 127.0.0.1:{up.port}: {reason}"
            raise UpstreamUnavailable(message) from exc


def _leanable(request: web.BaseRequest) -> bool:
    """Everything but HEAD (llhttp cannot be told that its answer has no body) and HTTP/1.0
    clients (they cannot take a chunked answer as it is); the caller checks that the body
    is in memory (model uploads are streamed through unread)."""
    return request.version == aiohttp.HttpVersion11 and request.method != "HEAD"


def _unavailable(up: Upstream, error: Exception) -> UpstreamUnavailable:
    if isinstance(error, BrokenAnswer):
        return UpstreamUnavailable(f"engine {up.service} sent a broken answer: {error}")
    return UpstreamUnavailable(f"engine {up.service} unreachable on 127.0.0.1:{up.port}: {error}")


def _request_head(request: web.BaseRequest, up: Upstream, body: bytes, strip_auth: bool) -> bytes:
    """The request as the engine gets it: the client's headers minus hop-by-hop ones (and
    its key, as ``_request_headers`` says), Host set to the engine's address (Ollama 403s
    others), X-Forwarded-For added."""
    method = request.method
    target = request.raw_path.encode("utf-8", "surrogateescape")
    parts = [b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (method.encode(), target, up.port)]
    drop = _DROP_AUTH_RAW if strip_auth or up.api_key else _DROP_RAW
    for name, value in request.raw_headers:
        if name.lower() not in drop:
            parts += (name, b": ", value, b"\r\n")
    if up.api_key:
        parts.append(_header_lines([("Authorization", f"Bearer {up.api_key}")]))
    if request.remote:
        parts.append(b"X-Forwarded-For: %s\r\n" % request.remote.encode())
    if body or method not in _NO_BODY_METHODS:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    return b"".join(parts)


async def _pass_on(
    conn: EngineConnection, request: web.BaseRequest, up: Upstream, extra: list[tuple[str, str]]
) -> web.StreamResponse:
    """The engine's answer to the client: a short one (known length under _BUFFER_LIMIT) in
    one write once complete; anything else as it arrives, straight from the engine's socket."""
    buffered = conn.length is not None and conn.length < _BUFFER_LIMIT
    while buffered and not (conn.complete or conn.error):
        await conn.wait()
    if buffered and conn.error:
        raise _unavailable(up, conn.error)
    client = request.transport
    if client is None or client.is_closing():
        raise ConnectionResetError("the client closed its connection")
    keep_alive = request.keep_alive and not conn.close_delimited
    out = Relayed(conn.status, keep_alive)
    first = b"".join(conn.pending)
    conn.pending.clear()
    client.write(conn.client_head(_header_lines(extra), not keep_alive) + first)
    if buffered:
        return out
    if first:
        out[FIRST_BYTE_AT] = time.perf_counter()
    conn.relay_to(request)
    while not conn.complete:
        if conn.error:
            raise UpstreamBroke(out, str(conn.error))
        if conn.paused:
            await request.writer.drain()
            conn.resume()
        else:
            await conn.wait()
    if not first and conn.first_body_at is not None:
        out[FIRST_BYTE_AT] = conn.first_body_at
    return out


def _header_lines(headers: list[tuple[str, str]]) -> bytes:
    if not headers:
        return b""
    lines = [f"{name}: {value}\r\n".encode() for name, value in headers]
    if any(b"\r" in line[:-2] or b"\n" in line[:-2] for line in lines):
        raise ValueError(f"a line break in a header for the client: {headers!r}")
    return b"".join(lines)


async def _relay(
    resp: aiohttp.ClientResponse,
    request: web.BaseRequest,
    extra_headers: list[tuple[str, str]] | None = None,
) -> web.StreamResponse:
    extra = extra_headers or []
    if resp.content_length is not None and resp.content_length < _BUFFER_LIMIT:
        headers = _response_headers(resp, _DROP) + extra  # web.Response sets the length
        return web.Response(status=resp.status, body=await resp.read(), headers=headers)
    headers = _response_headers(resp, _DROP_RESPONSE) + extra
    out = web.StreamResponse(status=resp.status, headers=headers)
    await out.prepare(request)
    chunks = resp.content.iter_any()
    try:
        async for chunk in chunks:  # the first chunk, timed once; the loop below has no extra work
            await out.write(chunk)
            out[FIRST_BYTE_AT] = time.perf_counter()
            break
        async for chunk in chunks:
            await out.write(chunk)  # written to the socket now: no buffering between chunks
    except aiohttp.ClientError as exc:  # the engine died or cut the answer mid-stream
        raise UpstreamBroke(out, str(exc) or type(exc).__name__) from exc
    await out.write_eof()
    return out


def _response_headers(resp: aiohttp.ClientResponse, drop: frozenset[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in resp.headers.items() if k.lower() not in drop]


def _request_headers(
    request: web.BaseRequest, up: Upstream, strip_auth: bool
) -> list[tuple[str, str]]:
    drop = _DROP_AUTH if strip_auth or up.api_key else _DROP
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
    if up.api_key:  # the engine's own key (vLLM --api-key) replaces whatever the client sent
        headers.append(("Authorization", f"Bearer {up.api_key}"))
    if request.remote:
        headers.append(("X-Forwarded-For", request.remote))
    return headers
