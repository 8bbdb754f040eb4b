"""Pure rendering for the CLI: durations, table alignment, colours, GPU/model/reload lines."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from llm_supervisor.control.backend import LogLine
from llm_supervisor.control.render import (
    format_bytes,
    format_duration_short,
    format_exit,
    format_expiry,
    format_gpu,
    gpu_lines,
    is_ok,
    model_lines,
    reload_lines,
    render_log_line,
    render_reload_result,
    render_status,
    select_services,
    service_rows,
    use_color,
)
from llm_supervisor.errors import UnknownServiceError

from .fakes.fake_control_backend import T0, initial_status


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (-1, "-"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3723, "1h02m"),
     (90000, "1d01h"), (float("inf"), "-")],
)  # fmt: skip
def test_format_duration_short(seconds: float | None, text: str) -> None:
    assert format_duration_short(seconds) == text


def test_format_bytes_and_exit() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(512 * 1024**2) == "512 MiB"
    assert format_bytes(1.5 * 1024**3) == "1.5 GiB"
    assert format_exit(None) == "-"
    assert format_exit({"code": 1, "signal": None, "cause": "cuda_oom"}) == "cuda_oom (exit 1)"
    assert format_exit({"code": None, "signal": 9, "cause": None}) == "signal 9"
    assert format_exit({"code": 0, "signal": None, "cause": "unknown"}) == "unknown (exit 0)"


def test_use_color() -> None:
    assert use_color(FakeTTY(), {}) is True
    assert use_color(FakeTTY(), {"NO_COLOR": "1"}) is False
    assert use_color(FakeTTY(), {"NO_COLOR": ""}) is True  # no-color.org: only when non-empty
    assert use_color(FakeTTY(), {"TERM": "dumb"}) is False
    assert use_color(io.StringIO(), {}) is False


def test_table_alignment_ignores_colour_codes() -> None:
    services = initial_status()["services"]
    plain = service_rows(services, color=False)
    coloured = service_rows(services, color=True)
    assert coloured != plain
    assert [re.sub(r"\x1b\[\d+m", "", line) for line in coloured] == plain
    column = plain[0].index("STATE")
    for row in plain[1:]:  # every state starts right under the header
        assert row[column - 2 : column] == "  " and row[column] != " "


def test_selection_and_readiness() -> None:
    status = initial_status()
    assert list(select_services(status, ["ollama"])) == ["ollama"]
    assert format_gpu([]) == "cpu" and format_gpu([0, 1]) == "0,1" and format_gpu(None) == "-"
    assert list(select_services(status, [])) == ["qwen3-8b", "ollama", "tiny", "broken"]
    with pytest.raises(UnknownServiceError):
        select_services(status, ["nope"])
    assert is_ok({"state": "ready"})
    assert is_ok({"state": "stopped", "start": "on-demand"})
    assert not is_ok({"state": "stopped", "start": "boot"})
    assert not is_ok({"state": "starting"})


def test_gpu_lines() -> None:
    assert gpu_lines({"available": False, "reason": "NVML library not found"}, False) == [
        "GPU telemetry unavailable: NVML library not found"
    ]
    reason = "GPU telemetry unavailable: driver gone"
    assert gpu_lines({"available": False, "reason": reason}, False) == [reason]
    gpus: dict[str, Any] = initial_status()["gpus"]
    gpus["gpus"][0]["pressure"] = "critical"
    (line,) = gpu_lines(gpus, color=True)
    assert "pressure \x1b[31mcritical\x1b[0m" in line
    assert line.endswith("qwen3-8b 40.0 GiB, ollama 20.0 GiB")


def test_model_lines_and_expiry() -> None:
    now = T0
    soon = {"keep_alive": "30m", "expires_at": "2023-11-14T22:25:20Z"}  # T0 + 12m
    assert format_expiry(soon, now) == "in 12m"
    assert format_expiry({"keep_alive": "forever", "expires_at": "2318-01-01"}, now) == "never"
    assert (
        format_expiry({"keep_alive": "5m", "expires_at": "2000-01-01T00:00:00Z"}, now) == "expired"
    )
    assert format_expiry({"keep_alive": "5m", "expires_at": "garbled"}, now) == "garbled"
    models = [
        {"name": "a", "service": "ollama", "loaded": True, "size_vram": 1024**3, **soon,
         "rule": "a*", "pinned": False},
        {"name": "b", "service": "ollama", "loaded": False, "pinned": True,
         "keep_alive": "forever"},
        {"name": "c", "service": "ollama", "loaded": False, "pinned": False},
    ]  # fmt: skip
    lines = model_lines(models, now, color=False)
    assert lines[0].split() == ["MODEL", "SERVICE", "VRAM", "KEEP_ALIVE", "RULE", "EXPIRES"]
    assert lines[1].split() == ["a", "ollama", "1.0", "GiB", "30m", "a*", "in", "12m"]
    assert lines[2].split()[:4] == ["b", "(pinned)", "ollama", "not"]  # pinned but missing
    assert len(lines) == 3  # unloaded, unpinned models are not listed
    assert model_lines([], now, color=False) == []


def test_reload_lines() -> None:
    assert reload_lines(None, T0, False) == ["last reload: none since start"]
    assert reload_lines({"result": "none"}, T0, False) == ["last reload: none since start"]
    rejected = {"result": "rejected", "at": T0 - 120, "errors": ["gpu1.yaml:3:1: bad"]}
    assert reload_lines(rejected, T0, False) == [
        "last reload: rejected 2m ago",
        "  gpu1.yaml:3:1: bad",
    ]
    assert "\x1b[31mrejected" in reload_lines(rejected, T0, True)[0]
    applied = {"result": "applied", "at": T0, "changes": {"started": ["a", "b"], "stopped": []}}
    assert reload_lines(applied, T0, False) == ["last reload: applied 0s ago (started a, b)"]
    result = {"result": "applied", "changes": {"restarted": ["x"], "stopped": []}}
    assert render_reload_result(result, dry_run=False) == ["reload: applied", "  restarted: x"]
    assert render_reload_result(result, dry_run=True)[0] == "reload: would apply"


def test_render_status_sections() -> None:
    status = initial_status()
    status["services"]["qwen3-8b"]["degraded"] = "rolled back to the last good spec"
    text = render_status(status, [], T0 + 70, color=False)
    assert "ready (degraded)" in text
    assert "  qwen3-8b: degraded: rolled back to the last good spec" in text
    assert "  broken: too many failures" in text
    assert "last reload: applied 1m ago (restarted qwen3-8b)" in text
    only = render_status(status, ["ollama"], T0, color=False)
    assert "broken" not in only.split("\n\n")[0]


def test_render_log_line() -> None:
    line = LogLine(T0, "stdout", "hello")
    assert render_log_line(line, timestamps=False) == "hello"
    stamped = render_log_line(line, timestamps=True)
    assert stamped.endswith(" hello") and stamped[:4] == "2023"
