"""deploy/prometheus/alerts.yml: `promtool check rules` is clean and `promtool test rules`
(deploy/prometheus/alerts_test.yml) shows every alert firing when it should and not otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool_path() -> str:
    exe = shutil.which("promtool")
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("promtool missing in CI: `make deps-system` installs Debian's prometheus")
    pytest.skip("promtool not installed (apt-get install prometheus); `make test` installs it")


def _promtool_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_path(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


def test_rules_are_valid() -> None:
    result = _promtool_run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = _promtool_run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in rules} == fired
    for rule in rules:
        assert "llm-supervisor " in rule["annotations"]["runbook"], rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
