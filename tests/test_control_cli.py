"""The CLI as a subprocess against a real control server (tests/fakes/fake_control_daemon.py)."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakes.fake_control_backend import initial_status

pytestmark = pytest.mark.timeout(60)

FAKE_DAEMON = str(Path(__file__).parent / "fakes" / "fake_control_daemon.py")
CLI = [sys.executable, "-m", "llm_supervisor.cli"]
EX_NOT_READY, EX_UNAVAILABLE, EX_CONFIG = 3, 69, 78


class Daemon:
    """The fake daemon process; ``send`` steers its backend through stdin."""

    def __init__(self, address: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, FAKE_DAEMON, address, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ready_line = self.proc.stdout.readline().strip()
        word, _, rest = self.ready_line.partition(" ")
        self.port = int(rest) if word == "READY" else None
        self.address = address if not self.port else f"127.0.0.1:{self.port}"

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(f"unix:{tmp_path / 'run' / 'control.sock'}")
    assert d.ready_line == "READY 0"
    yield d
    d.close()


def clean_env() -> dict[str, str]:
    """The test runner's environment without settings that would steer the CLI."""
    steering = {"LLM_SUPERVISOR_TOKEN_FILE", "LLM_SUPERVISOR_CONTROL", "NO_COLOR"}
    return {k: v for k, v in os.environ.items() if k not in steering}


def cli(
    *args: str, address: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    control = ["--control", address] if address else []
    environ = {**clean_env(), **(env or {})}
    return subprocess.run(
        [*CLI, *args, *control], capture_output=True, text=True, timeout=30, env=environ
    )


# ---- status


def test_status_table_and_exit_code(daemon: Daemon) -> None:
    result = cli("status", address=daemon.address)
    assert result.returncode == EX_NOT_READY, result.stderr  # "broken" is fatal
    out = result.stdout
    header = out.splitlines()[0].split()
    assert header == [
        "SERVICE",
        "ENGINE",
        "GPU",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST",
        "EXIT",
    ]
    assert "qwen3-8b  vllm     0    ready    4242  1h02m   2" in out
    assert "broken    vllm     0    fatal    -     -       5         cuda_oom (exit 1)" in out
    assert "broken: hint: lower gpu-memory-utilization or max-model-len" in out
    assert "GPU 0  NVIDIA H100 80GB HBM3  60.0/80.0 GiB used (75%)  pressure normal" in out
    assert "gpt-oss:120b (pinned)  ollama   60.0 GiB  forever     gpt-oss:*  never" in out
    assert "last reload: applied" in out and "(restarted qwen3-8b)" in out
    assert "\x1b[" not in out  # not a TTY: no colours


def test_status_selected_services_exit_codes(daemon: Daemon) -> None:
    assert cli("status", "qwen3-8b", "ollama", address=daemon.address).returncode == 0
    # an on-demand service resting in "stopped" is fine
    assert cli("status", "tiny", address=daemon.address).returncode == 0
    assert daemon.send("state qwen3-8b backoff") == "OK"
    assert cli("status", "qwen3-8b", address=daemon.address).returncode == EX_NOT_READY
    unknown = cli("status", "nope", address=daemon.address)
    assert unknown.returncode == 1
    assert unknown.stderr == "llm-supervisor: no service named 'nope'\n"


def test_status_json_schema(daemon: Daemon) -> None:
    result = cli("status", "--json", address=daemon.address)
    assert result.returncode == EX_NOT_READY
    doc = json.loads(result.stdout)
    assert doc == initial_status()
    service_keys = {"engine", "gpu", "state", "pid", "restarts", "uptime", "port", "last_exit"}
    for svc in doc["services"].values():
        assert service_keys <= svc.keys()
    assert {"code", "signal", "cause", "hint"} <= doc["services"]["broken"]["last_exit"].keys()
    gpu = doc["gpus"]["gpus"][0]
    assert {"index", "uuid", "name", "memory", "services", "processes"} <= gpu.keys()
    assert {"total", "used", "free"} <= gpu["memory"].keys()
    assert {"name", "size_vram", "expires_at", "rule"} <= doc["models"][0].keys()
    assert {"result", "errors"} <= doc["reload"].keys()
    selected = json.loads(cli("status", "ollama", "--json", address=daemon.address).stdout)
    assert list(selected["services"]) == ["ollama"]


def test_status_colours_on_a_tty_unless_no_color(daemon: Daemon) -> None:
    assert "\x1b[32mready" in run_on_tty(["status", "--control", daemon.address], {})
    plain = run_on_tty(["status", "--control", daemon.address], {"NO_COLOR": "1"})
    assert "ready" in plain and "\x1b[" not in plain


def run_on_tty(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with its stdout on a pseudo-terminal; return what it wrote."""
    master, slave = pty.openpty()
    environ = {**clean_env(), "TERM": "xterm", **env}
    proc = subprocess.Popen([*CLI, *args], stdout=slave, stderr=slave, env=environ)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 20)
        try:
            data = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.wait(timeout=10)
    return b"".join(chunks).decode()


# ---- start / stop / restart / reload


def test_start_stop_restart(daemon: Daemon) -> None:
    started = cli("start", "tiny", "--wait", address=daemon.address)
    assert started.returncode == 0 and started.stdout == "tiny: start requested; state ready\n"
    stopped = cli("stop", "tiny", "qwen3-8b", address=daemon.address)
    assert stopped.returncode == 0
    assert stopped.stdout.splitlines()[1] == "qwen3-8b: stop requested; state stopped"
    restarted = cli("restart", "qwen3-8b", "--wait", address=daemon.address)
    assert restarted.returncode == 0 and "state ready" in restarted.stdout
    doc = json.loads(cli("status", "--json", address=daemon.address).stdout)
    assert doc["services"]["qwen3-8b"]["restarts"] == 3


def test_start_failures(daemon: Daemon) -> None:
    failed = cli("start", "broken", "tiny", address=daemon.address)
    assert failed.returncode == 1
    assert failed.stdout == "tiny: start requested; state ready\n"  # kept going
    assert failed.stderr.splitlines() == [
        "llm-supervisor: broken: exited prematurely, code 1 [cuda_oom]",
        "  hint: lower it",
    ]
    unknown = cli("stop", "nope", address=daemon.address)
    assert (unknown.returncode, unknown.stderr) == (1, "llm-supervisor: no service named 'nope'\n")


def test_reload(daemon: Daemon) -> None:
    applied = cli("reload", "--wait", address=daemon.address)
    assert applied.returncode == 0
    assert applied.stdout.splitlines() == ["reload: applied", "  restarted: qwen3-8b"]
    dry = cli("reload", "--dry-run", address=daemon.address)
    assert dry.returncode == 0 and dry.stdout.startswith("reload: would apply")
    daemon.send("reject profiles/gpu1.yaml:14:7: services.qwen.args.max-model-len: expected int")
    rejected = cli("reload", address=daemon.address)
    assert rejected.returncode == EX_CONFIG
    assert rejected.stderr.splitlines() == [
        "profiles/gpu1.yaml:14:7: services.qwen.args.max-model-len: expected int",
        "1 error(s); config rejected",
    ]


# ---- logs


def test_logs_tail(daemon: Daemon) -> None:
    result = cli("logs", "qwen3-8b", "-n", "3", address=daemon.address)
    assert result.returncode == 0
    assert result.stdout == "line 3\nline 4\n"
    assert result.stderr == "warning: on stderr\n"  # stderr lines go to stderr, like docker
    assert cli("logs", "qwen3-8b", address=daemon.address).stdout.count("\n") == 5
    daemon.send("line qwen3-8b recent")
    since = cli("logs", "qwen3-8b", "--since", "10m", "-t", address=daemon.address)
    assert since.stdout.endswith(" recent\n") and since.stdout.count("\n") == 1
    bad = cli("logs", "qwen3-8b", "--since", "soon", address=daemon.address)
    assert bad.returncode == 2 and "expected a duration" in bad.stderr


def test_logs_follow_receives_new_lines(daemon: Daemon) -> None:
    args = [*CLI, "logs", "qwen3-8b", "-f", "-n", "1", "--control", daemon.address]
    follower = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stderr is not None and follower.stdout is not None
        assert follower.stderr.readline() == "warning: on stderr\n"  # the tail first
        # the subscription is in place before the tail is sent, so this line cannot be lost
        daemon.send("line qwen3-8b hello from the engine")
        assert follower.stdout.readline() == "hello from the engine\n"
        daemon.send("line qwen3-8b and another")
        assert follower.stdout.readline() == "and another\n"
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        follower.stdout.close()  # type: ignore[union-attr]
        follower.stderr.close()  # type: ignore[union-attr]
    # the daemon notices the follower left and drops its subscription
    for _ in range(500):
        if daemon.send("followers qwen3-8b") == "OK 0":
            break
    assert daemon.send("followers qwen3-8b") == "OK 0"


# ---- transport: socket, unreachable daemon, token


def test_socket_is_mode_0660(daemon: Daemon, tmp_path: Path) -> None:
    st = (tmp_path / "run" / "control.sock").stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


@pytest.mark.parametrize("command", [["status"], ["logs", "x", "-f"], ["reload"], ["start", "x"]])
def test_unreachable_daemon_is_one_line(tmp_path: Path, command: list[str]) -> None:
    address = f"unix:{tmp_path / 'missing.sock'}"
    result = cli(*command, address=address)
    assert result.returncode == EX_UNAVAILABLE
    assert result.stdout == ""
    assert result.stderr == (
        f"llm-supervisor: daemon not reachable at {address}: no socket there; "
        "is it running? (systemctl status llm-supervisor)\n"
    )


def test_unreachable_uses_environment_address(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'env.sock'}"
    result = cli("status", env={"LLM_SUPERVISOR_CONTROL": address})
    assert result.returncode == EX_UNAVAILABLE and address in result.stderr


def test_tcp_requires_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    d = Daemon("127.0.0.1:0", "--token-file", str(token))
    try:
        assert d.port
        refused = cli("status", address=d.address)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "bearer token" in refused.stderr and "--token-file" in refused.stderr
        with_arg = cli("status", "--token-file", str(token), address=d.address)
        assert with_arg.returncode == EX_NOT_READY and "qwen3-8b" in with_arg.stdout
        with_env = cli("status", address=d.address, env={"LLM_SUPERVISOR_TOKEN_FILE": str(token)})
        assert with_env.returncode == EX_NOT_READY
    finally:
        d.close()


@pytest.mark.parametrize("address", ["192.0.2.1:0", "127.0.0.1:0"])
def test_tcp_without_token_is_refused(address: str) -> None:
    d = Daemon(address)
    try:
        assert d.ready_line.startswith(f"ERROR the control API on TCP ({address}) needs a bearer")
        assert d.proc.wait(timeout=10) == 2
    finally:
        d.close()


# ---- the command line itself: what --help says, what a call costs


def test_help_says_what_the_program_is_for() -> None:
    result = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert description == "Supervise vLLM and Ollama model servers on a GPU host."


HEAVY = ("httpx", "pydantic", "structlog", "asyncio", "aiohttp", "yaml", "psutil", "pynvml")


@pytest.mark.parametrize(
    "command", [["status"], ["logs", "x"], ["start", "x"], ["stop", "x"], ["reload"]]
)
def test_client_commands_import_only_what_they_use(tmp_path: Path, command: list[str]) -> None:
    """Every call pays for its imports: `status` took 0.4 s, mostly httpx's and pydantic's."""
    address = f"unix:{tmp_path / 'missing.sock'}"
    probe = (
        "import sys\n"
        "from llm_supervisor.cli import main\n"
        f"code = main({[*command, '--control', address]!r})\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, env=clean_env()
    )
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    assert result.stdout.strip() == "[]"
