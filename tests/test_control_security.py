"""The control API on TCP, attacked the way a browser tab or another local user would.

Through the real daemon (tests/daemon_harness.py): TCP always needs its token, and a request
that a web page sent (it carries ``Origin``) is refused unless the page is the status page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_supervisor.control.client import ControlClient
from llm_supervisor.errors import DaemonUnreachableError

from .daemon_harness import (
    DaemonProcess,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-token"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "cpu.yaml").write_text(profile_text({"tiny": fake_vllm(free_port(), "tiny")}))
    return directory


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def tcp_daemon(config: Path, token_file: Path) -> Iterator[tuple[DaemonProcess, str]]:
    """The daemon with its control API on 127.0.0.1:PORT and a token; yields (daemon, base)."""
    port = free_port()
    args = ["--control", f"127.0.0.1:{port}", "--token-file", str(token_file)]
    with run_daemon(config, extra_args=args, wait_control=False) as daemon:
        client = ControlClient(f"127.0.0.1:{port}", token_file)

        def ready() -> bool:
            daemon.assert_running()
            try:
                return client.status()["services"]["tiny"]["state"] == "ready"
            except DaemonUnreachableError:
                return False

        try:
            wait_until(ready, 20, "tiny ready behind the TCP control API")
        finally:
            client.close()
        yield daemon, f"http://127.0.0.1:{port}"


def state(base: str) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status = httpx.get(f"{base}/v1/status", headers=headers, timeout=5).json()
    return str(status["services"]["tiny"]["state"])


def test_tcp_without_token_refuses_to_start(config: Path) -> None:
    args = ["--control", f"127.0.0.1:{free_port()}"]
    with run_daemon(config, extra_args=args, wait_control=False) as daemon:
        assert daemon.proc.wait(timeout=20) == 1
        stderr = daemon.stderr_path.read_text()
        assert "needs a bearer token: pass --token-file" in stderr
        assert "Traceback" not in stderr
        assert daemon.events("service.state") == []  # refused before anything started


def test_missing_or_wrong_token_is_401(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    _, base = tcp_daemon
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (("GET", "/v1/status"), ("POST", "/v1/services/tiny/stop")):
            response = httpx.request(method, f"{base}{path}", headers=headers, timeout=5)
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"]["type"] == "unauthorized"
    assert state(base) == "ready"


@pytest.mark.parametrize("origin", ["null", "http://evil.example", "http://127.0.0.1:1"])
def test_post_from_another_origin_is_403_and_the_service_runs_on(
    tcp_daemon: tuple[DaemonProcess, str], origin: str
) -> None:
    daemon, base = tcp_daemon
    pid = daemon_pid(base)
    # even with the token (a cookie the browser would attach): the page is not ours
    headers = {"Origin": origin, "Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{base}/v1/services/tiny/stop", headers=headers, timeout=5)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "forbidden" and origin in error["message"]
    assert state(base) == "ready" and daemon_pid(base) == pid
    daemon.assert_running()


def test_the_pages_own_origin_may_act(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    _, base = tcp_daemon
    with httpx.Client(base_url=base, timeout=10, follow_redirects=True) as browser:
        login = browser.get("/", params={"token": TOKEN})  # the link the operator opens once
        assert login.status_code == 200 and "window.LLM_SUPERVISOR" in login.text
        stopped = browser.post("/v1/services/tiny/stop", headers={"Origin": base})
        assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert state(base) == "stopped"


def daemon_pid(base: str) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status = httpx.get(f"{base}/v1/status", headers=headers, timeout=5).json()
    return int(status["services"]["tiny"]["pid"])
