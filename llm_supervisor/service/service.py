"""Service: one engine process, its state machine, health checks and restart policy.

A single writer: only the Service changes its own state, always through ``_set_state``, and
every other field it reports (last use, requests in flight, degraded) through its own methods.
Lifecycle requests (start, stop, restart, stop_if_idle) are serialized by one lock; callers
ask for an outcome (``ensure_ready``, ``stop_if_idle``) instead of reading the state to
decide what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.models import ServiceConfig
from ..config.secrets import redact_argv, secret_values
from ..config.vllmargs import respell
from ..engines import engine_for
from ..errors import PortInUseError, StartFailedError
from ..logsetup import get_logger
from ..process.child import ChildProcess, ExitStatus
from ..process.environment import clean_child_env
from ..process.logfollow import read_tail
from ..process.logline import LogLine
from ..process.output import OutputRing, RotatingFile
from ..process.ports import port_owner
from ..process.registry import recorded_root, recorded_tree
from .backoff import decide_restart
from .crashonly import ErrorTrack
from .deps import ServiceDeps
from .progress import Progress, ProgressTracker
from .starts import estimate_eta
from .states import ALLOWED, InvalidTransition, State
from .usage import Usage

log = get_logger(__name__)
JITTER = 0.2
FIRST = asyncio.FIRST_COMPLETED
TREE_SNAPSHOT_INTERVAL = 5.0  # seconds between process-tree snapshots of a ready engine
ADMISSION = "insufficient_free_memory"  # the cause placement gives a start the GPU refused


@dataclass
class Failure:
    reason: str  # crash | exited | health | startup_timeout | spawn
    message: str
    status: ExitStatus | None = None
    cause: str = "unknown"
    hint: str = ""
    was_ready_for: float = 0.0
    tail: list[str] = field(default_factory=list)


class Service:
    def __init__(self, config: ServiceConfig, deps: ServiceDeps) -> None:
        self.config = config
        self.deps = deps
        self.engine = engine_for(config.spec.engine)
        self.ring = OutputRing(on_line=self._on_output)
        self.state = State.STOPPED
        self.reason = ""
        self.restarts: Counter[str] = Counter()
        self.last_failure: Failure | None = None
        self.last_exit_at: float | None = None
        self.ready_since: float | None = None
        self.ready_since_wall: float | None = None  # recorded, so an adopter keeps the uptime
        self._last_request: float | None = None  # on deps.clock; see lease()
        self.health_latency: float | None = None
        self.health_failures = 0
        self.degraded: str | None = None
        self.supervision_errors = 0  # unexpected exceptions in _supervise, all resumed
        self._errors = ErrorTrack("service.supervision_error")
        self._interrupted: Failure | None = None  # a failure whose cleanup an error cut
        self.starting_since: float | None = None
        self.spawned_at: float | None = None  # clock time of this run's spawn
        self.warmup: dict[str, Any] | None = None  # the last warm-up: seconds, ok
        self._progress: ProgressTracker | None = None
        self._child: ChildProcess | None = None
        self._runner: asyncio.Task[None] | None = None
        self._failure_times: list[float] = []
        self._adopted_ready_since: object = None  # wall time the adopted engine became ready
        self._adopting = False  # the current run resumes an engine of a previous daemon
        self._run_started = 0.0
        self._lifecycle = asyncio.Lock()
        self._leases = 0
        self._unused = asyncio.Event()
        self._unused.set()
        self._changed = asyncio.Event()
        self._sink = self._open_sink()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.running else None

    def tree_pids(self) -> list[int]:
        return self._child.tree_pids() if self._child is not None else []

    # -- use: requests in flight and the last one ----------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Held by each request from its arrival to its end (waiting for a start included):
        a service in use is neither stopped for idleness nor evicted. Both ends count as use."""
        self._leases += 1
        self._unused.clear()
        self._last_request = self.deps.clock()
        try:
            yield
        finally:
            self._leases -= 1
            self._last_request = self.deps.clock()
            if not self._leases:
                self._unused.set()

    async def drained(self, timeout: float) -> bool:
        """Wait (bounded) until no request is in flight; True if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unused.wait(), timeout)
        return not self._leases

    def _idle_since(self) -> float | None:
        """When it was last used, if it runs and nothing is in flight; a service that was
        never asked for anything counts from when it became ready."""
        if self._leases or self.state not in (State.READY, State.BACKOFF):
            return None
        return self._last_request if self._last_request is not None else self.ready_since

    async def stop_if_idle(self, idle_for: float = 0.0, reason: str = "idle") -> bool:
        """Stop if unused for ``idle_for`` seconds; True if it stopped. Decided under the
        lifecycle lock: a request that arrived meanwhile holds a lease and wins."""
        async with self._lifecycle:
            since = self._idle_since()
            if since is None or self.deps.clock() - since < idle_for:
                return False
            await self._stop_locked(reason)
            return True

    def usage(self) -> Usage:
        since = self._idle_since()
        return Usage(
            in_flight=self._leases,
            last_request=self._wall(self._last_request),
            idle_since=self._wall(since),
            stopped_idle=self.state is State.STOPPED and self.reason == "idle",
        )

    def _wall(self, at: float | None) -> float | None:
        """A time on deps.clock as Unix time, for people and status documents."""
        return None if at is None else self.deps.wall_clock() - (self.deps.clock() - at)

    # -- the one place state changes ---------------------------------------------------

    def _set_state(self, new: State, reason: str = "") -> None:
        old = self.state
        if new not in ALLOWED[old]:
            raise InvalidTransition(old, new)
        self.state, self.reason = new, reason
        self.ready_since = self.deps.clock() if new is State.READY else None
        self.ready_since_wall = self.deps.wall_clock() if new is State.READY else None
        if new is not old:
            self.starting_since = self.deps.clock() if new is State.STARTING else None
        log.info("service.state", service=self.name, old=str(old), new=str(new), reason=reason)
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.deps.listeners:
            try:
                listener(self.name, old, new, reason)
            except Exception:  # an observer's bug must not break the state machine
                log.exception("service.listener_error", service=self.name)

    async def _wait_for(self, accept: Callable[[State], bool]) -> State:
        while not accept(self.state):
            await self._changed.wait()
        return self.state

    # -- lifecycle requests (serialized) -----------------------------------------------

    async def ensure_ready(self, timeout: float | None = None) -> None:
        """Start if needed and wait until ready; raise StartFailedError if it cannot be.

        A fatal service stays fatal: a request is no operator, and restarting what failed
        ``max_failures`` times on every request would load a broken model again and again.
        Only start, restart or a profile edit of the service leave fatal.
        """
        async with self._lifecycle:
            if self.state is State.FATAL:
                raise self._start_failed()
            if self._runner is None or self._runner.done():
                self._launch()
        state = await asyncio.wait_for(self._wait_for(self._start_settled), timeout)
        if state is not State.READY:
            raise self._start_failed()

    def _start_failed(self) -> StartFailedError:
        failure = self.last_failure
        return StartFailedError(
            self.name,
            self.reason or "stopped",
            cause=failure.cause if failure else "unknown",
            hint=failure.hint if failure else "",
        )

    def _start_settled(self, state: State) -> bool:
        """Ready, given up, stopped, or backing off because the GPU cannot take it: a
        waiting client learns who holds the memory now instead of after every retry."""
        if state in (State.READY, State.FATAL, State.STOPPED):
            return True
        failure = self.last_failure
        return state is State.BACKOFF and failure is not None and failure.cause == ADMISSION

    async def start(self, wait: bool = True, timeout: float | None = None) -> None:
        """Operator start: also clears fatal (the failure history starts over)."""
        async with self._lifecycle:
            if self._runner is None or self._runner.done():
                self._failure_times.clear()
                self.degraded = None
                self._launch()
        if wait:
            await self.ensure_ready(timeout)

    async def stop(self, reason: str = "requested") -> None:
        async with self._lifecycle:
            await self._stop_locked(reason)

    async def roll_back(self, config: ServiceConfig, why: str) -> None:
        """Restart on the last known good spec; status says so until cleared."""
        self.degraded = f"rolled back: {why}"
        await self.restart("rollback", config=config)

    def clear_degraded(self) -> None:
        """A new edit (or the operator) has taken over from the rollback."""
        self.degraded = None

    async def restart(
        self,
        reason: str = "requested",
        config: ServiceConfig | None = None,
        wait: bool = False,
        keep_stopped: bool = False,
    ) -> bool:
        """Stop (if running) and start again, optionally with a new spec; True if launched.

        ``keep_stopped`` (reload): a stopped service (on-demand, or stopped by the operator)
        only takes the new spec for its next start.
        """
        async with self._lifecycle:
            stopped = keep_stopped and self.state is State.STOPPED
            if not stopped:
                await self._stop_locked(reason)
            if config is not None:
                self.config = config
                self.engine = engine_for(config.spec.engine)
            if stopped:
                return False
            self._failure_times.clear()
            self.restarts[reason] += 1
            if reason == "requested":
                self.degraded = None  # the operator has seen it and asked for a fresh start
            self._launch()
        if wait:
            await self.ensure_ready()
        return True

    def update_live(self, config: ServiceConfig) -> None:
        """Apply a change that needs no restart (health timings, restart policy)."""
        self.config = config

    def _launch(self) -> None:
        # STARTING is set before the task runs, so a waiter never mistakes the old STOPPED
        # for the outcome of this start.
        self._set_state(State.STARTING, "start")
        self._runner = asyncio.create_task(self._supervise(), name=f"service:{self.name}")
        self._runner.add_done_callback(self._runner_ended)

    def _runner_ended(self, runner: asyncio.Task[None]) -> None:
        """The guard in _supervise ends only by fatal or cancel; anything else (a
        BaseException) must not leave ``ready`` on an engine nobody watches any more."""
        if runner.cancelled() or runner.exception() is None or self._runner is not runner:
            return
        if self.state in (State.STARTING, State.READY, State.STOPPING, State.BACKOFF):
            self._set_state(State.FATAL, f"supervision ended: {runner.exception()!r}")

    @property
    def supervised(self) -> bool:
        """A supervision task runs for this service (False when stopped or fatal)."""
        return self._runner is not None and not self._runner.done()

    async def _cancel_runner(self) -> None:
        """End the supervision task (with the lifecycle lock held)."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _stop_locked(self, reason: str) -> None:
        await self._cancel_runner()
        child = self._child
        if child is not None and (child.running or child.known):
            if self.state in (State.STARTING, State.READY):
                self._set_state(State.STOPPING, reason)
            grace = self.config.spec.stop_timeout or self.engine.stop_timeout
            status = await child.stop(grace)
            await self._forget_child(child)
            log.info("service.stopped", service=self.name, status=status.describe())
        if self.state is not State.STOPPED:
            self._set_state(State.STOPPED, reason)

    # -- the runner: start, watch, restart ---------------------------------------------

    async def _supervise(self) -> None:
        """Crash-only: an unexpected exception anywhere in a run is logged, counted, and the
        run resumes after a backoff from what it finds (a live engine is probed, not
        restarted; a dead one is a crash). Only fatal and cancellation end this task."""
        delay = 0.0
        while True:
            try:
                if delay:
                    await asyncio.sleep(delay)
                await self._supervise_runs()
                return
            except Exception as exc:
                delay = self._supervision_failed(exc)

    def _supervision_failed(self, exc: Exception) -> float:
        self.supervision_errors += 1
        delay = self._errors.record(exc, service=self.name, state=str(self.state))
        # Nobody watches the engine until the resume: it must not be shown ready.
        if self.state is not State.BACKOFF and State.BACKOFF in ALLOWED[self.state]:
            self._set_state(State.BACKOFF, f"supervision error {exc!r}; resuming in {delay:g}s")
        return delay

    async def _supervise_runs(self) -> None:
        while True:
            failure = await self._run_once()
            self._adopting, self._adopted_ready_since = False, None  # later runs are our own
            self.last_failure = failure
            self.last_exit_at = self.deps.wall_clock()
            now = self.deps.clock()
            if failure.was_ready_for >= self.config.spec.health.stable_after:
                self._failure_times.clear()  # it ran well: this failure starts a new count
            policy = self.config.spec.restart
            decision = decide_restart(
                self._failure_times, now, max_failures=policy.max_failures, window=policy.window,
                initial=policy.backoff_initial, cap=policy.backoff_max, jitter=JITTER,
                rand=self.deps.rand(), immediate_first=failure.was_ready_for > 0,
            )  # fmt: skip
            self._failure_times.append(now)
            summary = f"{failure.message}" + (f" [{failure.cause}]" if failure.cause else "")
            if decision.fatal:
                self._set_state(
                    State.FATAL,
                    f"{summary}; {decision.failures_in_window} failures within {policy.window:g}s",
                )
                return
            self.restarts[failure.reason] += 1
            self._set_state(State.BACKOFF, f"{summary}; restart in {decision.delay:.2f}s")
            await asyncio.sleep(decision.delay)

    async def _run_once(self) -> Failure:
        child = self._child
        if self.state is not State.STARTING:
            self._set_state(State.STARTING, "restart" if child is None else "resume")
        interrupted, self._interrupted = self._interrupted, None
        if child is not None and interrupted is not None:
            # The error hit the cleanup of a failed run: finish that, don't probe a hung
            # engine again for a whole startup_timeout.
            self._set_state(State.STOPPING, interrupted.message)
            failure: Failure | None = interrupted
        elif child is not None:
            # Resuming after a supervision error: the engine of the interrupted run is
            # probed (ready again at once if it answers), never blindly restarted.
            failure = await self._await_ready(child)
        else:
            self._progress = ProgressTracker(self.config.spec.engine, self.deps.clock)
            self.spawned_at = None  # set at spawn: waiting in the GPU gate is not loading
            try:
                async with self.deps.start_gate(self.config):
                    child = await self._spawn()
                    failure = await self._await_ready(child)
            except StartFailedError as exc:
                return Failure("spawn", exc.reason, cause=exc.cause, hint=exc.hint)
        if failure is None:
            if not self._adopting:  # an adopted engine was warmed up and timed by its starter
                await self._warm_up()
                self._record_start()
            self._become_ready(child)
            failure = await self._watch(child)
            # Not serving any more: ensure_ready() must not answer "ready" during the cleanup
            # (seconds on a GPU while the memory is released), and a stop must find no READY.
            self._set_state(State.STOPPING, failure.message)
        self._interrupted = failure  # cleared below; a resume finishes what an error cut
        await self._cleanup_after_failure(child, failure)
        self._interrupted = None
        return failure

    async def _spawn(self) -> ChildProcess:
        spec = self.config.spec
        owner = port_owner(spec.port)
        if owner is not None:
            raise PortInUseError(
                self.name, f"port {spec.port} is in use by {owner}", cause="port_in_use",
                hint=f"stop {owner} or give this service another port",
            )  # fmt: skip
        env = {**clean_child_env(os.environ), **self._own_env()}
        self._mask_secrets()
        self._run_started = self.deps.wall_clock()  # output after this belongs to this run
        self.spawned_at = self.deps.clock()
        child = await ChildProcess.spawn(
            self.name, self.engine.argv(self.config), env,
            marker=self.deps.registry.marker(self.name), ring=self.ring, sink=self._sink,
            spool=self._spool_path(),
        )  # fmt: skip
        self._child = child
        child.on_tree_grew = self._record
        self._record(child)
        argv = redact_argv(self.engine.argv(self.config))  # the engine got the real values
        log.info("service.spawned", service=self.name, pid=child.pid, argv=argv)
        return child

    def _mask_secrets(self) -> None:
        """The engine may print its key (vLLM logs its arguments): keep it out of logs."""
        secrets = secret_values(self.config.spec.args, self.config.spec.env)
        self.ring.secrets = secrets
        if self._sink is not None:
            self._sink.secrets = tuple(s.encode() for s in secrets)

    def _record(self, child: ChildProcess) -> None:
        """Persist what a successor daemon needs to adopt this engine (registry.py)."""
        self.deps.registry.record(
            self.name, child.pid, child.create_time, child.known,
            fingerprint=self.fingerprint(), port=self.config.spec.port,
            spool=str(child.spool) if child.spool else None, spool_offset=child.spool_offset,
            ready_since=self.ready_since_wall if self._child is child else None,
            restarts=dict(self.restarts),
        )  # fmt: skip

    def _own_env(self) -> dict[str, str]:
        """The environment the config gives the engine (the daemon's own is added to it)."""
        env: dict[str, str] = {}
        devices = self.deps.cuda_devices(self.config)
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        env.update(self.engine.env(self.config, self.deps.policy()))
        env.update(self.config.spec.env)
        return env

    def fingerprint(self) -> str:
        """What makes a running engine this service's: argv, configured env, port.

        The inherited environment is left out on purpose: systemd gives every invocation a
        new INVOCATION_ID, and a restart of the daemon must not look like a changed spec.
        """
        identity = [self.engine.argv(self.config), self._own_env(), self.config.spec.port]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def _spool_path(self) -> Path:
        return self.deps.registry.state_dir / "spool" / f"{self.name}.out"

    def _open_sink(self) -> RotatingFile | None:
        if self.deps.log_dir is None:
            return None
        try:
            self.deps.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("log.dir_unusable", dir=str(self.deps.log_dir), error=str(exc))
            return None
        return RotatingFile(self.deps.log_dir / f"{self.name}.log")

    # -- adoption (a previous daemon's engine) and detaching (before an upgrade) ---------

    def adoptable(self, record: dict[str, Any]) -> str | None:
        """Why the engine in ``record`` cannot be adopted, or None if it can."""
        root = recorded_root(record)
        if root is None or root.alive() is None:
            return "not running"
        if record.get("fingerprint") != self.fingerprint():
            return "spec changed"
        return None

    async def adopt(self, record: dict[str, Any]) -> bool:
        """Supervise the engine a previous daemon started, without restarting it."""
        root = recorded_root(record)
        marker = self.deps.registry.marker(self.name)
        async with self._lifecycle:
            child = None
            if root is not None and (self._runner is None or self._runner.done()):
                child = ChildProcess.adopt(self.name, root, marker=marker,
                                           known=recorded_tree(record))  # fmt: skip
            if child is None:
                return False
            self.restarts.update(record.get("restarts") or {})
            self._adopted_ready_since = record.get("ready_since")
            self._run_started = self.deps.wall_clock()
            self._mask_secrets()
            if self._sink is not None:  # its history (masked), then what came meanwhile
                read_tail(self._sink.path, self.ring)
            spool = self._spool_path()
            if record.get("spool") == str(spool):  # what it wrote meanwhile is read now
                child.follow(spool, self.ring, self._sink, int(record.get("spool_offset") or 0))
            self._child = child
            child.on_tree_grew = self._record
            self._set_state(State.STARTING, "adopted")
            # The run resumes with this child: probed, never restarted (as after an error).
            self._adopting = True
            self._runner = asyncio.create_task(self._supervise(), name=f"service:{self.name}")
        log.info("service.adopted", service=self.name, pid=child.pid)
        return True

    async def detach(self) -> None:
        """Stop supervising and leave the engine running (an upgrade re-adopts it)."""
        async with self._lifecycle:
            await self._cancel_runner()
            child = self._child
            if child is not None and child.running:
                await child.detach()
                self._record(child)

    async def _await_ready(self, child: ChildProcess) -> Failure | None:
        """Poll readiness until it answers, racing the child's exit and the startup timeout."""
        spec = self.config.spec
        timeout = spec.health.startup_timeout or self.engine.startup_timeout
        probe = asyncio.create_task(self._poll_ready(child))
        exited = child.exited()
        racers: set[asyncio.Future[Any]] = {probe, exited}
        try:
            done, _ = await asyncio.wait(racers, timeout=timeout, return_when=FIRST)
            if probe in done:
                probe.result()  # a probe that raised is a supervision error, not "ready"
                return None
        finally:
            probe.cancel()  # also when this wait was interrupted: no probe left behind
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        if exited in done:
            status = await child.wait()
            return Failure("crash", f"exited prematurely, {status.describe()}", status)
        return Failure("startup_timeout", f"not ready after {timeout:g}s (startup_timeout)")

    async def _poll_ready(self, child: ChildProcess) -> None:
        spec = self.config.spec
        last_snapshot = 0.0
        while True:
            if await self.engine.ready(self.deps.http, self.config, spec.health.timeout):
                return
            now = self.deps.clock()
            if now - last_snapshot > 1.0:  # remember EngineCore/Worker as they appear
                child.remember_tree()
                last_snapshot = now
            await asyncio.sleep(self.deps.ready_poll_interval)

    async def _watch(self, child: ChildProcess) -> Failure:
        """Liveness after ready: N consecutive failed probes, or the child's exit, end it."""
        exited = child.exited()
        self.health_failures = 0
        child.remember_tree()
        snapshot_at = self.deps.clock()
        while True:
            health = self.config.spec.health
            done, _ = await asyncio.wait({exited}, timeout=health.interval)
            ready_for = self._ready_for()
            if done:
                status = await child.wait()
                reason = "exited" if status.code == 0 else "crash"
                note = " (an exit nobody asked for)" if status.code == 0 else ""
                return Failure(
                    reason, f"{status.describe()}{note}", status, was_ready_for=ready_for
                )
            started = self.deps.clock()
            ok = await self.engine.live(self.deps.http, self.config, health.timeout)
            self.health_latency = self.deps.clock() - started
            if started - snapshot_at >= TREE_SNAPSHOT_INTERVAL:
                # Not every probe: reading /proc for 64 trees each second costs real CPU, and
                # the environment marker finds any descendant a snapshot missed.
                child.remember_tree()
                snapshot_at = started
            self.health_failures = 0 if ok else self.health_failures + 1
            if not ok:
                log.warning(
                    "service.health_failed", service=self.name, failures=self.health_failures
                )
            if self.health_failures >= health.failures and child.running:
                message = f"{self.health_failures} consecutive health checks failed"
                return Failure("health", message, was_ready_for=ready_for)

    def _become_ready(self, child: ChildProcess) -> None:
        adopted, self._adopting = self._adopting, False
        self._set_state(State.READY, "adopted" if adopted else "ready")
        if child.follower is not None:
            child.follower.eager = False  # loaded: no more phases to show at once
        was = self._adopted_ready_since
        if adopted and isinstance(was, (int, float)):
            # Keep the original uptime: it was ready all along, under the previous daemon.
            age = max(0.0, self.deps.wall_clock() - float(was))
            self.ready_since, self.ready_since_wall = self.deps.clock() - age, float(was)
        self._adopted_ready_since = None
        self._record(child)

    async def _warm_up(self) -> None:
        """One short request before the gateway routes here, so the first client does not
        pay for CUDA graph capture or the first-token compile. A failed warm-up is logged;
        the engine answered its readiness probe, so it still counts as ready."""
        spec = self.config.spec
        timeout = spec.health.startup_timeout or self.engine.startup_timeout
        started = self.deps.clock()
        ok = await self.engine.warmup(self.deps.http, self.config, self.deps.policy(), timeout)
        if ok is None:
            return  # nothing to warm up for this service
        seconds = round(self.deps.clock() - started, 3)
        self.warmup = {"seconds": seconds, "ok": ok}
        emit = log.info if ok else log.warning
        emit("service.warmup", service=self.name, seconds=seconds, ok=ok)

    def _record_start(self) -> None:
        if self.spawned_at is not None:
            self.deps.start_history.record(self.name, self.deps.clock() - self.spawned_at)

    def eta(self) -> float | None:
        """Seconds until ready while not ready (None when nothing can say); 0 when ready."""
        if self.state is State.READY:
            return 0.0
        if self.state is State.FATAL:
            return None
        last = self.deps.start_history.last(self.name)
        if self.state is not State.STARTING or self.spawned_at is None:
            return last  # a start from scratch: the whole last duration
        now = self.deps.clock()
        current = self.progress
        return estimate_eta(
            now - self.spawned_at, last,
            current.fraction if current else None,
            now - current.since if current else None,
        )  # fmt: skip

    def _on_output(self, line: LogLine) -> None:
        if self._progress is not None and self.state is State.STARTING:
            self._progress.feed(line.text)

    @property
    def progress(self) -> Progress | None:
        """The load phase while starting (from the engine's own output), else None."""
        if self.state is not State.STARTING or self._progress is None:
            return None
        return self._progress.current

    def _ready_for(self) -> float:
        return self.deps.clock() - self.ready_since if self.ready_since is not None else 0.0

    async def _cleanup_after_failure(self, child: ChildProcess, failure: Failure) -> None:
        """Make sure nothing of the failed run is left, then explain what happened."""
        if child.running:
            # Hung or too slow: ask politely first, the ladder escalates.
            grace = self.config.spec.stop_timeout or self.engine.stop_timeout
            failure.status = await child.stop(grace)
        else:
            # The main process is gone; vLLM's EngineCore/Worker would stay and hold memory.
            await child.kill_remaining()
        failure.status = failure.status or await child.wait()
        await child.drain_output()
        self._diagnose(failure)
        await self._forget_child(child)

    def _diagnose(self, failure: Failure) -> None:
        lines = self.ring.tail(since=self._run_started)
        failure.tail = [ln.text for ln in lines[-20:]]
        if failure.cause != "unknown":
            return
        try:
            from ..diagnosis import diagnose_exit
        except ImportError:
            return

        status = failure.status
        text = "\n".join(ln.text for ln in lines)[-64 * 1024 :]
        result = diagnose_exit(
            text, self.config.spec.engine, status.code if status else None,
            status.signal if status else None, stopped_for=failure.reason,
        )  # fmt: skip
        # The hint names flags as vLLM documents them; say them as this profile spells them.
        failure.cause, failure.hint = result.cause, respell(result.hint, self.config.spec.args)

    async def _forget_child(self, child: ChildProcess) -> None:
        gone = sorted(ref.pid for ref in child.known)
        self.deps.registry.forget(self.name)
        if self._child is child:
            self._child = None
        if self.deps.wait_released is not None:
            await self.deps.wait_released(self.config, gone)

    # -- what status shows -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        spec = self.config.spec
        failure = self.last_failure
        last_exit = None
        if failure is not None:
            status = failure.status
            last_exit = {
                "code": status.code if status else None,
                "signal": status.signal if status else None,
                "reason": failure.reason,
                "message": failure.message,
                "cause": failure.cause,
                "hint": failure.hint,
                "at": self.last_exit_at,
                "tail": failure.tail,
            }
        return {
            "engine": spec.engine,
            "gpu": list(self.config.gpus),
            "state": str(self.state),
            "reason": self.reason,
            "pid": self.pid,
            "pids": self.tree_pids(),
            "port": spec.port,
            "start": spec.start,
            "model": spec.public_name,
            "models": list(spec.models),
            "restarts": sum(self.restarts.values()),
            "restarts_by_reason": dict(self.restarts),
            "uptime": self._ready_for() if self.state is State.READY else None,
            "last_exit": last_exit,
            "last_request": self._wall(self._last_request),
            "degraded": self.degraded,
            "supervised": self.supervised,
            "supervision_errors": self.supervision_errors,
            "eta_s": self.eta() if self.state is not State.READY else None,
            "warmup": self.warmup,
            "health": {"last_latency": self.health_latency, "failures": self.health_failures},
            "progress": self._progress_json(),
            "source": self.config.source,
        }

    def _progress_json(self) -> dict[str, Any] | None:
        if self.state is not State.STARTING or self.starting_since is None:
            return None
        now = self.deps.clock()
        current = self.progress
        base: dict[str, Any] = {"phase": "starting", "fraction": None, "detail": ""}
        if current is not None:
            base = current.to_json(now)
        base["elapsed"] = round(now - self.starting_since, 3)
        return base
