"""Watch the config directory (not the files: editors replace files on save)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from watchfiles import Change, awatch

from .config.load import SUFFIXES
from .logsetup import get_logger
from .reload import Reloader

log = get_logger(__name__)

_EDITOR_DEBRIS = ("~", ".swp", ".swx", ".swo", ".tmp", ".bak")


def relevant(change: Change, path: str) -> bool:
    """Only real YAML files; vim's 4913 probe, swap and backup files are noise."""
    name = Path(path).name
    if name.startswith(".") or name == "4913" or name.endswith(_EDITOR_DEBRIS):
        return False
    return name.endswith(SUFFIXES)


async def watch_config_dir(
    config_dir: Path, reloader: Reloader, stop: asyncio.Event, debounce_ms: int = 50
) -> None:
    """Request a reload when a YAML file's content changed; a touch or chmod does nothing."""
    async for _changes in awatch(
        config_dir,
        watch_filter=relevant,
        debounce=debounce_ms,
        step=10,
        recursive=False,
        stop_event=stop,
    ):
        if reloader.changed_on_disk():
            log.info("reload.triggered", trigger="watch")
            reloader.request()
