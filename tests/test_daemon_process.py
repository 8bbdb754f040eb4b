"""The daemon as a real subprocess: crash recovery, ordered shutdown, config errors, noisy children.

Each test writes a profile of fake engines (tests/fakes/fake_engine.py), runs
``python -m llm_supervisor.cli run`` on a temporary state dir and reads its JSON log. The
``daemons`` fixture kills every daemon and every marked engine process in teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from llm_supervisor.process.tree import MARKER_ENV, ProcRef, find_marked, kill_refs
from llm_supervisor.service.deps import GpuHooks
from llm_supervisor.service.states import State

from .conftest import FAKE_ENGINE, fake_service, free_port
from .daemon_harness import read_events

pytestmark = pytest.mark.timeout(90)

Event = dict[str, Any]


def engine(*flags: str, **spec: Any) -> dict[str, Any]:
    """A vLLM-like service spec running the fake engine with misbehaviour ``flags``."""
    data: dict[str, Any] = {
        "engine": "vllm", "port": free_port(),
        "command": [sys.executable, FAKE_ENGINE, *flags],
        "health": {"interval": 0.6, "timeout": 0.5, "startup_timeout": 20},
        "restart": {"backoff_initial": 0.05, "backoff_max": 0.2},
        "stop_timeout": 1.0,
    }  # fmt: skip
    data.update(spec)
    return data


class DaemonProcess:
    """One ``llm-supervisor run`` subprocess and its JSON log (stderr, one event a line)."""

    def __init__(
        self,
        root: Path,
        state_dir: Path,
        services: Mapping[str, dict[str, Any]],
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.state_dir = state_dir
        self.config_dir = root / "config"
        self.log_dir = root / "logs"
        self.control = f"unix:{state_dir / 'control.sock'}"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for model, spec in services.items():
            spec.setdefault("model", model)
        profile = {"gpu": "cpu", "services": dict(services)}
        (self.config_dir / "cpu.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        self.log_path = root / f"daemon-{time.monotonic_ns()}.log"
        self.names = list(services)
        argv = [
            sys.executable, "-m", "llm_supervisor.cli", "run",
            "--config-dir", str(self.config_dir), "--state-dir", str(state_dir),
            "--log-dir", str(self.log_dir), "--control", self.control, "--gateway", "off",
            "--no-watch", "--log-format", "json", *args,
        ]  # fmt: skip
        full_env = {**os.environ, **(env or {})}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=full_env)  # fmt: skip

    # -- the log -----------------------------------------------------------------------

    def events(self, name: str | None = None) -> list[Event]:
        return read_events(self.log_path, name)

    def wait_for(self, accept: Callable[[list[Event]], bool], timeout: float = 30.0) -> None:
        """Poll the log (the daemon's only outward event stream) until ``accept`` holds."""
        deadline = time.monotonic() + timeout
        while not accept(self.events()):
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; daemon log:\n{self.output()[-4000:]}")
            time.sleep(0.02)

    def wait_ready(self, names: list[str] | None = None, timeout: float = 30.0) -> None:
        wanted = set(names or self.names)

        def all_ready(events: list[Event]) -> bool:
            current: dict[str, str] = {}
            for e in events:
                if e.get("event") == "service.state":
                    current[e["service"]] = e["new"]
            return all(current.get(n) == "ready" for n in wanted)

        self.wait_for(all_ready, timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- processes ---------------------------------------------------------------------

    def engine_refs(self) -> set[ProcRef]:
        """Every live process carrying this state dir's marker (engines and descendants)."""
        return find_marked(f"{self.state_dir.resolve()}::", prefix=True)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def start(
        services: Mapping[str, dict[str, Any]],
        *,
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> DaemonProcess:
        root = tmp_path / f"d{len(made)}"
        state = state_dir or tmp_path / "state"
        state.mkdir(parents=True, exist_ok=True)
        daemon = DaemonProcess(root, state, services, env, args)
        made.append(daemon)
        return daemon

    yield start
    for daemon in made:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
    for daemon in made:  # engines of killed daemons survive them (that is what we test)
        refs = daemon.engine_refs()
        kill_refs(refs)
        psutil.wait_procs([p for r in refs if (p := r.alive()) is not None], timeout=5)


def alive(refs: set[ProcRef]) -> set[ProcRef]:
    return {r for r in refs if r.alive() is not None}


# -- kill -9 of the daemon -------------------------------------------------------------


def test_kill_9_of_daemon_then_next_daemon_adopts_matching_engines_and_kills_the_rest(
    daemons: Callable[..., DaemonProcess],
) -> None:
    services = {
        "kept": engine("--ignore-term", "--setsid-children", "2", "--children", "1"),
        "edited": engine("--children", "2"),
        "removed": engine("--children", "1"),
    }
    first = daemons(services)
    first.wait_ready()
    # Grandchildren are spawned before the server starts, so they exist by now.
    first_gen = first.engine_refs()
    assert len(first_gen) == 4 + 3 + 2, first_gen
    by_service = {
        name: {r for r in first_gen if _marker(r).endswith(f"::{name}")} for name in services
    }
    setsid = [r for r in by_service["kept"] if os.getsid(r.pid) == r.pid]
    assert len(setsid) >= 2  # the setsid grandchildren left the engine's group and session
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    # No parent-death signal any more: every engine outlives the daemon.
    assert alive(first_gen) == first_gen

    # While no daemon ran: one spec edited, one service removed, one unchanged.
    edited = {**services["edited"], "args": {"max-model-len": 2048}}
    second = daemons({"kept": services["kept"], "edited": edited}, state_dir=first.state_dir)
    second.wait_ready()
    assert alive(by_service["kept"]) == by_service["kept"], "the unchanged engine was adopted"
    assert not alive(by_service["edited"] | by_service["removed"])
    events = second.events()
    killed = {e["pid"] for e in events if e.get("event") == "orphan.killed"}
    assert {r.pid for r in by_service["edited"] | by_service["removed"]} <= killed
    assert not killed & {r.pid for r in by_service["kept"]}
    skipped = {e["service"]: e["reason"] for e in events if e.get("event") == "adopt.skipped"}
    assert skipped == {"edited": "spec changed", "removed": "no such service"}
    order = [e.get("event") for e in events]
    last_kill = max(i for i, name in enumerate(order) if name == "orphan.killed")
    assert last_kill < order.index("service.spawned"), "orphans are killed before any start"
    spawned = [e["service"] for e in events if e.get("event") == "service.spawned"]
    assert spawned == ["edited"], "only the edited service starts again"
    assert len(second.engine_refs()) == 4 + 3  # kept (adopted) and edited (new)


def _marker(ref: ProcRef) -> str:
    proc = ref.alive()
    return proc.environ().get(MARKER_ENV, "") if proc is not None else ""


# -- ordered shutdown ------------------------------------------------------------------


def _ten_services() -> dict[str, dict[str, Any]]:
    services = {f"s{i}": engine() for i in range(4)}
    services |= {f"kids{i}": engine("--children", "2") for i in range(2)}
    services |= {
        f"stubborn{i}": engine("--ignore-term", "--setsid-children", "1") for i in range(3)
    }
    # Its own grace (60 s) is beyond the shared deadline: the deadline must win.
    services["hopeless"] = engine("--ignore-term", "--children", "1", stop_timeout=60)
    return services


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_of_ten_services_within_deadline_leaves_nothing(
    daemons: Callable[..., DaemonProcess], sig: int
) -> None:
    deadline = 3.0
    daemon = daemons(_ten_services(), args=("--shutdown-timeout", str(deadline)))
    daemon.wait_ready(timeout=60)
    tree = daemon.engine_refs()
    assert len(tree) == 10 + 4 + 3 + 1

    started = time.monotonic()
    daemon.signal(sig)
    code = daemon.wait(timeout=deadline + 10)
    elapsed = time.monotonic() - started

    assert code == 0, daemon.output()[-3000:]
    # The deadline bounds the stops; the SIGKILL backstop adds milliseconds (measured by the
    # daemon's own clock: interpreter exit on a loaded 2-core machine is not what we test).
    span = _span(daemon, "daemon.signal", "daemon.stopped")
    assert 0.9 <= span < deadline + 0.5, f"shutdown took {span:.2f}s (stubborn ones get 1 s)"
    assert elapsed < deadline + 3.0, f"exit took {elapsed:.2f}s"
    assert not alive(tree), alive(tree)
    assert not daemon.engine_refs()
    events = daemon.events()
    stopped = {e["service"] for e in events if e.get("event") == "service.state"
               and e.get("new") == "stopped"}  # fmt: skip
    assert stopped >= set(daemon.names) - {"hopeless"}
    assert any(e.get("event") == "daemon.stopped" for e in events)
    assert not list((daemon.state_dir / "groups").glob("*.json")), "registry emptied"


def test_sigterm_while_engines_are_still_loading(daemons: Callable[..., DaemonProcess]) -> None:
    services = {
        "loading": engine("--startup-delay", "30", "--children", "1"),
        "loading_stubborn": engine("--startup-delay", "30", "--ignore-term"),
    }
    daemon = daemons(services, args=("--shutdown-timeout", "5"))
    daemon.wait_for(lambda ev: sum(e.get("event") == "service.spawned" for e in ev) == 2)
    daemon.wait_for(lambda ev: len(daemon.engine_refs()) == 3)
    tree = daemon.engine_refs()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0
    # 1 s grace for the stubborn one; no waiting for the startups to finish.
    assert _span(daemon, "daemon.signal", "daemon.stopped") < 2.5
    assert not alive(tree) and not daemon.engine_refs()
    states = [(e["service"], e["new"]) for e in daemon.events("service.state")]
    assert ("loading", "ready") not in states and ("loading", "stopped") in states


def _span(daemon: DaemonProcess, first: str, last: str) -> float:
    """Seconds between two events of the daemon's log (its own timestamps)."""
    stamps = {e["event"]: e["timestamp"] for e in daemon.events() if e["event"] in (first, last)}
    start, end = (datetime.fromisoformat(stamps[n].replace("Z", "+00:00")) for n in (first, last))
    return (end - start).total_seconds()


# -- config errors ---------------------------------------------------------------------


def test_config_error_at_start_exits_78_and_starts_nothing(
    daemons: Callable[..., DaemonProcess],
) -> None:
    services = {"good": engine(), "bad": engine(bogus_key=1)}
    daemon = daemons(services)
    assert daemon.wait() == 78
    text = daemon.output()
    assert "cpu.yaml:" in text and "bogus_key" in text
    assert "config rejected" in text
    assert not daemon.engine_refs()
    assert not any(e.get("event") == "service.spawned" for e in daemon.events())
    assert not (daemon.state_dir / "control.sock").exists()
    assert not daemon.log_dir.exists() or not list(daemon.log_dir.iterdir())


# -- noisy children --------------------------------------------------------------------


def test_daemon_survives_flooding_and_giant_lines(daemons: Callable[..., DaemonProcess]) -> None:
    size = 300_000
    services = {
        "noisy": engine("--flood", "5000", "--long-line", str(size)),
        # Crashes at start after a 300 KB line: diagnosis reads that output every time.
        "crasher": engine("--long-line", str(size), "--fail-with", "boom",
                          restart={"backoff_initial": 0.05, "backoff_max": 0.1,
                                   "max_failures": 3}),
    }  # fmt: skip
    daemon = daemons(services)
    daemon.wait_ready(["noisy"])
    daemon.wait_for(lambda ev: any(e.get("new") == "fatal" for e in ev))
    time.sleep(1.0)  # let the flood run while we ask the daemon questions
    started = time.monotonic()
    status = _status(daemon)
    assert time.monotonic() - started < 5.0
    assert status["services"]["noisy"]["state"] == "ready"
    assert status["services"]["crasher"]["state"] == "fatal"
    assert status["services"]["crasher"]["last_exit"]["code"] == 1
    assert daemon.proc.poll() is None
    with (daemon.log_dir / "noisy.log").open("rb") as fh:
        lengths = [len(line) for line in fh]
    assert size + 1 in lengths, "the giant line is kept whole in the log file"
    assert sum(1 for n in lengths if n < 100) > 1000, "the flood reached the log file"
    tail = _logs(daemon, "noisy")
    assert "noise" in tail
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def _cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_supervisor.cli", *args, "--control", daemon.control]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    result = _cli(daemon, "status", "--json")
    assert result.returncode in (0, 3), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _logs(daemon: DaemonProcess, name: str) -> str:
    result = _cli(daemon, "logs", name, "-n", "50")
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- a second daemon -------------------------------------------------------------------


def test_second_daemon_on_same_state_dir_refuses_and_leaves_engines_alone(
    daemons: Callable[..., DaemonProcess],
) -> None:
    first = daemons({"a": engine()})
    first.wait_ready()
    engines = first.engine_refs()
    # Another control socket, same state dir: the orphan sweep must not take live engines.
    second = daemons({"b": engine()}, state_dir=first.state_dir,
                     args=("--control", f"unix:{first.root / 'other.sock'}"))  # fmt: skip
    assert second.wait() == 1
    assert f"another daemon (pid {first.proc.pid}) is running on state dir" in second.output()
    assert not second.events("orphan.killed")
    assert alive(engines) == engines
    assert first.proc.poll() is None


def test_control_socket_taken_is_one_line_and_starts_nothing(
    daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    first = daemons({"a": engine()})
    first.wait_ready()
    second = daemons(
        {"b": engine()}, state_dir=tmp_path / "state2", args=("--control", first.control)
    )
    assert second.wait() == 1
    text = second.output()
    assert "another daemon is already listening" in text
    assert "Traceback" not in text and "never retrieved" not in text
    assert not second.engine_refs()


# -- a shutdown racing a crash (in-process: the window is inside Service) ----------------


async def test_stop_while_crashed_engine_is_being_released(manager_factory: Any) -> None:
    """A crash's cleanup window: not ``ready``, and a stop in it still ends in ``stopped``.

    On a GPU the runner waits (seconds) after a crash for the memory to be released, with the
    child already forgotten. The state used to stay ``ready`` then: ensure_ready() answered
    at once for a dead engine, and a stop raised InvalidTransition(ready -> stopped).
    """
    released = asyncio.Event()

    async def slow_release(service: Any, pids: list[int]) -> None:
        if not released.is_set():
            released.set()
            await asyncio.sleep(30)  # NVML says the memory is still held

    manager = manager_factory(fake_service("a"), gpu_hooks=GpuHooks(wait_released=slow_release))
    service = manager.get("a")
    await service.start()
    assert service.pid is not None
    os.kill(service.pid, signal.SIGKILL)
    await asyncio.wait_for(released.wait(), 10)
    assert service.state is State.STOPPING  # the window: child gone, cleanup not finished
    with pytest.raises(TimeoutError):  # not "ready" while nothing serves
        await asyncio.wait_for(service.ensure_ready(), 0.3)
    await asyncio.wait_for(service.stop("shutdown"), 10)
    assert service.snapshot()["state"] == "stopped"
    await service.start()  # and it can be started again
    assert service.snapshot()["state"] == "ready"
