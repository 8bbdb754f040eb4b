"""A last resort for a shutdown that hangs: dump every thread's stack, kill, exit.

The ordered shutdown is bounded by design, but a blocked system call or a bug could still
hold it; then systemd's TimeoutStopSec would SIGKILL us without a word about why. This timer
runs in its own thread, so it fires even when the event loop is stuck.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Callable

EXIT_HUNG = 70  # EX_SOFTWARE


def arm(
    seconds: float, cleanup: Callable[[], object], *, exit_code: int = EXIT_HUNG
) -> Callable[[], None]:
    """After ``seconds``: print all stacks to stderr, run ``cleanup``, ``os._exit``.

    Returns a function that disarms the timer (call it when the shutdown finished).
    """

    def fire() -> None:
        print(
            f"llm-supervisor: shutdown still running after {seconds:g}s; stacks follow",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            cleanup()
        finally:
            os._exit(exit_code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer.cancel
