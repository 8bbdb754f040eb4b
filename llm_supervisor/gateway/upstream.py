"""Forwarding one request to an engine and streaming its answer back, chunk by chunk.

Why aiohttp on both sides: measured with bench/gateway_bench.py on this project's 2-core
machine at 64 clients (nginx with one worker: ~46,000 req/s):
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
_DROP_RESPONSE = _DROP - {"content-length"}  # body bytes pass unchanged: length stays right
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
