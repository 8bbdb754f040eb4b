"""The status page in headless Chromium against the real daemon with fake engines and fake NVML.

The browser reaches the daemon as an operator does: ``llm-supervisor ui`` forwards a local
port to the control socket and prints a one-time link. Screenshots go to a temporary folder;
with ``LLM_SUPERVISOR_SCREENSHOTS=docs`` they replace the ones committed under docs/.

Needs Debian's chromium and chromium-driver (``make deps-system``): skipped without them,
unless CI is set, where their absence fails the test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llm_supervisor.control.page import render_page
from llm_supervisor.control.server import ControlServer
from llm_supervisor.events import EVENTS, EventRing
from llm_supervisor.logsetup import configure_logging, get_logger

from .daemon_harness import (
    CLI,
    DaemonProcess,
    fake_ollama,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    wait_until,
)
from .fakes.fake_control_backend import FakeControlBackend, served

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parent.parent / "docs"
GIB = 1024**3
OOM_LINE = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
    "total capacity of 79.19 GiB of which 1.12 GiB is free."
)


def _need_browser() -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = f"needs {', '.join(missing)}; install with `make deps-system`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return webdriver


# -- fixtures ----------------------------------------------------------------------------


# GPU memory the fake NVML reports for each running service (and one unknown process).
MEMORY = {"qwen3-8b": 17 * GIB, "llama-70b": 38 * GIB}
STRAY = 3 * GIB


def sync_nvml(daemon: DaemonProcess, skip: tuple[str, ...] = ()) -> None:
    """Make the fake GPU hold memory for the services running now (as a driver would)."""
    pids = {n: s["pid"] for n, s in daemon.services().items() if s["pid"] and n not in skip}
    procs = [{"pid": pids[n], "used_memory": b} for n, b in MEMORY.items() if n in pids]
    procs.append({"pid": os.getpid(), "used_memory": STRAY})  # no service owns this one
    write_nvml(daemon.env["LLM_SUPERVISOR_FAKE_NVML"], procs)


def write_nvml(path: str | Path, processes: list[dict[str, Any]]) -> None:
    used = sum(p["used_memory"] for p in processes) + (GIB if processes else 0)
    device = {
        "uuid": "GPU-6f3c1e2a-0000-4000-8000-000000000000", "name": "Fake H100 80GB HBM3",
        "memory_total": 80 * GIB, "memory_used": used, "processes": processes,
    }  # fmt: skip
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"devices": [device]}))
    os.replace(tmp, path)


def write_config(config_dir: Path) -> None:
    util = {"gpu-memory-utilization": 0.2, "max-model-len": 4096}
    gpu0 = {
        "qwen3-8b": fake_vllm(free_port(), "Qwen/Qwen3-8B-AWQ", args=util),
        "llama-70b": fake_vllm(
            free_port(), "meta-llama/Llama-3.3-70B", "--loading-lines", "--startup-delay", "30",
            args=util, start="on-demand", health={"startup_timeout": 60.0},
        ),
        "mistral-24b": fake_vllm(
            free_port(), "mistralai/Mistral-Small-24B", "--fail-with", OOM_LINE,
            args=util, start="on-demand", restart={"max_failures": 1},
        ),
    }  # fmt: skip
    (config_dir / "gpu0.yaml").write_text(profile_text(gpu0, gpu=0))
    models = ["llama3.2:3b", "gpt-oss:20b"]
    cpu = {"ollama": fake_ollama(free_port(), models)}
    (config_dir / "cpu.yaml").write_text(profile_text(cpu))
    rules = [{"match": "gpt-oss:*", "keep_alive": "forever"}]
    policy = {"keep_alive": {"default": "30m", "rules": rules}, "pin": ["llama3.2:3b"]}
    (config_dir / "policy.yaml").write_text(yaml.safe_dump(policy))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    _need_browser()
    root = tmp_path_factory.mktemp("page")
    config_dir = root / "profiles"
    config_dir.mkdir()
    write_config(config_dir)
    nvml = root / "nvml.json"
    write_nvml(nvml, [])
    env = {"LLM_SUPERVISOR_FAKE_NVML": str(nvml)}
    with run_daemon(config_dir, gateway=True, env=env) as handle:
        sync_nvml(handle)
        yield handle


@pytest.fixture(scope="module")
def page_url(daemon: DaemonProcess) -> Iterator[str]:
    """``llm-supervisor ui --port 0``; the one-time link it prints."""
    argv = [*CLI, "ui", "--port", "0", "--control", daemon.control]
    proc = subprocess.Popen(argv, env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield _read_url(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_url(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 15
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            seen += os.read(proc.stdout.fileno(), 4096)
            for line in seen.decode().splitlines():
                if line.strip().startswith("http://"):
                    return line.strip()
        assert proc.poll() is None, f"ui exited {proc.returncode}: {seen!r}"
    raise AssertionError(f"no URL from llm-supervisor ui: {seen!r}")


@pytest.fixture(scope="module")
def browser(page_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    webdriver = _need_browser()
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.get(page_url)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The browser; afterwards, no console errors may have been logged."""
    yield browser
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, f"console errors: {errors}"


# -- helpers -----------------------------------------------------------------------------


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def card(driver: Any, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = js(
        driver,
        """const c = document.querySelector(`[data-service="${arguments[0]}"]`);
        if (!c) return null;
        const q = (s) => { const n = c.querySelector(s); return n ? n.textContent : null; };
        return {state: c.dataset.state, text: c.innerText, phase: q(".phase-name"),
                cause: q(".cause"), hint: q(".hint"),
                buttons: c.querySelectorAll("button").length};""",
        name,
    )  # fmt: skip
    return found


def wait_card(driver: Any, name: str, what: str, check: Any, timeout: float = 20.0) -> Any:
    def probe() -> Any:
        found = card(driver, name)
        return found if found and check(found) else None

    return wait_until(probe, timeout, f"{name}: {what}")


def screenshot(driver: Any, name: str, tmp: Path) -> Path:
    """Whole page: the window is made as tall as the document first."""
    height = js(driver, "return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(int(height) + 120, 4000))
    target = (DOCS if os.environ.get("LLM_SUPERVISOR_SCREENSHOTS") == "docs" else tmp) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target))
    driver.set_window_size(width, 900)
    return target


# -- tests -------------------------------------------------------------------------------


def test_page_shows_services_gpu_models_and_events(
    page: Any, daemon: DaemonProcess, tmp_path: Path
) -> None:
    wait_card(page, "qwen3-8b", "ready", lambda c: c["state"] == "ready")
    # a client that asks to unload the model: the policy rewrites it (keepalive.rewrite)
    body = {"model": "llama3.2:3b", "prompt": "hi", "stream": False, "keep_alive": 0}
    assert httpx.post(f"{daemon.gateway_url}/api/generate", json=body, timeout=10).is_success
    assert daemon.cli("reload", "--wait").returncode == 0
    for name in ("llama-70b", "mistral-24b", "ollama"):
        assert card(page, name) is not None
    gpu = wait_until(
        lambda: js(page, """const g = document.querySelector('[data-gpu="0"]');
            return g && g.innerText.includes('qwen3-8b') ? g.innerText : null;"""),
        20, "GPU card with qwen3-8b's memory",
    )  # fmt: skip
    assert "Fake H100" in gpu and "unknown 3.0 GiB" in gpu and "21.0 GiB / 80.0 GiB" in gpu
    models = wait_until(
        lambda: js(page, """const t = document.getElementById('models').innerText;
            return t.includes('loaded') && !t.includes('unreachable') ? t : null;"""),
        20, "the pinned model loaded",
    )  # fmt: skip
    assert "llama3.2:3b" in models and "gpt-oss:20b" in models and "gpt-oss:*" in models
    wait_until(
        lambda: js(page, "return document.querySelector('[data-event=\"keepalive.rewrite\"]')")
    )
    reload = js(page, "return document.getElementById('reload').innerText")
    assert "unchanged" in reload
    assert card(page, "qwen3-8b")["buttons"] == 3  # type: ignore[index]
    events = wait_until(
        lambda: js(
            page, "return document.querySelectorAll('[data-event=\"service.state\"]').length"
        )
    )
    assert events > 0
    screenshot(page, "status-page.png", tmp_path)


def test_page_follows_stop_and_start_without_reload(page: Any, daemon: DaemonProcess) -> None:
    js(page, "window.__sameDocument = 'yes'")
    sync_nvml(daemon, skip=("qwen3-8b",))  # its memory goes with it
    done = daemon.cli("stop", "qwen3-8b")
    assert done.returncode == 0, done.stderr
    wait_card(page, "qwen3-8b", "stopped", lambda c: c["state"] == "stopped")
    js(
        page,
        """document.querySelector('[data-service="qwen3-8b"] [data-action="start"]').click()""",
    )
    wait_card(page, "qwen3-8b", "ready again", lambda c: c["state"] == "ready")
    sync_nvml(daemon)
    assert js(page, "return window.__sameDocument") == "yes"  # updated in place, no reload
    tail = js(page, "return document.getElementById('events-list').innerText")
    assert "service.state" in tail and "qwen3-8b" in tail


def test_page_shows_load_progress(page: Any, daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.client().action("start", "llama-70b", wait=False)
    found = wait_card(
        page, "llama-70b", "loading weights", lambda c: c["phase"] == "loading weights"
    )
    assert found["state"] == "starting"
    sync_nvml(daemon)
    wait_until(
        lambda: js(page, """const b = document.querySelector(
                '[data-service="llama-70b"] [role=progressbar]');
            return b && Number(b.getAttribute('aria-valuenow')) >= 25;"""),
        10, "a progress value",
    )  # fmt: skip
    wait_until(
        lambda: js(page, """return document.querySelector('[data-gpu="0"]').innerText
            .includes('llama-70b')"""),
        15, "llama-70b's memory on the GPU card",
    )  # fmt: skip
    screenshot(page, "status-page-loading.png", tmp_path)
    sync_nvml(daemon, skip=("llama-70b",))
    daemon.client().action("stop", "llama-70b")


def test_page_shows_fatal_cause_and_hint(page: Any, daemon: DaemonProcess, tmp_path: Path) -> None:
    daemon.client().action("start", "mistral-24b", wait=False)
    found = wait_card(page, "mistral-24b", "fatal", lambda c: c["state"] == "fatal")
    assert found["cause"] == "cuda_oom"
    assert "gpu-memory-utilization" in found["hint"]
    js(page, "window.scrollTo(0, 0)")
    screenshot(page, "status-page-fatal.png", tmp_path)


def test_phone_width_dark_mode(page: Any, tmp_path: Path) -> None:
    page.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    page.set_window_size(390, 900)
    try:
        wait_card(page, "qwen3-8b", "rendered", lambda c: c["state"] == "ready")
        dark = js(page, "return getComputedStyle(document.body).backgroundColor")
        assert dark == "rgb(15, 18, 23)"
        # nothing wider than the phone: no sideways scrolling of the page itself
        assert js(page, "return document.documentElement.scrollWidth") <= 390
        screenshot(page, "status-page-phone-dark.png", tmp_path)
    finally:
        page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        page.set_window_size(1280, 900)


# -- without a browser: the event ring, the endpoints, the guard -------------------------


async def test_ring_keeps_the_last_events_and_resumes_after_a_seq() -> None:
    ring = EventRing(size=3)
    for n in range(5):
        ring.record({"event": "service.state", "n": n, "obj": object()})
    tail = ring.tail()
    assert [e["n"] for e in tail] == [2, 3, 4] and [e["seq"] for e in tail] == [3, 4, 5]
    assert isinstance(tail[0]["obj"], str)  # JSON-safe copies
    assert [e["n"] for e in ring.tail(after=4)] == [4]
    assert [e["n"] for e in ring.tail(limit=1)] == [4]


async def test_follow_subscribes_at_the_call_and_gets_events_from_threads() -> None:
    ring = EventRing()
    follow = ring.follow()
    ring.record({"event": "first"})  # before the first read: not lost
    await asyncio.to_thread(ring.record, {"event": "from-thread"})
    got = [(await anext(follow))["event"], (await anext(follow))["event"]]
    assert got == ["first", "from-thread"]
    await follow.aclose()
    assert ring.subscriber_count() == 0


def test_logging_feeds_the_ring_and_passes_events_on() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        get_logger("t").info("keepalive.rewrite", model="m", asked=0)
    finally:
        configure_logging("json", "info")
    last = EVENTS.tail(1)[0]
    assert last["event"] == "keepalive.rewrite" and last["model"] == "m" and last["asked"] == 0
    assert last["level"] == "info" and json.loads(out.getvalue())["model"] == "m"


async def test_page_and_events_endpoint(tmp_path: Path) -> None:
    EVENTS.record({"event": "gpu.pressure", "gpu": 0, "level": "warning"})
    async with served(FakeControlBackend(), tmp_path / "c.sock") as c:
        page = await c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'window.LLM_SUPERVISOR = {"controls": true' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # nothing external
        assert (await c.get("/ui")).text == page.text
        body = (await c.get("/v1/events", params={"limit": 5})).json()
        assert body["events"][-1]["event"] == "gpu.pressure" and len(body["events"]) <= 5
        after = (await c.get("/v1/events", params={"after": body["last_seq"]})).json()
        assert after["events"] == []


def test_read_only_page_has_no_controls() -> None:
    assert '{"controls": false' in render_page(controls=False)


async def test_token_link_sets_a_cookie_that_then_authorizes(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    async with served(FakeControlBackend(), sock, token="s3cret", host="127.0.0.1:9") as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/", params={"token": "wrong"})).status_code == 401
        login = await c.get("/", params={"token": "s3cret"})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert (await c.get("/")).status_code == 200  # the client kept the cookie
        assert (await c.get("/v1/status")).status_code == 200


async def test_guard_refuses_cross_site_requests_and_foreign_host_names(tmp_path: Path) -> None:
    async with served(FakeControlBackend(), tmp_path / "c.sock") as c:
        for origin in ("http://evil.example", "null", "http://control.evil.example"):
            evil = {"Origin": origin}
            assert (await c.post("/v1/services/qwen3-8b/stop", headers=evil)).status_code == 403
        same = {"Origin": "http://control"}
        assert (await c.get("/v1/status", headers=same)).status_code == 200
        rebound = {"Host": "evil.example:8765"}
        assert (await c.get("/v1/status", headers=rebound)).status_code == 403
        for host in ("127.0.0.1:8765", "[::1]:1", "localhost", "app.localhost"):
            assert (await c.get("/v1/status", headers={"Host": host})).status_code == 200


async def test_event_stream_sends_tail_then_live_events(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    server = ControlServer(FakeControlBackend(), f"unix:{sock}")
    await server.start()
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://control") as c:
            EVENTS.record({"event": "reload.applied"})
            params = {"follow": "1", "limit": "1"}
            async with c.stream("GET", "/v1/events", params=params, timeout=5) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                seen = await _sse_events(lines, 1)
                assert seen[0]["event"] == "reload.applied"
                EVENTS.record({"event": "service.state", "service": "x"})
                live = await _sse_events(lines, 1)
                assert live[0]["event"] == "service.state" and live[0]["seq"] > seen[0]["seq"]
    finally:
        await server.shutdown()


async def _sse_events(lines: Any, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        async for line in lines:
            if line.startswith("data: "):
                found.append(json.loads(line[len("data: ") :]))
                if len(found) == count:
                    return found
    return found
