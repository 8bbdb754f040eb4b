"""structlog set-up shared by the daemon and the CLI.

auto: a console renderer on a TTY, JSON lines otherwise; under systemd (JOURNAL_STREAM set)
JSON lines prefixed with a syslog priority ``<N>`` so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog

from .events import record_event

LogFormat = Literal["auto", "json", "console", "journal"]

# syslog priorities by level name, for the journal's stderr parser.
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _under_journal(stream: TextIO) -> bool:
    """True when stderr is the journal stream systemd gave us (JOURNAL_STREAM=dev:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def resolve_format(fmt: LogFormat, stream: TextIO) -> LogFormat:
    if fmt != "auto":
        return fmt
    if _under_journal(stream):
        return "journal"
    return "console" if stream.isatty() else "json"


def _journal_prefix(_: Any, method: str, event_dict: Any) -> Any:
    return f"<{_PRIORITY.get(method, 6)}>{event_dict}"


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> LogFormat:
    """Configure structlog once for the process; return the format actually used."""
    out = stream or sys.stderr
    chosen = resolve_format(fmt, out)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        record_event,  # the status page's event tail (events.py); passes the event on
    ]
    if chosen == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ))
    else:
        processors.append(structlog.processors.JSONRenderer())
        if chosen == "journal":
            processors.append(_journal_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return chosen


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
