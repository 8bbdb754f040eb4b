"""sd_notify(3) with the standard library: readiness, status, reload, stop and watchdog.

systemd hands a ``Type=notify`` service the address of a datagram socket in NOTIFY_SOCKET
(a path, or ``@name`` for an abstract socket); every message is a newline-separated list of
``KEY=VALUE`` assignments. Without NOTIFY_SOCKET every call is a no-op, so the daemon calls
the notifier unconditionally. Send failures are logged once and never raised: a daemon that
is otherwise fine must not die because PID 1 was slow to read a datagram.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

from ..logsetup import get_logger

log = get_logger(__name__)

_SEND_TIMEOUT_S = 1.0  # bound on how long a send may block the event loop


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares MONOTONIC_USEC against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _address(value: str) -> str | None:
    """NOTIFY_SOCKET as an AF_UNIX address; ``@name`` is abstract. Others are unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, relative, or vsock:… (not used for system services)


class SystemdNotifier:
    """Sends sd_notify messages for this process; every method is safe without systemd."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._pid = os.getpid() if pid is None else pid
        self._raw_address = self._env.get("NOTIFY_SOCKET", "")
        self._address = _address(self._raw_address)
        self._failure_logged = False
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was delivered."""
        if self._address is None:
            if self._raw_address:
                self._log_failure_once(ValueError("unsupported NOTIFY_SOCKET address"))
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(payload, self._address)
        except OSError as exc:
            self._log_failure_once(exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status_line(status))

    def status(self, text: str) -> bool:
        """STATUS=<one line>; identical consecutive texts are sent once."""
        line = _one_line(text)
        if line == self._last_status:
            return True
        sent = self.notify(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with the timestamp systemd (>= 253) needs to match the later READY=1."""
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *self._status_line(status)
        )

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status_line(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is ours."""
        watchdog_pid = self._env.get("WATCHDOG_PID", "")
        if watchdog_pid and watchdog_pid != str(self._pid):
            return None  # the watchdog belongs to another process (we were exec'd/forked)
        try:
            usec = int(self._env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def _status_line(self, status: str | None) -> tuple[str, ...]:
        if status is None:
            return ()
        self._last_status = _one_line(status)
        return (f"STATUS={self._last_status}",)

    def _log_failure_once(self, exc: Exception) -> None:
        if not self._failure_logged:
            self._failure_logged = True
            log.warning("sdnotify.send_failed", socket=self._raw_address, error=str(exc))


def _one_line(text: str) -> str:
    # A newline would start a new assignment: a model name could otherwise inject READY=1.
    return " ".join(text.splitlines())


async def watchdog_loop(
    notifier: SystemdNotifier,
    interval: float | None,
    is_healthy: Callable[[], bool] | None = None,
) -> None:
    """Send WATCHDOG=1 every ``interval`` seconds from the event loop until cancelled.

    Running on the loop is the point: if the loop is blocked, pings stop and systemd restarts
    us. ``is_healthy`` lets the supervision loop withhold a ping (e.g. it has not ticked).
    Returns at once when ``interval`` is None (no watchdog configured).
    """
    if interval is None or not notifier.enabled:
        return
    withheld = False
    while True:
        healthy = _check(is_healthy)
        if healthy:
            notifier.watchdog()
        elif not withheld:
            log.warning("sdnotify.watchdog_withheld", reason="supervision loop unhealthy")
        withheld = not healthy
        await asyncio.sleep(interval)


def _check(is_healthy: Callable[[], bool] | None) -> bool:
    if is_healthy is None:
        return True
    try:
        return bool(is_healthy())
    except Exception as exc:  # a broken probe must not kill the loop; treat as unhealthy
        log.warning("sdnotify.health_probe_failed", error=repr(exc))
        return False
