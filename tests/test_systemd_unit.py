"""The shipped unit: `systemd-analyze verify` is clean, and the directives the daemon relies on
are there (and the ones that break GPUs are not)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "llm-supervisor.service"
INSTALLED_EXE = "/opt/llm-supervisor/bin/llm-supervisor"


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd allows repeated keys, so no dict."""
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(section: str, key: str) -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if (s, k) == (section, key)]


def _one(section: str, key: str) -> str:
    values = _values(section, key)
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values}"
    return values[0]


def _seconds(span: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|sec|s|min|m|h)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("systemd-analyze missing in CI: `make deps-system` installs Debian's systemd")
    pytest.skip("systemd-analyze not installed (apt-get install systemd); `make test` installs it")


def _verify(unit_text: str, tmp_path: Path) -> tuple[int, str]:
    """Run verify on a copy whose ExecStart paths point at an executable that exists here."""
    stub = tmp_path / "bin" / "llm-supervisor"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "llm-supervisor.service"
    unit.write_text(unit_text.replace(INSTALLED_EXE, str(stub)))
    proc = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    code, output = _verify(UNIT.read_text(), tmp_path)
    # verify exits 0 even for unknown keys and unparsable values; it only prints them.
    complaints = [line for line in output.splitlines() if "llm-supervisor" in line]
    assert code == 0, output
    assert complaints == [], output


def test_verify_would_catch_a_bad_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillMode=process", "KillMode=process\nKilMode=oops")
    _, output = _verify(broken, tmp_path)
    assert "KilMode" in output


def test_notify_reload_and_watchdog() -> None:
    assert _one("Service", "Type") == "notify"
    assert _one("Service", "NotifyAccess") == "main"
    assert _seconds(_one("Service", "WatchdogSec")) >= 30
    assert any(v.endswith("llm-supervisor check") for v in _values("Service", "ExecStartPre"))
    assert _one("Service", "ExecStart").endswith("llm-supervisor run --gateway 0.0.0.0:11434")
    assert _one("Service", "ExecReload").endswith("llm-supervisor reload --wait")


def test_restart_policy_and_stop() -> None:
    assert _one("Service", "Restart") == "on-failure"
    assert _one("Unit", "StartLimitIntervalSec")  # [Unit] is its home since systemd 229
    assert int(_one("Unit", "StartLimitBurst")) >= 1
    # Engines outlive a crashed daemon (the next one adopts them); stop is the daemon's job.
    assert _one("Service", "KillMode") == "process"
    daemon_shutdown_deadline, last_resort_margin = 60, 30
    assert (
        _seconds(_one("Service", "TimeoutStopSec")) > daemon_shutdown_deadline + last_resort_margin
    )
    assert _one("Service", "RemoveIPC") == "no"  # would pull /dev/shm from adopted engines
    assert _one("Service", "OOMPolicy") == "continue"


def test_directories_come_from_systemd() -> None:
    for key in ("Configuration", "State", "Logs", "Runtime"):
        assert _one("Service", f"{key}Directory") == "llm-supervisor"
    assert _one("Service", "RuntimeDirectoryMode") == "0750"
    assert _one("Service", "User") == _one("Service", "Group") == "llm-supervisor"


def test_hardening_keeps_gpus_reachable() -> None:
    keys = {k for _, k, _ in _directives(UNIT.read_text())}
    # Each of these hides /dev/nvidia* or forbids the W+X memory that CUDA JIT needs.
    for forbidden in ("PrivateDevices", "MemoryDenyWriteExecute", "DeviceAllow", "DevicePolicy"):
        assert forbidden not in keys
    assert _one("Service", "NoNewPrivileges") == "yes"
    assert _one("Service", "ProtectSystem") == "strict"
    assert _one("Service", "LimitMEMLOCK") == "infinity"
