"""sd_notify over a real datagram socket, path and abstract, as systemd would provide it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from llm_supervisor.daemon.sdnotify import SystemdNotifier, monotonic_usec, watchdog_loop
from llm_supervisor.process.environment import CHILD_UNSAFE_VARS, clean_child_env


class Receiver:
    """The systemd side: a bound SOCK_DGRAM socket and the NOTIFY_SOCKET value naming it."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.0)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        return False


def _path_receiver(tmp_path: Path) -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    return Receiver(sock, str(path))


def _abstract_receiver() -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"llm-supervisor-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    return Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    rx = _path_receiver(tmp_path) if request.param == "path" else _abstract_receiver()
    yield rx
    rx.sock.close()


def _notifier(rx: Receiver, **extra: str) -> SystemdNotifier:
    return SystemdNotifier(env={"NOTIFY_SOCKET": rx.env_value, **extra})


def test_ready_status_stopping_watchdog_arrive(receiver: Receiver) -> None:
    n = _notifier(receiver)
    assert n.enabled
    assert n.ready()
    assert receiver.recv() == {"READY": "1"}
    assert n.status("3/4 ready; gpu1 loading qwen3-8b 2m10s")
    assert receiver.recv() == {"STATUS": "3/4 ready; gpu1 loading qwen3-8b 2m10s"}
    assert n.stopping()
    assert receiver.recv() == {"STOPPING": "1"}
    assert n.watchdog()
    assert receiver.recv() == {"WATCHDOG": "1"}


def test_reloading_carries_monotonic_usec(receiver: Receiver) -> None:
    n = _notifier(receiver)
    before = monotonic_usec()
    n.reloading(status="reloading config")
    msg = receiver.recv()
    after = monotonic_usec()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert msg["STATUS"] == "reloading config"
    n.ready(status="4/4 ready")
    assert receiver.recv() == {"READY": "1", "STATUS": "4/4 ready"}


def test_monotonic_usec_is_clock_monotonic() -> None:
    # time.monotonic() is CLOCK_MONOTONIC on Linux: the two must agree to the millisecond.
    assert abs(monotonic_usec() - time.monotonic() * 1_000_000) < 1_000


def test_status_is_one_line_and_deduplicated(receiver: Receiver) -> None:
    n = _notifier(receiver)
    n.status("qwen\nREADY=1")
    assert receiver.recv() == {"STATUS": "qwen READY=1"}
    n.status("qwen\nREADY=1")
    assert receiver.nothing_pending()
    n.status("other")
    assert receiver.recv() == {"STATUS": "other"}


def test_no_op_without_notify_socket() -> None:
    n = SystemdNotifier(env={})
    assert not n.enabled
    assert not n.ready()
    assert not n.status("x")
    assert not n.reloading()
    assert not n.stopping()
    assert not n.watchdog()
    assert n.watchdog_interval() is None


def test_send_failure_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    n = SystemdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert n.enabled
    with capture_logs() as logs:
        assert not n.ready()
        assert not n.watchdog()
        assert not n.stopping()
    assert [e["event"] for e in logs] == ["sdnotify.send_failed"]


def test_unsupported_address_is_a_no_op() -> None:
    n = SystemdNotifier(env={"NOTIFY_SOCKET": "relative/path"})
    assert not n.enabled
    assert not n.ready()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = SystemdNotifier(env={"NOTIFY_SOCKET": "/run/x", **env}, pid=4242)
    assert n.watchdog_interval() == expected


def test_watchdog_interval_defaults_to_own_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(env=env).watchdog_interval() == 1.0


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _recv_async(rx: Receiver) -> dict[str, str]:
    """The next datagram, waited for on the loop (the sender runs on the same loop)."""
    rx.sock.setblocking(False)
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(rx.sock, 4096), 2.0)
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


async def test_watchdog_loop_pings_at_the_interval(receiver: Receiver) -> None:
    n = _notifier(receiver, WATCHDOG_USEC="100000")  # 0.1 s -> ping every 0.05 s
    interval = n.watchdog_interval()
    assert interval == 0.05
    task = asyncio.create_task(watchdog_loop(n, interval))
    try:
        stamps = []
        for _ in range(5):
            assert await _recv_async(receiver) == {"WATCHDOG": "1"}
            stamps.append(time.monotonic())
    finally:
        await _stop(task)
    span = stamps[-1] - stamps[0]  # four intervals between the first and the fifth ping
    assert span >= 4 * interval * 0.8  # not faster than asked (receive jitter aside)
    assert span < 4 * interval * 10  # and not stalled


async def test_watchdog_loop_withholds_pings_while_unhealthy(receiver: Receiver) -> None:
    n = _notifier(receiver)
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2  # the first two rounds are unhealthy

    task = asyncio.create_task(watchdog_loop(n, 0.01, probe))
    try:
        assert await _recv_async(receiver) == {"WATCHDOG": "1"}
    finally:
        await _stop(task)
    pings = 1
    while not receiver.nothing_pending():
        pings += 1
    assert pings == calls - 2  # one ping per healthy round, none for the unhealthy ones


async def test_watchdog_loop_survives_a_raising_probe(receiver: Receiver) -> None:
    n = _notifier(receiver)
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return True

    task = asyncio.create_task(watchdog_loop(n, 0.01, probe))
    try:
        assert await _recv_async(receiver) == {"WATCHDOG": "1"}
    finally:
        await _stop(task)
    assert calls >= 2


async def test_watchdog_loop_returns_without_interval(receiver: Receiver) -> None:
    await asyncio.wait_for(watchdog_loop(_notifier(receiver), None), 1.0)
    await asyncio.wait_for(watchdog_loop(SystemdNotifier(env={}), 0.01), 1.0)


def test_clean_child_env_drops_systemd_variables() -> None:
    env = {name: "x" for name in CHILD_UNSAFE_VARS} | {"PATH": "/usr/bin", "HF_HOME": "/srv/hf"}
    cleaned = clean_child_env(env)
    assert cleaned == {"PATH": "/usr/bin", "HF_HOME": "/srv/hf"}
    assert "NOTIFY_SOCKET" in env  # the input is not mutated
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        assert name in CHILD_UNSAFE_VARS
