"""VRAM admission (admit / evict LRU / refuse with numbers), release checks, attribution,
and the config checks fed by NVML totals (unknown GPU, overcommit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_supervisor.config.load import load_config
from llm_supervisor.config.models import ServiceSpec
from llm_supervisor.errors import ConfigError
from llm_supervisor.gpu.admission import (
    Admit,
    Evict,
    EvictionCandidate,
    Refuse,
    decide_admission,
    describe_holders,
    need_for,
)
from llm_supervisor.gpu.attribution import (
    ProcessUse,
    attribute,
    process_names,
    service_usage,
    snapshot_dict,
)
from llm_supervisor.gpu.fake import FakeDevice, FakeNvmlBackend
from llm_supervisor.gpu.nvml import GpuMonitor
from llm_supervisor.gpu.snapshot import GpuDevice, GpuProcess, GpuSnapshot

GIB = 2**30
MIB = 2**20
UUID = "GPU-11111111-2222-3333-4444-555555555555"


def device(free_gib: float, procs: tuple[tuple[int, int | None], ...] = ()) -> GpuDevice:
    total = 80 * GIB
    free = int(free_gib * GIB)
    processes = tuple(GpuProcess(pid, mem) for pid, mem in procs)
    return GpuDevice(0, UUID, "NVIDIA H100", "00:01", total, total - free, free, processes)


def cand(
    name: str,
    idle_since: float | None,
    gib: float | None,
    pinned: bool = False,
    pids: tuple[int, ...] = (),
) -> EvictionCandidate:
    vram = None if gib is None else int(gib * GIB)
    return EvictionCandidate(name, idle_since, pinned, vram, frozenset(pids))


# --- need_for ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "need"),
    [
        ({"engine": "vllm", "model": "m", "port": 1}, int(0.9 * 80 * GIB) + 1),
        (
            {"engine": "vllm", "model": "m", "port": 1, "args": {"gpu-memory-utilization": 0.5}},
            40 * GIB,
        ),
        ({"engine": "ollama", "port": 1, "vram": "40GiB"}, 40 * GIB),
        ({"engine": "ollama", "port": 1}, 0),
        ({"engine": "command", "command": ["x"], "port": 1, "vram": 1000}, 1000),
    ],
)
def test_need_for(spec: dict[str, object], need: int) -> None:
    assert abs(need_for(ServiceSpec.model_validate(spec), 80 * GIB) - need) <= 1


# --- decide_admission -------------------------------------------------------------------


def test_admit_when_free_memory_suffices() -> None:
    assert decide_admission(40 * GIB, device(40), [], evict_idle=True) == Admit()


def test_evicts_least_recently_used_idle_services_just_enough() -> None:
    candidates = [
        cand("recent", idle_since=300.0, gib=20),
        cand("oldest", idle_since=100.0, gib=10),
        cand("busy", idle_since=None, gib=30),
        cand("pinned", idle_since=50.0, gib=30, pinned=True),
        cand("middle", idle_since=200.0, gib=15),
        cand("unused", idle_since=400.0, gib=5),
    ]
    # 30 GiB free, 50 GiB needed: 20 short → oldest (10) + middle (15) cover it.
    decision = decide_admission(50 * GIB, device(30), candidates, evict_idle=True)
    assert decision == Evict(("oldest", "middle"), 25 * GIB)


def test_refuses_with_numbers_and_holders_when_eviction_cannot_help() -> None:
    dev = device(10, procs=((4242, 40 * GIB), (77, 210 * MIB), (5000, None)))
    candidates = [cand("qwen", None, 40, pids=(4242, 4243)), cand("small", 5.0, 2)]
    decision = decide_admission(
        68 * GIB, dev, candidates, evict_idle=True, process_names={4242: "python3", 77: "Xorg"}
    )
    assert isinstance(decision, Refuse)
    assert decision.message == (
        f"not enough free memory on GPU 0 (NVIDIA H100, {UUID}): needs 69632 MiB, "
        "10240 MiB free of 81920 MiB; held by pid 4242 (python3, service qwen) 40960 MiB, "
        "pid 77 (Xorg) 210 MiB, pid 5000 (?) ? MiB; stopping every idle service (small) "
        "would free only 2048 MiB"
    )


def test_refuse_mentions_policy_when_eviction_is_off() -> None:
    decision = decide_admission(50 * GIB, device(30), [cand("idle", 1.0, 40)], evict_idle=False)
    assert isinstance(decision, Refuse)
    assert decision.message.endswith("evicting idle services is off (policy evict_idle: false)")
    assert "no process is listed as holding it" in decision.message


def test_refuse_when_nothing_is_idle() -> None:
    decision = decide_admission(
        50 * GIB, device(30), [cand("p", 1.0, 40, pinned=True)], evict_idle=True
    )
    assert isinstance(decision, Refuse)
    assert decision.message.endswith("no idle, unpinned service on this GPU to stop")


def test_unknown_size_candidates_are_evicted_on_hope() -> None:
    candidates = [cand("known", 1.0, 5), cand("unknown", 2.0, None)]
    decision = decide_admission(50 * GIB, device(30), candidates, evict_idle=True)
    assert decision == Evict(("known", "unknown"), 5 * GIB)


def test_unreadable_device_is_refused() -> None:
    dev = GpuDevice(0, UUID, "H100", "?", 0, 0, 0, error="GPU is lost")
    decision = decide_admission(1, dev, [], evict_idle=True)
    assert decision == Refuse(f"GPU 0 (H100, {UUID}) cannot be read: GPU is lost")


def test_describe_holders_orders_by_memory() -> None:
    dev = device(1, procs=((1, GIB), (2, 3 * GIB)))
    assert describe_holders(dev, [], {}) == "pid 2 (?) 3072 MiB, pid 1 (?) 1024 MiB"


async def test_evict_then_recheck_admits_with_the_fake_backend() -> None:
    backend = FakeNvmlBackend(
        [FakeDevice(UUID, 80 * GIB, processes=[(10, 50 * GIB), (11, 5 * GIB)])]
    )
    mon = GpuMonitor(backend)
    candidates = [cand("old", 1.0, 50, pids=(10,)), cand("busy", None, 5, pids=(11,))]
    first = decide_admission(40 * GIB, (await mon.snapshot()).devices[0], candidates, True)
    assert first == Evict(("old",), 50 * GIB)
    backend.devices[0].processes = [(11, 5 * GIB)]  # the manager stopped "old"
    snap = await mon.snapshot()
    second = decide_admission(40 * GIB, snap.devices[0], candidates[1:], True)
    assert second == Admit()


# --- attribution ------------------------------------------------------------------------


def test_attribute_maps_every_tree_pid_and_keeps_unknown_processes() -> None:
    snap = GpuSnapshot(
        0.0,
        (
            device(10, procs=((100, GIB), (101, 30 * GIB), (500, 2 * GIB), (300, None))),
            GpuDevice(1, "GPU-b", "L40S", "00:02", 48 * GIB, 0, 48 * GIB, (GpuProcess(102, GIB),)),
        ),
    )
    pids = {"qwen": {99, 100, 101, 102}, "ollama": {300, 301}}  # 101/102: EngineCore/Worker
    by_gpu = attribute(snap, pids)
    assert by_gpu[0] == [
        ProcessUse("qwen", 101, 30 * GIB),
        ProcessUse(None, 500, 2 * GIB),
        ProcessUse("qwen", 100, GIB),
        ProcessUse("ollama", 300, None),
    ]
    assert by_gpu[1] == [ProcessUse("qwen", 102, GIB)]
    assert service_usage(by_gpu) == {0: {"qwen": 31 * GIB, "ollama": 0}, 1: {"qwen": GIB}}
    data = snapshot_dict(snap, pids, names={500: "stray"}, pressure={0: "warning"})
    gpu0 = data["gpus"][0]
    assert gpu0["services"] == {"ollama": 0, "qwen": 31 * GIB} and gpu0["pressure"] == "warning"
    assert gpu0["processes"][1] == {
        "pid": 500,
        "name": "stray",
        "used": 2 * GIB,
        "service": None,
    }


def test_process_names_skips_vanished_pids() -> None:
    import os

    names = process_names([os.getpid(), 999_999_999])
    assert list(names) == [os.getpid()] and names[os.getpid()]


# --- config checks with NVML totals -----------------------------------------------------


def write_profile(tmp_path: Path, text: str) -> Path:
    (tmp_path / "gpu0.yaml").write_text(text)
    return tmp_path


async def test_overcommit_is_rejected_with_numbers(tmp_path: Path) -> None:
    backend = FakeNvmlBackend([FakeDevice(UUID, 80 * GIB)])
    totals = (await GpuMonitor(backend).snapshot()).totals()
    write_profile(
        tmp_path,
        "gpu: 0\nservices:\n"
        "  a: {engine: vllm, model: m, port: 8001, args: {gpu-memory-utilization: 0.6}}\n"
        "  b: {engine: ollama, port: 8002, vram: 40GiB}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, totals)
    assert "overcommitted" in str(err.value) and "80.0 GiB" in str(err.value)


async def test_unknown_gpu_is_rejected_only_with_telemetry(tmp_path: Path) -> None:
    write_profile(tmp_path, "gpu: 3\nservices:\n  a: {engine: ollama, port: 8002}\n")
    backend = FakeNvmlBackend([FakeDevice(UUID, 80 * GIB)])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path, (await GpuMonitor(backend).snapshot()).totals())
    backend.fail_always("init", "DRIVER_NOT_LOADED")
    no_telemetry = await GpuMonitor(backend).snapshot()
    config, _ = load_config(tmp_path, no_telemetry.totals())
    assert list(config.services) == ["a"]
