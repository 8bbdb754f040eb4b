"""A minimal HTTP/1.1 GET client for readiness and liveness probes.

Probes are the daemon's steady load: at 64 services probed every second, aiohttp's request
machinery (URL objects, header multidicts, timers, tracing hooks, the connector) was the
largest part of the idle daemon's CPU, more than the loopback send itself. A probe needs
far less: one GET on a kept-alive connection per engine, the status code and a small body.
This client is an ``asyncio.Protocol`` that writes one prepared request and parses the
answer (Content-Length, chunked, or until close) in ``data_received``.

No proxies, no TLS, no redirects, no cookies: engines listen on plain HTTP on this host.
"""

from __future__ import annotations

import asyncio
import functools
from typing import cast
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # a status line plus headers larger than this is not an engine
MAX_BODY = 16 * 2**20  # /v1/models of a big deployment is kilobytes; this is a safety cap
MAX_IDLE = 2  # idle connections kept per host:port (one probe loop uses one)


class ProbeError(Exception):
    """The answer was not HTTP we understand, or the connection broke before it ended."""


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> tuple[str, int, bytes]:
    """(host, port, request bytes) for ``url``; parsed once per URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"probe URL must be http://host[:port]/path, not {url!r}")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: llm-supervisor-probe\r\n"
        "Accept: */*\r\n\r\n"
    ).encode("ascii")
    return parts.hostname, port, request


class _Connection(asyncio.Protocol):
    """One TCP connection; at most one request in flight on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.answered = False  # any byte of the current answer arrived
        self._buf = bytearray()
        self._head: tuple[int, int, bool, int | None, bool] | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self._waiter is None:  # nothing asked: the server must not talk now
            self.close()
            return
        if self._waiter.done():  # more than one answer: where the next starts is unknown
            self.reusable = False
            return
        self._buf += data
        try:
            self._advance(eof=False)
        except ProbeError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return False  # let the transport close; connection_lost finishes the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            try:
                self._advance(eof=True)
            except ProbeError as error:
                self._fail(error)
            if not self._waiter.done():
                self._fail(ProbeError("connection closed before the answer ended"))

    # -- requests --------------------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._buf.clear()
        self._head = None
        self.reusable = self.answered = False
        self.transport.write(data)
        return self._waiter

    def done(self) -> None:
        """The caller has the answer (or gave up): the connection may take the next one."""
        waiter, self._waiter = self._waiter, None
        if waiter is None or not waiter.done() or waiter.cancelled() or not self.reusable:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _advance(self, *, eof: bool) -> None:
        """Resolve the waiter once a whole answer is in the buffer."""
        assert self._waiter is not None
        if self._waiter.done():
            return
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ProbeError("response head too large")
                if eof:
                    raise ProbeError("connection closed before the response head")
                return
            self._head = _parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        status, _, keep_alive, length, chunked = self._head
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            self._head = None
            self._advance(eof=eof)
            return
        if status in (204, 304):
            length = 0
        if chunked:
            body = _dechunk(self._buf)
            if body is None:
                if eof:
                    raise ProbeError("connection closed inside a chunked body")
                return
            rest = 0
        elif length is not None:
            if len(self._buf) < length:
                if eof:
                    raise ProbeError("connection closed inside the body")
                return
            body, rest = bytes(self._buf[:length]), len(self._buf) - length
        else:  # neither: the body runs until the server closes
            if not eof:
                if len(self._buf) > MAX_BODY:
                    raise ProbeError("response body too large")
                return
            body, rest, keep_alive = bytes(self._buf), 0, False
        # Bytes after the answer mean we no longer know where the next one starts.
        self.reusable = keep_alive and rest == 0 and not eof and not self.closed
        self._waiter.set_result((status, body))


def _parse_head(head: bytes) -> tuple[int, int, bool, int | None, bool]:
    """(status, minor version, keep-alive, content length, chunked) of a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProbeError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status, minor = int(parts[1]), 1 if parts[0] == b"HTTP/1.1" else 0
    keep_alive = minor == 1
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProbeError(f"malformed header line: {line[:80]!r}")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit() or int(value) > MAX_BODY:
                raise ProbeError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    return status, minor, keep_alive, None if chunked else length, chunked


def _dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked message in ``buf`` (trailers skipped), else None."""
    body = bytearray()
    at = 0
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        size_text = bytes(buf[at:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProbeError(f"bad chunk size: {size_text[:20]!r}") from None
        at = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", at - 2)  # the empty line after optional trailers
            if end < 0:
                return None
            if end + 4 != len(buf):
                raise ProbeError("bytes after the chunked body")
            return bytes(body)
        if len(buf) < at + size + 2:
            return None
        body += buf[at : at + size]
        if len(body) > MAX_BODY:
            raise ProbeError("response body too large")
        at += size + 2


class Prober:
    """Probe GETs with kept-alive connections, pooled by host:port. One per daemon."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        """(status, body) of ``GET url``; raises ProbeError, OSError or TimeoutError."""
        if self._closed:
            raise ProbeError("prober is closed")
        host, port, request = _target(url)
        async with asyncio.timeout(timeout):
            conn = self._take(host, port)
            if conn is not None:
                try:
                    return await self._exchange(host, port, conn, request)
                except (ProbeError, OSError):
                    # The server may have closed the idle connection just as we wrote on
                    # it (a keep-alive timeout): a fresh one answers for it, within the
                    # same timeout, if the old one never started an answer.
                    if conn.answered:
                        raise
            conn = await self._connect(host, port)
            return await self._exchange(host, port, conn, request)

    async def _exchange(
        self, host: str, port: int, conn: _Connection, request: bytes
    ) -> tuple[int, bytes]:
        try:
            answer = await conn.request(request)
        finally:
            conn.done()
        idle = self._idle.setdefault((host, port), [])
        if conn.reusable and not self._closed and len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()
        return answer

    def _take(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, host, port)
        return conn

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
