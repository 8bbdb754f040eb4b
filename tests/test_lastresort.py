"""A hung shutdown ends anyway: stacks on stderr, cleanup run, exit code 70."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import time
from llm_supervisor.daemon import lastresort
lastresort.arm(0.2, lambda: print("cleanup ran", flush=True))
disarm = lastresort.arm(0.1, lambda: print("must not run", flush=True))
disarm()
time.sleep(30)  # a stuck shutdown
"""


def test_fires_dumps_stacks_cleans_up_and_exits() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 70
    assert proc.stdout == "cleanup ran\n"
    assert "shutdown still running after 0.2s" in proc.stderr
    assert "time.sleep" in proc.stderr or "line 7" in proc.stderr  # the stuck frame
