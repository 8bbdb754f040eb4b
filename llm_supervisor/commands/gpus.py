"""``llm-supervisor gpus [--json]``: GPUs, their memory and who holds it.

It asks the daemon first, which knows which engine process belongs to which service;
when no daemon answers it reads NVML in this process (processes then have no service).
``render_gpus`` takes the plain dict of ``gpu.attribution.snapshot_dict`` either way.
Without a GPU it prints "GPU telemetry unavailable: <reason>" and exits 0: a machine
without GPUs is a fact to report, not an error.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..control.address import add_control_arguments
from ..errors import DaemonUnreachableError

if TYPE_CHECKING:
    from ..gpu.nvml import GpuSnapshot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print JSON instead of text.")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="Seconds to wait for NVML (default 5)."
    )
    parser.add_argument("--local", action="store_true", help="Read NVML here; skip the daemon.")
    add_control_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..gpu.attribution import process_names, snapshot_dict
    from ..logsetup import configure_logging

    configure_logging(level="error")  # the reason is printed below; keep stdout clean
    data = None if args.local else _from_daemon(args)
    if data is None:
        snap = asyncio.run(_local_snapshot(args.timeout))
        pids = [p.pid for d in snap.devices for p in d.processes]
        data = snapshot_dict(snap, names=process_names(pids))
    print(json.dumps(data, indent=2) if args.json else render_gpus(data))
    return 0


def _from_daemon(args: argparse.Namespace) -> dict[str, Any] | None:
    from ..control.client import client_from_args

    try:
        with client_from_args(args) as client:
            return client.gpus()
    except DaemonUnreachableError:
        return None


async def _local_snapshot(nvml_timeout: float) -> GpuSnapshot:
    from ..gpu.fake import make_backend
    from ..gpu.nvml import GpuMonitor

    monitor = GpuMonitor(make_backend(), timeout=nvml_timeout)
    try:
        return await monitor.snapshot()
    finally:
        monitor.close()


def _gib(n: int) -> str:
    from ..gpu.snapshot import GIB

    return f"{n / GIB:.1f} GiB"


def _mib(n: int | None) -> str:
    from ..gpu.snapshot import MIB

    return "?" if n is None else f"{n // MIB} MiB"


def render_gpus(data: dict[str, Any]) -> str:
    """Text for operators from a ``snapshot_dict`` (local or from the daemon)."""
    from ..gpu.snapshot import UNAVAILABLE_PREFIX

    if not data.get("available"):
        return f"{UNAVAILABLE_PREFIX}: {data.get('reason') or 'unknown reason'}"
    gpus = data.get("gpus") or []
    if not gpus:
        return "No NVIDIA GPUs found."
    return "\n\n".join(_render_gpu(gpu) for gpu in gpus)


def _render_gpu(gpu: dict[str, Any]) -> str:
    lines = [f"GPU {gpu['index']}  {gpu['name']}  {gpu['uuid']}  {gpu['pci_bus_id']}"]
    if gpu.get("error"):
        lines.append(f"  unavailable: {gpu['error']}")
        return "\n".join(lines)
    memory_info = gpu["memory"]
    total, used, free = memory_info["total"], memory_info["used"], memory_info["free"]
    share = f" ({used / total:.0%})" if total else ""
    memory = f"  memory: {_gib(used)} used{share} of {_gib(total)}, {_gib(free)} free"
    if gpu.get("pressure"):
        memory += f"  pressure: {gpu['pressure']}"
    lines.append(memory)
    procs = gpu.get("processes") or []
    if gpu.get("process_error"):
        lines.append(f"  processes: cannot list ({gpu['process_error']})")
    elif not procs:
        lines.append("  processes: none listed")
    else:
        lines.append(f"  {'PID':>8}  {'MEMORY':>10}  {'SERVICE':<20}  PROCESS")
        for p in procs:
            service = p.get("service") or "-"
            name = p.get("name") or "?"
            lines.append(f"  {p['pid']:>8}  {_mib(p['used']):>10}  {service:<20}  {name}")
    return "\n".join(lines)
