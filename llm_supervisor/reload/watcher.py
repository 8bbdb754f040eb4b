"""Watch the config directory (not the files: editors replace files on save)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from watchfiles import Change, awatch

from ..config.load import SUFFIXES
from ..logsetup import get_logger
from .reloader import Reloader

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


async def watch_config_dir(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce_ms: int = 50
) -> None:
    """Request a reload when a YAML file's content changed; a touch or chmod does nothing.

    If the kernel refuses a watch (inotify limits), fall back to polling instead of ending:
    this task dying would take the daemon down with it.
    """
    polling = False
    while not stop.is_set():
        try:
            await _watch(config_dir, reloader, stop, debounce_ms, polling)
            return
        except Exception as exc:
            if polling:
                log.error("reload.watch_failed", error=repr(exc), fallback="SIGHUP/CLI only")
                return
            log.warning("reload.watch_failed", error=repr(exc), fallback="polling")
            polling = True


async def _watch(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce_ms: int, polling: bool
) -> None:
    async for _changes in awatch(
        config_dir,
        watch_filter=relevant,
        debounce=debounce_ms,
        # watchfiles' notifier thread takes the GIL every `step` ms to check for a stop:
        # at 10 ms that was most of the idle daemon's CPU; 50 ms costs ~0.1 % of a core.
        step=50,
        recursive=False,
        stop_event=stop,
        force_polling=polling or None,
        poll_delay_ms=100,
    ):
        if reloader.changed_on_disk():
            log.info("reload.triggered", trigger="watch")
            reloader.request(if_changed=True)
