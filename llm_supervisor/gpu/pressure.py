"""GPU memory pressure: levels from policy thresholds, transition events, Ollama unloads.

``pressure_level`` is the pure rule; ``PressureTracker`` keeps the last level per GPU and
reports (and logs as ``gpu.pressure``) only changes. Levels drop back only once usage is
``hysteresis`` below the threshold, so a GPU hovering at 85 % does not flap warning/normal.
At ``critical`` the caller unloads what ``choose_ollama_unloads`` picks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..config.models import PressureSpec
from ..logsetup import get_logger
from .snapshot import GpuSnapshot

Level = Literal["normal", "warning", "critical"]
_RANK: dict[Level, int] = {"normal": 0, "warning": 1, "critical": 2}

log = get_logger("llm_supervisor.gpu")


def _level(ratio: float, warning: float, critical: float) -> Level:
    if ratio >= critical:
        return "critical"
    if ratio >= warning:
        return "warning"
    return "normal"


def pressure_level(used: int, total: int, spec: PressureSpec) -> Level:
    if total <= 0:
        return "normal"
    return _level(used / total, spec.warning, spec.critical)


def _with_hysteresis(
    used: int, total: int, spec: PressureSpec, previous: Level, margin: float
) -> Level:
    level = pressure_level(used, total, spec)
    if _RANK[level] >= _RANK[previous] or total <= 0:
        return level
    # Going down: the ratio must clear the threshold of the level we leave by ``margin``.
    lowered = _level(used / total, spec.warning - margin, spec.critical - margin)
    return lowered if _RANK[lowered] < _RANK[previous] else previous


@dataclass(frozen=True)
class PressureEvent:
    gpu: int
    uuid: str
    previous: Level
    level: Level
    used: int
    total: int

    @property
    def ratio(self) -> float:
        return self.used / self.total if self.total else 0.0


class PressureTracker:
    """Per-GPU pressure level; ``update`` returns (and logs) only transitions."""

    def __init__(self, hysteresis: float = 0.02) -> None:
        self.hysteresis = hysteresis
        self._levels: dict[str, Level] = {}  # by UUID: indexes can shift after a reset
        self._index: dict[str, int] = {}

    @property
    def levels(self) -> dict[int, Level]:
        """GPU index → current level, for status."""
        return {self._index[u]: lvl for u, lvl in self._levels.items()}

    def update(self, snapshot: GpuSnapshot, spec: PressureSpec) -> list[PressureEvent]:
        if not snapshot.available:
            return []  # keep the last known levels; no news is not a transition
        events = []
        seen = set()
        for dev in snapshot.devices:
            if dev.error is not None:
                continue
            seen.add(dev.uuid)
            previous = self._levels.get(dev.uuid, "normal")
            level = _with_hysteresis(
                dev.memory_used, dev.memory_total, spec, previous, self.hysteresis
            )
            self._levels[dev.uuid] = level
            self._index[dev.uuid] = dev.index
            if level != previous:
                event = PressureEvent(
                    dev.index, dev.uuid, previous, level, dev.memory_used, dev.memory_total
                )
                events.append(event)
                self._log(event)
        for gone in set(self._levels) - seen:
            del self._levels[gone]
            self._index.pop(gone, None)
        return events

    @staticmethod
    def _log(event: PressureEvent) -> None:
        method = log.warning if event.level != "normal" else log.info
        method(
            "gpu.pressure",
            gpu=event.gpu,
            uuid=event.uuid,
            previous=event.previous,
            level=event.level,
            used_mib=event.used // 2**20,
            total_mib=event.total // 2**20,
            ratio=round(event.ratio, 3),
        )


def bytes_above(used: int, total: int, fraction: float) -> int:
    """Bytes to free so that ``used`` drops below ``fraction`` of ``total`` (0 if already)."""
    return max(0, used - math.ceil(fraction * total) + 1)


@dataclass(frozen=True)
class LoadedModel:
    """A model an Ollama server has loaded (from ``/api/ps`` plus the gateway's bookkeeping).

    ``last_used``: monotonic time of its last request through the gateway, None if unseen.
    ``expires_at``: when Ollama would unload it by itself (epoch seconds), None if never.
    """

    name: str
    service: str
    size_vram: int
    last_used: float | None = None
    expires_at: float | None = None
    pinned: bool = False
    in_flight: int = 0


def choose_ollama_unloads(
    models: Sequence[LoadedModel], free_up: int | None = None
) -> list[LoadedModel]:
    """Idle, non-pinned models to unload, least recently used first.

    With ``free_up`` (e.g. ``bytes_above(used, total, spec.warning)``) the list stops as soon
    as its ``size_vram`` covers it; without, every idle non-pinned model is listed. Models
    the gateway never saw used count as oldest; ties go to the one expiring first.
    """
    idle = [m for m in models if not m.pinned and m.in_flight == 0]
    idle.sort(
        key=lambda m: (
            -math.inf if m.last_used is None else m.last_used,
            math.inf if m.expires_at is None else m.expires_at,
            m.name,
        )
    )
    if free_up is None:
        return idle
    chosen: list[LoadedModel] = []
    freed = 0
    for model in idle:
        if freed >= free_up:
            break
        chosen.append(model)
        freed += model.size_vram
    return chosen
