"""``start|restart NAME --wait``: show the load phases while the daemon starts the service.

The blocking ``POST …?wait=1`` runs in a thread (its answer, or the start failure with its
cause, is what counts); meanwhile the main thread polls ``status`` and shows the service's
``progress``: a bar redrawn in place on a TTY, otherwise one plain line per change
("qwen3-8b: loading weights 2/4 (50%) 3s"), so logs and CI output stay readable.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from ..control.client import ControlClient
from ..durations import format_duration
from ..errors import SupervisorError

POLL_S = 0.25
SHOWN = ("starting", "stopping", "backoff")
_COUNT = re.compile(r"\b(\d+)/(\d+)\b")


def describe_progress(entry: dict[str, Any]) -> tuple[str, float | None, str]:
    """(what, fraction, counts) for a status entry: the load phase while starting, else the
    state ("stopping", "backoff: …")."""
    state = str(entry.get("state") or "unknown")
    progress = entry.get("progress")
    if state != "starting" or not progress:
        reason = entry.get("reason") if state in ("backoff", "fatal") else None
        return (f"{state}: {reason}" if reason else state), None, ""
    counts = _COUNT.search(str(progress.get("detail") or ""))
    fraction = progress.get("fraction")
    return (
        str(progress.get("phase") or "starting"),
        float(fraction) if isinstance(fraction, int | float) else None,
        f"{counts[1]}/{counts[2]}" if counts else "",
    )


def plain_line(name: str, entry: dict[str, Any]) -> str:
    """'qwen3-8b: loading weights 2/4 (50%) 3s'."""
    what, fraction, counts = describe_progress(entry)
    parts = [f"{name}: {what}"]
    if counts:
        parts.append(counts)
    if fraction is not None:
        parts.append(f"({round(fraction * 100)}%)")
    elapsed = (entry.get("progress") or {}).get("elapsed")
    if elapsed is not None:
        parts.append(format_duration(round(float(elapsed))))
    return " ".join(parts)


def bar_line(name: str, entry: dict[str, Any], width: int) -> str:
    """One terminal line: name, phase, a bar of '#' and '.', percent, elapsed."""
    what, fraction, counts = describe_progress(entry)
    elapsed = (entry.get("progress") or {}).get("elapsed")
    tail = f"{round(fraction * 100):>3}%" if fraction is not None else "    "
    tail += f" {counts}" if counts else ""
    tail += f" {format_duration(round(float(elapsed)))}" if elapsed is not None else ""
    head = f"{name} {what[:28]:<28} "
    room = max(10, min(40, width - len(head) - len(tail) - 4))
    filled = round(room * fraction) if fraction is not None else 0
    return f"{head}[{'#' * filled}{'.' * (room - filled)}] {tail}"[: max(width - 1, 20)]


class ProgressView:
    """Shows successive status entries of one service on ``out``."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name = name
        self.out = out
        self.tty = out.isatty()
        self._last_key: tuple[Any, ...] | None = None
        self._drawn = False

    def update(self, entry: dict[str, Any] | None) -> None:
        # before the action takes effect (or after it) there is nothing to show
        if not entry or entry.get("state") not in SHOWN:
            return
        if self.tty:
            width = shutil.get_terminal_size((80, 24)).columns
            self.out.write("\r\x1b[K" + bar_line(self.name, entry, width))
            self._drawn = True
        else:
            what, fraction, counts = describe_progress(entry)
            key = (what, counts, None if fraction is None else round(fraction, 2))
            if key != self._last_key:
                self.out.write(plain_line(self.name, entry) + "\n")
                self._last_key = key
        self.out.flush()

    def finish(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()


def wait_action(
    make_client: Callable[[], ControlClient],
    action: str,
    name: str,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run ``action`` with wait=1 and show progress until it answers; re-raise its error."""
    view = ProgressView(name, out or sys.stdout)
    answer: dict[str, Any] = {}
    failure: list[BaseException] = []

    def call() -> None:
        try:
            with make_client() as acting:
                answer.update(acting.action(action, name, wait=True))
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=call, name=f"{action}-{name}", daemon=True)
    worker.start()
    with make_client() as polling:
        while worker.is_alive():
            # a failed poll is skipped: the action's own answer says what went wrong
            with contextlib.suppress(SupervisorError):
                view.update(polling.status().get("services", {}).get(name))
            worker.join(POLL_S)
    view.finish()
    if failure:
        raise failure[0]
    answer["waited"] = time.monotonic() - started
    return answer
