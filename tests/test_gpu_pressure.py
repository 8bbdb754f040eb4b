"""Memory pressure: levels (table), transitions with hysteresis, events, Ollama unloads."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from llm_supervisor.config.models import PressureSpec
from llm_supervisor.gpu.pressure import (
    Level,
    LoadedModel,
    PressureEvent,
    PressureTracker,
    bytes_above,
    choose_ollama_unloads,
    pressure_level,
)
from llm_supervisor.gpu.snapshot import GpuDevice, GpuSnapshot

SPEC = PressureSpec(warning=0.85, critical=0.95)


@pytest.mark.parametrize(
    ("used", "total", "level"),
    [
        (0, 100, "normal"),
        (84, 100, "normal"),
        (85, 100, "warning"),
        (94, 100, "warning"),
        (95, 100, "critical"),
        (100, 100, "critical"),
        (5, 0, "normal"),  # a device that reports no memory is not under pressure
    ],
)
def test_pressure_level(used: int, total: int, level: Level) -> None:
    assert pressure_level(used, total, SPEC) == level


def snap(*used: int, total: int = 100) -> GpuSnapshot:
    devices = tuple(
        GpuDevice(i, f"GPU-{i}", "G", "?", total, u, total - u) for i, u in enumerate(used)
    )
    return GpuSnapshot(0.0, devices)


@pytest.mark.parametrize(
    ("usages", "expected"),
    [
        # each step: used % of GPU 0 → the transition it must report (None: no event)
        ([10, 50, 84], [None, None, None]),
        ([86, 90, 96, 99], ["normal>warning", None, "warning>critical", None]),
        ([99, 40], ["normal>critical", "critical>normal"]),
        # hysteresis 0.02: leaving warning needs < 83 %, leaving critical needs < 93 %
        ([86, 84, 83.5, 82], ["normal>warning", None, None, "warning>normal"]),
        ([96, 94, 93, 92, 84], ["normal>critical", None, None, "critical>warning", None]),
    ],
)
def test_tracker_reports_only_transitions(usages: list[float], expected: list[str | None]) -> None:
    tracker = PressureTracker(hysteresis=0.02)
    got = []
    for used in usages:
        events = tracker.update(snap(int(used * 10), total=1000), SPEC)
        assert len(events) <= 1
        got.append(f"{events[0].previous}>{events[0].level}" if events else None)
    assert got == expected


def test_tracker_is_per_gpu_logs_events_and_forgets_vanished_gpus() -> None:
    tracker = PressureTracker()
    with capture_logs() as logs:
        events = tracker.update(snap(96, 10), SPEC)
        assert tracker.update(snap(96, 10), SPEC) == []
    assert events == [PressureEvent(0, "GPU-0", "normal", "critical", 96, 100)]
    assert events[0].ratio == pytest.approx(0.96)
    assert [(e["event"], e["gpu"], e["level"], e["log_level"]) for e in logs] == [
        ("gpu.pressure", 0, "critical", "warning")
    ]
    assert tracker.levels == {0: "critical", 1: "normal"}
    assert tracker.update(GpuSnapshot.unavailable(1.0, "lost"), SPEC) == []
    assert tracker.levels == {0: "critical", 1: "normal"}  # no news is not a transition
    tracker.update(snap(10), SPEC)  # GPU 1 gone (e.g. its device errored out of the list)
    assert tracker.levels == {0: "normal"}


def test_tracker_skips_unreadable_devices() -> None:
    lost = GpuDevice(0, "GPU-0", "G", "?", 0, 0, 0, error="GPU is lost")
    assert PressureTracker().update(GpuSnapshot(0.0, (lost,)), SPEC) == []


@pytest.mark.parametrize(
    ("used", "total", "fraction", "free_up"),
    [(96, 100, 0.85, 12), (85, 100, 0.85, 1), (84, 100, 0.85, 0), (0, 100, 0.5, 0)],
)
def test_bytes_above(used: int, total: int, fraction: float, free_up: int) -> None:
    result = bytes_above(used, total, fraction)
    assert result == free_up
    assert used - result < fraction * total or used < fraction * total


MODELS = [
    LoadedModel("pinned:120b", "ollama", 60, last_used=1.0, pinned=True),
    LoadedModel("busy:8b", "ollama", 8, last_used=2.0, in_flight=1),
    LoadedModel("recent:3b", "ollama", 3, last_used=50.0),
    LoadedModel("old:7b", "ollama", 7, last_used=10.0),
    LoadedModel("never:1b", "ollama", 1, last_used=None, expires_at=500.0),
    LoadedModel("never:2b", "ollama", 2, last_used=None, expires_at=100.0),
]


@pytest.mark.parametrize(
    ("free_up", "names"),
    [
        (None, ["never:2b", "never:1b", "old:7b", "recent:3b"]),
        (0, []),
        (2, ["never:2b"]),
        (3, ["never:2b", "never:1b"]),
        (4, ["never:2b", "never:1b", "old:7b"]),
        (1000, ["never:2b", "never:1b", "old:7b", "recent:3b"]),
    ],
)
def test_choose_ollama_unloads_idle_unpinned_lru(free_up: int | None, names: list[str]) -> None:
    assert [m.name for m in choose_ollama_unloads(MODELS, free_up)] == names
