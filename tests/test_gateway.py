"""The gateway with the official ollama and openai clients, in front of fake engines.

Everything runs in-process on 127.0.0.1 with port 0; keep_alive timers of the fake Ollama
and the gateway's clock run on one ManualClock, so "15 minutes later" costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama
import openai
import pytest
import uvicorn
from structlog.testing import capture_logs

from llm_supervisor.config.models import Config
from llm_supervisor.errors import StartFailedError
from llm_supervisor.gateway.app import Gateway
from llm_supervisor.service.usage import Usage
from tests.daemon_harness import free_port
from tests.fakes.fake_ollama import FakeOllama, ManualClock
from tests.fakes.fake_openai import FakeOpenAI

BIG = "gpt-oss:120b"
SMALL = "llama3.2:3b"
RULES = [{"match": "gpt-oss:*", "keep_alive": "forever"}, {"match": "llama*", "keep_alive": "10m"}]


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = uvicorn.Server(config)  # its signal handlers are restored when it stops
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


@dataclass
class StubBackend:
    """Records what the gateway asks; 'starting' a service just takes start_delay. Use is
    kept the way a Service keeps it (leases, last use on ``clock``), minus the processes."""

    cfg: Config
    clock: Callable[[], float] = time.time
    start_delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    in_flight: Counter[str] = field(default_factory=Counter)
    last_used: dict[str, float] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def config(self) -> Config:
        return self.cfg

    async def ensure_ready(self, service: str) -> None:
        async with self._locks.setdefault(service, asyncio.Lock()):  # concurrent callers share
            if service not in self.running:
                self.calls.append(("start", service))
                await asyncio.sleep(self.start_delay)
                self.running.add(service)

    @contextlib.contextmanager
    def lease(self, service: str) -> Iterator[None]:
        self.in_flight[service] += 1
        self.last_used[service] = self.clock()
        try:
            yield
        finally:
            self.in_flight[service] -= 1
            self.last_used[service] = self.clock()

    async def stop_if_idle(self, service: str, idle_for: float) -> bool:
        last = self.last_used.get(service)
        if service not in self.running or self.in_flight[service] or last is None:
            return False
        if self.clock() - last < idle_for:
            return False
        self.calls.append(("stop_idle", service))
        self.running.discard(service)
        return True

    def usage(self, service: str) -> Usage:
        running = service in self.running
        idle = running and not self.in_flight[service]
        return Usage(
            in_flight=self.in_flight[service],
            last_request=self.last_used.get(service),
            idle_since=self.last_used.get(service) if idle else None,
            stopped_idle=not running and ("stop_idle", service) in self.calls,
        )

    def eta(self, service: str) -> float | None:
        return 0.0 if service in self.running else None

    def states(self) -> dict[str, str]:
        names = self.cfg.services
        return {n: "ready" if n in self.running else "stopped" for n in names}


@dataclass
class Rig:
    gw: Gateway
    backend: StubBackend
    fake: FakeOllama
    vllm: FakeOpenAI
    clock: ManualClock
    url: str
    ollama_url: str

    def ollama(self, direct: bool = False) -> ollama.AsyncClient:
        return ollama.AsyncClient(host=self.ollama_url if direct else self.url)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)


def make_config(ollama_port: int, vllm_port: int, **policy: Any) -> Config:
    ka = {"default": "30m", "rules": RULES} | policy.pop("keep_alive", {})
    services = {
        "ollama": {
            "name": "ollama",
            "gpus": (),
            "source": "t",
            "spec": {
                "engine": "ollama",
                "port": ollama_port,
                "models": [BIG, SMALL, "nomic-embed-text"],
            },
        },
        "qwen": {
            "name": "qwen",
            "gpus": (),
            "source": "t",
            "spec": {
                "engine": "vllm",
                "port": vllm_port,
                "model": "Qwen/Qwen3-8B",
                "served_name": "qwen3-8b",
                "start": "on-demand",
            },
        },
    }
    return Config.model_validate({"services": services, "policy": {"keep_alive": ka, **policy}})


RigFactory = Callable[..., Any]


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    stack = contextlib.AsyncExitStack()

    async def make(*, chunk_delay: float = 0.0, **policy: Any) -> Rig:
        clock = ManualClock()
        fake = FakeOllama(clock=clock, chunk_delay=chunk_delay)
        vllm = FakeOpenAI("qwen3-8b", chunk_delay=chunk_delay)
        ollama_port = await stack.enter_async_context(serving(fake.app))
        vllm_port = await stack.enter_async_context(serving(vllm.app))
        backend = StubBackend(make_config(ollama_port, vllm_port, **policy), clock=clock.now)
        gw = Gateway(backend, clock=clock.now)
        ready = asyncio.Event()
        task = asyncio.create_task(gw.serve("127.0.0.1", 0, ready, loops=False))
        stack.push_async_callback(_cancel, task)
        await ready.wait()
        url = f"http://127.0.0.1:{gw.port}"
        return Rig(gw, backend, fake, vllm, clock, url, f"http://127.0.0.1:{ollama_port}")

    async with stack:
        yield make


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("asked", [0, "0s", "10m", None])
async def test_client_keep_alive_ends_as_policy_says(rig_factory: RigFactory, asked: Any) -> None:
    rig = await rig_factory(ollama_options={"num_ctx": 8192})
    await rig.ollama().generate(BIG, "hi", keep_alive=asked)
    assert rig.fake.last_keep_alive[BIG] == -1  # forever, in the only form Ollama gets right
    await rig.ollama().chat(SMALL, [{"role": "user", "content": "x"}], keep_alive=asked)
    assert rig.fake.runners[SMALL].session == 600  # "10m" already equals the rule: kept
    assert rig.fake.runners[BIG].options["num_ctx"] == 8192  # ollama_options forced
    rig.clock.advance(601)
    assert sorted(rig.fake.runners) == [BIG]  # the 10m model expired, the big one stays
    rig.clock.advance(30 * 86400)
    assert rig.fake.loads[BIG] == 1 and sorted(rig.fake.runners) == [BIG]


async def test_rewrites_are_logged_and_counted(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    with capture_logs() as logs:
        await rig.ollama().generate(BIG, "hi", keep_alive=0)
    rewrite = next(e for e in logs if e["event"] == "keepalive.rewrite")
    assert float(rewrite["asked"]) == 0  # the ollama client sends 0.0
    assert (rewrite["applied"], rewrite["rule"]) == ("-1", "gpt-oss:*")
    assert rewrite["client"] == "127.0.0.1" and rewrite["model"] == BIG
    assert rig.gw.stats.rewrites[(BIG, "gpt-oss:*", "keep_alive")] == 1


async def test_observe_mode_changes_nothing_but_logs(rig_factory: RigFactory) -> None:
    rig = await rig_factory(keep_alive={"mode": "observe"})
    with capture_logs() as logs:
        for asked in (0, "0s", "10m"):
            await rig.ollama().generate(BIG, "hi", keep_alive=asked)
            assert rig.fake.last_keep_alive[BIG] == asked
    assert rig.fake.loads[BIG] == 3  # 0 and "0s" each unloaded it, as without a gateway
    observed = [e["asked"] for e in logs if e["event"] == "keepalive.observe"]
    assert observed == ["0.0", "0s", "10m"]
    assert not rig.gw.stats.rewrites


async def test_floor_and_client_unload_allow(rig_factory: RigFactory) -> None:
    rig = await rig_factory(keep_alive={"mode": "floor", "client_unload": "allow"})
    await rig.ollama().generate(SMALL, "hi", keep_alive="2h")
    assert rig.fake.last_keep_alive[SMALL] == "2h"
    await rig.ollama().generate(SMALL, "hi", keep_alive="1m")
    assert rig.fake.last_keep_alive[SMALL] == 600
    await rig.ollama().generate(SMALL, "", keep_alive=0)  # an explicit unload, allowed
    assert SMALL not in rig.fake.runners


async def test_bad_keep_alive_is_refused_like_ollama(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    for client in (rig.ollama(direct=True), rig.ollama()):
        with pytest.raises(ollama.ResponseError) as err:
            await client.generate(BIG, "hi", keep_alive="5")
        assert (err.value.status_code, err.value.error) == (
            400,
            'time: missing unit in duration "5"',
        )


async def test_focus_refuses_with_the_documented_error(rig_factory: RigFactory) -> None:
    rig = await rig_factory(focus=[SMALL])
    with pytest.raises(ollama.ResponseError) as err:
        await rig.ollama().generate(BIG, "hi")
    assert err.value.status_code == 403
    assert f"'{BIG}' is not in this server's focus list ({SMALL})" in err.value.error
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await rig.openai().chat.completions.create(model="qwen3-8b", messages=[])
    assert denied.value.code == "model_not_in_focus"
    await rig.ollama().generate(SMALL, "hi")  # the focused model works
    assert rig.fake.loads == {SMALL: 1}


async def test_streaming_through_both_clients(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    msgs: list[Any] = [{"role": "user", "content": "x"}]
    parts = [p async for p in await rig.ollama().chat(SMALL, msgs, stream=True)]
    assert len(parts) == 4 and parts[-1].done
    parts = [p async for p in await rig.ollama().generate(SMALL, "x", stream=True)]
    assert "".join(p.response for p in parts) == "tok tok tok "
    for model in ("qwen3-8b", SMALL):  # vLLM-like and Ollama's /v1
        stream = await rig.openai().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [c async for c in stream]
        assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok tok tok "


async def test_v1_models_lists_everything_and_unknown_is_openai_404(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    ids = [m.id async for m in rig.openai().models.list()]
    assert ids == [BIG, SMALL, "nomic-embed-text", "qwen3-8b"]
    with pytest.raises(openai.NotFoundError) as err:
        await rig.openai().completions.create(model="nope", prompt="x")
    assert err.value.code == "model_not_found" and "nope" in err.value.message


async def test_host_header_is_checked_like_ollama_and_rewritten(rig_factory: RigFactory) -> None:
    # On loopback the gateway refuses what Ollama refuses (DNS rebinding), and a Host that
    # Ollama accepts from the gateway's client reaches it as 127.0.0.1:port.
    rig = await rig_factory()
    async with httpx.AsyncClient() as client:
        for host, expected in (
            ("gpu.example.org", 403),
            ("evil.example:11434", 403),
            ("localhost:11434", 200),
            ("box.local", 200),
            ("[::1]", 200),
        ):
            direct = await client.get(rig.ollama_url + "/api/version", headers={"Host": host})
            through = await client.get(rig.url + "/api/version", headers={"Host": host})
            assert (direct.status_code, through.status_code) == (expected, expected), host


async def test_expect_100_continue_is_answered_by_the_gateway(rig_factory: RigFactory) -> None:
    rig = await rig_factory()
    body = b'{"model": "llama3.2:3b", "prompt": "x", "stream": false}'
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.gw.port)
    try:
        writer.write(
            b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # The client holds the body back until told to go on (curl waits 1 s otherwise).
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


@pytest.mark.parametrize("target", ["ollama", "vllm"])
async def test_client_disconnect_cancels_upstream(rig_factory: RigFactory, target: str) -> None:
    rig = await rig_factory(chunk_delay=0.05)
    path, body, counts = (
        (
            "/api/generate",
            {"model": SMALL, "prompt": "x", "options": {"num_predict": 200}},
            rig.fake.counts,
        )
        if target == "ollama"
        else (
            "/v1/completions",
            {"model": "qwen3-8b", "prompt": "x", "max_tokens": 200, "stream": True},
            rig.vllm.counts,
        )
    )
    async with httpx.AsyncClient() as client, client.stream("POST", rig.url + path, json=body) as r:
        async for _ in r.aiter_bytes():
            break  # one chunk arrived: streaming works; now hang up
    for _ in range(200):
        if counts["cancelled"]:
            break
        await asyncio.sleep(0.01)
    assert counts["cancelled"] == 1 and not counts["completed"]
    assert sum(rig.gw.stats.disconnects.values()) == 1


class _ScriptedEngine(asyncio.Protocol):
    """Answers every request with ``answer``; ``then_die`` drops the connection after it."""

    answer = b""
    then_die = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.answer)
        if self.then_die:
            self.transport.abort()


class _BreaksMidStream(_ScriptedEngine):
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n7\r\n{"a":1}\r\n'
    )
    then_die = True


class _AnswersGarbage(_ScriptedEngine):
    answer = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"  # another program took the engine's port


@contextlib.asynccontextmanager
async def gateway_before(engine: type[_ScriptedEngine]) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway whose Ollama service is the scripted engine; yields it and its URL."""
    server = await asyncio.get_running_loop().create_server(engine, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = Gateway(StubBackend(make_config(port, free_port())))
    ready = asyncio.Event()
    task = asyncio.create_task(gw.serve("127.0.0.1", 0, ready, loops=False))
    await ready.wait()
    try:
        yield gw, f"http://127.0.0.1:{gw.port}"
    finally:
        await _cancel(task)
        server.close()


async def test_engine_dying_mid_stream_cuts_the_client_stream() -> None:
    async with gateway_before(_BreaksMidStream) as (gw, url), httpx.AsyncClient() as client:
        with capture_logs() as logs:
            body = {"model": SMALL, "prompt": "x"}
            async with client.stream("POST", url + "/api/generate", json=body) as response:
                received = b""
                # Not a clean end: the client must learn that the answer is incomplete.
                with pytest.raises(httpx.RemoteProtocolError):
                    async for chunk in response.aiter_bytes():
                        received += chunk
        assert received == b'{"a":1}'
        assert gw.stats.upstream_errors["ollama"] == 1
        assert [e["service"] for e in logs if e["event"] == "gateway.upstream_broke"] == ["ollama"]


async def test_engine_answering_non_http_is_a_502_naming_it() -> None:
    async with gateway_before(_AnswersGarbage) as (gw, url), httpx.AsyncClient() as client:
        response = await client.get(url + "/api/version")
    assert response.status_code == 502
    assert response.json()["error"].startswith("engine ollama sent a broken answer")
    assert gw.stats.upstream_errors["ollama"] == 1


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (
            StartFailedError("qwen", "fatal: 3 failures", "cuda_oom", "lower the batch size"),
            503,
            "qwen: fatal: 3 failures lower the batch size",
        ),
        (  # what Service.ensure_ready's wait_for raises at startup_timeout
            TimeoutError(),
            504,
            "service qwen did not become ready within its startup_timeout",
        ),
    ],
)
async def test_failed_or_timed_out_start_is_answered_with_its_cause(
    rig_factory: RigFactory,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    status: int,
    message: str,
) -> None:
    rig = await rig_factory()

    async def start_fails(service: str) -> None:
        raise failure

    monkeypatch.setattr(rig.backend, "ensure_ready", start_fails)
    body = {"model": "qwen3-8b", "prompt": "x"}
    async with httpx.AsyncClient() as client:
        response = await client.post(rig.url + "/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["type"], error["message"]) == ("server_error", message)
    # A timed-out wait tells the client when to come back; a failed start does not guess.
    assert response.headers.get("Retry-After") == ("10" if status == 504 else None)


async def test_on_demand_start_and_idle_stop(rig_factory: RigFactory) -> None:
    rig = await rig_factory(keep_alive={"rules": [{"match": "qwen*", "keep_alive": "10m"}]})
    rig.backend.start_delay = 0.05
    client = rig.openai()
    msgs: list[Any] = [{"role": "user", "content": "x"}]
    await asyncio.gather(
        *(client.chat.completions.create(model="qwen3-8b", messages=msgs) for _ in range(3))
    )
    assert rig.backend.calls == [("start", "qwen")]  # three requests waited on one start
    assert await rig.gw.idle.check_once() == []
    rig.clock.advance(599)
    assert await rig.gw.idle.check_once() == []
    rig.clock.advance(2)
    assert await rig.gw.idle.check_once() == ["qwen"]
    status = {row["service"]: row for row in rig.gw.state.policy_status()["vllm"]}
    assert status["qwen"]["stopped_idle"] and status["qwen"]["keep_alive"] == "10m"
    await client.chat.completions.create(model="qwen3-8b", messages=msgs)
    assert rig.backend.calls[-2:] == [("stop_idle", "qwen"), ("start", "qwen")]
    assert rig.vllm.counts["requests"] == 4


async def test_pins_load_and_repair(rig_factory: RigFactory) -> None:
    rig = await rig_factory(pin=[BIG], ollama_options={"num_ctx": 8192})
    actions = await rig.gw.pins.reconcile_once()
    assert [(a.model, a.keep_alive) for a in actions] == [(BIG, -1)]
    assert rig.fake.runners[BIG].options["num_ctx"] == 8192
    assert await rig.gw.pins.reconcile_once() == []
    # a local script bypasses the gateway and unloads the pinned model
    await rig.ollama(direct=True).generate(BIG, "", keep_alive=0)
    assert BIG not in rig.fake.runners
    assert [a.reason for a in await rig.gw.pins.reconcile_once()] == ["pinned but not loaded"]
    # another one shortens the 10m model's expiry after the gateway served it
    await rig.ollama().generate(SMALL, "hi", options={"num_ctx": 8192})
    await rig.ollama(direct=True).generate(SMALL, "hi", keep_alive="1m", options={"num_ctx": 8192})
    assert [a.model for a in await rig.gw.pins.reconcile_once()] == [SMALL]
    rows = {r["model"]: r for r in rig.gw.state.policy_status()["ollama"]}
    assert rows[BIG]["loaded"] and rows[BIG]["rule"] == "pin" and rows[BIG]["size_vram"]
    assert rows[SMALL]["keep_alive"] == "10m" and rows["nomic-embed-text:latest"]["loaded"] is False
    assert rig.fake.loads[BIG] == 2  # the one unload by the local script, and nothing else


# The classroom from shared/seeds/003 (29.1.2026): one 65 GB gpt-oss:120b, 12 participants
# one after another with pauses, and four code paths that each send their own keep_alive.
CALL_SITES: list[tuple[str, str, float | str]] = [
    ("safety_check_*.json", "generate", "10m"),
    ("prompt_interception_engine.py", "chat", 0),
    ("manipulate.json", "generate", "10m"),
    ("image_analysis.py", "chat", "0s"),
]
GAPS_MINUTES = [4, 7, 12, 3, 15, 6, 9, 11, 5, 8, 14, 0]  # after each of the 12 participants
LOAD_MINUTES = 6.5  # what one cold load cost in the workshop


async def replay_classroom(client: ollama.AsyncClient, clock: ManualClock) -> None:
    for gap in GAPS_MINUTES:
        for _, api, keep_alive in CALL_SITES:
            if api == "generate":
                await client.generate(BIG, "prompt", keep_alive=keep_alive)
            else:
                msgs: list[Any] = [{"role": "user", "content": "x"}]
                await client.chat(BIG, msgs, keep_alive=keep_alive)
            clock.advance(20)  # the participant reads, clicks on
        clock.advance(gap * 60)


async def test_classroom_replay_loads_the_big_model_once(rig_factory: RigFactory) -> None:
    rig = await rig_factory(pin=[BIG])
    await replay_classroom(rig.ollama(direct=True), rig.clock)
    direct_loads = rig.fake.loads[BIG]
    assert direct_loads >= 24, f"without the gateway: {direct_loads} loads"

    rig = await rig_factory(pin=[BIG])
    await rig.gw.pins.reconcile_once()  # before class: the pin loads it, nobody waits
    await replay_classroom(rig.ollama(), rig.clock)
    await rig.gw.pins.reconcile_once()
    assert rig.fake.loads[BIG] == 1 and rig.fake.unloads[BIG] == 0
    waited = (direct_loads - 1) * LOAD_MINUTES
    print(
        f"classroom: {direct_loads} loads without the gateway (~{waited:.0f} min waiting), 1 with"
    )
