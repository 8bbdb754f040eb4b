"""A valid profile of a given size: thousands of small on-demand services (bench and tests)."""

from __future__ import annotations


def big_profile(size: int, *, first_port: int = 1024) -> str:
    """Just under ``size`` bytes of YAML, every service distinct; nothing starts at boot."""
    lines = ["gpu: cpu", "services:"]
    total = sum(len(line) + 1 for line in lines)
    i = 0
    while True:
        block = [
            f"  s{i}:",
            "    engine: command",
            f"    port: {first_port + i}",
            "    command: [/usr/bin/server, --flag]",
            "    start: on-demand",
            "    args: {max-model-len: 16384, threads: 4}",
            "    health: {interval: 10s, timeout: 5s}",
        ]
        grown = total + sum(len(line) + 1 for line in block)
        if grown > size or first_port + i > 65535:
            return "\n".join(lines) + "\n"
        lines += block
        total, i = grown, i + 1
