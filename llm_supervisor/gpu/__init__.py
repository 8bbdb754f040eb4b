"""GPU awareness: NVML telemetry, VRAM admission, memory pressure, per-service attribution.

Everything here except ``nvml.GpuMonitor`` and the backends is a pure function over
``GpuSnapshot`` values, so the daemon's policies are table-tested without a GPU.
"""

from __future__ import annotations

from .nvml import GpuDevice, GpuMonitor, GpuProcess, GpuSnapshot, NvmlBackend, PynvmlBackend

__all__ = [
    "GpuDevice",
    "GpuMonitor",
    "GpuProcess",
    "GpuSnapshot",
    "NvmlBackend",
    "PynvmlBackend",
]
