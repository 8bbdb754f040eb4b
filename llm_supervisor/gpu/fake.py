"""Fake NVML backends for tests and for process-level tests of the daemon.

``FakeNvmlBackend`` is scripted from Python: devices, processes, memory, NVML errors per
call, a lost GPU, slow or blocked calls. It raises the real ``pynvml.NVMLError`` subclasses,
so the monitor's error mapping is exercised exactly as with a driver.

``make_backend()`` returns a ``FileNvmlBackend`` when ``LLM_SUPERVISOR_FAKE_NVML`` names a
JSON file, else the real ``PynvmlBackend``. The file is re-read at every snapshot, so a test
can change GPU memory or processes under a running daemon by rewriting it. Format::

    {
      "error": "DRIVER_NOT_LOADED",        optional: every call fails with NVML_ERROR_<name>
      "delay": 0.0,                        optional: seconds each snapshot blocks
      "devices": [
        {
          "uuid": "GPU-00000000-0000-0000-0000-000000000000",
          "name": "Fake H100",             optional
          "pci_bus_id": "00000000:01:00.0",  optional
          "memory_total": "80GiB",         bytes, or a size string as in profiles
          "memory_used": "2GiB",           optional; default: the sum of the processes
          "lost": false,                   optional: every call on this GPU → GPU_IS_LOST
          "processes": [{"pid": 1234, "used_memory": "1GiB"}]
        }
      ]
    }

Devices are numbered by their position in the list.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from ..config.models import parse_size
from .nvml import NvmlBackend, PynvmlBackend

ENV_VAR = "LLM_SUPERVISOR_FAKE_NVML"


def nvml_error(name_or_code: str | int) -> pynvml.NVMLError:
    """The real pynvml exception for ``"GPU_IS_LOST"`` or a numeric NVML return code."""
    code = name_or_code
    if isinstance(code, str):
        code = int(getattr(pynvml, f"NVML_ERROR_{code.upper()}"))
    return pynvml.NVMLError(code)


@dataclass
class FakeDevice:
    uuid: str
    total: int
    used: int | None = None  # None: the sum of the processes' memory
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    name: str = "Fake GPU"
    pci_bus_id: str = "00000000:00:00.0"
    lost: bool = False

    @property
    def used_bytes(self) -> int:
        if self.used is not None:
            return self.used
        return sum(m or 0 for _, m in self.processes)


class FakeNvmlBackend:
    """A scriptable NVML. Method names in ``fail()`` are those of ``NvmlBackend``."""

    def __init__(self, devices: list[FakeDevice] | None = None) -> None:
        self.devices: list[FakeDevice] = list(devices or [])
        self.calls: list[str] = []
        self.delay = 0.0  # seconds every call sleeps (in the worker thread)
        self.gate: threading.Event | None = None  # when set, calls wait until it is set
        self.init_count = 0
        self.shutdown_count = 0
        self._queued: dict[str, list[int]] = {}
        self._always: dict[str, int] = {}

    # scripting -------------------------------------------------------------------------
    def fail(self, method: str, error: str | int, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise NVML_ERROR_<error>."""
        code = nvml_error(error).value
        self._queued.setdefault(method, []).extend([code] * times)

    def fail_always(self, method: str, error: str | int | None) -> None:
        """Every call of ``method`` raises (None clears it)."""
        if error is None:
            self._always.pop(method, None)
        else:
            self._always[method] = nvml_error(error).value

    def block(self) -> threading.Event:
        """Make calls hang until the returned event is set (a wedged driver)."""
        self.gate = threading.Event()
        return self.gate

    # NvmlBackend -----------------------------------------------------------------------
    def _enter(self, method: str, index: int | None = None) -> None:
        self.calls.append(method)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.delay:
            time.sleep(self.delay)
        queued = self._queued.get(method)
        if queued:
            raise pynvml.NVMLError(queued.pop(0))
        if method in self._always:
            raise pynvml.NVMLError(self._always[method])
        if index is not None:
            if index >= len(self.devices):
                raise nvml_error("INVALID_ARGUMENT")
            if self.devices[index].lost:
                raise nvml_error("GPU_IS_LOST")

    def init(self) -> None:
        self._enter("init")
        self.init_count += 1

    def shutdown(self) -> None:
        self._enter("shutdown")
        self.shutdown_count += 1

    def device_count(self) -> int:
        self._enter("device_count")
        return len(self.devices)

    def uuid(self, index: int) -> str:
        self._enter("uuid", index)
        return self.devices[index].uuid

    def name(self, index: int) -> str:
        self._enter("name", index)
        return self.devices[index].name

    def pci_bus_id(self, index: int) -> str:
        self._enter("pci_bus_id", index)
        return self.devices[index].pci_bus_id

    def memory(self, index: int) -> tuple[int, int, int]:
        self._enter("memory", index)
        dev = self.devices[index]
        used = min(dev.used_bytes, dev.total)
        return dev.total, used, dev.total - used

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        self._enter("processes", index)
        return list(self.devices[index].processes)


def _size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def devices_from_json(doc: Mapping[str, Any]) -> list[FakeDevice]:
    devices = []
    for i, raw in enumerate(doc.get("devices", [])):
        procs = [(int(p["pid"]), _size(p.get("used_memory"))) for p in raw.get("processes", [])]
        devices.append(
            FakeDevice(
                uuid=str(raw.get("uuid", f"GPU-fake-{i}")),
                total=parse_size(raw["memory_total"]),
                used=_size(raw.get("memory_used")),
                processes=procs,
                name=str(raw.get("name", "Fake GPU")),
                pci_bus_id=str(raw.get("pci_bus_id", f"00000000:{i + 1:02x}:00.0")),
                lost=bool(raw.get("lost", False)),
            )
        )
    return devices


class FileNvmlBackend(FakeNvmlBackend):
    """The fake, re-scripted from a JSON file at every ``device_count()`` (once a snapshot).

    A file that cannot be read or parsed raises ``ValueError``; the monitor reports it as
    unavailable telemetry, like a broken driver.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _reload(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            self.devices = devices_from_json(doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"fake NVML file {self.path}: {exc}") from exc
        self.delay = float(doc.get("delay", 0.0))
        self.fail_always("device_count", doc.get("error"))
        self.fail_always("init", doc.get("error"))

    def init(self) -> None:
        self._reload()
        super().init()

    def device_count(self) -> int:
        self._reload()
        return super().device_count()


def make_backend(env: Mapping[str, str] | None = None) -> NvmlBackend:
    """The fake from ``$LLM_SUPERVISOR_FAKE_NVML`` when set, else real NVML."""
    path = (os.environ if env is None else env).get(ENV_VAR)
    if path:
        return FileNvmlBackend(Path(path))
    return PynvmlBackend()
