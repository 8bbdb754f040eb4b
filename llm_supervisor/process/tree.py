"""Finding every process of an engine's tree, including those that escaped its group.

Descendants that call setsid() or are reparented to init after their parent dies leave the
process group, so killpg misses them. Two nets catch them: snapshots of the tree taken while
the parent lived (also persisted in the state dir for the sweep after a daemon crash), and an
environment marker every descendant inherits. The marker is not seen on processes that
rewrite their environment area: setproctitle does, so vLLM's ``VLLM::EngineCore`` and
``VLLM::Worker`` are found by their process group and the snapshots instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

import psutil

from ..logsetup import get_logger
from .threads import start_thread

log = get_logger(__name__)

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


def snapshot_tree(pid: int, root: ProcRef | None = None) -> set[ProcRef]:
    """The process and all its current descendants.

    A ``root`` record of ``pid`` itself is reused instead of reading the start time again
    (two /proc files through psutil, every few seconds per service): the caller passes it
    only for its own unreaped child, whose pid cannot have been recycled. Descendants' pids
    can be, so their start times are always read.
    """
    try:
        try:
            pids = _descendants(pid)
        except OSError:  # no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN off)
            pids = [p.pid for p in psutil.Process(pid).children(recursive=True)]
        refs = {root if root is not None else ProcRef.of(psutil.Process(pid))}
    except psutil.Error:
        return set()
    for child in pids:
        try:
            refs.add(ProcRef.of(psutil.Process(child)))
        except psutil.Error:
            continue  # gone since it was listed
    return refs


def _descendants(pid: int) -> list[int]:
    """Descendant pids from the kernel's per-thread children lists.

    Liveness probes snapshot every tree each interval; psutil's children() reads the stat
    file of every process on the host for that (a third of the daemon's idle CPU at 64
    services), this reads only the tree's own files. A process that vanished meanwhile
    simply has no children left to list.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(p) for p in fh.read().split()]
            except FileNotFoundError:
                if os.path.exists(f"/proc/{parent}/task/{tid}"):
                    raise  # the file itself is missing: this kernel lacks the feature
                continue
            found += kids
            todo += kids
    return found


def find_marked(marker: str, *, prefix: bool = False) -> set[ProcRef]:
    """Every process whose environment carries ``MARKER_ENV=marker`` (or starts with it)."""
    return set(find_owners(marker, prefix=prefix))


def find_owners(marker: str, *, prefix: bool = False) -> dict[ProcRef, str]:
    """Like ``find_marked``, with each process's full marker value (whose engine it is).

    Reads /proc/PID/environ as bytes: every stop scans the whole process table, and with
    psutil's parsed environ() 64 services stopping at once kept the daemon busy for ~2 s.
    """
    needle = f"\0{MARKER_ENV}={marker}".encode()
    found: dict[ProcRef, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                data = b"\0" + fh.read()
        except OSError:
            continue  # gone, or not ours to read
        at = data.find(needle)
        end = at + len(needle)
        if at < 0 or not (prefix or end == len(data) or data[end] == 0):
            continue
        value = data[at + len(MARKER_ENV) + 2 :].split(b"\0", 1)[0]  # after "\0NAME="
        try:
            found[ProcRef.of(psutil.Process(int(name)))] = value.decode(errors="replace")
        except psutil.Error:
            continue
    return found


SCAN_TIMEOUT = 5.0


async def find_marked_async(
    marker: str, *, prefix: bool = False, timeout: float = SCAN_TIMEOUT
) -> set[ProcRef]:
    """``find_marked`` off the event loop (see ``find_owners_async``)."""
    return set(await find_owners_async(marker, prefix=prefix, timeout=timeout))


async def find_owners_async(
    marker: str, *, prefix: bool = False, timeout: float = SCAN_TIMEOUT
) -> dict[ProcRef, str]:
    """``find_owners`` in a daemon thread, bounded by ``timeout``.

    Opening /proc/PID/environ takes the target's exec lock; a process stuck in exec (or
    in the kernel) can hold it for a long time, and the event loop must not wait on that.
    An empty answer after the timeout only weakens the sweep: groups and snapshots remain.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[dict[ProcRef, str]] = loop.create_future()

    def deliver(result: dict[ProcRef, str]) -> None:
        if not future.done():
            future.set_result(result)

    def work() -> None:
        result = find_owners(marker, prefix=prefix)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver, result)

    if start_thread(work, "find-marked") is not None:
        # No thread to spare (pids limit): scan on the loop. A stalled loop for a moment
        # beats a stop ladder that cannot find an engine's escaped processes.
        return find_owners(marker, prefix=prefix)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        log.error("scan.timeout", marker=marker, timeout=timeout)
        return {}


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
