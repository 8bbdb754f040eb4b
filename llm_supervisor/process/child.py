"""ChildProcess: one spawned engine, its process group, its output, and the stop ladder."""

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
        return f"exited with code {self.code}"


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
        self.exited: asyncio.Future[int] = loop.create_future()

    def process_exited(self) -> None:
        # Read the code first: the parent class drops its transport once all pipes closed.
        transport = self._transport  # type: ignore[attr-defined]
        code = transport.get_returncode() if transport is not None else None
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(code if code is not None else -1)


class ChildProcess:
    """Owns one engine process tree from spawn until every process of it is gone."""

    def __init__(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int], marker: str, name: str
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pgid = proc.pid  # start_new_session makes the child its group leader
        self.marker = marker
        self.name = name
        self.started_at = time.monotonic()
        self.known: set[ProcRef] = snapshot_tree(proc.pid)
        # Our own record of the engine process; its start time tells this pid from a
        # recycled one in the state-dir record.
        self._root = next((ref for ref in self.known if ref.pid == proc.pid), None)
        self.create_time = self._root.create_time if self._root is not None else time.time()
        self._exit = exited
        self._pump: asyncio.Task[None] | None = None
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
        cwd: Path | None = None,
        parent_death_signal: bool = True,
    ) -> ChildProcess:
        full_env = {**env, MARKER_ENV: marker}
        if _resolve(argv[0], full_env) is None:
            # Checked here because behind setpriv a missing engine is only an exit code 127.
            raise StartFailedError(
                name, f"cannot execute {argv[0]!r}: not found or not executable",
                cause="executable_missing",
                hint="check the service's 'command:' (is the engine installed in that venv?)",
            )  # fmt: skip
        command = list(argv)
        setpriv = shutil.which("setpriv") if parent_death_signal else None
        if setpriv:
            # If the daemon dies unsupervised, the kernel sends SIGTERM to the engine.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitProtocol(loop),
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
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
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        child = cls(proc, protocol.exited, marker, name)
        assert proc.stdout is not None
        child._pump = asyncio.ensure_future(pump(proc.stdout, ring, sink))
        return child

    # -- observation -------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> ExitStatus:
        """Wait for the main process to exit (not for its descendants)."""
        return ExitStatus.from_returncode(await asyncio.shield(self._exit))

    def exited(self) -> asyncio.Future[int]:
        return self._exit

    def remember_tree(self) -> set[ProcRef]:
        """Add the current descendants to what we know, so escapees can be found later."""
        if self.returncode is None:
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
                self.returncode is not None
                and not group_alive(self.pgid)
                and all(r.alive() is None for r in others)
            ):
                return True
            if time.monotonic() >= deadline:
                return False
            # Descendants are not our children: no exit event exists for them, so we poll.
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
