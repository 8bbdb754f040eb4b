"""The gateway's lean relay (gateway/relay.py) against a scripted engine: what reaches the
engine, what reaches the client byte for byte, connection reuse and its failure modes, and
a client slower than the engine."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from llm_supervisor.gateway.app import Gateway
from tests.daemon_harness import free_port
from tests.test_gateway import SMALL, StubBackend, _cancel, make_config

# (connection number, request number on that connection, head, body, transport)
Answer = Callable[[int, int, bytes, bytes, asyncio.Transport], None]


@dataclass
class Engine:
    """Records each connection and request; ``answer`` writes whatever the test wants."""

    answer: Answer
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    transports: list[asyncio.Transport] = field(default_factory=list)
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway closed one

    def protocol(self) -> asyncio.Protocol:
        engine = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.number, self.count, self.buffer = engine.connections, 0, b""
                engine.connections += 1
                engine.transports.append(self.transport)

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:
                    head, rest = self.buffer.split(b"\r\n\r\n", 1)
                    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    length = int(match.group(1)) if match else 0
                    if len(rest) < length:
                        return
                    body, self.buffer = rest[:length], rest[length:]
                    engine.requests.append((head, body))
                    self.count += 1
                    engine.answer(self.number, self.count, head, body, self.transport)

            def pause_writing(self) -> None:
                engine.paused.set()

            def connection_lost(self, exc: Exception | None) -> None:
                engine.closed.set()

        return Conn()


def fixed(raw: bytes) -> Answer:
    return lambda conn, count, head, body, transport: transport.write(raw)


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@contextlib.asynccontextmanager
async def relay(answer: Answer) -> AsyncIterator[tuple[Engine, Gateway, str]]:
    engine = Engine(answer)
    server = await asyncio.get_running_loop().create_server(engine.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = Gateway(StubBackend(make_config(port, free_port())))
    ready = asyncio.Event()
    task = asyncio.create_task(gw.serve("127.0.0.1", 0, ready, loops=False))
    await ready.wait()
    try:
        yield engine, gw, f"http://127.0.0.1:{gw.port}"
    finally:
        await _cancel(task)
        server.close()


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Everything the gateway sends back until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_engine_connections_are_kept_and_reused() -> None:
    async with relay(fixed(OK)) as (engine, _, url), httpx.AsyncClient() as client:
        for _ in range(20):
            response = await client.get(url + "/api/version")
            assert response.json() == {"ok": True}
    assert len(engine.requests) == 20
    assert engine.connections == 1


async def test_a_spare_connection_is_closed_once_nobody_used_it_for_idle_keep() -> None:
    async with relay(fixed(OK)) as (engine, gw, url), httpx.AsyncClient() as client:
        gw.client.pool.idle_keep = 0.3
        assert (await client.get(url + "/api/version")).status_code == 200
        released = asyncio.get_running_loop().time()
        await asyncio.wait_for(engine.closed.wait(), 5)
        assert asyncio.get_running_loop().time() - released >= 0.25
        assert (await client.get(url + "/api/version")).status_code == 200  # a new one
    assert engine.connections == 2


async def test_the_request_reaches_the_engine_as_sent_minus_hop_by_hop_headers() -> None:
    body = b'{"model": "%s", "verbose": true}' % SMALL.encode()
    async with relay(fixed(OK)) as (engine, _, url), httpx.AsyncClient() as client:
        response = await client.post(
            url + "/api/show?x=1&y=%20z",
            content=body,
            headers={"X-Trace": "abc", "Keep-Alive": "timeout=5", "TE": "trailers"},
        )
    assert response.status_code == 200
    head, received = engine.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/show?x=1&y=%20z HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
    assert (
        headers[b"host"]
        == f"127.0.0.1:{engine.transports[0].get_extra_info('sockname')[1]}".encode()
    )
    assert headers[b"x-trace"] == b"abc"
    assert headers[b"x-forwarded-for"] == b"127.0.0.1"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert not {b"keep-alive", b"te", b"connection"} & headers.keys()
    assert received == body


async def test_a_chunked_stream_reaches_the_client_byte_for_byte_without_hop_headers() -> None:
    chunks = b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nX-Engine: e1\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def answer(conn: int, count: int, h: bytes, b: bytes, transport: asyncio.Transport) -> None:
        transport.write(head)  # the head alone, then the body in odd pieces
        for piece in (chunks[:7], chunks[7:20], chunks[20:]):
            asyncio.get_running_loop().call_soon(transport.write, piece)

    async with relay(answer) as (_, gw, _url):
        request = b"GET /api/stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(gw.port or 0, request)
    got_head, got_body = raw.split(b"\r\n\r\n", 1)
    assert got_body == chunks  # the engine's framing, not the gateway's
    lines = got_head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"X-Engine: e1" in lines and b"Transfer-Encoding: chunked" in lines
    assert b"Connection: close" in lines  # the client asked for it; the engine's is gone
    assert not [line for line in lines if line.lower().startswith(b"keep-alive")]


async def test_an_engine_that_closes_after_answering_is_not_reused() -> None:
    answer = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")

    def close_after(
        conn: int, count: int, h: bytes, b: bytes, transport: asyncio.Transport
    ) -> None:
        transport.write(answer)
        transport.close()

    async with relay(close_after) as (engine, _, url), httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await client.get(url + "/api/version")).json() == {"ok": True}
    assert engine.connections == 3


async def test_an_answer_ended_by_the_engines_close_ends_the_clients_connection() -> None:
    def old_style(conn: int, count: int, h: bytes, b: bytes, transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        transport.close()

    async with relay(old_style) as (_, gw, _url):
        request = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"  # keep-alive asked
        raw = await raw_exchange(gw.port or 0, request)  # returns only because it closed
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == b"all of it"
    assert b"Connection: close" in head.split(b"\r\n")


async def test_a_kept_connection_the_engine_closed_is_retried_for_get_only() -> None:
    def drops_second(
        conn: int, count: int, h: bytes, b: bytes, transport: asyncio.Transport
    ) -> None:
        if count == 2:  # the engine's idle timeout struck as the request arrived
            transport.close()
        else:
            transport.write(OK)

    async with relay(drops_second) as (engine, _, url), httpx.AsyncClient() as client:
        assert (await client.get(url + "/api/version")).status_code == 200
        assert (await client.get(url + "/api/version")).json() == {"ok": True}  # retried
        assert engine.connections == 2
        # The same on the new connection's second request, a POST: not retried.
        response = await client.post(url + "/api/show", json={"model": SMALL})
    assert response.status_code == 502
    assert response.json()["error"].startswith("engine ollama unreachable")
    assert engine.connections == 2


async def test_a_slow_client_pauses_the_engine_and_still_gets_every_byte() -> None:
    piece = b"x" * 65536
    count = 256  # 16 MiB: far more than the socket buffers hold

    def flood(conn: int, n: int, h: bytes, b: bytes, transport: asyncio.Transport) -> None:
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(piece) * count)
        )
        for _ in range(count):
            transport.write(piece)

    async with relay(flood) as (engine, gw, _url):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /api/ps HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        # Not reading: the gateway must stop reading the engine, which then backs up.
        await asyncio.wait_for(engine.paused.wait(), 10)
        assert engine.transports[0].get_write_buffer_size() > len(piece) * count // 2
        received = await asyncio.wait_for(reader.readexactly(len(piece) * count), 30)
        writer.close()
    assert received == piece * count


async def test_an_informational_answer_before_the_real_one_is_not_passed_on() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    def hints(conn: int, count: int, head: bytes, b: bytes, transport: asyncio.Transport) -> None:
        transport.write(early)  # alone, then with the answer in one segment
        asyncio.get_running_loop().call_soon(transport.write, early + OK)

    async with relay(hints) as (engine, _, url), httpx.AsyncClient() as client:
        for _ in range(2):
            response = await client.get(url + "/api/version")
            assert (response.status_code, response.json()) == (200, {"ok": True})
            assert "link" not in response.headers
    assert engine.connections == 1


async def test_bytes_past_the_content_length_never_reach_the_client() -> None:
    def too_much(
        conn: int, count: int, head: bytes, b: bytes, transport: asyncio.Transport
    ) -> None:
        transport.write(OK + b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n" if conn == 0 else OK)

    async with relay(too_much) as (engine, _, url), httpx.AsyncClient() as client:
        for _ in range(3):  # the client's connection stays clean for the next answers
            response = await client.get(url + "/api/version")
            assert (response.json(), "x-smuggled" in response.headers) == ({"ok": True}, False)
    assert engine.connections == 2  # the engine's spoiled connection was not reused


async def test_head_requests_are_answered_without_a_body() -> None:
    def answer(conn: int, count: int, head: bytes, b: bytes, transport: asyncio.Transport) -> None:
        transport.write(OK[: OK.index(b"\r\n\r\n") + 4] if head.startswith(b"HEAD") else OK)

    async with relay(answer) as (engine, _, url), httpx.AsyncClient() as client:
        response = await client.head(url + "/api/version")
        assert response.status_code == 200
        assert response.content == b""
        assert (await client.get(url + "/api/version")).json() == {"ok": True}
    assert engine.requests[0][0].startswith(b"HEAD /api/version HTTP/1.1")
