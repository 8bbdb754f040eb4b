"""The state-dir record of live engines, and the sweep at daemon start.

If the daemon dies without stopping its engines (SIGKILL, OOM killer) or re-executes itself
(upgrade), the next daemon adopts every engine whose record still matches the config (no
model reload) and kills what it cannot adopt before it starts anything: otherwise two copies
of a model fight for the same GPU memory and port. A record holds what adoption needs: the
engine's pid and start time, its tree, a fingerprint of its argv/env/port, how far its
output spool was read, since when it was ready and its restart counts.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from ..errors import StateDirBusyError
from ..logsetup import get_logger
from .tree import MARKER_ENV, ProcRef, find_owners_async, kill_refs, killpg

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
        self,
        service: str,
        pid: int,
        create_time: float,
        tree: Iterable[ProcRef] = (),
        **identity: object,
    ) -> None:
        """Remember a live group and every process seen in its tree (with start times).

        The tree matters for processes that rewrite their environment (vLLM's EngineCore and
        Worker via setproctitle), where the marker cannot find them after a daemon crash.
        ``identity`` (fingerprint, log offset, ready_since, …) is what adoption compares.
        """
        payload = {
            "service": service, "pid": pid, "pgid": pid, "create_time": create_time,
            "tree": sorted([ref.pid, ref.create_time] for ref in tree), **identity,
        }  # fmt: skip
        self._write(self.dir / f"{service}.json", json.dumps(payload))

    def writable(self) -> str | None:
        """None if records can be written now, else why not (an upgrade needs them: without
        them the next program would take its own engines for orphans)."""
        probe = self.dir / ".probe"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with probe.open("w") as fh:
                fh.write("probe")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            return f"{self.dir}: {exc.strerror or exc}"
        return None

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
        """tmp + fsync + rename + fsync of the dir: a crash leaves the old or the new record."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with tmp.open("w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        # A read-only or full state dir must not stop supervision; it only weakens the
        # orphan sweep after a daemon crash (the environment marker still works).
        if not self._warned:
            log.error("state.write_failed", dir=str(self.dir), error=str(exc))
        self._warned = True

    async def kill_orphans(self, timeout: float = 10.0, keep: Collection[str] = ()) -> list[int]:
        """Kill every process a previous daemon on this state dir left behind, except the
        trees of the services in ``keep`` (adopted: their records stay)."""
        owners = await find_owners_async(self.marker_prefix, prefix=True, timeout=30.0)
        spared = {self.marker(name) for name in keep}
        victims = {ref for ref, owner in owners.items() if owner not in spared}
        groups = []
        for rec in self.records():
            if rec.get("service") in keep:
                continue
            ref = ProcRef(int(str(rec["pid"])), float(str(rec["create_time"])))
            if ref.alive() is not None:
                groups.append(int(str(rec["pgid"])))
                victims.add(ref)
            victims |= recorded_tree(rec)
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
            if rec.get("service") not in keep:
                self.forget(str(rec["service"]))
        return sorted(r.pid for r in killed)


def recorded_root(rec: dict[str, object]) -> ProcRef | None:
    """The engine process a record names, if the record is readable."""
    try:
        return ProcRef(int(str(rec["pid"])), float(str(rec["create_time"])))
    except (KeyError, ValueError):
        return None


def recorded_tree(rec: dict[str, object]) -> set[ProcRef]:
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
