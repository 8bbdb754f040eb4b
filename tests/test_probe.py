"""The probe client against scripted HTTP servers: framing, keep-alive, failures, timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from llm_supervisor.engines.base import http_ok, make_prober
from llm_supervisor.engines.probe import ProbeError, Prober

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server that answers each request on a connection with ``answers`` in turn."""

    def __init__(self, *answers: bytes, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, handler: Handler | None = None) -> None:
        self._server = await asyncio.start_server(handler or self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/health") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                for part in answer.split(b"|"):  # "|" marks separate writes
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.001)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    client = make_prober()
    yield client
    await client.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n|{}"


async def test_keep_alive_reuses_one_connection(prober: Prober) -> None:
    server = Server(OK)
    await server.start()
    for _ in range(3):
        assert await http_ok(prober, server.url(), 1.0) == b"{}"
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:")
    await server.close()


async def test_chunked_and_until_close_bodies(prober: Prober) -> None:
    chunked = Server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n|4\r\nab|cd\r\n2;x=y\r\nef\r\n"
        b"|0\r\nTrailer: 1\r\n\r\n"
    )
    await chunked.start()
    assert await http_ok(prober, chunked.url("/v1/models"), 1.0) == b"abcdef"
    assert await http_ok(prober, chunked.url("/v1/models"), 1.0) == b"abcdef"
    assert chunked.connections == 1
    legacy = Server(b"HTTP/1.0 200 OK\r\n\r\n|hello| world", close_after=True)
    await legacy.start()
    assert await http_ok(prober, legacy.url(), 1.0) == b"hello world"
    assert await http_ok(prober, legacy.url(), 1.0) == b"hello world"
    assert legacy.connections == 2  # no keep-alive in HTTP/1.0 without the header
    await chunked.close()
    await legacy.close()


async def test_connection_close_header_is_honoured(prober: Prober) -> None:
    server = Server(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    await server.start()
    assert await http_ok(prober, server.url(), 1.0) == b""
    assert await http_ok(prober, server.url(), 1.0) == b""
    assert server.connections == 2
    await server.close()


async def test_non_2xx_is_not_ok_and_keeps_the_connection(prober: Prober) -> None:
    server = Server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", OK)
    await server.start()
    assert await prober.get(server.url(), 1.0) == (503, b"busy")
    assert await http_ok(prober, server.url(), 1.0) == b"{}"
    assert server.connections == 1
    await server.close()


async def test_server_closing_an_idle_connection_costs_no_failed_probe(prober: Prober) -> None:
    """A keep-alive timeout on the engine's side: the next probe opens a fresh connection."""
    server = Server(OK, close_after=True)
    await server.start()
    assert await http_ok(prober, server.url(), 1.0) == b"{}"
    assert await http_ok(prober, server.url(), 1.0) == b"{}"
    assert server.connections == 2
    await server.close()


async def test_hung_engine_fails_within_the_timeout(prober: Prober) -> None:
    """It accepts the connection (the port is open) and never answers."""
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    server = Server()
    await server.start(silent)
    started = time.monotonic()
    assert await http_ok(prober, server.url(), 0.2) is None
    assert time.monotonic() - started < 1.0
    hold.set()
    await server.close()


async def test_half_an_answer_then_hang_fails_within_the_timeout(prober: Prober) -> None:
    server = Server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    await server.start()
    with pytest.raises(TimeoutError):
        await prober.get(server.url(), 0.2)
    await server.close()


async def test_refused_and_garbage_are_not_ok(prober: Prober) -> None:
    server = Server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await server.start()
    assert await http_ok(prober, server.url(), 1.0) is None
    with pytest.raises(ProbeError):
        await prober.get(server.url(), 1.0)
    await server.close()
    await asyncio.sleep(0)
    free = Server()
    await free.start()
    url = free.url()
    await free.close()
    await asyncio.sleep(0.01)
    assert await http_ok(prober, url, 1.0) is None


async def test_truncated_body_is_not_ok(prober: Prober) -> None:
    server = Server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", close_after=True)
    await server.start()
    with pytest.raises(ProbeError, match="inside the body"):
        await prober.get(server.url(), 1.0)
    await server.close()


async def test_closed_prober_refuses() -> None:
    client = make_prober()
    await client.close()
    with pytest.raises(ProbeError):
        await client.get("http://127.0.0.1:1/health", 1.0)


async def test_malformed_urls_are_not_ok(prober: Prober) -> None:
    with pytest.raises(ValueError, match="http://"):
        await prober.get("https://127.0.0.1:1/health", 1.0)
    assert await http_ok(prober, "http://127.0.0.1:8000health", 1.0) is None  # no leading /


async def test_close_with_a_probe_in_flight_leaves_no_connection(prober: Prober) -> None:
    hold = asyncio.Event()
    closed = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await hold.wait()
        writer.write(OK.replace(b"|", b""))
        await writer.drain()
        await reader.read()  # returns b"" once the client closed its end
        closed.set()
        writer.close()

    server = Server()
    await server.start(slow)
    probe = asyncio.create_task(http_ok(prober, server.url(), 5.0))
    await asyncio.sleep(0.05)
    await prober.close()
    hold.set()
    assert await probe == b"{}"
    await asyncio.wait_for(closed.wait(), 5.0)
    await server.close()
