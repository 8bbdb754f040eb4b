"""Tree snapshots: the root's known record is reused, descendants are always read afresh."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from llm_supervisor.process.tree import ProcRef, snapshot_tree

PARENT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print('up', flush=True); time.sleep(60)"
)


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    yield proc
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def test_snapshot_has_root_and_descendants(parent: subprocess.Popen[str]) -> None:
    refs = snapshot_tree(parent.pid)
    (grandchild,) = psutil.Process(parent.pid).children()
    assert refs == {ProcRef.of(psutil.Process(parent.pid)), ProcRef.of(grandchild)}


def test_known_root_is_reused_and_descendants_are_read(parent: subprocess.Popen[str]) -> None:
    recorded_root = ProcRef(parent.pid, 123.0)  # as recorded; not what /proc says now
    refs = snapshot_tree(parent.pid, root=recorded_root)
    assert recorded_root in refs
    (child,) = refs - {recorded_root}
    (grandchild,) = psutil.Process(parent.pid).children()
    assert child == ProcRef.of(grandchild)  # its start time as /proc has it now


def test_gone_process_without_a_record_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert snapshot_tree(proc.pid) == set()
