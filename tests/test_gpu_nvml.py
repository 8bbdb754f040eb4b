"""NVML facade: snapshots from the fake backend, every NVMLError path, lost GPU, timeouts,
the JSON-file fake behind $LLM_SUPERVISOR_FAKE_NVML, and the ``gpus`` command."""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest
from structlog.testing import capture_logs

from llm_supervisor.gpu.fake import (
    ENV_VAR,
    FakeDevice,
    FakeNvmlBackend,
    FileNvmlBackend,
    make_backend,
    nvml_error,
)
from llm_supervisor.gpu.nvml import GpuMonitor, PynvmlBackend, describe_error

GIB = 2**30
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ALL_NVML_ERRORS = sorted(
    (name for name in dir(pynvml) if name.startswith("NVML_ERROR_")),
    key=lambda n: int(getattr(pynvml, n)),
)


def two_gpus() -> FakeNvmlBackend:
    return FakeNvmlBackend(
        [
            FakeDevice(UUID0, 80 * GIB, processes=[(100, 30 * GIB), (101, 2 * GIB)], name="H100"),
            FakeDevice(UUID1, 48 * GIB, used=1 * GIB, name="L40S", pci_bus_id="0:2:0"),
        ]
    )


def monitor(backend: FakeNvmlBackend, timeout: float = 5.0) -> GpuMonitor:
    return GpuMonitor(backend, timeout=timeout, clock=lambda: 1000.0)


async def test_snapshot_reports_devices_memory_and_processes() -> None:
    snap = await monitor(two_gpus()).snapshot()
    assert snap.available and snap.reason is None and snap.taken_at == 1000.0
    gpu0, gpu1 = snap.devices
    assert (gpu0.index, gpu0.uuid, gpu0.name) == (0, UUID0, "H100")
    assert (gpu0.memory_total, gpu0.memory_used, gpu0.memory_free) == (80 * GIB, 32 * GIB, 48 * GIB)
    assert [(p.pid, p.used_memory) for p in gpu0.processes] == [(100, 30 * GIB), (101, 2 * GIB)]
    assert (gpu1.pci_bus_id, gpu1.memory_free, gpu1.processes) == ("0:2:0", 47 * GIB, ())


async def test_resolve_totals_and_cuda_visible_devices() -> None:
    snap = await monitor(two_gpus()).snapshot()
    assert snap.resolve(1) is snap.devices[1]
    assert snap.resolve("0") is snap.devices[0]
    assert snap.resolve(UUID1.upper()) is snap.devices[1]
    assert snap.resolve(UUID1.lower()) is snap.devices[1]
    assert snap.resolve(2) is None and snap.resolve("GPU-nope") is None
    assert snap.totals() == {0: 80 * GIB, UUID0: 80 * GIB, 1: 48 * GIB, UUID1: 48 * GIB}
    assert snap.uuids_for([1, UUID0]) == (UUID1, UUID0)
    assert snap.uuids_for([0, 5]) is None


@pytest.mark.parametrize("name", ALL_NVML_ERRORS)
async def test_every_nvml_error_at_init_is_a_reason_not_a_crash(name: str) -> None:
    backend = two_gpus()
    backend.fail_always("init", name.removeprefix("NVML_ERROR_"))
    snap = await monitor(backend).snapshot()
    assert not snap.available and snap.devices == ()
    assert snap.reason == describe_error(nvml_error(int(getattr(pynvml, name))))
    assert snap.message == f"GPU telemetry unavailable: {snap.reason}"
    assert snap.totals() is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("LIBRARY_NOT_FOUND", "NVML library not found"),
        ("DRIVER_NOT_LOADED", "NVIDIA driver not loaded"),
        ("NO_PERMISSION", "no permission to query NVML"),
        ("GPU_IS_LOST", "GPU is lost"),
        ("TIMEOUT", "NVML timed out"),
        ("UNKNOWN", "unknown NVML error"),
        ("NOT_SUPPORTED", "not supported by this GPU or driver"),
        ("LIB_RM_VERSION_MISMATCH", "NVML library and kernel driver versions differ"),
    ],
)
async def test_common_errors_have_operator_wording(name: str, reason: str) -> None:
    backend = two_gpus()
    backend.fail_always("device_count", name)
    snap = await monitor(backend).snapshot()
    assert snap.reason is not None and snap.reason.startswith(reason)


def test_unmapped_code_falls_back_to_nvml_text() -> None:
    assert describe_error(nvml_error("INSUFFICIENT_SIZE")) == "NVML error 7: Insufficient Size"
    assert describe_error(OSError("boom")) == "NVML backend failed: OSError: boom"


@pytest.mark.parametrize("method", ["uuid", "name", "memory"])
@pytest.mark.parametrize("error", ["GPU_IS_LOST", "UNKNOWN", "NO_PERMISSION", "NOT_SUPPORTED"])
async def test_device_call_errors_mark_only_that_device(method: str, error: str) -> None:
    backend = two_gpus()
    backend.fail(method, error)  # first device's call fails, the second one's succeeds
    snap = await monitor(backend).snapshot()
    assert snap.available
    assert snap.devices[0].error == describe_error(nvml_error(error))
    assert snap.devices[1].error is None and snap.devices[1].memory_total == 48 * GIB
    assert snap.resolve(1) is not None


async def test_process_list_errors_keep_memory() -> None:
    backend = two_gpus()
    backend.fail("processes", "NOT_SUPPORTED")
    backend.fail("pci_bus_id", "UNKNOWN")
    dev = (await monitor(backend).snapshot()).devices[0]
    assert dev.error is None and dev.memory_used == 32 * GIB and dev.processes == ()
    assert dev.process_error == "not supported by this GPU or driver"
    assert dev.pci_bus_id == "?"


async def test_gpu_lost_mid_run_and_back() -> None:
    backend = two_gpus()
    mon = monitor(backend)
    assert (await mon.snapshot()).devices[0].error is None
    backend.devices[0].lost = True
    with capture_logs() as logs:
        lost = await mon.snapshot()
        await mon.snapshot()  # still lost: logged once
    assert lost.available and lost.devices[0].error is not None
    assert lost.devices[0].error.startswith("GPU is lost")
    assert lost.devices[1].memory_free == 47 * GIB
    assert [e["event"] for e in logs] == ["gpu.device_error"]
    backend.devices[0].lost = False
    assert (await mon.snapshot()).devices[0].error is None


async def test_init_is_retried_until_it_works_and_done_once() -> None:
    backend = two_gpus()
    backend.fail("init", "DRIVER_NOT_LOADED")
    mon = monitor(backend)
    with capture_logs() as logs:
        assert not (await mon.snapshot()).available
        assert (await mon.snapshot()).available
        assert (await mon.snapshot()).available
    assert backend.init_count == 1
    assert [(e["event"], e["available"]) for e in logs] == [
        ("gpu.telemetry", False),
        ("gpu.telemetry", True),
    ]
    mon.close()
    mon.close()
    assert backend.shutdown_count == 1


async def test_uninitialized_mid_run_reinitializes() -> None:
    backend = two_gpus()
    mon = monitor(backend)
    await mon.snapshot()
    backend.fail("device_count", "UNINITIALIZED")
    assert (await mon.snapshot()).reason == "NVML is not initialized"
    assert (await mon.snapshot()).available
    assert backend.init_count == 2


async def test_non_nvml_exception_is_contained() -> None:
    backend = two_gpus()
    backend.devices = None  # type: ignore[assignment]  # len(None) → TypeError in the backend
    snap = await monitor(backend).snapshot()
    assert snap.reason is not None and snap.reason.startswith("NVML backend failed: TypeError")


async def test_hung_nvml_call_times_out_without_piling_up_threads() -> None:
    backend = two_gpus()
    gate = backend.block()
    mon = monitor(backend, timeout=0.05)
    first = await mon.snapshot()
    assert first.reason == "NVML did not answer within 0.05s"
    second = await mon.snapshot()
    assert second.reason == "an NVML call has been blocked for over 0.05s"
    assert backend.calls == ["init"]  # the second snapshot did not start another call
    gate.set()
    assert await mon.drain(max_wait=5)
    backend.gate = None
    assert (await mon.snapshot()).available


def test_a_wedged_driver_does_not_hang_process_exit() -> None:
    script = (
        "import asyncio\n"
        "from llm_supervisor.gpu.fake import FakeNvmlBackend\n"
        "from llm_supervisor.gpu.nvml import GpuMonitor\n"
        "backend = FakeNvmlBackend(); backend.block()  # never released: waits 30 s\n"
        "print(asyncio.run(GpuMonitor(backend, timeout=0.05).snapshot()).reason)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "NVML did not answer within 0.05s"


async def test_concurrent_callers_share_one_read() -> None:
    backend = two_gpus()
    backend.delay = 0.02
    mon = monitor(backend)
    first, second = await asyncio.gather(mon.snapshot(), mon.snapshot())
    assert first is second and first.available
    assert backend.calls.count("device_count") == 1


async def test_slow_but_timely_calls_succeed() -> None:
    backend = two_gpus()
    backend.delay = 0.005
    assert (await monitor(backend, timeout=5).snapshot()).available


async def test_wait_released_polls_until_pids_leave_nvml() -> None:
    backend = two_gpus()
    mon = monitor(backend)
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            backend.devices[0].processes = [(101, 2 * GIB)]

    assert await mon.wait_released({100}, max_wait=10, interval=1, sleep=fake_sleep)
    assert sleeps == [1, 1]


async def test_wait_released_gives_up_after_max_wait() -> None:
    mon = monitor(two_gpus())
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    assert not await mon.wait_released({100}, max_wait=3, interval=1, sleep=fake_sleep)
    assert sleeps == [1, 1, 1]
    released = await mon.wait_released(
        {100}, max_wait=3, released=lambda s: s.devices[0].memory_free > GIB, sleep=fake_sleep
    )
    assert released


# --- the JSON-file fake and make_backend ------------------------------------------------


def write_fake(path: Path, **doc: object) -> None:
    path.write_text(json.dumps(doc))


async def test_file_backend_rereads_the_file_each_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    dev = {"uuid": UUID0, "memory_total": "80GiB", "processes": [{"pid": 7, "used_memory": "1GiB"}]}
    write_fake(path, devices=[dev])
    backend = make_backend({ENV_VAR: str(path)})
    assert isinstance(backend, FileNvmlBackend)
    mon = GpuMonitor(backend)
    snap = await mon.snapshot()
    assert snap.devices[0].memory_used == GIB and snap.devices[0].processes[0].pid == 7
    write_fake(path, devices=[{**dev, "memory_used": "70GiB", "lost": False}, dev])
    snap = await mon.snapshot()
    assert len(snap.devices) == 2 and snap.devices[0].memory_free == 10 * GIB
    write_fake(path, devices=[{**dev, "lost": True}])
    assert (await mon.snapshot()).devices[0].error is not None
    write_fake(path, error="GPU_IS_LOST", devices=[dev])
    assert (await mon.snapshot()).reason == describe_error(nvml_error("GPU_IS_LOST"))
    path.write_text("{not json")
    reason = (await mon.snapshot()).reason
    assert reason is not None and "fake NVML file" in reason


def test_make_backend_defaults_to_pynvml() -> None:
    assert isinstance(make_backend({}), PynvmlBackend)


async def test_real_backend_never_raises_here() -> None:
    snap = await GpuMonitor(PynvmlBackend(), timeout=10).snapshot()
    assert snap.available or snap.reason


# --- the gpus command -------------------------------------------------------------------


def run_gpus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    full_env.setdefault("LLM_SUPERVISOR_CONTROL", "unix:/nonexistent/control.sock")  # local
    return subprocess.run(
        [sys.executable, "-m", "llm_supervisor.cli", "gpus", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
    )


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver"
)
def test_gpus_without_a_gpu_prints_the_reason_and_exits_0() -> None:
    proc = run_gpus()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "GPU telemetry unavailable: NVML library not found "
        "(libnvidia-ml.so.1; is the NVIDIA driver installed?)"
    )
    data = json.loads(run_gpus("--json").stdout)
    assert data["available"] is False and data["gpus"] == []


def test_gpus_renders_the_fake(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    procs = [{"pid": os.getpid(), "used_memory": "3GiB"}, {"pid": 999_999_999, "used_memory": 0}]
    write_fake(path, devices=[{"uuid": UUID0, "name": "Fake H100", "memory_total": "80GiB",
                               "processes": procs}])  # fmt: skip
    proc = run_gpus(env={ENV_VAR: str(path)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"GPU 0  Fake H100  {UUID0}  00000000:01:00.0"
    assert lines[1] == "  memory: 3.0 GiB used (4%) of 80.0 GiB, 77.0 GiB free"
    assert "3072 MiB" in lines[3] and "999999999" in lines[4]
    data = json.loads(run_gpus("--json", env={ENV_VAR: str(path)}).stdout)
    assert data["gpus"][0]["processes"][0]["used"] == 3 * GIB
