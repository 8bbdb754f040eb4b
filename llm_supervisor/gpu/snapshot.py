"""Immutable GPU telemetry values: what NVML said at one moment.

A snapshot is either available (``devices`` filled, ``reason`` None) or unavailable with a
reason such as "NVML library not found". A single device can also carry an ``error`` (a GPU
that fell off the bus) while the others are fine: nothing here raises on bad hardware.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UNAVAILABLE_PREFIX = "GPU telemetry unavailable"
MIB = 2**20
GIB = 2**30


def fmt_mib(n: int | None) -> str:
    return "? MiB" if n is None else f"{n // MIB} MiB"


@dataclass(frozen=True)
class GpuProcess:
    """A compute process NVML lists on a device; ``used_memory`` None when NVML cannot tell."""

    pid: int
    used_memory: int | None


@dataclass(frozen=True)
class GpuDevice:
    index: int
    uuid: str
    name: str
    pci_bus_id: str
    memory_total: int
    memory_used: int
    memory_free: int
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None  # the device could not be read (e.g. "GPU is lost")
    process_error: str | None = None  # memory is known, the process list is not

    @property
    def label(self) -> str:
        """How messages name the GPU: ``GPU 0 (NVIDIA H100 80GB HBM3, GPU-5a1c…)``."""
        return f"GPU {self.index} ({self.name}, {self.uuid})"

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes}


@dataclass(frozen=True)
class GpuSnapshot:
    taken_at: float
    devices: tuple[GpuDevice, ...] = ()
    reason: str | None = None  # set iff telemetry is unavailable

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def message(self) -> str:
        """One line for operators: "GPU telemetry unavailable: <reason>" or a device count."""
        if self.reason is not None:
            return f"{UNAVAILABLE_PREFIX}: {self.reason}"
        return f"{len(self.devices)} GPU{'s' if len(self.devices) != 1 else ''}"

    @classmethod
    def unavailable(cls, taken_at: float, reason: str) -> GpuSnapshot:
        return cls(taken_at=taken_at, devices=(), reason=reason)

    def resolve(self, ref: int | str) -> GpuDevice | None:
        """The device a profile names by index (``0``, ``"0"``) or UUID (``"GPU-…"``)."""
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        for dev in self.devices:
            if isinstance(ref, int) and not isinstance(ref, bool) and dev.index == ref:
                return dev
            if isinstance(ref, str) and dev.uuid.lower() == ref.lower():
                return dev
        return None

    def totals(self) -> dict[int | str, int] | None:
        """Index and UUID of every readable device → total bytes, for ``load_config``.

        None when telemetry is unavailable: config validation then skips the checks that
        need hardware facts instead of calling every GPU reference unknown.
        """
        if not self.available:
            return None
        out: dict[int | str, int] = {}
        for dev in self.devices:
            out[dev.index] = dev.memory_total
            out[dev.uuid] = dev.memory_total
        return out

    def uuids_for(self, refs: Iterable[int | str]) -> tuple[str, ...] | None:
        """UUIDs for ``CUDA_VISIBLE_DEVICES``; None if any reference does not resolve."""
        out = []
        for ref in refs:
            dev = self.resolve(ref)
            if dev is None:
                return None
            out.append(dev.uuid)
        return tuple(out)

    def holders(self) -> dict[int, set[int]]:
        """Device index → pids NVML lists on it."""
        return {dev.index: dev.pids() for dev in self.devices}
