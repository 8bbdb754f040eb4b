"""Small helpers shared by the bench scripts (standard library only)."""

from __future__ import annotations

import socket
import statistics
from datetime import datetime
from typing import Any


def distinct_ports(n: int) -> list[int]:
    """``n`` free loopback ports, all different (held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and (for n > 1) the standard deviation."""
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    }


def event_time(event: dict[str, Any]) -> float:
    """A daemon JSON log event's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
