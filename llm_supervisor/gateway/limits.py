"""What one client may cost the gateway: body size, connections, and the time it may take.

Without these, 1,500 idle connections used up the daemon's descriptors (and with them its
supervision), a 1 GB body cost 3.1 GB of RSS, and half-sent request lines stayed open
forever. Timeouts follow nginx's names and defaults where it has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..logsetup import get_logger

log = get_logger(__name__)

MIB = 1 << 20
SUPERVISION_RESERVE = 256  # descriptors the gateway never takes from supervision
FDS_PER_CONNECTION = 2  # a proxied request holds the client's socket and the engine's


@dataclass(frozen=True)
class GatewayLimits:
    max_body: int = 100 * MIB  # a JSON body the gateway must parse (images included)
    max_connections: int | None = None  # None: no cap (the daemon always sets one)
    header_timeout: float = 30.0  # nginx client_header_timeout: a started request's headers
    keepalive_timeout: float = 75.0  # nginx keepalive_timeout: an idle connection
    body_timeout: float = 60.0  # nginx client_body_timeout: between two reads of a body


def default_max_connections(nofile_soft: int) -> int:
    """A share of the descriptor limit that leaves SUPERVISION_RESERVE for the daemon."""
    return max(1, (nofile_soft - SUPERVISION_RESERVE) // FDS_PER_CONNECTION)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than the gateway's limit of {limit} bytes")


class BodyTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"request body not received: nothing arrived for {timeout:g}s")


async def read_capped(request: web.BaseRequest, limits: GatewayLimits) -> bytes:
    """The whole body, refused as soon as it passes ``max_body`` (never read to the end).

    Not request.read(): aiohttp's cap for it (client_max_size, 1 MiB) is a web.Application
    setting the low-level server lacks, and images in a chat are bigger. A declared
    Content-Length over the cap is refused before a byte is read; a chunked body when the
    sum of its chunks passes the cap.
    """
    declared = request.content_length
    if declared is not None and declared > limits.max_body:
        raise BodyTooLarge(limits.max_body)
    if request.content.is_eof():
        # The usual small request: its body came with the headers and is all buffered
        # already, so there is nothing to wait for (the hot path skips the timeouts).
        body = await request.content.read()
        if len(body) > limits.max_body:
            raise BodyTooLarge(limits.max_body)
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in iter_body(request, limits):
        size += len(chunk)
        if size > limits.max_body:
            raise BodyTooLarge(limits.max_body)
        chunks.append(chunk)
    return b"".join(chunks)


async def iter_body(request: web.BaseRequest, limits: GatewayLimits) -> AsyncIterator[bytes]:
    """The body as it arrives; a client that sends nothing for ``body_timeout`` is cut."""
    content = request.content
    while True:
        try:
            async with asyncio.timeout(limits.body_timeout):
                chunk = await content.readany()
        except TimeoutError:
            raise BodyTimeout(limits.body_timeout) from None
        if not chunk:
            return
        yield chunk


class LimitedServer(web.Server):
    """aiohttp's low-level server with a connection cap and a header timeout (aiohttp has
    neither).

    Over the cap a connection is answered 503 and closed at once, instead of being accepted
    until the process runs out of descriptors (then accept() fails with EMFILE and every
    other part of the daemon that opens a file or socket fails with it).
    """

    def __init__(
        self, *args: Any, max_connections: int | None, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.refused = 0
        self._pending = 0  # protocols handed out whose connection_made has not run yet

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._pending = max(0, self._pending - 1)
        super().connection_made(handler, transport)

    def __call__(self) -> Any:
        cap = self.max_connections
        if cap is not None and len(self._connections) + self._pending >= cap:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("gateway.connections_full", max_connections=cap, refused=self.refused)
            return _Refuse()
        self._pending += 1
        # Not super().__call__(): web.Server has no knob for the handler class.
        return HeaderTimeoutHandler(
            self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs
        )


_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: 52\r\n\r\n"
    b'{"error": "gateway busy: too many open connections"}'
)


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: the client learns why instead of seeing a reset.

    Closing a socket whose request is still unread makes the kernel send a reset, and the
    client may lose the answer with it; so the write side is shut first and what the client
    sends is read and dropped for a moment (nginx's lingering close). Only a few refusals
    linger at once: under a flood each one would otherwise hold a descriptor.
    """

    lingering = 0
    MAX_LINGERING = 64  # a quarter of the descriptors kept for supervision
    LINGER = 0.5  # seconds

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's TCPTransport does not derive from asyncio.Transport.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.write(_FULL)
        if _Refuse.lingering >= self.MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        _Refuse.lingering += 1
        self._lingers = True
        transport.write_eof()
        asyncio.get_running_loop().call_later(self.LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        # The request has been read (and is refused whatever it says): closing now resets
        # nothing, and frees the descriptor before LINGER.
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_lingers", False):
            _Refuse.lingering -= 1
            self._lingers = False


class HeaderTimeoutHandler(RequestHandler):
    """aiohttp's RequestHandler plus a header read timeout (slowloris), which it lacks.

    aiohttp's own keepalive_timeout closes a connection that never completes a request,
    but at the idle timeout (75 s), and a client can restart that wait with every request.
    Here the clock starts with the first byte of a request and stops when its headers are
    parsed; it reads aiohttp's ``_current_request``/``_messages`` (stable since 3.8).
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        idle = self._current_request is None and not self._messages
        super().data_received(data)
        if self._messages or self._current_request is not None or self._force_close:
            self._stop_header_timer()
        elif idle and self._header_timer is None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._messages and self._current_request is None:
            log.info("gateway.header_timeout", timeout=self._header_timeout)
            self.force_close()
