"""Linux inotify on one directory, read from the event loop: no thread, no wakeup while idle.

watchfiles runs its notifier in a worker thread that wakes every ``step`` milliseconds to
take the GIL and ask whether to stop; at the 10 ms step the config watcher used, that was
a third of the idle daemon's CPU with no services at all. The kernel's inotify descriptor
is readable exactly when something changed, so the event loop can simply watch it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path
from types import TracebackType

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What changes a file's content or its presence under a name; IN_ATTRIB covers a
# ConfigMap's symlink swap (and touch/chmod, which the content check then ignores).
DIR_EVENTS = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
)
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the directory itself went away
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.init1 = libc.inotify_init1  # AttributeError where there is no inotify
        self.init1.argtypes, self.init1.restype = [ctypes.c_int], ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


class DirWatch:
    """One inotify descriptor watching one directory (not its subdirectories)."""

    def __init__(self, path: Path, mask: int = DIR_EVENTS) -> None:
        try:
            libc = _Libc()
        except (OSError, AttributeError) as exc:
            raise OSError(f"inotify is not available: {exc}") from None
        self.fd = _check(libc.init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        try:
            _check(libc.add_watch(self.fd, os.fsencode(path), mask | IN_ONLYDIR), str(path))
        except OSError:
            os.close(self.fd)
            raise

    def read(self) -> list[tuple[int, str]]:
        """Every pending event as (mask, name); [] when none is pending."""
        events: list[tuple[int, str]] = []
        while True:
            try:
                chunk = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            if not chunk:
                return events
            at = 0  # the kernel hands out whole events only
            while at + _HEADER.size <= len(chunk):
                _, mask, _, size = _HEADER.unpack_from(chunk, at)
                end = at + _HEADER.size + size
                events.append((mask, os.fsdecode(chunk[at + _HEADER.size : end].rstrip(b"\0"))))
                at = end

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
