"""Pure text rendering for the CLI: status table, GPU lines, models, reload, log lines.

Every function takes the data (and ``now``/``color`` where they matter) and returns text, so
tests need neither a daemon nor a terminal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from ..errors import UnknownServiceError
from .backend import LogLine

_CODES = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1"}
_STATE_COLOR = {
    "ready": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "backoff": "yellow",
    "fatal": "red",
    "stopped": "dim",
}
_PRESSURE_COLOR = {"warning": "yellow", "critical": "red"}
GIB = 1024**3


def use_color(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Colours only on a TTY, and never when NO_COLOR is set to anything (no-color.org)."""
    environ = os.environ if env is None else env
    return stream.isatty() and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def paint(text: str, color: str | None, enabled: bool) -> str:
    if not enabled or not color or not text:
        return text
    return f"\x1b[{_CODES[color]}m{text}\x1b[0m"


def format_duration_short(seconds: float | None) -> str:
    """``45s``, ``12m``, ``5h02m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def format_gpu(gpu: Any) -> str:
    if gpu is None:
        return "-"
    if isinstance(gpu, list):
        return ",".join(str(g) for g in gpu) or "cpu"
    return str(gpu)


def format_exit(last_exit: Mapping[str, Any] | None) -> str:
    """``cuda_oom (exit 1)``, ``unknown (signal 9)``, ``-``."""
    if not last_exit:
        return "-"
    if last_exit.get("signal") is not None:
        how = f"signal {last_exit['signal']}"
    elif last_exit.get("code") is not None:
        how = f"exit {last_exit['code']}"
    else:
        how = ""
    cause = str(last_exit.get("cause") or "")
    return f"{cause} ({how})" if cause and how else cause or how or "-"


def table(
    rows: Sequence[Sequence[str]], colors: Sequence[Sequence[str | None]], color: bool
) -> list[str]:
    """Left-aligned columns; widths from the plain text so ANSI codes do not skew them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row, row_colors in zip(rows, colors, strict=True):
        cells = [
            paint(cell.ljust(w) if i < len(row) - 1 else cell, c, color)
            for i, (cell, w, c) in enumerate(zip(row, widths, row_colors, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def select_services(status: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    services: dict[str, Any] = dict(status.get("services") or {})
    for name in names:
        if name not in services:
            raise UnknownServiceError(name)
    return {n: services[n] for n in names} if names else services


def is_ok(svc: Mapping[str, Any]) -> bool:
    """Ready, or an on-demand service resting until a request arrives (that is its job)."""
    state = svc.get("state")
    return state == "ready" or (state == "stopped" and svc.get("start") == "on-demand")


def service_rows(services: Mapping[str, Any], color: bool) -> list[str]:
    header = ["SERVICE", "ENGINE", "GPU", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT"]
    rows: list[list[str]] = [header]
    colors: list[list[str | None]] = [["bold"] * len(header)]
    for name, svc in services.items():
        state = str(svc.get("state", "?"))
        if svc.get("degraded"):
            state += " (degraded)"
        pid = svc.get("pid")
        rows.append(
            [
                name,
                str(svc.get("engine", "-")),
                format_gpu(svc.get("gpu")),
                state,
                "-" if pid is None else str(pid),
                format_duration_short(svc.get("uptime")),
                str(svc.get("restarts", 0)),
                format_exit(svc.get("last_exit")),
            ]
        )
        state_color = _STATE_COLOR.get(str(svc.get("state")))
        colors.append([None, None, None, state_color, None, None, None, None])
    return table(rows, colors, color)


def service_notes(services: Mapping[str, Any], color: bool) -> list[str]:
    """Why a service is not ready, its degradation, and the crash hint, one line each."""
    out = []
    for name, svc in services.items():
        if svc.get("degraded"):
            out.append(f"  {name}: {paint('degraded', 'yellow', color)}: {svc['degraded']}")
        queue = queue_note(svc)
        if queue:
            out.append(f"  {name}: {queue}")
        if is_ok(svc):
            continue
        if svc.get("reason"):
            out.append(f"  {name}: {svc['reason']}")
        hint = (svc.get("last_exit") or {}).get("hint")
        if hint:
            out.append(f"  {name}: hint: {hint}")
    return out


def queue_note(svc: Mapping[str, Any]) -> str:
    """'3 requests waiting for the start, ready in ~95 s' while clients wait for a load."""
    waiting = int(svc.get("waiting") or 0)
    if not waiting:
        return ""
    eta = svc.get("eta_s")
    when = f", ready in ~{eta:.0f} s" if isinstance(eta, int | float) else ""
    plural = "request" if waiting == 1 else "requests"
    return f"{waiting} {plural} waiting for the start{when}"


def gpu_lines(gpus: Mapping[str, Any], color: bool) -> list[str]:
    if not gpus.get("available"):
        reason = str(gpus.get("reason") or "unknown reason")
        prefix = (
            "" if reason.startswith("GPU telemetry unavailable") else "GPU telemetry unavailable: "
        )
        return [prefix + reason]
    out = []
    for gpu in gpus.get("gpus") or []:
        mem = gpu.get("memory") or {}
        total, used = float(mem.get("total") or 0), float(mem.get("used") or 0)
        share = f" ({used / total:.0%})" if total else ""
        pressure = str(gpu.get("pressure") or "normal")
        holders = ", ".join(
            f"{svc} {format_bytes(n)}" for svc, n in (gpu.get("services") or {}).items()
        )
        line = (
            f"GPU {gpu.get('index')}  {gpu.get('name', '')}  "
            f"{used / GIB:.1f}/{total / GIB:.1f} GiB used{share}  "
            f"pressure {paint(pressure, _PRESSURE_COLOR.get(pressure), color)}"
        )
        out.append(line + (f"  {holders}" if holders else ""))
    return out


def format_expiry(model: Mapping[str, Any], now: float) -> str:
    """``never`` for forever, ``in 12m`` for an ISO time, else the raw value."""
    if str(model.get("keep_alive")) in {"forever", "-1"}:
        return "never"
    raw = model.get("expires_at")
    if not raw:
        return "-"
    try:
        when = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return str(raw)
    return f"in {format_duration_short(when - now)}" if when >= now else "expired"


def model_lines(models: Sequence[Mapping[str, Any]], now: float, color: bool) -> list[str]:
    shown = [m for m in models if m.get("loaded") or m.get("pinned")]
    if not shown:
        return []
    header = ["MODEL", "SERVICE", "VRAM", "KEEP_ALIVE", "RULE", "EXPIRES"]
    rows: list[list[str]] = [header]
    colors: list[list[str | None]] = [["bold"] * len(header)]
    for m in shown:
        name = str(m.get("name")) + (" (pinned)" if m.get("pinned") else "")
        loaded = bool(m.get("loaded"))
        rows.append(
            [
                name,
                str(m.get("service", "-")),
                format_bytes(m.get("size_vram")) if loaded else "not loaded",
                str(m.get("keep_alive") or "-"),
                str(m.get("rule") or "default"),
                format_expiry(m, now) if loaded else "-",
            ]
        )
        colors.append([None, None, None if loaded else "red", None, None, None])
    return table(rows, colors, color)


def reload_lines(reload: Mapping[str, Any] | None, now: float, color: bool) -> list[str]:
    if not reload or reload.get("result") in (None, "", "none"):
        return ["last reload: none since start"]
    result = str(reload["result"])
    at = reload.get("at")
    ago = f" {format_duration_short(now - float(at))} ago" if at is not None else ""
    changes = "; ".join(
        f"{kind} {', '.join(names)}"
        for kind, names in (reload.get("changes") or {}).items()
        if names
    )
    tinted = paint(result, "red" if result == "rejected" else None, color)
    out = [f"last reload: {tinted}{ago}" + (f" ({changes})" if changes else "")]
    out += [f"  {err}" for err in reload.get("errors") or []]
    return out


def render_status(status: Mapping[str, Any], names: Sequence[str], now: float, color: bool) -> str:
    services = select_services(status, names)
    lines = service_rows(services, color) + service_notes(services, color)
    lines += ["", *gpu_lines(status.get("gpus") or {}, color)]
    models = model_lines(status.get("models") or [], now, color)
    if models:
        lines += ["", *models]
    lines += ["", *reload_lines(status.get("reload"), now, color)]
    return "\n".join(lines)


def render_reload_result(result: Mapping[str, Any], dry_run: bool) -> list[str]:
    verb = "would apply" if dry_run else str(result.get("result", "?"))
    changes = result.get("changes") or {}
    lines = [f"reload: {verb}"]
    lines += [f"  {kind}: {', '.join(names)}" for kind, names in changes.items() if names]
    return lines


def render_log_line(line: LogLine, timestamps: bool) -> str:
    if not timestamps:
        return line.text
    stamp = datetime.fromtimestamp(line.ts).astimezone().isoformat(timespec="milliseconds")
    return f"{stamp} {line.text}"
