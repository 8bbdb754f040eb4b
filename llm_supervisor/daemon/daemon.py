"""``llm-supervisor run``: wiring, signals, adoption, one ordered shutdown, in-place upgrade.

Signal handlers only set flags (as uvicorn's do); the main coroutine acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.load import load_config
from ..config.models import Config
from ..config.offload import load_config_off_loop
from ..control.server import serve_control
from ..errors import ConfigIssue, SupervisorError, UpgradeError
from ..gateway.app import Gateway
from ..gateway.limits import GatewayLimits, default_max_connections
from ..gateway.relief import relieve
from ..gpu.fake import make_backend
from ..gpu.nvml import GpuMonitor
from ..gpu.placement import Placement, PlacementHooks
from ..gpu.pressure import PressureEvent
from ..logsetup import get_logger
from ..process.registry import GroupRegistry
from ..process.tree import find_marked, kill_refs, killpg
from ..reload.reloader import Reloader
from ..reload.watcher import watch_config_dir
from ..service.crashonly import crash_only
from ..service.deps import GpuHooks
from ..service.gate import StartGate
from ..service.manager import Manager
from ..service.starts import StartHistory
from ..service.states import State
from . import lastresort
from .backend import DaemonBackend, GatewayServices
from .listeners import Listeners, take_inherited
from .rlimits import NofileLimits, raise_nofile
from .sdnotify import SystemdNotifier, watchdog_loop
from .status import DaemonFacts, StatusReport, summary_line
from .upgrade import PRECHECK_TIMEOUT, Handover, exec_self, precheck

log = get_logger(__name__)

LAST_RESORT_MARGIN = 30.0  # seconds past the shutdown deadline before lastresort fires


@dataclass
class DaemonOptions:
    config_dir: Path
    state_dir: Path
    log_dir: Path
    control: str
    gateway: tuple[str, int] | None = ("127.0.0.1", 11434)
    gateway_keys: Path | None = None  # re-read with the config on every reload
    token_file: Path | None = None
    socket_group: str | None = None
    shutdown_timeout: float = 60.0
    watch: bool = True
    debounce_ms: int = 50
    gpu_interval: float = 5.0
    upgrade_timeout: float = PRECHECK_TIMEOUT
    # max_connections None: a share of the descriptor limit (default_max_connections)
    gateway_limits: GatewayLimits = field(default_factory=GatewayLimits)


# Loops that must run for the daemon to supervise anything: the watchdog ping needs them.
VITAL_TASKS = ("reloader", "gpu", "status", "control")


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.nofile: NofileLimits | None = None
        self.task_errors: Counter[str] = Counter()  # exceptions the daemon's loops survived
        self.notifier = SystemdNotifier()
        self.placement = Placement(GpuMonitor(make_backend()), self._placement_hooks())
        self.registry = GroupRegistry(options.state_dir)
        # Set by a previous program of this PID that re-executed itself (an upgrade).
        self.handover = Handover.take(os.environ)
        self.listeners = Listeners(take_inherited(os.environ))
        self.upgrading_to: str | None = None
        self._upgrade_check: asyncio.Task[str] | None = None
        self._upgrade_task: asyncio.Future[None] | None = None
        self._held: list[str] = []  # boot services down on purpose, kept down by an upgrade
        self.facts = DaemonFacts(
            options.config_dir, options.gateway, generation=self.handover.generation,
            previous_version=self.handover.previous_version,
        )  # fmt: skip
        if self.handover.started_at and self.handover.started_monotonic:  # the same daemon
            self.facts = replace(
                self.facts, started_at=self.handover.started_at,
                started_monotonic=self.handover.started_monotonic,
            )  # fmt: skip
        self.gateway: Gateway | None = None
        self.reloader: Reloader | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._disarm: Callable[[], None] = lambda: None
        # set in _build(), once the config is known to be valid
        self.manager: Manager
        self.report: StatusReport
        self.backend: DaemonBackend

    def load(self) -> Config:
        config, warnings = load_config(
            self.options.config_dir, self.placement.totals(), keys_file=self.options.gateway_keys
        )
        return self._warned(config, warnings)

    async def load_off_loop(self) -> Config:
        """For reloads: the event loop keeps serving while a big file parses."""
        loaded = await load_config_off_loop(
            self.options.config_dir, self.placement.totals(), keys_file=self.options.gateway_keys
        )
        return self._warned(*loaded)

    def _warned(self, config: Config, warnings: list[ConfigIssue]) -> Config:
        for issue in warnings:
            log.warning("config.warning", issue=issue.format())
        return config

    # -- signals: flags only -----------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        log.info("daemon.signal", signal=signal.Signals(signum).name, count=self._signals)
        self._stop.set()

    def _on_hup(self) -> None:
        log.info("reload.triggered", trigger="SIGHUP")
        if self.reloader is not None:
            self.reloader.request_throttled()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR2, self._on_usr2)

    def _on_usr2(self) -> None:
        log.info("upgrade.triggered", trigger="SIGUSR2")
        self._upgrade_task = asyncio.ensure_future(self._upgrade_logged())

    async def _upgrade_logged(self) -> None:
        try:
            await self.request_upgrade()
        except UpgradeError as exc:
            log.error("upgrade.refused", error=str(exc))

    # -- run ---------------------------------------------------------------------------

    async def run(self) -> int:
        self.nofile = raise_nofile()
        self._install_signals()
        await self.placement.refresh()
        config = self.load()  # ConfigError propagates: nothing has been started yet
        self.registry.acquire()  # before the sweep: another live daemon's engines are no orphans
        self._bind_listeners()
        self._build(config)
        try:
            await self._adopt()
            async with asyncio.TaskGroup() as group:
                await self._start(group)
                await self._stop.wait()
                await (self._detach() if self.upgrading_to else self._shutdown())
        except BaseExceptionGroup as errors:
            # A listener that could not start (socket taken) is an operator error: surface
            # it as itself so cli.py prints one line instead of a group traceback.
            raise _first_supervisor_error(errors) or errors from None
        finally:
            if self.upgrading_to is None:
                await self._backstop()
            else:
                await self._release()
            self.registry.release()
            self._disarm()
        if self.upgrading_to is not None:
            log.info("daemon.exec", version=__version__, to=self.upgrading_to)
            self.listeners.hand_over(os.environ)
            started = (self.facts.started_at, self.facts.started_monotonic)
            try:
                exec_self(os.environ, self.handover, started, self._held)
            except OSError as exc:  # the engines run on; a restarted daemon adopts them
                log.error("daemon.exec_failed", error=str(exc))
                return 1
        self.listeners.close()
        log.info("daemon.stopped")
        return 0

    def _bind_listeners(self) -> None:
        """Bind (or take over from the previous program) before any engine is touched."""
        self.listeners.control(self.options.control, self.options.socket_group)
        if self.options.gateway is not None:
            self.listeners.gateway(*self.options.gateway)

    def _set_facts(self, **changes: Any) -> None:
        self.facts = replace(self.facts, **changes)
        self.report.facts = self.facts

    async def _adopt(self) -> None:
        """Adopt the previous daemon's engines that match the config; kill everything else."""
        records = {str(r.get("service")): r for r in self.registry.records()}
        keep = []
        for name, record in records.items():
            service = self.manager.services.get(name)
            why = "no such service" if service is None else service.adoptable(record)
            if why is None:
                keep.append(name)
            else:
                log.info("adopt.skipped", service=name, pid=record.get("pid"), reason=why)
        killed = await self.registry.kill_orphans(keep=keep)
        if killed:
            log.warning("daemon.orphans_killed", pids=killed)
        adopted = [n for n in keep if await self.manager.services[n].adopt(records[n])]
        if len(adopted) < len(keep):  # died meanwhile: its leftovers (EngineCore…) go now
            killed += await self.registry.kill_orphans(keep=adopted)
        self._set_facts(orphans_killed=len(killed), engines_adopted=len(adopted))
        if records:
            log.info("daemon.adopted", services=sorted(adopted), killed=len(killed))

    def _build(self, config: Config) -> None:
        self.manager = Manager(
            config,
            registry=self.registry,
            log_dir=self.options.log_dir,
            gate=StartGate(admit=self.placement.admit),
            gpu_hooks=GpuHooks(self.placement.cuda_devices, self.placement.wait_released),
            listeners=[self._publish_summary],
            start_history=StartHistory(self.options.state_dir / "starts.json"),
        )
        if self.options.gateway is not None:
            self.gateway = Gateway(GatewayServices(self.manager), limits=self._gateway_limits())
            self.manager.listeners.append(self.gateway.pins.on_state)  # pins load at ready
        self.reloader = Reloader(
            self.options.config_dir, self.manager, self.load, load_async=self.load_off_loop,
            on_reloading=self.notifier.reloading,
            on_done=lambda record: self.notifier.ready(),
        )  # fmt: skip
        self.report = StatusReport(
            self.facts, self.manager, self.placement, self.gateway, self.reloader, self._health
        )
        self.backend = DaemonBackend(
            self.manager, self.placement, self.reloader, self.report, self.request_upgrade,
            pins_loaded=self.gateway.pins.wait_loaded if self.gateway else None,
        )  # fmt: skip

    def _publish_summary(self, *_: object) -> None:
        self.notifier.status(summary_line(self.manager))

    def _gateway_limits(self) -> GatewayLimits:
        limits = self.options.gateway_limits
        if limits.max_connections is None and self.nofile is not None:
            share = default_max_connections(self.nofile.soft)
            limits = dataclasses.replace(limits, max_connections=share)
        log.info("gateway.limits", **dataclasses.asdict(limits))
        return limits

    def _health(self) -> dict[str, Any]:
        """The status document's word on supervision itself."""
        errors = Counter(self.task_errors)
        if self.gateway is not None:
            errors.update(self.gateway.task_errors)  # exceptions its loops survived
        return {
            "supervising": self.supervising(),
            "task_errors": dict(sorted(errors.items())),
            "nofile": dataclasses.asdict(self.nofile) if self.nofile else None,
        }

    def _placement_hooks(self) -> PlacementHooks:
        """Placement exists before the config (it validates GPU references), the services
        after it: the hooks ask for them at each use."""

        async def relieve_pressure(event: PressureEvent) -> None:
            if self.gateway is not None:
                state, client = self.gateway.state, self.gateway.client
                await relieve(state, client, self.manager.config, event)

        return PlacementHooks(
            services=lambda: self.manager.services,
            policy=lambda: self.manager.config.policy,
            on_critical=relieve_pressure,
        )

    async def _start(self, group: asyncio.TaskGroup) -> None:
        """Control socket and gateway first, then boot services, then READY=1."""
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        control_up, gateway_up = asyncio.Event(), asyncio.Event()
        self._spawn(group, "control", serve_control(
            self.backend, self.options.control, token_file=self.options.token_file,
            socket_group=self.options.socket_group, started=control_up,
            collectors=[self.gateway.stats.collector()] if self.gateway else (),
            sock=self.listeners.sockets["control"],
        ))  # fmt: skip
        waits = [control_up.wait()]
        if self.gateway is not None and self.options.gateway is not None:
            host, port = self.options.gateway
            sock = self.listeners.sockets["gateway"]
            self._spawn(group, "gateway", self.gateway.serve(host, port, gateway_up, sock=sock))
            waits.append(gateway_up.wait())
        await self._started(waits)
        reloader = self.reloader
        assert reloader is not None
        self._guarded(group, "reloader", reloader.run)
        if self.options.watch:
            stop = self._watch_stop = asyncio.Event()
            self._guarded(group, "watcher", lambda: watch_config_dir(
                self.options.config_dir, reloader, stop, self.options.debounce_ms
            ))  # fmt: skip
        self._guarded(group, "gpu", lambda: self.placement.run(self.options.gpu_interval))
        self._guarded(group, "status", self._status_loop)
        await self.manager.start_boot_services(held=self.handover.held)
        self.notifier.ready(status=summary_line(self.manager))
        self._set_facts(ready=True)
        if self.handover.generation:
            log.info("daemon.upgraded", old=self.handover.previous_version, new=__version__,
                     generation=self.handover.generation, pid=os.getpid())  # fmt: skip
        # WATCHDOG=1 is sent from this event loop, and only while every supervision task
        # runs: a blocked loop or a dead supervisor both end the pings, and systemd acts.
        self._spawn(group, "watchdog", watchdog_loop(
            self.notifier, self.notifier.watchdog_interval(), self.supervising
        ))  # fmt: skip
        log.info("daemon.ready", services=len(self.manager.services),
                 control=self.options.control, gateway=self.report.gateway_address())  # fmt: skip

    async def _started(self, waits: list[Any]) -> None:
        """Wait for the listeners; a task that died instead (port taken) raises here."""
        # Plain tasks, not gather(): a cancelled gather whose outcome nobody reads makes
        # asyncio print "exception was never retrieved" with a traceback at exit.
        waiters = [asyncio.ensure_future(w) for w in waits]
        try:
            while not all(w.done() for w in waiters):
                racers: set[asyncio.Future[Any]] = {*waiters, *self._tasks.values()}
                await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
                for task in self._tasks.values():
                    if task.done():
                        task.result()  # re-raise the listener's error
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _spawn(self, group: asyncio.TaskGroup, name: str, coro: Any) -> None:
        self._tasks[name] = group.create_task(coro, name=name)

    def _guarded(
        self, group: asyncio.TaskGroup, name: str, run: Callable[[], Awaitable[object]]
    ) -> None:
        """A crash-only loop: an exception is logged (daemon.task_error), counted and the
        loop starts again; before, it ended the TaskGroup and with it every engine."""
        self._spawn(group, name, crash_only(name, run, self.task_errors))

    def supervising(self) -> bool:
        """Every service that should be supervised is, and the daemon's vital loops run."""
        tasks = getattr(self, "_tasks", {})
        for name in VITAL_TASKS:  # cancelled is the shutdown's doing, not a failure
            task = tasks.get(name)
            if task is not None and task.done() and not task.cancelled():
                return False
        settled = (State.STOPPED, State.FATAL, State.STOPPING)  # stopping: a stop holds it
        return all(s.supervised or s.state in settled for s in self.manager.services.values())

    async def _status_loop(self) -> None:
        while True:
            self._publish_summary()
            await asyncio.sleep(5)

    # -- shutdown, in order ------------------------------------------------------------

    async def _shutdown(self) -> None:
        deadline = self.options.shutdown_timeout
        log.info("daemon.stopping", deadline=deadline)
        # 0. Whatever happens below, the process ends: stacks on stderr, engines killed.
        self._disarm = lastresort.arm(deadline + LAST_RESORT_MARGIN, self._kill_engines_now)
        # 1. Tell systemd, so `systemctl status` says "deactivating" from now on.
        self.notifier.stopping()
        # 2. No more reloads: a reload racing the shutdown could start a service again.
        for name in ("watcher", "reloader"):
            await self._cancel(name)
        if self.reloader is not None:
            await self.reloader.close()
        # 3. Close the gateway: no new requests; open streams get a few seconds.
        await self._cancel("gateway")
        # 4. Stop every service concurrently within the shared deadline.
        await self.manager.shutdown(deadline)
        # 5. Control API last, so `status` works while the services stop.
        for name in ("gpu", "status", "watchdog", "control"):
            await self._cancel(name)

    # -- in-place upgrade --------------------------------------------------------------

    async def request_upgrade(self) -> dict[str, Any]:
        """Check that the installed code starts, then re-execute into it (after answering)."""
        if self.upgrading_to is not None or self._stop.is_set():
            raise UpgradeError("an upgrade or a shutdown is already under way")
        unwritable = self.registry.writable()
        if unwritable is not None:
            raise UpgradeError(
                f"cannot record the engines in the state dir ({unwritable}): the new program "
                "could not adopt them; the running daemon is unchanged"
            )
        if self._upgrade_check is None or self._upgrade_check.done():
            self._upgrade_check = asyncio.create_task(
                precheck(self.options.config_dir, self.options.upgrade_timeout)
            )
        version = await asyncio.shield(self._upgrade_check)  # concurrent requests share one
        if self.upgrading_to is None and not self._stop.is_set():
            self.upgrading_to = version
            log.info("daemon.upgrading", old=__version__, new=version)
            self._stop.set()
        return {"from": __version__, "to": version, "pid": os.getpid(),
                "generation": self.handover.generation}  # fmt: skip

    async def _detach(self) -> None:
        """Before exec: stop serving and supervising; every engine keeps running."""
        self._set_facts(ready=False)
        self.notifier.reloading(status=f"upgrading to {self.upgrading_to}")
        for name in ("watcher", "reloader"):
            await self._cancel(name)
        if self.reloader is not None:
            await self.reloader.close()
        # Stops accepting (the socket stays open: connections wait in its backlog) and lets
        # open requests finish.
        await self._cancel("gateway")
        self._held = self.manager.held()
        await self.manager.detach_all()
        for name in ("gpu", "status", "watchdog", "control"):
            await self._cancel(name)

    async def _release(self) -> None:
        await self.manager.aclose()
        self.placement.monitor.close()

    async def _cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _kill_engines_now(self) -> None:
        kill_refs(find_marked(self.registry.marker_prefix, prefix=True))
        for record in self.registry.records():
            killpg(int(str(record["pgid"])), signal.SIGKILL)

    async def _backstop(self) -> None:
        """Whatever path led here (crash of a listener included), leave no engine behind."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self.manager.shutdown(5.0))
        await self.manager.aclose()
        self.placement.monitor.close()


def _first_supervisor_error(group: BaseExceptionGroup[BaseException]) -> SupervisorError | None:
    matched, _ = group.split(SupervisorError)
    leaf: BaseException | None = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, SupervisorError) else None
