"""Finding every process of an engine's tree, including those that escaped its group.

Descendants that call setsid() or are reparented to init after their parent dies leave the
process group, so killpg misses them. Two nets catch them: psutil snapshots of the tree taken
while the parent lived, and an environment marker every descendant inherits.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import psutil

MARKER_ENV = "LLM_SUPERVISOR_OWNER"


@dataclass(frozen=True)
class ProcRef:
    """A pid plus its start time, so a recycled pid is never mistaken for ours."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, proc: psutil.Process) -> ProcRef:
        return cls(proc.pid, proc.create_time())

    def alive(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if proc.create_time() != self.create_time or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


def snapshot_tree(pid: int) -> set[ProcRef]:
    """The process and all its current descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return set()
    refs = set()
    for proc in procs:
        try:
            refs.add(ProcRef.of(proc))
        except psutil.Error:
            continue
    return refs


def find_marked(marker: str, *, prefix: bool = False) -> set[ProcRef]:
    """Every process whose environment carries ``MARKER_ENV=marker`` (or starts with it)."""
    found = set()
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            value = proc.environ().get(MARKER_ENV)
            if value is not None and (value.startswith(marker) if prefix else value == marker):
                found.add(ProcRef.of(proc))
        except psutil.Error:
            continue
    return found


def kill_refs(refs: set[ProcRef], sig: int = signal.SIGKILL) -> list[ProcRef]:
    """Signal every still-living process in ``refs``; return the ones signalled."""
    hit = []
    for ref in refs:
        proc = ref.alive()
        if proc is None:
            continue
        try:
            proc.send_signal(sig)
            hit.append(ref)
        except psutil.Error:
            continue
    return hit


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    """True while a non-zombie process is in the group.

    Zombies count as members for killpg, but they hold no memory; if nobody reaps them (an
    init that does not wait) they would otherwise keep a stop waiting forever.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False
