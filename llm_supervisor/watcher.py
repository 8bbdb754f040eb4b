"""Watch the config directory (not the files: editors replace files on save)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from watchfiles import Change, awatch

from .config.load import SUFFIXES
from .inotify import GONE, IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, DirWatch
from .logsetup import get_logger
from .reload import Reloader

log = get_logger(__name__)

_EDITOR_DEBRIS = ("~", ".swp", ".swx", ".swo", ".tmp", ".bak")
# Kubernetes ConfigMap volumes swap this symlink; the *.yaml names are links through it.
_CONFIGMAP_SWAP = "..data"


def relevant(change: Change, path: str) -> bool:
    """Only real YAML files; vim's 4913 probe, swap and backup files are noise."""
    name = Path(path).name
    if name == _CONFIGMAP_SWAP:
        return True
    if name.startswith(".") or name == "4913" or name.endswith(_EDITOR_DEBRIS):
        return False
    return name.endswith(SUFFIXES)


QUIET = 0.01  # seconds without a further event before a burst of changes counts as done


async def watch_config_dir(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce_ms: int = 50
) -> None:
    """Request a reload when a YAML file's content changed; a touch or chmod does nothing.

    inotify read on the event loop first (nothing runs while nothing changes); if the kernel
    refuses a watch (inotify limits) or the directory goes away, fall back to polling
    instead of ending: this task dying would take the daemon down with it.
    """
    try:
        await _watch_inotify(config_dir, reloader, stop, debounce_ms / 1000)
        return
    except OSError as exc:
        log.warning("reload.watch_failed", error=repr(exc), fallback="polling")
    try:
        await _watch_polling(config_dir, reloader, stop, debounce_ms)
    except Exception as exc:
        log.error("reload.watch_failed", error=repr(exc), fallback="SIGHUP/CLI only")


def _changed(reloader: Reloader, trigger: str) -> None:
    if reloader.changed_on_disk():
        log.info("reload.triggered", trigger=trigger)
        reloader.request(if_changed=True)


async def _watch_inotify(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce: float
) -> None:
    """Changes are grouped until ``QUIET`` passes without another, at most ``debounce``."""
    loop = asyncio.get_running_loop()
    with DirWatch(config_dir) as watch:
        readable = asyncio.Event()
        loop.add_reader(watch.fd, readable.set)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            first: float | None = None  # when the pending burst began
            while not stop.is_set():
                timeout = None
                if first is not None:
                    timeout = max(0.0, min(QUIET, first + debounce - loop.time()))
                waiter = asyncio.ensure_future(readable.wait())
                await asyncio.wait(
                    {waiter, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                quiet = not readable.is_set()
                if not quiet:
                    readable.clear()
                    if _read_relevant(watch, config_dir) and first is None:
                        first = loop.time()
                if first is None or stop.is_set():
                    continue
                if quiet or loop.time() >= first + debounce:
                    first = None
                    _changed(reloader, "watch")
        finally:
            stopping.cancel()
            loop.remove_reader(watch.fd)


def _read_relevant(watch: DirWatch, config_dir: Path) -> bool:
    """True if a pending event concerns a config file; raise OSError if the dir is gone."""
    hit = False
    for mask, name in watch.read():
        if mask & GONE:
            raise OSError(f"watched directory {config_dir} went away")
        if mask & IN_Q_OVERFLOW:
            hit = True  # events were lost: let the content check decide
        elif name and relevant(_CHANGES.get(mask & _KINDS, Change.modified), name):
            hit = True
    return hit


_KINDS = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM
_CHANGES = {
    IN_CREATE: Change.added, IN_MOVED_TO: Change.added,
    IN_DELETE: Change.deleted, IN_MOVED_FROM: Change.deleted,
}  # fmt: skip


async def _watch_polling(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce_ms: int
) -> None:
    async for _changes in awatch(
        config_dir,
        watch_filter=relevant,
        debounce=debounce_ms,
        step=50,
        recursive=False,
        stop_event=stop,
        force_polling=True,
        poll_delay_ms=100,
    ):
        _changed(reloader, "watch")
