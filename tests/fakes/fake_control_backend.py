"""A ControlBackend with canned state, for the control API, CLI and metrics tests.

Services: ``qwen3-8b`` (vllm, ready), ``ollama`` (ready, two models), ``tiny`` (on-demand,
stopped) and ``broken`` (fatal; ``start`` fails with cuda_oom). ``add_line`` publishes a log
line to followers; ``set_state`` and ``reject_next_reload`` steer the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from llm_supervisor.control.backend import ControlBackend, LogLine
from llm_supervisor.control.server import ControlServer
from llm_supervisor.errors import StartFailedError, UnknownServiceError, UpgradeError

GIB = 1024**3
T0 = 1_700_000_000.0


def _service(engine: str, gpu: Any, state: str, port: int, **extra: Any) -> dict[str, Any]:
    running = state == "ready"
    doc = {
        "engine": engine, "gpu": gpu, "state": state, "pid": 4242 if running else None,
        "pids": [4242, 4243] if running else [], "restarts": 0,
        "uptime": 3723.0 if running else None, "port": port, "start": "boot", "reason": "",
        "degraded": None, "progress": None, "last_exit": None,
        "restarts_by_reason": {"crash": 0, "health": 0},
        "health": {"last_latency": 0.012, "failures": 0},
    }  # fmt: skip
    doc.update(extra)
    return doc


def initial_status() -> dict[str, Any]:
    oom = {
        "code": 1, "signal": None, "cause": "cuda_oom", "at": T0 + 50,
        "hint": "lower gpu-memory-utilization or max-model-len", "tail": ["CUDA out of memory"],
    }  # fmt: skip
    gpu = {
        "index": 0, "uuid": "GPU-1234", "name": "NVIDIA H100 80GB HBM3",
        "memory": {"total": 80 * GIB, "used": 60 * GIB, "free": 20 * GIB}, "pressure": "normal",
        "services": {"qwen3-8b": 40 * GIB, "ollama": 20 * GIB},
        "processes": [{"pid": 4242, "name": "vllm", "used": 40 * GIB, "service": "qwen3-8b"}],
    }  # fmt: skip
    return {
        "version": "0.1.0",
        "daemon": {"pid": 1, "uptime": 12.3, "config_dir": "/etc/llm-supervisor", "started_at": T0},
        "services": {
            "qwen3-8b": _service(
                "vllm", [0], "ready", 8001, restarts=2, restarts_by_reason={"crash": 1, "health": 1}
            ),
            "ollama": _service("ollama", [0], "ready", 11435),
            "tiny": _service("command", "cpu", "stopped", 8002, start="on-demand"),
            "broken": _service(
                "vllm",
                [0],
                "fatal",
                8003,
                restarts=5,
                last_exit=oom,
                reason="too many failures",
                restarts_by_reason={"crash": 5},
            ),
        },
        "gpus": {"available": True, "reason": None, "gpus": [gpu]},
        "models": [
            {
                "name": "gpt-oss:120b",
                "service": "ollama",
                "loaded": True,
                "size_vram": 60 * GIB,
                "expires_at": "2318-01-01T00:00:00Z",
                "keep_alive": "forever",
                "rule": "gpt-oss:*",
                "pinned": True,
            },
            {
                "name": "llama3.2:3b",
                "service": "ollama",
                "loaded": True,
                "size_vram": 3 * GIB,
                "expires_at": "2099-01-01T00:00:00Z",
                "keep_alive": "30m",
                "rule": None,
                "pinned": False,
            },
        ],
        "policy": {
            "mode": "enforce",
            "focus": [],
            "default": "30m",
            "rewrites": [{"model": "gpt-oss:120b", "rule": "gpt-oss:*", "count": 7}],
        },
        "reload": {
            "result": "applied",
            "at": T0 + 10,
            "errors": [],
            "changes": {"restarted": ["qwen3-8b"]},
            "counts": {"applied": 2, "rejected": 1},
            "last_success_at": T0 + 10,
        },
    }


class FakeControlBackend:
    def __init__(self) -> None:
        self.doc = initial_status()
        self.logs: dict[str, list[LogLine]] = {name: [] for name in self.doc["services"]}
        self.followers: dict[str, list[asyncio.Queue[LogLine]]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.reload_errors: list[str] = []
        self.upgrade_error: str | None = None
        for i in range(5):
            self.logs["qwen3-8b"].append(LogLine(T0 + i, "stdout", f"line {i}"))
        self.logs["qwen3-8b"].append(LogLine(T0 + 5, "stderr", "warning: on stderr"))

    # ---- steering (tests, and the fake daemon's stdin commands)
    def add_line(self, name: str, text: str, stream: str = "stdout") -> None:
        line = LogLine(time.time(), stream, text)
        self.logs[name].append(line)
        for queue in self.followers.get(name, []):
            queue.put_nowait(line)

    def set_state(self, name: str, state: str) -> None:
        self._svc(name)["state"] = state

    def reject_next_reload(self, *errors: str) -> None:
        self.reload_errors = list(errors)

    def follower_count(self, name: str) -> int:
        return len(self.followers.get(name, []))

    def _svc(self, name: str) -> dict[str, Any]:
        try:
            svc: dict[str, Any] = self.doc["services"][name]
        except KeyError:
            raise UnknownServiceError(name) from None
        return svc

    # ---- ControlBackend
    def status(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc)

    def gpus(self) -> dict[str, Any]:
        return copy.deepcopy(self.doc["gpus"])

    async def start(self, name: str, wait: bool) -> None:
        self.calls.append(("start", name, wait))
        svc = self._svc(name)
        if name == "broken":
            raise StartFailedError(name, "exited prematurely, code 1", "cuda_oom", "lower it")
        svc.update(state="ready", pid=5000, uptime=0.0)

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self._svc(name).update(state="stopped", pid=None, uptime=None)

    async def restart(self, name: str, wait: bool) -> None:
        self.calls.append(("restart", name, wait))
        await self.stop(name)
        await self.start(name, wait)
        self._svc(name)["restarts"] += 1

    async def reload(self, wait: bool, dry_run: bool) -> dict[str, Any]:
        self.calls.append(("reload", wait, dry_run))
        if self.reload_errors:
            errors, self.reload_errors = self.reload_errors, []
            return {"result": "rejected", "errors": errors, "changes": {}}
        changes = {"restarted": ["qwen3-8b"], "started": [], "stopped": [], "updated": []}
        return {"result": "unchanged" if dry_run else "applied", "errors": [], "changes": changes}

    async def upgrade(self) -> dict[str, Any]:
        self.calls.append(("upgrade",))
        if self.upgrade_error is not None:
            raise UpgradeError(self.upgrade_error)
        return {"from": "0.1.0", "to": "0.2.0", "pid": 4242, "generation": 0}

    def log_tail(self, name: str, lines: int, since: float | None) -> list[LogLine]:
        self._svc(name)
        found = [x for x in self.logs[name] if since is None or x.ts >= since]
        return found[-lines:] if lines else []

    def follow_logs(self, name: str) -> AsyncIterator[LogLine]:
        self._svc(name)
        queue: asyncio.Queue[LogLine] = asyncio.Queue()
        self.followers.setdefault(name, []).append(queue)  # subscribed now, not lazily
        return self._drain(name, queue)

    async def _drain(self, name: str, queue: asyncio.Queue[LogLine]) -> AsyncIterator[LogLine]:
        try:
            while True:
                yield await queue.get()
        finally:
            self.followers[name].remove(queue)


@contextlib.asynccontextmanager
async def served(
    backend: ControlBackend, sock: Path, *, token: str | None = None, host: str = "control"
) -> AsyncIterator[httpx.AsyncClient]:
    """The real control server on the Unix socket ``sock``, and a client for it.

    ``token``: the server requires it (written to a file next to the socket); ``host``: the
    name the client puts in its Host header (and cookies are kept for).
    """
    token_file = None
    if token is not None:
        token_file = sock.with_name("token")
        token_file.write_text(token)
    server = ControlServer(backend, f"unix:{sock}", token_file=token_file)
    await server.start()
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://{host}", timeout=5
        ) as client:
            yield client
    finally:
        await server.shutdown()
