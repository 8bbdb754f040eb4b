"""Load the config directory without stalling the daemon's event loop.

Parsing and validating hold the GIL: in a worker thread, a 1 MiB profile (~0.5 s of CPU)
delayed the gateway's answers by up to 180 ms on a loaded 2-core machine, because the loop
thread waits for the GIL while the parse thread holds it. A child process shares no GIL, so
a big directory is loaded there and only the result comes back (pickled; the child is this
program). A usual directory (a few KiB) loads in a thread: parsing it takes milliseconds,
less than starting an interpreter.

The child: ``python -m llm_supervisor.config.offload`` reads ``(config_dir, gpu_totals)``
pickled on stdin and writes ``("ok", (config, warnings))`` or ``("error", issues)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigIssue
from .load import config_files, load_config
from .models import Config
from .yamlload import gc_paused

OFFLOAD_BYTES = 256 * 1024  # at this size a parse holds the GIL for ~0.1 s
CHILD_TIMEOUT = 120.0
Loaded = tuple[Config, list[ConfigIssue]]


def config_bytes(config_dir: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for path in config_files(config_dir):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    return total


async def load_config_off_loop(
    config_dir: Path,
    gpu_totals: dict[int | str, int] | None = None,
    *,
    keys_file: Path | None = None,
    offload_bytes: int = OFFLOAD_BYTES,
    timeout: float = CHILD_TIMEOUT,
) -> Loaded:
    """``load_config`` in a thread, or for a big directory in a child process."""
    if await asyncio.to_thread(config_bytes, config_dir) < offload_bytes:
        return await asyncio.to_thread(load_config, config_dir, gpu_totals, keys_file)
    return await _in_child(config_dir, gpu_totals, keys_file, timeout)


async def _in_child(
    config_dir: Path,
    gpu_totals: dict[int | str, int] | None,
    keys_file: Path | None,
    timeout: float,
) -> Loaded:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    request = pickle.dumps((str(config_dir), gpu_totals, keys_file and str(keys_file)))
    try:
        out, err = await asyncio.wait_for(proc.communicate(request), timeout)
    except BaseException:  # timeout or cancellation: leave no child behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        reason = f"the config loader process failed (exit {proc.returncode}): {tail[0]}"
        raise ConfigError([ConfigIssue(str(config_dir), 0, 0, "", reason)])
    kind, payload = await asyncio.to_thread(_loads, out)
    if kind == "error":
        raise ConfigError(payload)
    config, warnings = payload
    return config, warnings


def _loads(data: bytes) -> Any:
    with gc_paused():  # see gc_paused: ~10^5 new objects, none of them garbage yet
        return pickle.loads(data)


def _child() -> None:
    config_dir, gpu_totals, keys_file = pickle.load(sys.stdin.buffer)
    result: tuple[str, Any]
    try:
        keys = Path(keys_file) if keys_file else None
        result = ("ok", load_config(Path(config_dir), gpu_totals, keys))
    except ConfigError as exc:
        result = ("error", exc.issues + exc.warnings)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _child()
