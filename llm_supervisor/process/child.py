"""ChildProcess: one engine, its process group, its output, and the stop ladder.

An engine is either spawned by this daemon or adopted from a previous one (after a crash or
an upgrade): adopted engines are found by pid and start time, and their exit is seen through
a pidfd, since only a parent can wait for a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StartFailedError
from ..logsetup import get_logger
from .logfollow import LogFollower, open_spool
from .output import OutputRing, RotatingFile, pump
from .tree import (
    MARKER_ENV,
    ProcRef,
    find_marked_async,
    group_alive,
    kill_refs,
    killpg,
    snapshot_tree,
)

log = get_logger(__name__)

REAP_TIMEOUT = 5.0  # after SIGKILL, how long we wait for the kernel to take processes away


@dataclass(frozen=True)
class ExitStatus:
    """How the engine ended; both None when nobody could know (an adopted non-child)."""

    code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        if self.code is None:
            return "exited (exit code unknown: adopted from a previous daemon, not our child)"
        return f"exited with code {self.code}"


UNKNOWN_EXIT = ExitStatus(None, None)


def _resolve(program: str, env: Mapping[str, str]) -> str | None:
    if "/" in program:
        return program if os.access(program, os.X_OK) and not os.path.isdir(program) else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Resolves ``exited`` the moment the main process dies.

    asyncio's ``Process.wait()`` also waits until every pipe is closed, and descendants that
    inherited stdout (vLLM's EngineCore) keep it open: wait() would hang exactly when the
    crash needs handling.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[ExitStatus] = loop.create_future()

    def process_exited(self) -> None:
        # Read the code first: the parent class drops its transport once all pipes closed.
        transport = self._transport  # type: ignore[attr-defined]
        code = transport.get_returncode() if transport is not None else None
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(
                ExitStatus.from_returncode(code) if code is not None else UNKNOWN_EXIT
            )


def watch_exit(pid: int, pidfd: int) -> asyncio.Future[ExitStatus]:
    """A future resolved when ``pid`` exits, from a pidfd (Linux >= 5.3) on the event loop.

    After an upgrade (exec in place) the engines are still our children: they are reaped here
    and their exit code is known. After a crash they belong to init: the code is unknown.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[ExitStatus] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        status = UNKNOWN_EXIT
        with contextlib.suppress(ChildProcessError):
            reaped, raw = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                status = ExitStatus.from_returncode(os.waitstatus_to_exitcode(raw))
        if not future.done():
            future.set_result(status)

    loop.add_reader(pidfd, readable)
    return future


class ChildProcess:
    """Owns one engine process tree from spawn until every process of it is gone."""

    def __init__(
        self,
        pid: int,
        exited: asyncio.Future[ExitStatus],
        marker: str,
        name: str,
        known: set[ProcRef] | None = None,
    ) -> None:
        self.pid = pid
        self.pgid = pid  # start_new_session makes the child its group leader
        self.marker = marker
        self.name = name
        self.started_at = time.monotonic()
        self.known: set[ProcRef] = snapshot_tree(pid) | (known or set())
        # Our own record of the engine process; its start time tells this pid from a
        # recycled one in the state-dir record.
        self._root = next((ref for ref in self.known if ref.pid == pid), None)
        self.create_time = self._root.create_time if self._root is not None else time.time()
        self._exit = exited
        self._pump: asyncio.Task[None] | None = None
        self.follower: LogFollower | None = None
        self.spool: Path | None = None
        # Told when new descendants appear (the daemon persists them for the orphan sweep).
        self.on_tree_grew: Callable[[ChildProcess], None] | None = None

    @classmethod
    async def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        marker: str,
        ring: OutputRing,
        sink: RotatingFile | None,
        spool: Path | None,
        cwd: Path | None = None,
    ) -> ChildProcess:
        """Start ``argv`` in its own session. With ``spool`` the engine writes to that file
        (O_APPEND), so its output outlives this daemon, and the daemon drains it into
        ``ring`` and ``sink`` (logfollow.py); without, to a pipe.

        No parent-death signal: engines must outlive a crashed or re-executed daemon, which
        adopts them (the next daemon kills the ones it cannot adopt).
        """
        full_env = {**env, MARKER_ENV: marker}
        if _resolve(argv[0], full_env) is None:
            raise StartFailedError(
                name, f"cannot execute {argv[0]!r}: not found or not executable",
                cause="executable_missing",
                hint="check the service's 'command:' (is the engine installed in that venv?)",
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        opened = open_spool(spool) if spool is not None else None
        out, start = opened if opened is not None else (None, 0)
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitProtocol(loop),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out if out is not None else asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise StartFailedError(
                name, f"cannot execute {argv[0]!r}: {exc.strerror}", cause="executable_missing",
                hint="check the service's 'command:' (is the engine installed in that venv?)",
            ) from None  # fmt: skip
        finally:
            if out is not None:
                os.close(out)  # the engine holds it now
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        child = cls(proc.pid, protocol.exited, marker, name)
        if spool is not None and out is not None:
            child.follow(spool, ring, sink, start)
        else:
            assert proc.stdout is not None
            child._pump = asyncio.ensure_future(pump(proc.stdout, ring, sink))
        return child

    def follow(self, spool: Path, ring: OutputRing, sink: RotatingFile | None, offset: int) -> None:
        """Drain the engine's spool from ``offset`` into ``ring`` and ``sink``."""
        self.spool = spool
        self.follower = LogFollower(spool, ring, sink)
        self.follower.start(offset)

    @property
    def spool_offset(self) -> int:
        """How far the spool has been read (what a successor resumes from)."""
        return self.follower.offset if self.follower is not None else 0

    @classmethod
    def adopt(
        cls, name: str, root: ProcRef, *, marker: str, known: set[ProcRef]
    ) -> ChildProcess | None:
        """Take over an engine a previous daemon started; None if it is gone (or recycled)."""
        try:
            pidfd = os.pidfd_open(root.pid)
        except ProcessLookupError:
            return None
        if root.alive() is None:  # checked after the pidfd: the pid cannot be reused between
            os.close(pidfd)
            return None
        return cls(root.pid, watch_exit(root.pid, pidfd), marker, name, known)

    # -- observation -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True until the main process has exited (descendants may live on)."""
        return not self._exit.done()

    async def wait(self) -> ExitStatus:
        """Wait for the main process to exit (not for its descendants)."""
        return await asyncio.shield(self._exit)

    def exited(self) -> asyncio.Future[ExitStatus]:
        return self._exit

    async def drain_output(self) -> None:
        """Read what the engine wrote so far (for a diagnosis right after its exit)."""
        if self.follower is not None:
            await self.follower.drain()

    async def detach(self) -> int:
        """Stop following the output without touching the engine; the offset read so far."""
        if self.follower is None:
            return 0
        return await self.follower.stop()

    def remember_tree(self) -> set[ProcRef]:
        """Add the current descendants to what we know, so escapees can be found later."""
        if self.running:
            before = len(self.known)
            # Our unreaped child: its pid is not recycled, so its record is reused.
            self.known |= snapshot_tree(self.pid, root=self._root)
            if len(self.known) > before and self.on_tree_grew is not None:
                self.on_tree_grew(self)
        return self.known

    def tree_pids(self) -> list[int]:
        return sorted(ref.pid for ref in self.known if ref.alive() is not None)

    # -- the stop ladder ---------------------------------------------------------------

    async def stop(self, grace: float) -> ExitStatus:
        """SIGTERM the group → wait ``grace`` → SIGKILL the group → sweep escapees → reap."""
        self.remember_tree()
        escapees = await self._escapees()
        log.info("stop.term", service=self.name, pid=self.pid, grace=grace)
        killpg(self.pgid, signal.SIGTERM)
        kill_refs(escapees, signal.SIGTERM)
        if not await self._wait_gone(grace, escapees):
            log.warning("stop.kill", service=self.name, pid=self.pid, after=grace)
        return await self.kill_remaining()

    async def kill_remaining(self) -> ExitStatus:
        """SIGKILL whatever is left of the tree (used after a crash as well) and reap it."""
        self.remember_tree()
        killpg(self.pgid, signal.SIGKILL)
        leftovers = kill_refs(await self._escapees() | self.known, signal.SIGKILL)
        stragglers = [r for r in leftovers if r.pid != self.pid]
        if stragglers:
            log.warning("stop.sweep", service=self.name, pids=sorted(r.pid for r in stragglers))
        if not await self._wait_gone(REAP_TIMEOUT, set(leftovers)):
            log.error("stop.unkillable", service=self.name, pids=self.tree_pids())
        status = await self.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        await self.detach()
        return status

    async def _escapees(self) -> set[ProcRef]:
        """Processes of our tree that are no longer in our process group."""
        refs = self.known | await find_marked_async(self.marker)
        outside = set()
        for ref in refs:
            proc = ref.alive()
            if proc is None:
                continue
            try:
                if os.getpgid(ref.pid) != self.pgid:
                    outside.add(ref)
            except OSError:
                continue
        return outside

    async def _wait_gone(self, timeout: float, others: set[ProcRef]) -> bool:
        """Poll until the leader has exited, the group is empty and ``others`` are dead."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if (
                not self.running
                and not group_alive(self.pgid)
                and all(r.alive() is None for r in others)
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            # Descendants are not our children: no exit event exists for them, so we poll.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
