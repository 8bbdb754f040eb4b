"""The state-dir record of live process groups, and the orphan sweep at daemon start.

If the daemon dies without stopping its engines (SIGKILL, OOM killer), the next daemon must
kill what the previous one left before it starts anything: otherwise two copies of a model
fight for the same GPU memory and port.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import StateDirBusyError
from ..logsetup import get_logger
from .tree import MARKER_ENV, ProcRef, find_marked_async, kill_refs, killpg

log = get_logger(__name__)


class GroupRegistry:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.dir = self.state_dir / "groups"
        self._warned = False
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Own the state dir until this process exits, or raise StateDirBusyError.

        Without this, a second daemon started on the same state dir (an operator trying
        ``run`` by hand next to the service) would take the first one's engines for orphans
        and kill them. The lock is the directory itself (flock on a read-only fd of it),
        which can be taken even when the dir is read-only or full; a lock file there could
        not be created, and two daemons then took each other's engines. flock is released
        by the kernel when we die, also on SIGKILL; the fd is close-on-exec.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirBusyError(
                f"another daemon (pid {self._holder()}) is running on state dir {self.state_dir}"
            ) from None
        self._lock_fd = fd
        try:  # the pid is for humans (the message above); the lock is what counts
            (self.state_dir / "daemon.lock").write_text(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning("state.pid_file_failed", dir=str(self.state_dir), error=str(exc))

    def _holder(self) -> str:
        try:
            return (self.state_dir / "daemon.lock").read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last fd drops the flock
            self._lock_fd = None

    def marker(self, service: str) -> str:
        """The value of MARKER_ENV given to a service's processes."""
        return f"{self.state_dir}::{service}"

    @property
    def marker_prefix(self) -> str:
        return f"{self.state_dir}::"

    def record(
        self, service: str, pid: int, create_time: float, tree: Iterable[ProcRef] = ()
    ) -> None:
        """Remember a live group and every process seen in its tree (with start times).

        The tree matters for processes that rewrite their environment (vLLM's EngineCore and
        Worker via setproctitle), where the marker cannot find them after a daemon crash.
        """
        payload = {
            "service": service, "pid": pid, "pgid": pid, "create_time": create_time,
            "tree": sorted([ref.pid, ref.create_time] for ref in tree),
        }  # fmt: skip
        self._write(self.dir / f"{service}.json", json.dumps(payload))

    def forget(self, service: str) -> None:
        try:
            (self.dir / f"{service}.json").unlink(missing_ok=True)
        except OSError as exc:
            self._warn(exc)

    def records(self) -> list[dict[str, object]]:
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def _write(self, path: Path, text: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        # A read-only or full state dir must not stop supervision; it only weakens the
        # orphan sweep after a daemon crash (the environment marker still works).
        if not self._warned:
            log.error("state.write_failed", dir=str(self.dir), error=str(exc))
        self._warned = True

    async def kill_orphans(self, timeout: float = 10.0) -> list[int]:
        """Kill every process a previous daemon on this state dir left behind."""
        victims = await find_marked_async(self.marker_prefix, prefix=True, timeout=30.0)
        groups = []
        for rec in self.records():
            ref = ProcRef(int(str(rec["pid"])), float(str(rec["create_time"])))
            if ref.alive() is not None:
                groups.append(int(str(rec["pgid"])))
                victims.add(ref)
            victims |= _recorded_tree(rec)
        # Decide who is a victim before killing anyone: after killpg a group's members are
        # zombies, and kill_refs would skip (and we would not log) them.
        killed = [ref for ref in victims if ref.alive() is not None]
        for pgid in groups:
            killpg(pgid, signal.SIGKILL)
        kill_refs(set(killed), signal.SIGKILL)
        for ref in sorted(killed, key=lambda r: r.pid):
            log.warning("orphan.killed", pid=ref.pid, marker_env=MARKER_ENV)
        deadline = time.monotonic() + timeout
        while any(r.alive() for r in killed) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # not our children: nothing to wait on but polling
        for rec in self.records():
            self.forget(str(rec["service"]))
        return sorted(r.pid for r in killed)


def _recorded_tree(rec: dict[str, object]) -> set[ProcRef]:
    """The tree members a record names that still run (same pid and start time)."""
    refs = set()
    for item in rec.get("tree") or []:  # type: ignore[attr-defined]
        try:
            ref = ProcRef(int(item[0]), float(item[1]))
        except (TypeError, ValueError, IndexError):
            continue
        if ref.alive() is not None:
            refs.add(ref)
    return refs
