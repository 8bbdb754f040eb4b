"""Hot reload: one path for every trigger, apply only what changed, roll back what breaks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.load import fingerprint
from .config.models import Config, ServiceConfig
from .errors import ConfigError, StartFailedError
from .logsetup import get_logger
from .manager import Manager

log = get_logger(__name__)

# A change in any of these restarts the service; anything else is applied live.
LAUNCH_FIELDS = ("engine", "model", "served_name", "command", "args", "env", "port")
HALF_WRITTEN_RETRY = 0.25  # an editor caught mid-write gets one more look after this


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    policy_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted or self.updated) and not (
            self.policy_changed
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "started": list(self.added),
            "stopped": list(self.removed),
            "restarted": list(self.restarted),
            "updated": list(self.updated),
            "policy": self.policy_changed,
        }


def launch_changed(old: ServiceConfig, new: ServiceConfig) -> bool:
    if old.gpus != new.gpus:
        return True
    return any(getattr(old.spec, f) != getattr(new.spec, f) for f in LAUNCH_FIELDS)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Pure: which services to start, stop, restart or update in place."""
    names_old, names_new = set(old.services), set(new.services)
    common = sorted(names_old & names_new)
    changed = [n for n in common if old.services[n] != new.services[n]]
    relaunch = [n for n in changed if launch_changed(old.services[n], new.services[n])]
    return ConfigDiff(
        added=tuple(sorted(names_new - names_old)),
        removed=tuple(sorted(names_old - names_new)),
        restarted=tuple(relaunch),
        updated=tuple(n for n in changed if n not in relaunch),
        policy_changed=old.policy != new.policy,
    )


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


class Reloader:
    """Coalesces reload requests; one reload runs at a time and serves every waiter."""

    def __init__(
        self,
        config_dir: Path,
        manager: Manager,
        load: Callable[[], Config],
        *,
        busy: Callable[[str], bool] = lambda name: False,
        drain_timeout: float = 30.0,
        on_reloading: Callable[[], object] = lambda: None,
        on_done: Callable[[ReloadRecord], object] = lambda record: None,
    ) -> None:
        self.config_dir = config_dir
        self.manager = manager
        self.load = load
        self.busy = busy
        self.drain_timeout = drain_timeout
        self.on_reloading = on_reloading
        self.on_done = on_done
        self.last = ReloadRecord()
        self._fingerprint = fingerprint(config_dir)
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._watchers: set[asyncio.Task[None]] = set()

    def request(self) -> asyncio.Future[dict[str, Any]]:
        """Ask for a reload; the future resolves with the result of the reload that ran."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        return future

    async def run(self) -> None:
        """The single reload worker: requests that arrive during a reload share the next."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            try:
                result = await self.reload_now()
            except Exception as exc:  # the daemon must survive a bug in one reload
                log.exception("reload.failed")
                result = {"result": "rejected", "errors": [repr(exc)], "changes": {}}
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)

    def dry_run(self) -> dict[str, Any]:
        try:
            new = self.load()
        except ConfigError as exc:
            return {"result": "rejected", "errors": _errors(exc), "changes": {}}
        diff = diff_configs(self.manager.config, new)
        return {"result": "unchanged" if diff.empty else "dry-run", "errors": [],
                "changes": diff.to_json()}  # fmt: skip

    async def reload_now(self) -> dict[str, Any]:
        self.on_reloading()
        self._fingerprint = fingerprint(self.config_dir)
        try:
            new = await self._load_with_retry()
        except ConfigError as exc:
            return self._finish("rejected", errors=_errors(exc))
        diff = diff_configs(self.manager.config, new)
        if diff.empty:
            return self._finish("unchanged")
        await self._apply(new, diff)
        return self._finish("applied", changes=diff.to_json())

    def changed_on_disk(self) -> bool:
        """For the file watcher: a touch or chmod leaves the content hash as it was."""
        return fingerprint(self.config_dir) != self._fingerprint

    async def _load_with_retry(self) -> Config:
        try:
            return self.load()
        except ConfigError:
            await asyncio.sleep(HALF_WRITTEN_RETRY)
            return self.load()

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
        event = {"applied": "reload.applied", "rejected": "reload.rejected"}.get(result)
        if event == "reload.rejected":
            log.error(event, errors=record.errors)
        elif event:
            log.info(event, **record.changes)
        self.on_done(record)
        return {"result": result, "errors": record.errors, "changes": record.changes}

    async def _apply(self, new: Config, diff: ConfigDiff) -> None:
        old = self.manager.config
        self.manager.config = new  # policy and routing change for the next request
        for name in diff.removed:
            await self._drain(name)
            await self.manager.remove_service(name)
        for name in diff.updated:
            self.manager.get(name).update_live(new.services[name])
        for name in diff.restarted:
            service = self.manager.get(name)
            service.degraded = None
            await service.restart("reload", config=new.services[name])
            self._watch_for_rollback(name, old.services[name])
        for name in diff.added:
            await self.manager.add_service(new.services[name])

    async def _drain(self, name: str) -> None:
        """Let in-flight gateway requests of a removed service finish, within a bound."""
        deadline = time.monotonic() + self.drain_timeout
        while self.busy(name) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _watch_for_rollback(self, name: str, previous: ServiceConfig) -> None:
        task = asyncio.create_task(self._rollback_if_fatal(name, previous))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

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
            cause = exc.cause
        reason = service.reason
        log.warning("reload.rollback", service=name, cause=cause, reason=reason)
        await service.restart("rollback", config=previous)
        service.degraded = f"rolled back: {cause} ({reason})"

    async def close(self) -> None:
        for task in list(self._watchers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _errors(exc: ConfigError) -> list[str]:
    return [issue.format() for issue in exc.issues]
