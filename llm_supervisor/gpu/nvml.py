"""NVML facade: a sync backend protocol over nvidia-ml-py and an async monitor around it.

NVML calls block (a GPU that fell off the bus can stall them for seconds), so
``GpuMonitor.snapshot()`` runs them in a worker thread with a timeout. Every failure
becomes data: an unavailable ``GpuSnapshot`` with a reason, or a device with ``error`` set.
Nothing here raises into the daemon because of the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import pynvml

from ..logsetup import get_logger
from ..process.threads import start_thread
from .snapshot import GpuDevice, GpuProcess, GpuSnapshot

__all__ = [
    "GpuDevice",
    "GpuMonitor",
    "GpuProcess",
    "GpuSnapshot",
    "NvmlBackend",
    "PynvmlBackend",
    "collect",
    "describe_error",
]

log = get_logger("llm_supervisor.gpu")

# Operator-facing wording per NVML return code; the rest fall back to NVML's own string.
_REASONS: dict[int, str] = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "NVML library not found (libnvidia-ml.so.1; "
    "is the NVIDIA driver installed?)",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "NVIDIA driver not loaded",
    pynvml.NVML_ERROR_NO_PERMISSION: "no permission to query NVML",
    pynvml.NVML_ERROR_GPU_IS_LOST: "GPU is lost (fell off the bus; needs a reset or reboot)",
    pynvml.NVML_ERROR_TIMEOUT: "NVML timed out",
    pynvml.NVML_ERROR_UNKNOWN: "unknown NVML error",
    pynvml.NVML_ERROR_NOT_SUPPORTED: "not supported by this GPU or driver",
    pynvml.NVML_ERROR_UNINITIALIZED: "NVML is not initialized",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "NVML library and kernel driver versions "
    "differ (reboot after a driver update?)",
    pynvml.NVML_ERROR_RESET_REQUIRED: "GPU requires a reset",
    pynvml.NVML_ERROR_INSUFFICIENT_POWER: "GPU has insufficient external power",
    pynvml.NVML_ERROR_CORRUPTED_INFOROM: "GPU infoROM is corrupted",
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: "NVML function not found (driver too old?)",
    pynvml.NVML_ERROR_OPERATING_SYSTEM: "the operating system blocked the NVML request",
    pynvml.NVML_ERROR_GPU_NOT_FOUND: "GPU not found",
    pynvml.NVML_ERROR_NOT_FOUND: "not found",
    pynvml.NVML_ERROR_MEMORY: "NVML ran out of host memory",
    pynvml.NVML_ERROR_IRQ_ISSUE: "GPU interrupt problem",
}

# Errors after which NVML must be initialized again before the next query.
_REINIT = {pynvml.NVML_ERROR_UNINITIALIZED, pynvml.NVML_ERROR_DRIVER_NOT_LOADED}


def describe_error(exc: BaseException) -> str:
    """A one-line reason for any exception a backend raised."""
    if isinstance(exc, pynvml.NVMLError):
        code = getattr(exc, "value", None)
        if isinstance(code, int) and code in _REASONS:
            return _REASONS[code]
        try:
            text = str(exc)
        except Exception:  # str() asks the library, which may be the broken part
            text = ""
        return f"NVML error {code}: {text}" if text else f"NVML error {code}"
    return f"NVML backend failed: {type(exc).__name__}: {exc}"


class NvmlBackend(Protocol):
    """The synchronous NVML calls the monitor needs; each may raise ``pynvml.NVMLError``."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def uuid(self, index: int) -> str: ...
    def name(self, index: int) -> str: ...
    def pci_bus_id(self, index: int) -> str: ...
    def memory(self, index: int) -> tuple[int, int, int]:
        """(total, used, free) in bytes."""
        ...

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        """Compute processes as (pid, used bytes or None)."""
        ...


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class PynvmlBackend:
    """The real thing, over nvidia-ml-py (import name ``pynvml``)."""

    def init(self) -> None:
        pynvml.nvmlInit()

    def shutdown(self) -> None:
        pynvml.nvmlShutdown()

    def device_count(self) -> int:
        return int(pynvml.nvmlDeviceGetCount())

    def _handle(self, index: int) -> Any:
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def uuid(self, index: int) -> str:
        return _text(pynvml.nvmlDeviceGetUUID(self._handle(index)))

    def name(self, index: int) -> str:
        return _text(pynvml.nvmlDeviceGetName(self._handle(index)))

    def pci_bus_id(self, index: int) -> str:
        return _text(pynvml.nvmlDeviceGetPciInfo(self._handle(index)).busId)

    def memory(self, index: int) -> tuple[int, int, int]:
        info = pynvml.nvmlDeviceGetMemoryInfo(self._handle(index))
        return int(info.total), int(info.used), int(info.free)

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle(index))
        return [(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in procs]  # fmt: skip


def _device(backend: NvmlBackend, index: int) -> GpuDevice:
    """One device; a failure here marks this device, not the whole snapshot."""
    try:
        uuid, name = backend.uuid(index), backend.name(index)
    except Exception as exc:
        return GpuDevice(index, f"GPU#{index}", "?", "?", 0, 0, 0, error=describe_error(exc))
    try:
        bus = backend.pci_bus_id(index)
    except Exception:  # cosmetic; not worth losing the device over
        bus = "?"
    try:
        total, used, free = backend.memory(index)
    except Exception as exc:
        return GpuDevice(index, uuid, name, bus, 0, 0, 0, error=describe_error(exc))
    try:
        procs = tuple(GpuProcess(pid, mem) for pid, mem in backend.processes(index))
        perr = None
    except Exception as exc:
        procs, perr = (), describe_error(exc)
    return GpuDevice(index, uuid, name, bus, total, used, free, procs, process_error=perr)


def collect(backend: NvmlBackend, taken_at: float) -> GpuSnapshot:
    """Read every device (blocking). Raises only what ``device_count`` raises."""
    count = backend.device_count()
    return GpuSnapshot(taken_at, tuple(_device(backend, i) for i in range(count)))


class GpuMonitor:
    """Async NVML telemetry: ``await snapshot()`` never raises and never blocks the loop.

    A call that outlives ``timeout`` keeps running in its thread (threads cannot be
    cancelled); until it returns, later snapshots report it instead of piling up threads.
    """

    def __init__(
        self,
        backend: NvmlBackend,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.timeout = timeout
        self.clock = clock
        self.last: GpuSnapshot | None = None
        self._initialized = False
        self._inflight: asyncio.Future[GpuSnapshot] | None = None
        self._started = 0.0  # loop time when the in-flight read began

    def _read(self, taken_at: float) -> GpuSnapshot:
        try:
            if not self._initialized:
                self.backend.init()
                self._initialized = True
            return collect(self.backend, taken_at)
        except Exception as exc:
            code = getattr(exc, "value", None)
            if code in _REINIT:
                self._initialized = False
            return GpuSnapshot.unavailable(taken_at, describe_error(exc))

    async def snapshot(self) -> GpuSnapshot:
        """A fresh reading. Concurrent callers share one NVML read instead of racing."""
        loop = asyncio.get_running_loop()
        if self._inflight is None or self._inflight.done():
            self._inflight = self._start_read(loop, self.clock())
            self._started = loop.time()
        remaining = self._started + self.timeout - loop.time()
        if remaining <= 0:
            snap = GpuSnapshot.unavailable(
                self.clock(), f"an NVML call has been blocked for over {self.timeout:g}s"
            )
        else:
            try:
                snap = await asyncio.wait_for(asyncio.shield(self._inflight), remaining)
            except TimeoutError:
                snap = GpuSnapshot.unavailable(
                    self.clock(), f"NVML did not answer within {self.timeout:g}s"
                )
        self._note(snap)
        self.last = snap
        return snap

    def _start_read(
        self, loop: asyncio.AbstractEventLoop, taken_at: float
    ) -> asyncio.Future[GpuSnapshot]:
        """Run ``_read`` in a daemon thread, not the loop's executor: asyncio.run() joins
        executor threads at exit, so one call wedged in the driver would hang shutdown."""
        future: asyncio.Future[GpuSnapshot] = loop.create_future()

        def deliver(snap: GpuSnapshot) -> None:
            if not future.done():
                future.set_result(snap)

        def work() -> None:
            snap = self._read(taken_at)
            # RuntimeError: the loop closed while NVML was stuck; nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, snap)

        error = start_thread(work, "nvml-read")
        if error is not None:  # no telemetry this round; the next poll tries again
            deliver(GpuSnapshot.unavailable(taken_at, f"cannot start the NVML thread: {error}"))
        return future

    def _note(self, snap: GpuSnapshot) -> None:
        """Log availability changes and device errors once, not at every poll."""
        before = self.last
        if before is None or before.reason != snap.reason:
            if snap.available:
                log.info("gpu.telemetry", available=True, gpus=len(snap.devices))
            else:
                log.warning("gpu.telemetry", available=False, reason=snap.reason)
        old = {d.uuid: d.error for d in before.devices} if before else {}
        for dev in snap.devices:
            if dev.error and old.get(dev.uuid) != dev.error:
                log.error("gpu.device_error", gpu=dev.index, uuid=dev.uuid, error=dev.error)

    async def wait_released(
        self,
        pids: Iterable[int],
        max_wait: float,
        interval: float = 0.5,
        released: Callable[[GpuSnapshot], bool] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> bool:
        """Poll until none of ``pids`` is listed by NVML (or ``released(snap)`` says so).

        Returns False when ``max_wait`` (seconds of waiting, counted by ``interval``) ran out.
        An unavailable snapshot counts as released: nothing can be confirmed, so don't block.
        """
        old = set(pids)
        waited = 0.0
        while True:
            snap = await self.snapshot()
            gone = not snap.available or not any(old & d.pids() for d in snap.devices)
            if gone or (released is not None and released(snap)):
                return True
            if waited >= max_wait:
                return False
            await sleep(interval)
            waited += interval

    async def drain(self, max_wait: float | None = None) -> bool:
        """Wait for an NVML call left running by a timeout; False if it is still stuck."""
        if self._inflight is None or self._inflight.done():
            return True
        done, _ = await asyncio.wait({self._inflight}, timeout=max_wait)
        return bool(done)

    def close(self) -> None:
        """Shut NVML down (best effort; the CLI calls this, the daemon at exit)."""
        if self._initialized:
            self._initialized = False
            try:
                self.backend.shutdown()
            except Exception as exc:
                log.debug("gpu.shutdown_failed", error=describe_error(exc))
