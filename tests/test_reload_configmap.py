"""Hot reload from a Kubernetes ConfigMap volume: the kubelet's ``..data`` symlink swap.

A ConfigMap mount holds a timestamped directory with the files, a ``..data`` symlink to it,
and one symlink per key through ``..data`` (``gpu0.yaml -> ..data/gpu0.yaml``). An update
writes a new timestamped directory, points a temporary symlink at it and renames that over
``..data`` (atomic), then deletes the old directory (kubernetes pkg/volume/util/atomic_writer.go).
The visible ``gpu0.yaml`` never changes itself: only ``..data`` does, and the real daemon's
watcher must still apply the edit, touching only the service that changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .daemon_harness import DaemonProcess, fake_vllm, free_port, profile_text, run_daemon

pytestmark = pytest.mark.timeout(90)
FILES = ("gpu0.yaml", "policy.yaml")
POLICY = yaml.safe_dump({"keep_alive": {"default": "30m"}})


def write_version(mount: Path, stamp: str, profile: str) -> Path:
    """The kubelet's timestamped directory holding one version of every key."""
    version = mount / f"..2026_11_29_{stamp}.000000001"
    version.mkdir()
    (version / "gpu0.yaml").write_text(profile)
    (version / "policy.yaml").write_text(POLICY)
    return version


def mount_configmap(mount: Path, profile: str) -> None:
    first = write_version(mount, "10_00_00", profile)
    (mount / "..data").symlink_to(first.name)
    for name in FILES:
        (mount / name).symlink_to(f"..data/{name}")


def swap(mount: Path, stamp: str, profile: str) -> None:
    """What the kubelet does on a ConfigMap update."""
    old = (mount / "..data").resolve()
    new = write_version(mount, stamp, profile)
    (mount / "..data_tmp").symlink_to(new.name)
    os.rename(mount / "..data_tmp", mount / "..data")  # atomic replace of the symlink
    shutil.rmtree(old)


def applied(daemon: DaemonProcess) -> int:
    return daemon.reload_counts().get("applied", 0)


def test_configmap_data_swap_is_applied(tmp_path: Path) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    services: dict[str, Any] = {
        "a": fake_vllm(free_port(), "model-a", args={"max-model-len": 1024}),
        "b": fake_vllm(free_port(), "model-b"),
    }
    mount_configmap(mount, profile_text(services))
    with run_daemon(mount) as daemon:
        before = daemon.pids()
        applied_before = applied(daemon)
        services["a"]["args"]["max-model-len"] = 2048
        swap(mount, "10_05_00", profile_text(services))

        daemon.wait_status(
            lambda s: (s["reload"].get("counts") or {}).get("applied", 0) > applied_before,
            timeout=15,
            what="the reload of the swapped ConfigMap",
        )
        daemon.wait_ready(["a", "b"], timeout=20)
        after = daemon.pids()
        assert after["a"] != before["a"]  # restarted with the new args
        assert after["b"] == before["b"]  # untouched
        assert daemon.status()["reload"]["errors"] == []
        assert daemon.events("reload.triggered")[-1]["trigger"] == "watch"
