"""Supervision never stops quietly: descriptors, threads, slow and huge clients, fatal.

Each attack runs against the real daemon (tests/daemon_harness.py) and checks the two
things an operator relies on: engines are still supervised (a kill -9 is restarted), and
``status`` says the truth meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon_harness import (
    DaemonProcess,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
    write_atomic,
)

from .conftest import TIRELESS

pytestmark = pytest.mark.chaos

MIB = 1 << 20


def one_engine(tmp_path: Path, *flags: str, **spec: Any) -> str:
    spec.setdefault("restart", TIRELESS)
    write_atomic(tmp_path / "cpu.yaml", profile_text({"a": fake_vllm(free_port(), "m", *flags,
                                                                     **spec)}))  # fmt: skip
    return "a"


def connect(daemon: DaemonProcess, timeout: float = 5.0) -> socket.socket:
    assert daemon.gateway_port is not None
    sock = socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=timeout)
    return sock


def get(daemon: DaemonProcess, path: str) -> tuple[int, bytes]:
    """One plain HTTP/1.1 request on a fresh connection: (status, body)."""
    with connect(daemon) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def retry_reset(call: Any, tries: int = 5) -> Any:
    for _ in range(tries - 1):
        try:
            return call()
        except ConnectionResetError:
            time.sleep(0.5)
    return call()


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body (by its Content-Length), without waiting for EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the gateway closed ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def truthful(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    """Status of ``name``; if it says ready, its engine must be alive and the one shown
    (allowing the milliseconds between the kernel reaping it and the loop hearing of it)."""
    svc = daemon.services()[name]
    if svc["state"] == "ready" and not (svc["pid"] and psutil.pid_exists(svc["pid"])):
        time.sleep(0.2)
        later = daemon.services()[name]
        assert (later["state"], later["pid"]) != ("ready", svc["pid"]), later
        return later
    if svc["state"] == "ready":
        assert svc["supervised"], svc
    return svc


def kill_and_wait_restart(daemon: DaemonProcess, name: str, within: float) -> float:
    first = daemon.pids()[name]
    assert first is not None
    started = time.monotonic()
    os.kill(first, signal.SIGKILL)

    def restarted() -> bool:
        svc = truthful(daemon, name)
        return svc["state"] == "ready" and svc["pid"] not in (None, first)

    wait_until(restarted, within, "the killed engine restarted")
    return time.monotonic() - started


# -- descriptors ------------------------------------------------------------------------

NOFILE = 400  # the gateway's share: (400 - 256) // 2 = 72 connections


@pytest.mark.timeout(90)
def test_descriptor_exhaustion_then_kill_9_is_restarted_and_status_stays_true(
    tmp_path: Path,
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit(1)")
    name = one_engine(tmp_path)
    prefix = ["prlimit", f"--nofile={NOFILE}:{NOFILE}"]
    with run_daemon(tmp_path, gateway=True, prefix=prefix) as daemon:
        assert daemon.events("daemon.nofile")[0]["soft"] == NOFILE
        idle = [connect(daemon) for _ in range(3 * NOFILE)]  # far more than it has fds
        try:
            busy = wait_until(lambda: daemon.events("gateway.connections_full"), 10, "the cap")
            assert busy[0]["max_connections"] == (NOFILE - 256) // 2
            assert daemon.cli("status").returncode == 0
            took = kill_and_wait_restart(daemon, name, within=10)
            # A client over the cap is told so, not left hanging. (While refusals of the
            # flood still linger, one may be reset instead: try again then.)
            status, body = retry_reset(lambda: get(daemon, "/v1/models"))
            assert status == 503 and b"too many open connections" in body
        finally:
            for sock in idle:
                sock.close()
        # The idle clients gone, new ones are served again.
        wait_until(lambda: get(daemon, "/v1/models")[0] == 200, 10, "gateway serving")
        assert not daemon.events("service.supervision_error")
        assert not daemon.events("daemon.task_error")
        print(f"kill -9 to ready under {3 * NOFILE} idle connections: {took:.2f}s")


@pytest.mark.timeout(90)
def test_supervision_resumes_after_real_descriptor_exhaustion(tmp_path: Path) -> None:
    """Without the gateway's cap the descriptors do run out: every /proc read and spawn
    fails with EMFILE. Supervision must survive that and restart the killed engine once
    descriptors are free again, instead of ending and leaving a stale "ready"."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit(1)")
    name = one_engine(tmp_path)
    prefix = ["prlimit", f"--nofile={NOFILE}:{NOFILE}"]
    extra = ["--gateway-max-connections", "100000"]  # the cap off: exhaustion is the point
    with run_daemon(tmp_path, gateway=True, prefix=prefix, extra_args=extra) as daemon:
        first = daemon.pids()[name]
        assert first is not None
        idle = [connect(daemon) for _ in range(2 * NOFILE)]
        try:
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: daemon.events("service.supervision_error"), 10, "EMFILE hit")
        finally:
            for sock in idle:
                sock.close()

        def restarted() -> bool:
            svc = truthful(daemon, name)
            return svc["state"] == "ready" and svc["pid"] not in (None, first)

        wait_until(restarted, 20, "the killed engine restarted after the exhaustion")
        errors = daemon.events("service.supervision_error")
        # EMFILE, as the /proc reads and the spawn's pipes see it (uvloop: errno -1).
        assert all(e["error"].startswith("OSError") for e in errors), errors
        assert daemon.services()[name]["supervision_errors"] >= 1
        daemon.assert_running()


# -- slow clients -------------------------------------------------------------------------

TIMEOUTS = ["--gateway-header-timeout", "0.5", "--gateway-keepalive-timeout", "1.5",
            "--gateway-body-timeout", "0.5"]  # fmt: skip


@pytest.mark.timeout(60)
def test_idle_and_half_sent_connections_are_closed_on_their_timeouts(tmp_path: Path) -> None:
    one_engine(tmp_path)
    with run_daemon(tmp_path, gateway=True, extra_args=TIMEOUTS) as daemon:
        opened = time.monotonic()
        idle = [connect(daemon) for _ in range(100)]
        half = [connect(daemon) for _ in range(100)]
        for sock in half:
            sock.sendall(b"GET /v1/models HT")  # slowloris: the line never ends
        half_sent = time.monotonic()
        body = [connect(daemon) for _ in range(20)]
        for sock in body:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
        assert get(daemon, "/v1/models")[0] == 200  # new clients are served meanwhile
        assert all(closed_by_peer(s, 3.0) for s in half)
        header_closed = time.monotonic() - half_sent
        answers = [read_response(s) for s in body]  # aiohttp then lingers, then closes
        assert all(head.startswith(b"HTTP/1.1 408") for head, _ in answers), answers[0]
        assert "nothing arrived for 0.5s" in json.loads(answers[0][1])["error"]["message"]
        assert all(closed_by_peer(s, 3.0) for s in idle)
        idle_closed = time.monotonic() - opened
        for sock in idle + half + body:
            sock.close()
        # Half-sent lines go at the header timeout, well before the idle timeout.
        assert header_closed < 1.4 and 1.4 < idle_closed < 4, (header_closed, idle_closed)
        assert get(daemon, "/v1/models")[0] == 200
        print(f"half-sent closed after {header_closed:.2f}s, idle after {idle_closed:.2f}s")


# -- big bodies -----------------------------------------------------------------------------

CAP = 8 * MIB
ATTACK = 200 * MIB


def rss_peak_growth(pid: int, attack: Any) -> int:
    """Peak RSS during ``attack()`` minus RSS before it (Linux: clear_refs resets the peak)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = psutil.Process(pid).memory_info().rss
    attack()
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kib = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
    return peak_kib * 1024 - before


def send_body(daemon: DaemonProcess, path: str, chunked: bool) -> tuple[bytes, bytes]:
    """POST ATTACK bytes (declared or chunked) while reading the answer; the answer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {ATTACK}\r\n\r\n"
    sock = connect(daemon, timeout=20)
    block = b"x" * MIB
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = [0]

    def pour() -> None:
        try:
            sock.sendall(head.encode())
            for _ in range(ATTACK // MIB):
                sock.sendall(frame)
                sent[0] += len(block)
        except OSError:
            pass  # refused and closed: what should happen

    writer = threading.Thread(target=pour, daemon=True)
    writer.start()
    answer = read_response(sock)
    print(f"answered after {sent[0] / MIB:.0f} MiB sent")
    sock.shutdown(socket.SHUT_RDWR)  # the rest is not worth sending
    writer.join(20)
    sock.close()
    return answer


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("path", "chunked"), [("/api/chat", False), ("/v1/chat/completions", True)]
)
def test_a_body_over_the_cap_is_refused_at_once_with_bounded_memory(
    tmp_path: Path, path: str, chunked: bool
) -> None:
    one_engine(tmp_path)
    extra = ["--gateway-max-body", "8MiB"]
    with run_daemon(tmp_path, gateway=True, extra_args=extra) as daemon:
        answers: list[tuple[bytes, bytes]] = []
        growth = rss_peak_growth(daemon.proc.pid, lambda: answers.append(
            send_body(daemon, path, chunked)
        ))  # fmt: skip
        head, body = answers[0]
        assert head.startswith(b"HTTP/1.1 413"), head
        error = json.loads(body)["error"]
        if path.startswith("/v1/"):
            assert error["code"] == 413 and "8388608" in error["message"]
        else:
            assert isinstance(error, str) and "8388608" in error
        assert growth < 2 * CAP, f"RSS grew {growth / MIB:.1f} MiB"
        assert get(daemon, "/v1/models")[0] == 200
        print(f"{ATTACK // MIB} MiB {'chunked' if chunked else 'declared'}: "
              f"RSS peak +{growth / MIB:.1f} MiB (cap {CAP // MIB} MiB)")  # fmt: skip


# -- threads --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_threads_that_cannot_start_end_no_engine(tmp_path: Path) -> None:
    """As under a pids limit (injected: root ignores RLIMIT_NPROC): the NVML reader and the
    /proc scan cannot start their threads; the daemon and its engines go on."""
    name = one_engine(tmp_path, "--setsid-children", "1")
    env = {"LLM_SUPERVISOR_FAIL_THREADS": "nvml-read,find-marked"}
    with run_daemon(tmp_path, extra_args=["--gpu-interval", "0.2"], env=env) as daemon:
        wait_until(lambda: len(daemon.events("thread.start_failed")) >= 3, 10, "failed starts")
        gpus = daemon.status()["gpus"]
        assert "cannot start the NVML thread" in gpus["reason"], gpus
        kill_and_wait_restart(daemon, name, within=10)  # the stop ladder scans inline
        assert daemon.status()["daemon"]["supervising"]
        daemon.assert_running()


# -- fatal ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_requests_for_a_fatal_service_get_503_and_spawn_nothing(tmp_path: Path) -> None:
    restart = {"max_failures": 2, "window": 60, "backoff_initial": 0.05, "backoff_max": 0.1}
    name = one_engine(tmp_path, "--fail-with", "RuntimeError: CUDA out of memory",
                      restart=restart)  # fmt: skip
    with run_daemon(tmp_path, gateway=True, wait_ready=False) as daemon:
        daemon.wait_status(lambda s: s["services"][name]["state"] == "fatal", 20, "fatal")
        spawns = len(daemon.events("service.spawned"))
        answers = [post_chat(daemon) for _ in range(10)]
        assert [status for status, _ in answers] == [503] * 10
        message = answers[0][1]["error"]["message"]
        assert "cuda" in message.lower() and "failures within" in message, message
        time.sleep(0.3)  # a spawn would show up within milliseconds
        assert len(daemon.events("service.spawned")) == spawns
        assert daemon.services()[name]["state"] == "fatal"
        daemon.cli("start", name)  # only an operator action leaves fatal
        wait_until(lambda: len(daemon.events("service.spawned")) > spawns, 10, "a new spawn")


def post_chat(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with connect(daemon, timeout=10) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            f"{payload}".encode()
        )
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)
