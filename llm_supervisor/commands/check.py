"""``llm-supervisor check``: validate the config directory, print every problem at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .defaults import default_config_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", type=Path, default=Path(default_config_dir()))
    parser.add_argument(
        "--no-gpus", dest="gpus", action="store_false",
        help="do not ask NVML (check without the GPUs' facts, as on a build machine)",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="also say when the GPUs' facts were not available (no driver, --no-gpus)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-keys", type=Path, default=None,
        help="check this gateway keys file too (default: $CREDENTIALS_DIRECTORY/gateway-keys)",
    )  # fmt: skip


def gpu_totals() -> tuple[dict[int | str, int] | None, str | None]:
    """Memory of each GPU when NVML answers, so budgets and GPU references can be checked."""
    import asyncio

    from ..gpu.fake import make_backend
    from ..gpu.nvml import GpuMonitor

    async def read() -> tuple[dict[int | str, int] | None, str | None]:
        monitor = GpuMonitor(make_backend(), timeout=5.0)
        try:
            snap = await monitor.snapshot()
        finally:
            monitor.close()
        return snap.totals(), None if snap.available else snap.message

    return asyncio.run(read())


def run(args: argparse.Namespace) -> int:
    from ..config.keysfile import gateway_keys_file
    from ..config.load import load_config
    from ..logsetup import configure_logging

    configure_logging("auto", "error")
    totals, unavailable = gpu_totals() if args.gpus else (None, "not asked (--no-gpus)")
    if unavailable and args.verbose:  # a build machine without a driver is normal
        print(f"note: {unavailable}; GPU existence and memory budgets not checked", file=sys.stderr)
    keys = gateway_keys_file(args.gateway_keys)
    config, warnings = load_config(args.config_dir, totals, keys_file=keys)
    for issue in warnings:
        print(f"warning: {issue.format()}", file=sys.stderr)
    count = len(config.services)
    print(f"{args.config_dir}: ok ({count} service{'s' if count != 1 else ''})")
    return 0
