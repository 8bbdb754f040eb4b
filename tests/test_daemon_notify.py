"""sd_notify from the real daemon, received on a datagram socket as systemd would.

NOTIFY_SOCKET is a path or an abstract (``@name``) socket; WATCHDOG_USEC=400000 asks for a
ping every 200 ms. The test plays PID 1: it records every datagram with its arrival time.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_supervisor.daemon.sdnotify import monotonic_usec
from llm_supervisor.process.environment import CHILD_UNSAFE_VARS
from llm_supervisor.process.tree import MARKER_ENV

from . import test_daemon_process
from .test_daemon_process import DaemonProcess, engine

daemons = test_daemon_process.daemons  # the fixture: start daemons, kill all in teardown

pytestmark = pytest.mark.timeout(90)

WATCHDOG_USEC = 400_000
Message = tuple[float, dict[str, str]]  # (monotonic arrival time, assignments)


class NotifyReceiver:
    """The systemd side of NOTIFY_SOCKET, read by a thread into a list."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.1)
        while not self._closed:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            pairs = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), pairs))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, accept: Callable[[dict[str, str]], bool], after: int = 0,
                 timeout: float = 20.0) -> int:  # fmt: skip
        """Index of the first message from ``after`` on that ``accept``s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_, msg) in enumerate(self.snapshot()[after:], start=after):
                if accept(msg):
                    return i
            time.sleep(0.01)
        raise AssertionError(f"no such message; got {[m for _, m in self.snapshot()]}")

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyReceiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        value = str(path)
    else:
        name = f"llm-supervisor-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    rec = NotifyReceiver(sock, value)
    yield rec
    rec.close()


def _ready_count(msg: dict[str, str]) -> tuple[int, int] | None:
    match = re.match(r"(\d+)/(\d+) ready", msg.get("STATUS", ""))
    return (int(match[1]), int(match[2])) if match else None


def test_notify_protocol_with_the_daemon(
    daemons: Callable[..., DaemonProcess], receiver: NotifyReceiver
) -> None:
    services = {"quick": engine(), "slow": engine("--startup-delay", "1.5")}
    env = {"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = daemons(services, env=env)

    # READY=1 once the control socket is bound and boot services are launched, not loaded.
    ready_at = receiver.wait_for(lambda m: m.get("READY") == "1")
    daemon.wait_ready()
    assert "READY" not in {k for _, m in receiver.snapshot()[:ready_at] for k in m}
    first_ready = receiver.snapshot()[ready_at][1]
    assert _ready_count(first_ready) is not None and _ready_count(first_ready) != (2, 2)

    # STATUS= follows the services: counts rise to 2/2, never backwards.
    done = receiver.wait_for(lambda m: _ready_count(m) == (2, 2))
    counts = [c for _, m in receiver.snapshot()[: done + 1] if (c := _ready_count(m))]
    assert len(set(counts)) >= 2, counts
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)
    assert any("loading slow" in m.get("STATUS", "") for _, m in receiver.snapshot()[:done])

    # Engines never see systemd's variables, but carry the owner marker.
    for ref in daemon.engine_refs():
        environ = Path(f"/proc/{ref.pid}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0].decode() for item in environ if item}
        assert not names & set(CHILD_UNSAFE_VARS), (ref.pid, names & set(CHILD_UNSAFE_VARS))
        assert MARKER_ENV in names

    # WATCHDOG=1 at half of WATCHDOG_USEC, from the event loop.
    window_start = time.monotonic()
    time.sleep(2.0)  # a window of wall time is what is being measured
    pings = [t for t, m in receiver.snapshot() if m.get("WATCHDOG") == "1" and t >= window_start]
    expected = 2.0 / (WATCHDOG_USEC / 2 / 1e6)  # 10
    assert expected * 0.7 <= len(pings) <= expected * 1.2, len(pings)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.15 <= statistics.median(gaps) <= 0.25, gaps
    assert max(gaps) < WATCHDOG_USEC / 1e6, "a gap as long as WATCHDOG_USEC would kill us"

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    before = len(receiver.snapshot())
    now_usec = monotonic_usec()
    daemon.signal(signal.SIGHUP)
    reloading = receiver.wait_for(lambda m: m.get("RELOADING") == "1", after=before)
    stamp = int(receiver.snapshot()[reloading][1]["MONOTONIC_USEC"])
    assert now_usec <= stamp <= monotonic_usec()  # CLOCK_MONOTONIC is system-wide
    receiver.wait_for(lambda m: m.get("READY") == "1", after=reloading + 1)

    # SIGTERM: STOPPING=1 first, then a clean exit.
    before = len(receiver.snapshot())
    daemon.signal(signal.SIGTERM)
    receiver.wait_for(lambda m: m.get("STOPPING") == "1", after=before)
    assert daemon.wait() == 0
    stopping = receiver.wait_for(lambda m: m.get("STOPPING") == "1", after=before)
    later = [m for _, m in receiver.snapshot()[stopping + 1 :]]
    assert not any(m.get("READY") == "1" for m in later), "no READY=1 after STOPPING=1"


def test_watchdog_belonging_to_another_pid_is_not_pinged(
    daemons: Callable[..., DaemonProcess], receiver: NotifyReceiver
) -> None:
    env = {
        "NOTIFY_SOCKET": receiver.env_value,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "WATCHDOG_PID": "1",  # systemd armed it for someone else (we were exec'd by them)
    }
    daemon = daemons({"quick": engine()}, env=env)
    receiver.wait_for(lambda m: m.get("READY") == "1")
    daemon.wait_ready()
    time.sleep(0.6)  # longer than the ping period: no WATCHDOG=1 may arrive within it
    assert not any(m.get("WATCHDOG") for _, m in receiver.snapshot())
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


@pytest.mark.timeout(120)
def test_upgrade_in_place_is_a_reload_for_systemd(
    daemons: Callable[..., DaemonProcess], receiver: NotifyReceiver
) -> None:
    """SIGUSR2: RELOADING=1 (with MONOTONIC_USEC) from the old program, READY=1 from the new
    one, the same PID (NotifyAccess=main keeps accepting it) and the same engine."""
    env = {"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = daemons({"quick": engine()}, env=env)
    first_ready = receiver.wait_for(lambda m: m.get("READY") == "1")
    daemon.wait_ready()
    engine_refs = daemon.engine_refs()
    now_usec = monotonic_usec()
    daemon.signal(signal.SIGUSR2)
    reloading = receiver.wait_for(lambda m: m.get("RELOADING") == "1", after=first_ready + 1,
                                  timeout=90)  # fmt: skip
    assert now_usec <= int(receiver.snapshot()[reloading][1]["MONOTONIC_USEC"]) <= monotonic_usec()
    receiver.wait_for(lambda m: m.get("READY") == "1", after=reloading + 1, timeout=60)
    daemon.wait_for(lambda events: any(e.get("event") == "daemon.upgraded" for e in events))
    assert daemon.proc.poll() is None
    assert daemon.engine_refs() == engine_refs
    # The watchdog goes on from the new program (same PID: WATCHDOG_PID still matches).
    upgraded_at = time.monotonic()
    time.sleep(1.0)
    assert any(m.get("WATCHDOG") == "1" for t, m in receiver.snapshot() if t > upgraded_at)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
