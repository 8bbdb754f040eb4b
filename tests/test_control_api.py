"""The control API in-process: every endpoint, errors, auth, the follow stream, the server."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import selectors
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from llm_supervisor.control.address import default_control_address, parse_address
from llm_supervisor.control.api import error_body
from llm_supervisor.control.server import ControlServer, serve_control
from llm_supervisor.errors import (
    AdmissionError,
    ControlAddressError,
    ControlError,
    PortInUseError,
)

from .fakes.fake_control_backend import FakeControlBackend, served

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def backend() -> FakeControlBackend:
    return FakeControlBackend()


@pytest.fixture
async def client(backend: FakeControlBackend, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with served(backend, tmp_path / "control.sock") as c:
        yield c


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition the server reaches asynchronously (there is no event to await)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ---- endpoints


async def test_status_and_gpus(client: httpx.AsyncClient, backend: FakeControlBackend) -> None:
    status = (await client.get("/v1/status")).json()
    assert status == backend.status()
    gpus = (await client.get("/v1/gpus")).json()
    assert gpus["available"] is True and gpus["gpus"][0]["uuid"] == "GPU-1234"


@pytest.mark.parametrize("action", ["start", "stop", "restart"])
async def test_service_actions(
    client: httpx.AsyncClient, backend: FakeControlBackend, action: str
) -> None:
    response = await client.post(f"/v1/services/tiny/{action}", params={"wait": "1"})
    assert response.status_code == 200
    expected_state = "stopped" if action == "stop" else "ready"
    assert response.json() == {"service": "tiny", "action": action, "state": expected_state}
    assert backend.calls[0][:2] == (action, "tiny")
    if action != "stop":
        assert backend.calls[0][2] is True  # wait was passed through


async def test_unknown_service_is_404(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/v1/services/nope/start"),
        ("POST", "/v1/services/nope/stop"),
        ("GET", "/v1/services/nope/logs"),
        ("GET", "/v1/services/nope/logs?follow=1"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"] == {
            "type": "unknown_service",
            "message": "no service named 'nope'",
            "service": "nope",
        }


async def test_start_failure_carries_cause_and_hint(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/services/broken/start", params={"wait": "1"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "start_failed"
    assert (error["cause"], error["hint"]) == ("cuda_oom", "lower it")
    assert error["reason"] == "exited prematurely, code 1"


def test_admission_and_port_errors_are_conflicts() -> None:
    status, body = error_body(AdmissionError("a", "GPU 0 has 2 GiB free", "admission", "stop b"))
    assert status == 409 and body["error"]["type"] == "admission"
    status, body = error_body(PortInUseError("a", "port 8001 held by pid 9", "port_in_use"))
    assert status == 409 and body["error"]["type"] == "port_in_use"
    assert error_body(RuntimeError("boom")) == (
        500,
        {"error": {"type": "internal", "message": "boom"}},
    )


async def test_reload(client: httpx.AsyncClient, backend: FakeControlBackend) -> None:
    applied = (await client.post("/v1/reload", params={"wait": "1"})).json()
    assert applied["result"] == "applied" and applied["changes"]["restarted"] == ["qwen3-8b"]
    dry = (await client.post("/v1/reload", params={"dry_run": "true"})).json()
    assert dry["result"] == "unchanged"
    assert backend.calls == [("reload", True, False), ("reload", False, True)]
    backend.reject_next_reload("gpu1.yaml:3:5: bad")
    rejected = (await client.post("/v1/reload")).json()
    assert rejected == {"result": "rejected", "errors": ["gpu1.yaml:3:5: bad"], "changes": {}}


async def test_upgrade_answers_the_versions_or_409_with_the_reason(
    client: httpx.AsyncClient, backend: FakeControlBackend
) -> None:
    done = await client.post("/v1/upgrade")
    assert done.status_code == 200 and done.json()["to"] == "0.2.0"
    backend.upgrade_error = "new code cannot start (ImportError: x); the daemon is unchanged"
    refused = await client.post("/v1/upgrade")
    assert refused.status_code == 409
    assert refused.json()["error"] == {"type": "upgrade_failed", "message": backend.upgrade_error}
    assert backend.calls == [("upgrade",), ("upgrade",)]


async def test_logs_tail_lines_and_since(
    client: httpx.AsyncClient, backend: FakeControlBackend
) -> None:
    response = await client.get("/v1/services/qwen3-8b/logs", params={"lines": 2})
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in response.text.splitlines()]
    assert [x["text"] for x in lines] == ["line 4", "warning: on stderr"]
    assert lines[1]["stream"] == "stderr"
    backend.add_line("qwen3-8b", "fresh")
    recent = await client.get("/v1/services/qwen3-8b/logs", params={"since": "10m"})
    assert [json.loads(x)["text"] for x in recent.text.splitlines()] == ["fresh"]
    every = await client.get("/v1/services/qwen3-8b/logs", params={"lines": "all"})
    assert len(every.text.splitlines()) == 7


@pytest.mark.parametrize("query", ["lines=x", "lines=-1", "since=soon"])
async def test_logs_bad_query_is_400(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/v1/services/qwen3-8b/logs?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_request"


async def test_unknown_paths_and_methods_answer_in_the_error_shape(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/v1/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    wrong = await client.get("/v1/services/tiny/stop")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "method_not_allowed"


async def test_metrics_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'llm_supervisor_build_info{version="0.1.0"} 1.0' in response.text


# ---- auth


async def test_bearer_token_required_when_configured(
    backend: FakeControlBackend, tmp_path: Path
) -> None:
    async with served(backend, tmp_path / "control.sock", token="s3cret") as c:
        for path in ["/v1/status", "/metrics"]:
            missing = await c.get(path)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert missing.json()["error"]["type"] == "unauthorized"
            wrong = await c.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await c.get(path, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
        assert backend.calls == []  # nothing ran for the refused requests


# ---- the real server: follow stream, sockets, addresses

Started = Callable[..., Awaitable[ControlServer]]


@pytest.fixture
async def serve(backend: FakeControlBackend) -> AsyncIterator[Started]:
    servers: list[ControlServer] = []

    async def start(address: str, **kwargs: object) -> ControlServer:
        server = ControlServer(backend, address, **kwargs)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


def uds_client(path: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    return httpx.AsyncClient(transport=transport, base_url="http://control", timeout=5)


async def test_follow_streams_new_lines_and_ends_on_disconnect(
    serve: Started, backend: FakeControlBackend, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    await serve(f"unix:{sock}")
    async with uds_client(sock) as c:
        params = {"follow": "1", "lines": "1"}
        async with c.stream("GET", "/v1/services/qwen3-8b/logs", params=params) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert json.loads(await anext(lines))["text"] == "warning: on stderr"
            assert backend.follower_count("qwen3-8b") == 1
            backend.add_line("qwen3-8b", "new one")
            assert json.loads(await anext(lines))["text"] == "new one"
    # the client left: the server notices without any further line being written
    await until(lambda: backend.follower_count("qwen3-8b") == 0)


class SlowStart(FakeControlBackend):
    """``start --wait`` that takes as long as the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go, self.finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def start(self, name: str, wait: bool) -> None:
        self.entered.set()
        await self.go.wait()
        await super().start(name, wait)
        self.finished.set()


async def test_client_hanging_up_does_not_cancel_the_start_it_asked_for(tmp_path: Path) -> None:
    backend = SlowStart()
    sock = tmp_path / "control.sock"
    async with served(backend, sock) as c:
        request = asyncio.create_task(c.post("/v1/services/tiny/start", params={"wait": "1"}))
        await asyncio.wait_for(backend.entered.wait(), 5)
        request.cancel()  # Ctrl-C on `start tiny --wait`: the connection closes
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0.1)  # let the server see the hang-up and cancel its handler
        backend.go.set()
        await asyncio.wait_for(backend.finished.wait(), 5)
        assert (await c.get("/v1/status")).json()["services"]["tiny"]["state"] == "ready"


async def test_follow_ends_cleanly_on_server_shutdown(
    backend: FakeControlBackend, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    server = ControlServer(backend, f"unix:{sock}")
    await server.start()
    async with uds_client(sock) as c:
        params = {"follow": "1", "lines": "0"}
        async with c.stream("GET", "/v1/services/qwen3-8b/logs", params=params) as response:
            await until(lambda: backend.follower_count("qwen3-8b") == 1)
            await server.shutdown()
            assert [line async for line in response.aiter_lines()] == []
    assert backend.follower_count("qwen3-8b") == 0
    assert not sock.exists()


async def test_unix_socket_mode_group_and_stale_socket(serve: Started, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "control.sock"
    sock.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # a dead daemon's leftover: bound, never listening, not removed
    stale.close()
    group = grp.getgrgid(os.getgid()).gr_name
    await serve(f"unix:{sock}", socket_group=group)
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getgid()
    with pytest.raises(ControlError, match="already listening"):
        await serve(f"unix:{sock}")


async def test_unix_socket_refuses_regular_file_and_unknown_group(
    backend: FakeControlBackend, tmp_path: Path
) -> None:
    path = tmp_path / "control.sock"
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(backend, f"unix:{path}").start()
    other = tmp_path / "other.sock"
    with pytest.raises(ControlError, match="does not exist"):
        await ControlServer(backend, f"unix:{other}", socket_group="no-such-group-x").start()


async def test_tcp_needs_a_token_even_on_loopback(
    serve: Started, backend: FakeControlBackend, tmp_path: Path
) -> None:
    for address in ("0.0.0.0:9999", "127.0.0.1:9999", "[::1]:9999", "localhost:9999"):
        with pytest.raises(ControlAddressError, match="needs a bearer token: pass --token-file"):
            ControlServer(backend, address)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    ControlServer(backend, "0.0.0.0:9999", token_file=token)  # allowed (not bound here)
    server = await serve("127.0.0.1:0", token_file=token)
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base) as c:
        assert (await c.get("/v1/status")).status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        assert (await c.get("/v1/status", headers=headers)).status_code == 200


async def test_serve_control_runs_until_cancelled(
    backend: FakeControlBackend, tmp_path: Path
) -> None:
    sock = tmp_path / "control.sock"
    started = asyncio.Event()
    task = asyncio.create_task(serve_control(backend, f"unix:{sock}", started=started))
    await started.wait()
    async with uds_client(sock) as c:
        assert (await c.get("/v1/status")).json()["version"] == "0.1.0"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sock.exists()


class CountingSelector(selectors.DefaultSelector):
    """Counts the event loop's waits: each is one wakeup of the process."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.waits += 1
        return super().select(timeout)


def test_idle_server_does_not_tick_and_still_stops_at_once(
    backend: FakeControlBackend, tmp_path: Path
) -> None:
    """An idle control API wakes the loop for nothing (uvicorn's main loop woke it every
    0.1 s), with a client connected, and still stops at once."""
    selector = CountingSelector()
    sock = tmp_path / "control.sock"

    async def idle_wakeups() -> int:
        server = ControlServer(backend, f"unix:{sock}")
        await server.start()
        async with uds_client(sock) as c:  # a keep-alive connection stays open meanwhile
            assert (await c.get("/v1/status")).status_code == 200
            before = selector.waits
            await asyncio.sleep(0.35)  # one wait for this timer, one to resume us
            woke = selector.waits - before
            assert (await c.get("/v1/status")).status_code == 200
        await asyncio.wait_for(server.shutdown(), 2.0)
        return woke

    loop = asyncio.SelectorEventLoop(selector)
    try:
        assert loop.run_until_complete(idle_wakeups()) <= 3
    finally:
        loop.close()
    assert not sock.exists()


def test_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_address("unix:/run/x.sock") == ("unix", "/run/x.sock")
    assert parse_address("127.0.0.1:8090") == ("127.0.0.1", 8090)
    assert parse_address("[::1]:8090") == ("::1", 8090)
    with pytest.raises(ControlAddressError):
        parse_address("localhost")
    for var in ["LLM_SUPERVISOR_CONTROL", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert default_control_address() == "unix:/tmp/llm-supervisor-1000/control.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_control_address() == "unix:/run/user/1000/llm-supervisor/control.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_control_address() == "unix:/run/llm-supervisor/control.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/llm-supervisor2")
    assert default_control_address() == "unix:/run/llm-supervisor2/control.sock"
    monkeypatch.setenv("LLM_SUPERVISOR_CONTROL", "127.0.0.1:7")
    assert default_control_address() == "127.0.0.1:7"
    assert default_control_address("unix:/x.sock") == "unix:/x.sock"


def test_operator_without_own_daemon_reaches_the_system_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llm_supervisor.control import address

    system = tmp_path / "control.sock"
    system.touch()
    monkeypatch.setattr(address, "SYSTEM_SOCKET", system)
    monkeypatch.setattr(address.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("LLM_SUPERVISOR_CONTROL", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    assert address.default_control_address(client=True) == f"unix:{system}"
    # The daemon itself never binds the system path for a user, and an own socket wins.
    assert address.default_control_address() == f"unix:{tmp_path}/user/llm-supervisor/control.sock"
    own = tmp_path / "user" / "llm-supervisor" / "control.sock"
    own.parent.mkdir(parents=True)
    own.touch()
    assert address.default_control_address(client=True) == f"unix:{own}"
