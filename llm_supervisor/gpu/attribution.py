"""Who holds GPU memory: NVML's per-process usage mapped onto services.

The caller passes every pid of each service's process tree (vLLM's EngineCore/Worker
children, Ollama's runners), since the process that holds the memory is rarely the one
the daemon started. Processes no service owns are kept with ``service=None``: on a managed
GPU they are exactly what an operator needs to see.

Note: inside a container without the host's PID namespace NVML reports host pids (or none),
so attribution may come out empty or unknown; memory totals stay right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from .snapshot import GpuSnapshot


@dataclass(frozen=True)
class ProcessUse:
    service: str | None
    pid: int
    used_memory: int | None


def attribute(
    snapshot: GpuSnapshot, service_pids: Mapping[str, set[int]]
) -> dict[int, list[ProcessUse]]:
    """GPU index → its processes (largest first), each with its service or None."""
    owner = {pid: name for name, pids in service_pids.items() for pid in pids}
    out: dict[int, list[ProcessUse]] = {}
    for dev in snapshot.devices:
        uses = [ProcessUse(owner.get(p.pid), p.pid, p.used_memory) for p in dev.processes]
        uses.sort(key=lambda u: (-(u.used_memory or 0), u.pid))
        out[dev.index] = uses
    return out


def service_usage(attribution: Mapping[int, list[ProcessUse]]) -> dict[int, dict[str, int]]:
    """GPU index → service → bytes its processes hold there (unknown sizes count 0)."""
    out: dict[int, dict[str, int]] = {}
    for index, uses in attribution.items():
        per: dict[str, int] = {}
        for use in uses:
            if use.service is not None:
                per[use.service] = per.get(use.service, 0) + (use.used_memory or 0)
        out[index] = per
    return out


def process_names(pids: Iterable[int]) -> dict[int, str]:
    """pid → process name (``VLLM::EngineCore``, ``ollama``); pids that vanished are skipped."""
    names = {}
    for pid in set(pids):
        try:
            names[pid] = psutil.Process(pid).name()
        except (psutil.Error, OSError):
            continue
    return names


def snapshot_dict(
    snapshot: GpuSnapshot,
    service_pids: Mapping[str, set[int]] | None = None,
    names: Mapping[int, str] | None = None,
    pressure: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The JSON shape of ``gpus --json`` and of the GPU part of ``status --json``."""
    by_gpu = attribute(snapshot, service_pids or {})
    names = names or {}
    gpus = []
    for dev in snapshot.devices:
        uses = by_gpu.get(dev.index, [])
        gpus.append(
            {
                "index": dev.index,
                "uuid": dev.uuid,
                "name": dev.name,
                "pci_bus_id": dev.pci_bus_id,
                "memory": {
                    "total": dev.memory_total,
                    "used": dev.memory_used,
                    "free": dev.memory_free,
                },
                "error": dev.error,
                "process_error": dev.process_error,
                "pressure": (pressure or {}).get(dev.index),
                "services": _bytes_by_service(uses),
                "processes": [
                    {
                        "pid": u.pid,
                        "name": names.get(u.pid),
                        "used": u.used_memory,
                        "service": u.service,
                    }
                    for u in uses
                ],
            }
        )
    return {
        "available": snapshot.available,
        "reason": snapshot.reason,
        "message": snapshot.message,
        "taken_at": snapshot.taken_at,
        "gpus": gpus,
    }


def _bytes_by_service(uses: list[ProcessUse]) -> dict[str, int]:
    """GPU memory per service (its EngineCore/Worker children included), by name."""
    totals: dict[str, int] = {}
    for use in uses:
        if use.service is not None:
            totals[use.service] = totals.get(use.service, 0) + (use.used_memory or 0)
    return dict(sorted(totals.items()))
