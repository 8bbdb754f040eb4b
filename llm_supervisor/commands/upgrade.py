"""``llm-supervisor upgrade``: re-execute the daemon in place; engines keep running.

Exit 0 once the new program (same PID) is ready; 1 with the reason if the installed code
cannot start (the running daemon is then unchanged) or the daemon does not come back.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from ..control.address import add_control_arguments
from ..errors import DaemonUnreachableError, UpgradeError

if TYPE_CHECKING:
    from ..control.client import ControlClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=180.0,
        help="seconds to wait for the new daemon to be ready (default 180)",
    )  # fmt: skip
    add_control_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..control.client import client_from_args

    with client_from_args(args) as client:
        before = client.status().get("services", {})
        answer = client.upgrade()
        was_ready = {n for n, s in before.items() if s.get("state") == "ready"}
        status = wait_upgraded(client, int(answer.get("generation", 0)), was_ready, args.timeout)
    services = status.get("services", {})
    ready = sum(1 for s in services.values() if s.get("state") == "ready")
    daemon = status.get("daemon", {})
    print(
        f"upgraded {answer.get('from')} -> {status.get('version')} (pid {daemon.get('pid')}, "
        f"re-executed in place); {ready}/{len(services)} services ready, no engine restarted"
    )
    return 0


def wait_upgraded(
    client: ControlClient, generation: int, was_ready: set[str], timeout: float
) -> dict[str, Any]:
    """Poll until the next program of the daemon is ready and has probed every engine that
    was ready before (adopted engines are probed once before they show ``ready``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.status()
            daemon, services = status.get("daemon", {}), status.get("services", {})
            settled = all(services.get(n, {}).get("state") != "starting" for n in was_ready)
            if int(daemon.get("generation", 0)) > generation and daemon.get("ready") and settled:
                return status
        except DaemonUnreachableError:
            pass  # the instant between the exec and the new program's first accept
        if time.monotonic() > deadline:
            raise UpgradeError(f"the daemon did not come back ready within {timeout:g}s")
        time.sleep(0.1)
