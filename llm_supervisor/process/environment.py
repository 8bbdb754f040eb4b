"""The environment an engine inherits: the daemon's, less what systemd meant for it alone."""

from __future__ import annotations

from collections.abc import Mapping

# Variables systemd sets for the service's main process only. Children must not inherit them:
# - NOTIFY_SOCKET / WATCHDOG_*: an engine that speaks sd_notify (or a library inside it) would
#   report READY/STOPPING/WATCHDOG for *our* unit; NotifyAccess=main drops those, but only
#   after logging a warning per message, and the watchdog belongs to the supervision loop.
# - LISTEN_*: socket-activation fds are ours; a child must not think it inherited them.
# - JOURNAL_STREAM: says "your stderr is the journal". A child's stdout/stderr is a pipe to
#   us (logs/<service>.log, ring buffer, crash diagnosis), not the journal. Programs that
#   trust the variable without comparing it to fstat() would add <N> prefixes to their
#   output or write to the journal socket directly, bypassing the log files we diagnose.
CHILD_UNSAFE_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
)


def clean_child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the variables systemd meant for this process only."""
    return {k: v for k, v in env.items() if k not in CHILD_UNSAFE_VARS}
