"""In-place upgrade: the daemon re-executes itself (same PID) and keeps its engines.

``llm-supervisor upgrade`` or SIGUSR2. First the new code is tried in a separate process of
the same interpreter (import the daemon, validate the config with the new ``check``): if it
cannot start, the running daemon stays as it is and the upgrade fails with the reason. Else
the daemon tells systemd RELOADING=1, stops accepting (the listening sockets stay open), lets
open requests finish, stops supervising without touching an engine, records what the next
program needs in the state dir and calls execve with its original argv. The new program
inherits the listening sockets (Listeners), adopts every engine (same PIDs: they are still
its children), sends READY=1 and logs ``daemon.upgraded`` with both versions.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .. import __version__
from ..errors import UpgradeError
from ..logsetup import get_logger
from ..process.environment import clean_child_env

log = get_logger(__name__)

UPGRADE_ENV = "LLM_SUPERVISOR_UPGRADE"  # what the previous program tells the next one
PRECHECK_TIMEOUT = 120.0  # importing the new code and validating the config

# Run by the same interpreter with the code now installed: the first line is its version,
# then what `check` prints; the exit code is check's (78: config invalid for the new code).
_PRECHECK = (
    "import sys, llm_supervisor; "
    "from llm_supervisor import cli; from llm_supervisor.daemon import daemon; "
    "print(llm_supervisor.__version__, flush=True); "
    "sys.exit(cli.main(['check', '--config-dir', sys.argv[1]]))"
)


@dataclass(frozen=True)
class Handover:
    """Facts about the program before the exec, carried in UPGRADE_ENV."""

    previous_version: str | None = None
    generation: int = 0  # how many upgrades this PID has been through
    started_at: float | None = None  # when the first program of this PID started
    held: tuple[str, ...] = ()  # boot services down on purpose: not to be started
    # CLOCK_MONOTONIC is system-wide, so the daemon's uptime survives the exec too.
    started_monotonic: float | None = None

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> Handover:
        raw = environ.pop(UPGRADE_ENV, "")
        try:
            data = json.loads(raw) if raw else {}
            return cls(
                data.get("from"), int(data.get("generation", 0)), data.get("started_at"),
                tuple(str(name) for name in data.get("held", ())), data.get("started_monotonic"),
            )  # fmt: skip
        except (ValueError, TypeError, AttributeError):
            return cls()

    def next(self, started: tuple[float, float], held: list[str]) -> str:
        return json.dumps({
            "from": __version__, "generation": self.generation + 1, "started_at": started[0],
            "started_monotonic": started[1], "held": held,
        })  # fmt: skip


async def precheck(config_dir: Path, timeout: float = PRECHECK_TIMEOUT) -> str:
    """The version of the installed code, once it imports and accepts the config."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PRECHECK, str(config_dir),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=clean_child_env(os.environ),
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise UpgradeError(f"new code did not start within {timeout:g}s; not upgraded") from None
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        why = " | ".join(lines[-6:]) or f"exit code {proc.returncode}"
        raise UpgradeError(f"new code cannot start ({why}); the running daemon is unchanged")
    version = lines[0].strip() if lines else "unknown"
    log.info("upgrade.precheck_ok", version=version, seconds=round(time.monotonic() - started, 3))
    return version


def exec_self(
    environ: MutableMapping[str, str],
    handover: Handover,
    started: tuple[float, float],
    held: list[str],
) -> NoReturn:
    """Replace this program with the installed one: same PID, same argv. ``started``: when
    the daemon first started (wall clock, CLOCK_MONOTONIC)."""
    environ[UPGRADE_ENV] = handover.next(started, held)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, dict(environ))
