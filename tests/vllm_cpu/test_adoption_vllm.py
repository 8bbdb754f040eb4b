"""A real vLLM outlives a kill -9 of the daemon and is adopted by the next one (marker ``vllm``).

One vLLM start (about a minute of CPU on 2 cores) carries the whole check: the API server,
its EngineCore and Worker keep running and serving while no daemon runs, and a new daemon on
the same state dir routes the gateway to the same API server within seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from llm_supervisor.process.tree import ProcRef

from ..daemon_harness import free_port, run_daemon, wait_until
from .support import cpu_vllm_service, write_cpu_vllm_config
from .test_real_vllm import HEALTH, START, complete, in_sessions, report

pytestmark = pytest.mark.vllm


@pytest.fixture
def state_dir(vllm_python: Path) -> Iterator[Path]:
    """Shared by both daemons; every vLLM process of the engine's session dies in teardown."""
    path = Path(tempfile.mkdtemp(prefix="vadopt-", dir="/tmp"))
    yield path
    sessions = {int(p.read_text()) for p in path.glob("session-*")}
    for proc in in_sessions(vllm_python, sessions):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(2400)
def test_kill_9_of_the_daemon_then_the_same_vllm_answers_through_a_new_daemon(
    vllm_python: Path, tiny_model: Path, tmp_path: Path, state_dir: Path
) -> None:
    config_dir = tmp_path / "cfg"
    tiny = cpu_vllm_service(free_port(), python=vllm_python, model=tiny_model, health=HEALTH)
    write_cpu_vllm_config(config_dir, {"tiny": tiny})
    port, logs = free_port(), tmp_path / "logs"
    run = {"state_dir": state_dir, "gateway_port": port, "log_dir": logs,
           "extra_args": ["--no-watch"], "timeout": 60}  # fmt: skip
    with run_daemon(config_dir, wait_ready=False, **run) as first:  # type: ignore[arg-type]
        first.wait_status(lambda s: s["services"]["tiny"]["state"] == "ready", START, "ready")
        api = first.services()["tiny"]["pid"]
        api_ref = ProcRef.of(psutil.Process(api))
        (state_dir / f"session-{api}").write_text(str(api))  # for the teardown's net
        tree = {ProcRef.of(p) for p in psutil.Process(api).children(recursive=True)}
        complete(first.gateway_url)
        first.proc.kill()
        first.proc.wait()

    # No daemon: the engine keeps serving (it writes its log file, not a dead pipe).
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 4, "temperature": 0}
    direct = httpx.post(f"http://127.0.0.1:{tiny['port']}/v1/completions", json=body, timeout=60)
    assert direct.status_code == 200, direct.text

    started = time.monotonic()
    with run_daemon(config_dir, wait_ready=False, **run) as second:  # type: ignore[arg-type]
        up = time.monotonic()
        answered = wait_until(_answers(second.gateway_url), 30, "a completion via the gateway")
        report("new daemon started to the adopted vLLM answering", answered - started)
        report("new daemon's control API up to the adopted vLLM answering", answered - up)
        assert answered - up < 2.0
        svc = second.services()["tiny"]
        assert svc["pid"] == api and svc["state"] == "ready" and svc["restarts"] == 0, svc
        assert {ProcRef.of(p) for p in psutil.Process(api).children(recursive=True)} == tree
        assert not second.events("service.spawned")
        # Shutdown stops the adopted engine and its whole tree (a 2 GB model is no leak).
        second.signal(15)
        second.proc.wait(120)
    # Gone or a zombie (not our child any more: init reaps it when it gets to it).
    left = [f"{r.pid}:{p.name()}" for r in tree | {api_ref} if (p := r.alive()) is not None]
    assert not left, left


def _answers(gateway: str) -> Callable[[], float | None]:
    def probe() -> float | None:
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            complete(gateway)
            return time.monotonic()
        return None

    return probe
