"""VRAM admission before a start: pure decisions over one NVML device reading.

The caller (the Manager, holding the GPU's start lock) takes a fresh snapshot and asks
``decide_admission``. ``Evict`` names idle services to stop, least recently used first;
the caller stops them, waits for their memory (``memory_released``), takes a new snapshot
and asks again. ``Evict`` is only returned when stopping those services would cover the
shortfall by the numbers known, so the second round normally admits or refuses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..config.models import ServiceSpec
from .snapshot import GpuDevice, GpuSnapshot, fmt_mib


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


def memory_released(
    before: set[int],
    snapshot: GpuSnapshot,
    device_ref: int | str | None = None,
    need_bytes: int | None = None,
) -> bool:
    """True once no pid of the old process tree is listed by NVML, or the memory is back.

    "Memory is back" means the device ``device_ref`` has ``need_bytes`` free. An unavailable
    snapshot returns True: nothing can be confirmed, and the wait must not block starts.
    """
    if not snapshot.available:
        return True
    if not any(before & dev.pids() for dev in snapshot.devices):
        return True
    if device_ref is not None and need_bytes is not None:
        dev = snapshot.resolve(device_ref)
        return dev is not None and dev.error is None and dev.memory_free >= need_bytes
    return False
