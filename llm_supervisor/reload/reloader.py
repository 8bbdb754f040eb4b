"""Hot reload: one path for every trigger, apply only what changed, roll back what breaks."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.diff import LAUNCH_FIELDS as LAUNCH_FIELDS
from ..config.diff import ConfigDiff as ConfigDiff
from ..config.diff import diff_configs as diff_configs
from ..config.diff import keep_rollbacks as keep_rollbacks
from ..config.diff import launch_changed as launch_changed
from ..config.load import config_files, fingerprint
from ..config.models import Config, ServiceConfig
from ..errors import ConfigError, ConfigIssue, StartFailedError
from ..logsetup import get_logger
from ..service.manager import Manager

log = get_logger(__name__)

HALF_WRITTEN_RETRY = 0.25  # an editor caught mid-write gets one more look after this
SETTLE_TIMEOUT = 5.0  # re-read while files keep changing under the loader, up to this long
SIGNAL_WINDOW = 1.0  # SIGHUP: the first reloads at once, a burst after it shares one more


@dataclass
class ReloadRecord:
    result: str = "none"
    at: float | None = None
    errors: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    last_success_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result, "at": self.at, "errors": self.errors,
            "changes": self.changes, "counts": dict(self.counts),
            "last_success_at": self.last_success_at,
        }  # fmt: skip


ADD_BATCH = 50  # services added between two yields to the event loop (~5 ms)


class Reloader:
    """Coalesces reload requests; one reload runs at a time and serves every waiter."""

    def __init__(
        self,
        config_dir: Path,
        manager: Manager,
        load: Callable[[], Config],
        *,
        load_async: Callable[[], Awaitable[Config]] | None = None,
        drain_timeout: float = 30.0,
        on_reloading: Callable[[], object] = lambda: None,
        on_done: Callable[[ReloadRecord], object] = lambda record: None,
    ) -> None:
        self.config_dir = config_dir
        self.manager = manager
        self.load = load
        # Off the event loop: a big file takes a while to parse (a 1 MiB profile ~0.5 s)
        # and the gateway must keep answering meanwhile.
        self.load_async = load_async or (lambda: asyncio.to_thread(load))
        self.drain_timeout = drain_timeout
        self.on_reloading = on_reloading
        self.on_done = on_done
        self.last = ReloadRecord()
        self._fingerprint = fingerprint(config_dir)
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._rolled_back: dict[str, tuple[ServiceConfig, ServiceConfig]] = {}
        self._forced = False
        self._last_signal = -math.inf
        self._trailing: asyncio.TimerHandle | None = None

    def request(self, if_changed: bool = False) -> asyncio.Future[dict[str, Any]]:
        """Ask for a reload; the future resolves with the result of the reload that ran.

        ``if_changed`` (the file watcher): skip it if, when its turn comes, the files hash as
        they did at the last read; an editor's save can arrive as several event batches
        while a reload is reading them, and that reload already saw the result.
        """
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._forced = self._forced or not if_changed
        self._wake.set()
        return future

    def request_throttled(self) -> None:
        """A SIGHUP: reload at once, but at most once more per SIGNAL_WINDOW after that.

        `systemctl reload` in a loop, or a tool signalling once per file it wrote, must not
        make the daemon re-read everything a hundred times a second: a storm of 100 in a
        second costs two reloads, the second one seeing the last state of the files.
        """
        if self._trailing is not None:
            return  # the burst's reload is already scheduled
        loop = asyncio.get_running_loop()
        wait = self._last_signal + SIGNAL_WINDOW - loop.time()
        if wait <= 0:
            self._signal_reload()
        else:
            self._trailing = loop.call_later(wait, self._signal_reload)

    def _signal_reload(self) -> None:
        self._trailing = None
        self._last_signal = asyncio.get_running_loop().time()
        self.request()

    async def run(self) -> None:
        """The single reload worker: requests that arrive during a reload share the next."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            forced, self._forced = self._forced, False
            if not forced and not self.changed_on_disk():
                _resolve(waiters, {"result": "skipped", "errors": [], "changes": {}})
                continue
            try:
                result = await self.reload_now()
            except Exception as exc:  # the daemon must survive a bug in one reload
                log.exception("reload.failed")
                result = {"result": "rejected", "errors": [repr(exc)], "changes": {}}
            _resolve(waiters, result)

    async def dry_run(self) -> dict[str, Any]:
        try:
            new = await self.load_async()
        except ConfigError as exc:
            return {"result": "rejected", "errors": _errors(exc), "changes": {}}
        diff = diff_configs(self.manager.config, keep_rollbacks(new, self._rolled_back)[0])
        return {"result": "unchanged" if diff.empty else "dry-run", "errors": [],
                "changes": diff.to_json()}  # fmt: skip

    async def reload_now(self) -> dict[str, Any]:
        self.on_reloading()
        try:
            loaded = await self._load_settled()
        except ConfigError as exc:
            return self._finish("rejected", errors=_errors(exc))
        new, over = keep_rollbacks(loaded, self._rolled_back)
        for name in over:
            self._end_rollback(name)
        diff = diff_configs(self.manager.config, new)
        if diff.empty:
            return self._finish("unchanged")
        await self._apply(new, diff)
        return self._finish("applied", changes=diff.to_json())

    def changed_on_disk(self) -> bool:
        """For the file watcher: a touch or chmod leaves the content hash as it was."""
        return fingerprint(self.config_dir) != self._fingerprint

    async def _load_settled(self) -> Config:
        """Load from files that held still during the read; a failure gets one more look.

        An editor may be caught between truncating and writing a file (an error, or a valid
        file that lacks its end) or between removing and re-creating it (services vanish):
        both are read again once after a short pause before they count.
        """
        second_look = False
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            before = fingerprint(self.config_dir)
            try:
                config: Config | None = await self.load_async()
                error: ConfigError | None = None
            except ConfigError as exc:
                config, error = None, exc
            self._fingerprint = fingerprint(self.config_dir)
            if self._fingerprint != before:
                await asyncio.sleep(0.03)  # written while we read: the result may mix versions
                continue
            suspicious = error is not None or self._files_vanished()
            if suspicious and not second_look:
                second_look = True
                await asyncio.sleep(HALF_WRITTEN_RETRY)
                continue
            if error is not None:
                raise error
            assert config is not None
            return config
        issue = ConfigIssue(str(self.config_dir), 0, 0, "", "files kept changing while read")
        raise ConfigError([issue])

    def _files_vanished(self) -> bool:
        try:
            present = {str(p) for p in config_files(self.config_dir)}
        except OSError:
            return True
        sources = {s.source for s in self.manager.config.services.values()}
        return bool(sources - present)

    def _finish(
        self, result: str, errors: list[str] | None = None, changes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        now = time.time()
        record = self.last
        record.result, record.at = result, now
        record.errors, record.changes = errors or [], changes or {}
        record.counts[result] += 1
        if result != "rejected":
            record.last_success_at = now
        if result == "rejected":
            log.error("reload.rejected", errors=record.errors)
        elif result == "applied":
            log.info("reload.applied", **record.changes)
        else:
            log.info("reload.unchanged")
        self.on_done(record)
        return {"result": result, "errors": record.errors, "changes": record.changes}

    async def _apply(self, new: Config, diff: ConfigDiff) -> None:
        old = self.manager.config
        self.manager.config = new  # policy and routing change for the next request
        await _all(self._remove(name) for name in diff.removed)
        for name in diff.updated:
            self.manager.get(name).update_live(new.services[name])
        await _all(self._relaunch(name, old.services[name], new) for name in diff.restarted)
        for count, name in enumerate(diff.added, 1):
            await self.manager.add_service(new.services[name])
            if count % ADD_BATCH == 0:
                await asyncio.sleep(0)  # a file of thousands: let the gateway answer meanwhile

    async def _remove(self, name: str) -> None:
        self._end_rollback(name)
        await self._drain(name)
        await self.manager.remove_service(name)

    async def _relaunch(self, name: str, previous: ServiceConfig, new: Config) -> None:
        self._end_rollback(name)
        service = self.manager.get(name)
        if await service.restart("reload", config=new.services[name], keep_stopped=True):
            self._watch_for_rollback(name, previous)

    async def _drain(self, name: str) -> None:
        """Let in-flight gateway requests of a removed service finish, within a bound."""
        await self.manager.get(name).drained(self.drain_timeout)

    # -- last known good ---------------------------------------------------------------

    def _end_rollback(self, name: str) -> None:
        """A new edit of this service (or its removal) ends any rollback watch or state."""
        task = self._watchers.pop(name, None)
        if task is not None:
            task.cancel()
        if self._rolled_back.pop(name, None) is not None and name in self.manager.services:
            self.manager.services[name].clear_degraded()

    def _watch_for_rollback(self, name: str, previous: ServiceConfig) -> None:
        task = asyncio.create_task(self._rollback_if_fatal(name, previous))
        self._watchers[name] = task
        task.add_done_callback(lambda done: self._forget_watcher(name, done))

    def _forget_watcher(self, name: str, task: asyncio.Task[None]) -> None:
        if self._watchers.get(name) is task:
            del self._watchers[name]

    async def _rollback_if_fatal(self, name: str, previous: ServiceConfig) -> None:
        service = self.manager.services.get(name)
        if service is None:
            return
        try:
            await service.ensure_ready()
            return
        except StartFailedError as exc:
            if self.manager.services.get(name) is not service or service.state != "fatal":
                return  # stopped or replaced meanwhile: nothing to roll back
            cause, hint = exc.cause, exc.hint
        bad, reason = service.config, service.reason
        log.warning("reload.rollback", service=name, cause=cause, reason=reason, hint=hint)
        self._rolled_back[name] = (bad, previous)
        # Routing (port, served name) must describe what runs again, not the failed edit.
        services = {**self.manager.config.services, name: previous}
        self.manager.config = self.manager.config.model_copy(update={"services": services})
        await service.roll_back(previous, f"{cause} ({reason})")

    async def close(self) -> None:
        if self._trailing is not None:
            self._trailing.cancel()
        tasks = list(self._watchers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _all(coros: Any) -> None:
    """Run concurrently: one slow stop must not hold up the other services' changes."""
    await asyncio.gather(*coros)


def _resolve(waiters: list[asyncio.Future[dict[str, Any]]], result: dict[str, Any]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(result)


def _errors(exc: ConfigError) -> list[str]:
    return [issue.format() for issue in exc.issues]
