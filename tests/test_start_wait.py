"""``start NAME --wait`` / ``restart NAME --wait``: the load phases, in order, then the outcome.

The daemon runs as a subprocess with fake engines; the CLI runs as a subprocess too, its
stdout a pipe (plain lines). The TTY bar is checked on the rendering functions.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from llm_supervisor.commands.startwait import ProgressView, bar_line, plain_line

from .daemon_harness import DaemonProcess, fake_vllm, free_port, profile_text, run_daemon

pytestmark = pytest.mark.timeout(90)

OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
PHASES = ["loading weights", "allocating KV cache", "capturing CUDA graphs"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config_dir = tmp_path_factory.mktemp("wait") / "profiles"
    config_dir.mkdir()
    slow = ("--loading-lines", "--startup-delay", "3")
    services = {
        "loader": fake_vllm(free_port(), "org/loader", *slow, start="on-demand"),
        "broken": fake_vllm(
            free_port(), "org/broken", "--fail-with", OOM_LINE, start="on-demand",
            restart={"max_failures": 1},
        ),
    }  # fmt: skip
    (config_dir / "cpu.yaml").write_text(profile_text(services))
    with run_daemon(config_dir) as handle:
        yield handle


def phases_in(output: str, name: str) -> list[str]:
    """The phases named in the output, each once, in the order first seen."""
    seen: list[str] = []
    for line in output.splitlines():
        for phase in PHASES:
            if line.startswith(f"{name}: {phase}") and phase not in seen:
                seen.append(phase)
    return seen


def test_start_wait_shows_phases_in_order_and_exits_0(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "loader", "--wait")
    assert done.returncode == 0, done.stderr
    assert phases_in(done.stdout, "loader") == PHASES, done.stdout
    assert "loader: loading weights 1/4 (25%)" in done.stdout or "2/4 (50%)" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1] == "loader: start requested; state ready"
    assert "\x1b" not in done.stdout  # no terminal codes into a pipe


def test_restart_wait_shows_phases_again(daemon: DaemonProcess) -> None:
    daemon.wait_ready(["loader"])
    done = daemon.cli("restart", "loader", "--wait")
    assert done.returncode == 0, done.stderr
    assert phases_in(done.stdout, "loader") == PHASES, done.stdout


def test_start_wait_failure_exits_nonzero_with_cause(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "broken", "--wait")
    assert done.returncode == 1, done.stdout
    assert "cuda_oom" in done.stderr
    assert "hint:" in done.stderr and "gpu-memory-utilization" in done.stderr


def test_start_wait_unknown_service(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "nope", "--wait")
    assert done.returncode == 1
    assert "nope" in done.stderr


# -- rendering ---------------------------------------------------------------------------


def loading(fraction: float | None, detail: str = "", state: str = "starting") -> dict[str, object]:
    progress = {"phase": "loading weights", "fraction": fraction, "detail": detail,
                "phase_elapsed": 1.0, "elapsed": 3.2}  # fmt: skip
    return {"state": state, "progress": progress if state == "starting" else None}


def test_plain_line_names_phase_counts_percent_elapsed() -> None:
    entry = loading(0.5, "Loading safetensors checkpoint shards: 50% Completed | 2/4 [00:02]")
    assert plain_line("qwen", entry) == "qwen: loading weights 2/4 (50%) 3s"
    assert plain_line("qwen", loading(None)) == "qwen: loading weights 3s"
    assert plain_line("qwen", {"state": "backoff", "reason": "crashed"}) == "qwen: backoff: crashed"


def test_bar_line_fits_the_terminal() -> None:
    line = bar_line("qwen", loading(0.5, "2/4"), 80)
    assert len(line) < 80 and "[" in line and " 50% 2/4 3s" in line
    assert abs(line.count("#") - line.count(".")) <= 1  # half full
    assert len(bar_line("qwen", loading(None), 30)) <= 29


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_view_redraws_in_place_on_a_tty_and_prints_changes_otherwise() -> None:
    tty = FakeTty()
    view = ProgressView("qwen", tty)
    for fraction in (0.25, 0.5):
        view.update(loading(fraction))
    view.finish()
    assert tty.getvalue().count("\r\x1b[K") == 3 and "\n" not in tty.getvalue()
    pipe = io.StringIO()
    plain = ProgressView("qwen", pipe)
    for fraction in (0.25, 0.25, 0.5):
        plain.update(loading(fraction))
    assert pipe.getvalue().splitlines() == [
        "qwen: loading weights (25%) 3s", "qwen: loading weights (50%) 3s"
    ]  # fmt: skip
