"""The gateway's lean path to an engine: keep-alive connections parsed by llhttp (httptools),
and answers relayed to the client as the engine framed them.

Why not aiohttp's client here (it stays for side requests and the rare cases listed in
upstream.py): per proxied request it builds a URL object, a request and a response object,
a stream reader and its tasks; per streamed event it decodes the chunk framing, wakes the
handler task, and the server's writer frames it again. That was about half of the
gateway's CPU per request. Here the request head is one bytes join, the engine's answer
is parsed in C, and once the head is sent every body byte goes from the engine's socket
to the client's inside one ``data_received`` call: no task switch, no re-framing (chunked
stays chunked, a Content-Length stays right). bench/gateway_bench.py has the numbers.

Only the gateway's handler task drives an exchange; the protocol callbacks record what
arrived and wake it (``_wake``) when it has something to decide: the head, the end, a
failure, or a client that stopped reading (the engine's socket is paused until it drains).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import cast

import httptools
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .backend import Upstream

HEAD_LIMIT = 64 << 10  # an engine's status line and headers; more is not an HTTP answer
IDLE_KEEP = 4.0  # seconds a spare connection is kept: under uvicorn's (vLLM's) 5 s default
CONNECT_TIMEOUT = 10.0  # generation may take minutes; only connecting is bounded
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Hop-by-hop headers of an answer (RFC 9110 §7.6.1): not passed on. Its framing headers
# (Content-Length, Transfer-Encoding) are, since the bytes they describe pass unchanged.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"upgrade",
    }
)  # fmt: skip
_HOP_LINE = re.compile(b"\\n(?:%s):" % b"|".join(HOP_BY_HOP))


class EngineGone(Exception):
    """The connection broke; ``answered``: whether any byte of an answer had arrived."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class BrokenAnswer(Exception):
    """What the engine sent is not HTTP (another program on its port, or garbage)."""


class EngineConnection(asyncio.Protocol):
    """One keep-alive connection to an engine, carrying one exchange at a time."""

    def __init__(self, pool: EnginePool, port: int) -> None:
        self.pool, self.port = pool, port
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.busy = False  # an exchange is under way (a spare connection must stay silent)
        self.idle_since = 0.0
        self.sink: asyncio.Transport | None = None  # the client's socket, once relaying
        self._client_protocol: web.RequestHandler | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.reason = b""
        self.raw_head = b""  # the answer's status line and headers as the engine sent them
        self.length: int | None = None  # its Content-Length
        self.framed = False  # it has a Content-Length or a Transfer-Encoding
        self.hop = False  # it has a hop-by-hop header (then the head is rebuilt without)
        self.head_done = self.complete = self.paused = self.received = False
        self.keep_alive = False
        self.left: int | None = None  # body bytes the Content-Length still allows
        self.spoiled = False  # the engine sent more than its answer: do not reuse
        self.interim = 0  # 1xx heads before the answer's (103 Early Hints): not passed on
        self._in_interim = False
        self.error: Exception | None = None
        self.pending: list[bytes] = []  # body bytes as framed, not yet written to the client
        self.first_body_at: float | None = None
        self._head = b""
        self.sink = self._client_protocol = None

    # The exchange, driven by the handler task.

    def send(self, head: bytes, body: bytes) -> None:
        self._reset()
        self.busy = True
        assert self.transport is not None
        if len(body) < 16384:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))  # no copy of a large body

    async def wait(self) -> None:
        """Until a callback has news (see the module docstring)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def relay_to(self, request: web.BaseRequest) -> None:
        """From now on body bytes go straight to the client's socket."""
        self.sink = cast(asyncio.Transport, request.transport)
        self._client_protocol = request.protocol
        if request.protocol.writing_paused:  # the head and first bytes filled its buffer
            self._pause()

    def _pause(self) -> None:
        self.paused = True  # the client reads slower than the engine writes
        assert self.transport is not None
        self.transport.pause_reading()
        self._wake()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    @property
    def status(self) -> int:
        return self.parser.get_status_code()

    @property
    def close_delimited(self) -> bool:
        """An answer without a length that ends when the engine closes (HTTP/1.0 style)."""
        return not self.framed and self.status not in (204, 304)

    def client_head(self, extra: bytes, close: bool) -> bytes:
        """The head for the client: the engine's headers as they came (minus hop-by-hop
        ones), ``extra`` header lines, and ``Connection: close`` when the client's
        connection ends with this answer."""
        block = self.raw_head[self.raw_head.index(b"\r\n") + 2 : -2]
        if self.hop:
            lines = block.split(b"\r\n")[:-1]
            kept = [line for line in lines if line.split(b":", 1)[0].lower() not in HOP_BY_HOP]
            block = b"".join(line + b"\r\n" for line in kept)
        closing = b"Connection: close\r\n" if close else b""
        return b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (self.status, self.reason, block, extra, closing)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:  # bytes after the answer: not reusable, not relayed
            self.close()
            return
        self.received = True
        had_head = self.head_done
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # HttpParserUpgrade included
            if not self.complete:
                self._fail(BrokenAnswer(str(exc) or type(exc).__name__))
                return
            self.spoiled = True  # garbage after a whole answer: the answer stands
        if had_head:
            self._body(data)
        elif self.head_done:  # the head ended in this segment: the rest is body
            head = self._head + data
            self._head = b""
            start = 0
            for _ in range(self.interim):  # a 1xx has no body: it ends with its head
                start = head.index(b"\r\n\r\n", start) + 4
            end = head.index(b"\r\n\r\n", start) + 4
            self.raw_head = head[start:end]
            self._read_head()
            if rest := head[end:]:
                self._body(rest)
        elif len(self._head) + len(data) > HEAD_LIMIT:
            self._fail(BrokenAnswer(f"no end of the answer's head in {HEAD_LIMIT} bytes"))
            return
        else:
            self._head += data
        if (self.head_done and not had_head) or self.complete:
            self._wake()

    def _body(self, data: bytes) -> None:
        left = self.left
        if left is not None:  # never more than the Content-Length said, whatever follows
            data = data[:left] if len(data) > left else data
            self.left = left - len(data)
        sink = self.sink
        if sink is None:
            self.pending.append(data)
            return
        if sink.is_closing():
            return  # the client left: aiohttp cancels the handler, which closes us
        if self.first_body_at is None:
            self.first_body_at = time.perf_counter()
        sink.write(data)
        if not sink.get_write_buffer_size():  # all sent at once: the usual case, and cheap
            return
        protocol = self._client_protocol
        if protocol is not None and protocol.writing_paused and not self.paused:
            self._pause()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        if self.complete or self.error:  # an error found first (a parse error) says more
            return
        if self.head_done and exc is None and self.close_delimited:
            self.complete = True  # such an answer ends with the connection
        else:
            reason = str(exc) if exc else "the engine closed the connection"
            self.error = EngineGone(reason, self.received)
        self._wake()

    # httptools callbacks

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # 101 never gets here: llhttp refuses it
            self._in_interim = True
            return
        self.head_done = True
        # Asked now: once the message is complete llhttp has reset what it knew.
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        if self._in_interim:
            self._in_interim = False
            self.interim += 1
            return
        self.complete = True

    def _read_head(self) -> None:
        """What the relay needs from the head, found in its bytes: llhttp has checked their
        syntax, and a callback per header would cost more than these searches."""
        head = self.raw_head
        status_line = head[: head.index(b"\r\n")].split(b" ", 2)
        self.reason = status_line[2] if len(status_line) > 2 else b""
        lower = head.lower()
        self.hop = _HOP_LINE.search(lower) is not None
        at = lower.find(b"\ncontent-length:")
        if at >= 0:
            self.length = self.left = int(lower[at + 16 : lower.index(b"\r", at + 16)])
        self.framed = at >= 0 or b"\ntransfer-encoding:" in lower

    def _fail(self, error: Exception) -> None:
        self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class EnginePool:
    """Spare keep-alive connections per engine port, most recently used first."""

    def __init__(self, idle_keep: float = IDLE_KEEP) -> None:
        self.idle_keep = idle_keep
        self._idle: dict[int, collections.deque[EngineConnection]] = {}
        self._sweep: asyncio.TimerHandle | None = None  # closes spares nobody took in time

    def spare(self, up: Upstream) -> EngineConnection | None:
        """A kept connection to the engine, or None. A kept one may have been closed by the
        engine a moment ago: the caller may retry an idempotent request once."""
        spare = self._idle.get(up.port)
        now = time.monotonic()
        while spare:
            conn = spare.pop()
            if not conn.lost and now - conn.idle_since < self.idle_keep:
                return conn
            conn.close()
        return None

    async def connect(self, up: Upstream) -> EngineConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, protocol = await loop.create_connection(
                lambda: EngineConnection(self, up.port), "127.0.0.1", up.port
            )
        return protocol

    def release(self, conn: EngineConnection) -> None:
        """Back to the pool if the exchange ended cleanly and both sides keep the connection."""
        if conn.lost or not conn.complete or conn.error or conn.spoiled or not conn.keep_alive:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.busy = False
        conn.sink = conn._client_protocol = None
        spare = self._idle.setdefault(conn.port, collections.deque())
        spare.append(conn)
        self._expire(spare, conn.idle_since)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_keep, self._sweep_all)

    def _expire(self, spare: collections.deque[EngineConnection], now: float) -> None:
        while spare and now - spare[0].idle_since >= self.idle_keep:
            spare.popleft().close()  # the oldest first: the deque is in release order

    def _sweep_all(self) -> None:
        """Spares are not kept once traffic stops (a descriptor each, and Ollama never
        closes an idle connection itself)."""
        self._sweep = None
        now = time.monotonic()
        for spare in self._idle.values():
            self._expire(spare, now)
        if any(self._idle.values()):
            self._sweep = asyncio.get_running_loop().call_later(self.idle_keep, self._sweep_all)

    def forget(self, conn: EngineConnection) -> None:
        spare = self._idle.get(conn.port)
        if spare and conn in spare:
            spare.remove(conn)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for spare in self._idle.values():
            while spare:
                spare.pop().close()
        self._idle.clear()


class Relayed(web.StreamResponse):
    """An answer the relay wrote to the client's socket itself, head included.

    aiohttp's server only calls ``prepare`` and ``write_eof`` on what a handler returns
    and asks ``keep_alive`` whether the connection stays open; here the first two have
    nothing left to do. (Its own head writing would decode the engine's headers into a
    CIMultiDict and encode them again: a tenth of the gateway's CPU per request.)
    """

    def __init__(self, status: int, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._open = keep_alive

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return request.writer

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    @property
    def keep_alive(self) -> bool:
        return self._open
