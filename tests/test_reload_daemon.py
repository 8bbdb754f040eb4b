"""Hot reload end to end: the daemon as a subprocess, real files, the real watcher.

Every wait is a poll of ``status`` with a timeout. Where a test must show that something did
*not* happen (a second reload), a later edit serves as a barrier: the watcher handles events
in order, so once the barrier's reload is seen, every earlier event has been handled.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from .daemon_harness import (
    DaemonProcess,
    fake_ollama,
    fake_vllm,
    free_port,
    profile_text,
    run_daemon,
    write_atomic,
)
from .fakes.fake_ollama import parse_keep_alive

pytestmark = pytest.mark.timeout(90)
EX_CONFIG = 78


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "profiles"
    path.mkdir()
    return path


def five_services() -> dict[str, dict[str, Any]]:
    return {
        name: fake_vllm(free_port(), f"model-{name}", args={"max-model-len": 1024})
        for name in ("a", "b", "c", "d", "e")
    }


def write_profile(config_dir: Path, services: dict[str, Any], name: str = "gpu0.yaml") -> Path:
    path = config_dir / name
    write_atomic(path, profile_text(services))
    return path


def total(daemon: DaemonProcess) -> int:
    return sum(daemon.reload_counts().values())


def wait_reloads(daemon: DaemonProcess, n: int, timeout: float = 10.0) -> dict[str, Any]:
    return daemon.wait_status(
        lambda s: sum((s["reload"].get("counts") or {}).values()) >= n, timeout, f"{n} reloads"
    )


def argv_of(pid: int) -> list[str]:
    return list(psutil.Process(pid).cmdline())


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- restart only what changed -------------------------------------------------------------


def test_editing_one_service_restarts_only_that_one(config_dir: Path) -> None:
    services = five_services()
    write_profile(config_dir, services)
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        services["c"]["args"] = {"max-model-len": 2048}
        write_profile(config_dir, services)
        status = daemon.wait_status(
            lambda s: (
                s["services"]["c"]["pid"] not in (None, before["c"])
                and s["services"]["c"]["state"] == "ready"
            ),
            what="c restarted and ready",
        )
        after = {name: s["pid"] for name, s in status["services"].items()}
        assert {n: p for n, p in after.items() if n != "c"} == {
            n: p for n, p in before.items() if n != "c"
        }
        assert flag(argv_of(after["c"]), "--max-model-len") == "2048"
        assert status["reload"]["result"] == "applied"
        assert status["reload"]["changes"]["restarted"] == ["c"]
        assert status["reload"]["counts"] == {"applied": 1}


def test_removed_service_is_stopped_and_added_one_started(config_dir: Path) -> None:
    services = five_services()
    write_profile(config_dir, services)
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        del services["c"]
        write_profile(config_dir, services)
        added = write_profile(config_dir, {"f": fake_vllm(free_port(), "model-f")}, "gpu1.yaml")
        status = daemon.wait_status(
            lambda s: (
                "c" not in s["services"] and s["services"].get("f", {}).get("state") == "ready"
            ),
            what="c gone, f ready",
        )
        old_c = before.pop("c")
        assert old_c is not None and not alive(old_c)
        assert {n: status["services"][n]["pid"] for n in before} == before
        changes = status["reload"]["changes"]
        counts = status["reload"]["counts"]
        if counts == {"applied": 1}:  # both saves in one event batch
            assert (changes["started"], changes["stopped"]) == (["f"], ["c"])
        # Deleting a whole file stops its services (after a second look: not an editor's
        # delete-and-recreate).
        f_pid, reloads = status["services"]["f"]["pid"], sum(counts.values())
        added.unlink()
        status = wait_reloads(daemon, reloads + 1)
        assert not alive(f_pid)
        assert status["reload"]["changes"]["stopped"] == ["f"]
        assert {n: status["services"][n]["pid"] for n in before} == before


def test_edit_of_a_stopped_on_demand_service_does_not_start_it(config_dir: Path) -> None:
    services = five_services()
    services["e"]["start"] = "on-demand"
    write_profile(config_dir, services)
    with run_daemon(config_dir) as daemon:
        assert daemon.services()["e"]["state"] == "stopped"
        services["e"]["args"] = {"max-model-len": 2048}
        write_profile(config_dir, services)
        status = wait_reloads(daemon, 1)
        assert status["reload"]["changes"]["restarted"] == ["e"]
        assert status["services"]["e"]["state"] == "stopped"
        started = daemon.cli("start", "e")
        assert started.returncode == 0, started.stderr
        pid = daemon.services()["e"]["pid"]
        assert flag(argv_of(pid), "--max-model-len") == "2048"


# -- policy: live, no restart --------------------------------------------------------------


def policy_text(llama_keep_alive: str) -> str:
    policy = {
        "keep_alive": {
            "default": "30m",
            "rules": [{"match": "llama3.2*", "keep_alive": llama_keep_alive}],
        }
    }
    return yaml.safe_dump(policy)


def generate(daemon: DaemonProcess, ollama_port: int) -> float | None:
    """One request through the gateway; the keep_alive the fake Ollama received, in seconds."""
    body = {"model": "llama3.2:3b", "prompt": "hi", "stream": False, "keep_alive": 0}
    response = httpx.post(f"{daemon.gateway_url}/api/generate", json=body, timeout=10)
    assert response.status_code == 200, response.text
    stats = httpx.get(f"http://127.0.0.1:{ollama_port}/_fake/stats", timeout=5).json()
    return parse_keep_alive(stats["keep_alive"]["llama3.2:3b"])


def test_keep_alive_rule_edit_applies_to_next_request_without_restart(config_dir: Path) -> None:
    ollama_port = free_port()
    services = {
        "ollama": fake_ollama(ollama_port, ["llama3.2:3b"]),
        "vllm": fake_vllm(free_port(), "model-v"),
    }
    write_profile(config_dir, services)
    write_atomic(config_dir / "policy.yaml", policy_text("10m"))
    with run_daemon(config_dir, gateway=True) as daemon:
        assert generate(daemon, ollama_port) == 600
        before = daemon.pids()
        write_atomic(config_dir / "policy.yaml", policy_text("2h"))
        status = wait_reloads(daemon, 1)
        assert status["reload"]["result"] == "applied"
        assert status["reload"]["changes"]["policy"] == ["keep_alive"]
        assert status["reload"]["changes"]["restarted"] == []
        assert generate(daemon, ollama_port) == 7200
        assert daemon.pids() == before


# -- invalid files -------------------------------------------------------------------------


def test_invalid_file_changes_nothing_and_status_shows_the_error(config_dir: Path) -> None:
    services = five_services()
    path = write_profile(config_dir, services)
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        broken = profile_text(services).replace("max-model-len: 1024", "max-model-len: 8kb", 1)
        write_atomic(path, broken)
        line = next(i for i, t in enumerate(broken.splitlines(), 1) if "8kb" in t)
        wait_reloads(daemon, 1)
        shown = daemon.cli("status", "--json")
        reload = yaml.safe_load(shown.stdout)["reload"]
        assert reload["result"] == "rejected"
        assert any(f"{path}:{line}:" in e and "max-model-len" in e for e in reload["errors"])
        assert daemon.pids() == before
        assert daemon.events("reload.rejected")
        # Still shown after another look at the same broken file (SIGHUP) ...
        daemon.signal(signal.SIGHUP)
        status = wait_reloads(daemon, 2)
        assert status["reload"]["result"] == "rejected" and status["reload"]["errors"]
        # ... until a valid reload.
        services["a"]["args"] = {"max-model-len": 1536}
        write_profile(config_dir, services)
        status = wait_reloads(daemon, 3)
        assert status["reload"]["result"] == "applied" and status["reload"]["errors"] == []
        assert status["reload"]["counts"] == {"rejected": 2, "applied": 1}


# -- editors -------------------------------------------------------------------------------


def vim_save(path: Path, text: str) -> None:
    """vim's sequence with backupcopy=no: probe file, rename to backup, write, drop backup."""
    probe = path.parent / "4913"
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    backup.unlink()


def test_rename_saves_reload_exactly_once_and_touch_does_nothing(config_dir: Path) -> None:
    services = five_services()
    path = write_profile(config_dir, services)
    barrier = config_dir / "policy.yaml"
    write_atomic(barrier, policy_text("10m"))
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        os.utime(path)  # a touch and a chmod change no content: no reload
        path.chmod(0o640)
        services["b"]["args"] = {"max-model-len": 2048}
        vim_save(path, profile_text(services))
        status = wait_reloads(daemon, 1)
        assert status["reload"]["changes"]["restarted"] == ["b"]
        services["d"]["args"] = {"max-model-len": 3072}
        write_atomic(path, profile_text(services))  # temp file + os.replace
        wait_reloads(daemon, 2)
        write_atomic(barrier, policy_text("20m"))
        status = wait_reloads(daemon, 3)
        assert status["reload"]["counts"] == {"applied": 3}
        assert status["reload"]["changes"]["policy"] == ["keep_alive"]
        after = daemon.pids()
        assert [n for n in after if after[n] != before[n]] == ["b", "d"]


def test_rapid_writes_coalesce_and_never_apply_a_half_written_file(config_dir: Path) -> None:
    services = five_services()
    path = config_dir / "gpu0.yaml"
    # A big comment block makes each write span many pages, so a read can catch one half done.
    padding = "".join(f"# padding line {i:06d} {'x' * 60}\n" for i in range(4000))
    path.write_text(padding + profile_text(services))
    values = [2000 + i for i in range(20)]
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        for value in values:
            services["e"]["args"] = {"max-model-len": value}
            path.write_text(padding + profile_text(services))  # truncate, then write: not atomic
        status = daemon.wait_status(
            lambda s: (
                s["services"]["e"]["state"] == "ready"
                and s["services"]["e"]["pid"] not in (None, before["e"])
                and flag(argv_of(s["services"]["e"]["pid"]), "--max-model-len") == str(values[-1])
            ),
            what="e running with the last value",
        )
        counts = status["reload"]["counts"]
        assert counts.get("rejected", 0) == 0, status["reload"]
        assert 1 <= counts.get("applied", 0) <= 2, counts
        spawned = [e for e in daemon.events("service.spawned") if e["service"] == "e"]
        seen = {int(flag(e["argv"], "--max-model-len")) for e in spawned}
        assert seen <= {1024, *values}
        after = daemon.pids()
        assert {n: after[n] for n in "abcd"} == {n: before[n] for n in "abcd"}


# -- the CLI and SIGHUP --------------------------------------------------------------------


def test_reload_cli_wait_dry_run_and_sighup(config_dir: Path) -> None:
    services = five_services()
    path = write_profile(config_dir, services)
    with run_daemon(config_dir, extra_args=["--no-watch"]) as daemon:
        before = daemon.pids()
        broken = profile_text(services).replace("max-model-len: 1024", "max-model-len: [1", 1)
        write_atomic(path, broken)
        rejected = daemon.cli("reload", "--wait")
        assert rejected.returncode == EX_CONFIG, rejected
        assert f"{path}:" in rejected.stderr and "config rejected" in rejected.stderr
        services["a"]["args"] = {"max-model-len": 4000}
        services["f"] = fake_vllm(free_port(), "model-f")
        write_profile(config_dir, services)
        dry = daemon.cli("reload", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "restarted: a" in dry.stdout and "started: f" in dry.stdout
        assert daemon.pids() == before and "f" not in daemon.services()
        assert daemon.reload_counts() == {"rejected": 1}
        daemon.signal(signal.SIGHUP)
        status = daemon.wait_status(
            lambda s: (
                s["services"].get("f", {}).get("state") == "ready"
                and s["services"]["a"]["pid"] not in (None, before["a"])
            ),
            what="SIGHUP reload applied",
        )
        assert status["reload"]["counts"] == {"rejected": 1, "applied": 1}
        again = daemon.cli("reload", "--wait")
        assert again.returncode == 0 and "unchanged" in again.stdout, again


# -- last known good -----------------------------------------------------------------------


def test_crashing_edit_is_rolled_back_to_the_last_good_spec(config_dir: Path) -> None:
    services = five_services()
    fast_fail = {"max_failures": 2, "backoff_initial": 0.05, "backoff_max": 0.1}
    services["a"].update(args={"max-model-len": 2048}, restart=fast_fail)
    path = write_profile(config_dir, services)
    with run_daemon(config_dir) as daemon:
        before = daemon.pids()
        services["a"]["args"] = {"max-model-len": 65536}  # the fake's limit is 4096
        write_profile(config_dir, services)
        status = daemon.wait_status(
            lambda s: (
                (s["services"]["a"]["degraded"] or "").startswith("rolled back")
                and s["services"]["a"]["state"] == "ready"
            ),
            timeout=30,
            what="a rolled back and ready",
        )
        a = status["services"]["a"]
        assert "max_model_len_too_large" in a["degraded"]
        assert a["last_exit"]["cause"] == "max_model_len_too_large"
        assert flag(argv_of(a["pid"]), "--max-model-len") == "2048"
        assert a["restarts_by_reason"].get("rollback") == 1
        assert [e["service"] for e in daemon.events("reload.rollback")] == ["a"]
        assert {n: status["services"][n]["pid"] for n in "bcde"} == {n: before[n] for n in "bcde"}
        # An unrelated edit does not retry the spec that crashed; the mark stays.
        rolled_back_pid = a["pid"]
        services["b"]["args"] = {"max-model-len": 3000}
        write_profile(config_dir, services)
        status = wait_reloads(daemon, 2)
        assert status["reload"]["changes"]["restarted"] == ["b"]
        assert status["services"]["a"]["pid"] == rolled_back_pid
        assert status["services"]["a"]["degraded"].startswith("rolled back")
        # Fixing the file clears the mark and applies the fix.
        services["a"]["args"] = {"max-model-len": 3000}
        write_atomic(path, profile_text(services))
        status = daemon.wait_status(
            lambda s: (
                s["services"]["a"]["degraded"] is None
                and s["services"]["a"]["state"] == "ready"
                and s["services"]["a"]["pid"] != rolled_back_pid
            ),
            what="a restarted with the fixed spec",
        )
        assert flag(argv_of(status["services"]["a"]["pid"]), "--max-model-len") == "3000"
