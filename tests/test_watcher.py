"""The config-directory watcher on inotify: which saves request a reload, and the fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from llm_supervisor import watcher
from llm_supervisor.inotify import IN_CLOSE_WRITE, DirWatch
from llm_supervisor.reload import Reloader

from .daemon_harness import write_atomic


class FakeReloader:
    """Counts requests; ``changed_on_disk`` says yes, as after any real edit."""

    def __init__(self) -> None:
        self.requests = 0
        self.requested = asyncio.Event()

    def changed_on_disk(self) -> bool:
        return True

    def request(self, if_changed: bool = False) -> None:
        self.requests += 1
        self.requested.set()

    async def next_request(self) -> int:
        await asyncio.wait_for(self.requested.wait(), 5.0)
        self.requested.clear()
        return self.requests


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[tuple[Path, FakeReloader]]:
    fake = FakeReloader()
    stop = asyncio.Event()
    task = asyncio.create_task(
        watcher.watch_config_dir(tmp_path, cast(Reloader, fake), stop, debounce_ms=50)
    )
    await asyncio.sleep(0.05)  # the watch is set up in the task's first step
    yield tmp_path, fake
    stop.set()
    await asyncio.wait_for(task, 5.0)


async def test_atomic_save_requests_one_reload(watching: tuple[Path, FakeReloader]) -> None:
    config_dir, fake = watching
    write_atomic(config_dir / "a.yaml", "services: {}\n")
    assert await fake.next_request() == 1
    (config_dir / "b.yml").write_text("services: {}\n")
    assert await fake.next_request() == 2


async def test_editor_debris_is_ignored(watching: tuple[Path, FakeReloader]) -> None:
    config_dir, fake = watching
    (config_dir / ".a.yaml.swp").write_text("x")
    (config_dir / "4913").write_text("x")
    (config_dir / "notes.txt").write_text("x")
    (config_dir / "barrier.yaml").write_text("services: {}\n")  # handled after the others
    assert await fake.next_request() == 1
    await asyncio.sleep(0.1)
    assert fake.requests == 1


async def test_a_burst_of_writes_is_one_reload(watching: tuple[Path, FakeReloader]) -> None:
    config_dir, fake = watching
    path = config_dir / "a.yaml"
    for i in range(20):
        path.write_text(f"# {i}\n")
    assert await fake.next_request() == 1
    await asyncio.sleep(0.1)
    assert fake.requests == 1


async def test_missing_directory_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled = asyncio.Event()

    async def polling(*args: object) -> None:
        polled.set()

    monkeypatch.setattr(watcher, "_watch_polling", polling)
    fake = FakeReloader()
    await watcher.watch_config_dir(tmp_path / "absent", cast(Reloader, fake), asyncio.Event())
    assert polled.is_set()


def test_dir_watch_reads_names(tmp_path: Path) -> None:
    with DirWatch(tmp_path) as watch:
        assert watch.read() == []
        (tmp_path / "x.yaml").write_text("a")
        events = watch.read()
        assert any(name == "x.yaml" and mask & IN_CLOSE_WRITE for mask, name in events)
    with pytest.raises(OSError):
        DirWatch(tmp_path / "absent")
