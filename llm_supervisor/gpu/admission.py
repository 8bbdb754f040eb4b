"""VRAM admission before a start: pure decisions over one NVML device reading.

The caller (``Placement.admit``, inside the starting service's per-GPU start gate) takes a
fresh snapshot and asks ``decide_admission``. ``Evict`` names idle services to stop, least
recently used first; the caller asks each to stop if it is still idle (a request may have
come since), waits for their memory (``wait_released``), takes a new snapshot and asks
again. ``Evict`` is only returned when stopping those services would cover the shortfall by
the numbers known, so the second round normally admits or refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..config.models import ServiceSpec
from .snapshot import GpuDevice, fmt_mib


@dataclass(frozen=True)
class EvictionCandidate:
    """A service placed on the device (pass every one of them, busy ones too).

    ``idle_since``: when it was last used (only the order counts), None while in use or not
    running.
    ``vram_bytes``: memory it holds on this GPU (attributed by NVML, else its budget);
    None when unknown. ``pids``: its whole process tree, to name holders in messages.
    """

    service: str
    idle_since: float | None
    pinned: bool
    vram_bytes: int | None
    pids: frozenset[int] = frozenset()

    @property
    def evictable(self) -> bool:
        return self.idle_since is not None and not self.pinned


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Evict:
    services: tuple[str, ...]  # stop these, in this order (LRU first), then re-check
    freed_bytes: int  # what they are known to hold together


@dataclass(frozen=True)
class Refuse:
    message: str


Admission = Admit | Evict | Refuse


def need_for(spec: ServiceSpec, total_bytes: int) -> int:
    """Free memory a service needs on one of its GPUs before it may start.

    vLLM refuses to start unless free memory >= gpu-memory-utilization * total (its startup
    check), so that is its need; other engines declare ``vram``; 0 when nothing is known.
    """
    util = spec.gpu_memory_utilization
    if spec.engine == "vllm" and util is not None:
        return math.ceil(util * total_bytes)
    return spec.vram or 0


def decide_admission(
    need_bytes: int,
    device: GpuDevice,
    candidates: Sequence[EvictionCandidate],
    evict_idle: bool,
    process_names: Mapping[int, str] | None = None,
) -> Admission:
    if device.error is not None:
        return Refuse(f"{device.label} cannot be read: {device.error}")
    free = device.memory_free
    if need_bytes <= free:
        return Admit()
    shortfall = need_bytes - free
    chosen = _lru_choice(shortfall, candidates) if evict_idle else None
    if chosen:
        freed = sum(c.vram_bytes or 0 for c in chosen)
        return Evict(tuple(c.service for c in chosen), freed)
    return Refuse(_refusal(need_bytes, device, candidates, evict_idle, process_names or {}))


def _lru_choice(
    shortfall: int, candidates: Sequence[EvictionCandidate]
) -> list[EvictionCandidate] | None:
    """The shortest LRU prefix of idle, non-pinned services that covers ``shortfall``.

    Services of unknown size are taken along (they may hold the memory); without one, an
    idle set that cannot cover the shortfall is not worth stopping.
    """
    idle = sorted((c for c in candidates if c.evictable), key=lambda c: c.idle_since or 0.0)
    chosen: list[EvictionCandidate] = []
    freed = 0
    for cand in idle:
        chosen.append(cand)
        freed += cand.vram_bytes or 0
        if freed >= shortfall:
            return chosen
    if any(c.vram_bytes is None for c in chosen):
        return chosen
    return None


def _refusal(
    need: int,
    device: GpuDevice,
    candidates: Sequence[EvictionCandidate],
    evict_idle: bool,
    names: Mapping[int, str],
) -> str:
    msg = (
        f"not enough free memory on {device.label}: needs {fmt_mib(need)}, "
        f"{fmt_mib(device.memory_free)} free of {fmt_mib(device.memory_total)}"
    )
    held = describe_holders(device, candidates, names)
    msg += f"; held by {held}" if held else "; no process is listed as holding it"
    idle = [c for c in candidates if c.evictable]
    if not evict_idle:
        msg += "; evicting idle services is off (policy evict_idle: false)"
    elif idle:
        can = sum(c.vram_bytes or 0 for c in idle)
        msg += f"; stopping every idle service ({', '.join(c.service for c in idle)}) "
        msg += f"would free only {fmt_mib(can)}"
    else:
        msg += "; no idle, unpinned service on this GPU to stop"
    return msg


def describe_holders(
    device: GpuDevice,
    candidates: Iterable[EvictionCandidate],
    names: Mapping[int, str],
) -> str:
    """``pid 4242 (python3, service qwen) 40960 MiB, pid 77 (Xorg) 210 MiB`` — largest first."""
    owner = {pid: c.service for c in candidates for pid in c.pids}
    procs = sorted(device.processes, key=lambda p: p.used_memory or 0, reverse=True)
    parts = []
    for proc in procs:
        tags = [names.get(proc.pid, "?")]
        if proc.pid in owner:
            tags.append(f"service {owner[proc.pid]}")
        parts.append(f"pid {proc.pid} ({', '.join(tags)}) {fmt_mib(proc.used_memory)}")
    return ", ".join(parts)
