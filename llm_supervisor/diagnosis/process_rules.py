"""Process failures: port taken, executable missing, killed, engine process died."""

from __future__ import annotations

from . import model as c
from .model import Diagnosis
from .rules import OLLAMA, VLLM, WRAPPER, Found, Rule, by_engine, fixed, rx


def _port_hint(found: Found) -> str:
    port = found.text("port")
    if not port:
        return "the port is taken (an old instance still running?): ss -ltnp shows who holds it"
    return (
        f"port {port} is taken (an old instance still running?): "
        f"ss -ltnp 'sport = :{port}' shows who holds it; stop it or change the service's port"
    )


def _missing_hint(found: Found) -> str:
    cmd = found.text("cmd", "the engine executable")
    if "permission denied" in found.match.group(0).lower():
        return f"{cmd} is not executable: check its permissions, or point command elsewhere"
    return f"{cmd} was not found: set the service's command to the engine's full path"


def _cuda_error_hint(found: Found) -> str:
    what = found.text("what", "a CUDA error").rstrip(". ")
    return (
        f"a CUDA error crashed the engine ({what}): update the engine and the GPU driver; "
        "if it persists, report it upstream with the log"
    )


def _systemd_hint(found: Found) -> str:
    cmd = found.text("cmd") or found.text("spawn")
    if cmd:
        return f"{cmd} could not be run: set the service's command to the engine's full path"
    status = found.text("status")
    return (
        f"the service's command could not be run (systemd status {status}): set it to the "
        "engine's full path"
    )


# GNU tools quote names in curly quotes (U+2018/U+2019) in UTF-8 locales, 'so' in the C locale.
_QUOTES = "'\"`\u2018\u2019"

_VLLM_DEAD = "the engine core process died; its root cause is in the lines above this one"
_OLLAMA_DEAD = "the llama runner died while loading or serving; see the lines above this one"
_DEAD = by_engine(_VLLM_DEAD, _OLLAMA_DEAD)


def _runner_dead_hint(found: Found) -> str:
    reason = found.text("reason").strip()
    if not reason:
        return _OLLAMA_DEAD
    return f"the llama runner died ({reason[:160]}); see the lines above this one"


PROCESS_RULES: tuple[Rule, ...] = (
    Rule(
        c.PORT_IN_USE,
        ("address already in use",),
        rx(r"bind on address \('(?P<host>[^']*)', (?P<port>\d+)\): address already in use"),
        _port_hint,
    ),
    Rule(
        c.PORT_IN_USE,
        ("listen tcp",),
        # Any bind error but these two means the port is unavailable; Windows words it in the
        # system's language ("Only one usage of each socket address", "Normal olarak ...").
        rx(r"listen tcp (?P<host>\S*?):(?P<port>\d+): bind: (?!permission denied|cannot assign)"),
        _port_hint,
        OLLAMA,
    ),
    Rule(
        c.PORT_IN_USE,
        ("address already in use", "only one usage of each socket", "eaddrinuse"),
        rx(r"address already in use|Only one usage of each socket address|EADDRINUSE"),
        _port_hint,
        exclude=rx(r"Retrying with a new port"),
    ),
    Rule(
        c.EXECUTABLE_MISSING,
        ("command not found",),
        rx(r"(?:^|: )(?P<cmd>[^\s:]+): command not found"),
        _missing_hint,
    ),
    Rule(  # dash and busybox: `sh: 1: vllm: not found`, `/bin/sh: vllm: not found`
        c.EXECUTABLE_MISSING,
        ("not found",),
        rx(
            r"(?:^|[\s:/])(?:sh|dash|ash|bash|zsh): (?:\d+: |line \d+: )?"
            r"(?P<cmd>[^\s:]+): not found"
        ),
        _missing_hint,
    ),
    Rule(  # a wrapper that execs the engine: timeout, nohup, env, nice, stdbuf ...
        c.EXECUTABLE_MISSING,
        ("failed to run command", "no such file or directory"),
        rx(
            rf"(?:failed to run command|^\s*env:) [{_QUOTES}]?(?P<cmd>[^{_QUOTES}\s]+)[{_QUOTES}]?:"
            r" (?:No such file or directory|Permission denied)"
        ),
        _missing_hint,
    ),
    Rule(  # Docker/runc and a shell's `exec`: `exec /entrypoint.sh: no such file or directory`
        c.EXECUTABLE_MISSING,
        ("no such file or directory", "not found"),
        rx(r"(?:^|[\s|:])exec:? (?P<cmd>/?[^\s:\"]+): (?:no such file or directory|not found)$"),
        _missing_hint,
    ),
    Rule(  # systemd: the unit's ExecStart could not be run
        c.EXECUTABLE_MISSING,
        ("failed to execute", "failed at step exec", "status=203/exec", "status=127"),
        rx(
            r"Failed to execute (?:command )?(?P<cmd>\S+?):? (?:No such file or directory"
            r"|Permission denied)|Failed at step EXEC spawning (?P<spawn>\S+?):"
            r"|status=(?P<status>203/EXEC|127)\b"
        ),
        _systemd_hint,
    ),
    Rule(  # Ollama's own runner binary is missing from its installation
        c.EXECUTABLE_MISSING,
        ("binary not found",),
        rx(r"(?P<cmd>[\w.-]+) binary not found"),
        lambda found: (
            f"Ollama's {found.text('cmd')} is missing from its installation: reinstall Ollama "
            "(its lib/ollama directory is incomplete)"
        ),
        OLLAMA,
    ),
    Rule(
        c.EXECUTABLE_MISSING,
        ("executable file not found",),
        rx(r"\"(?P<cmd>[^\"]+)\": executable file not found"),
        _missing_hint,
    ),
    Rule(
        c.EXECUTABLE_MISSING,
        ("no such file or directory", "permission denied"),
        rx(r"(?:No such file or directory|Permission denied): '(?P<cmd>[^']*?(?:vllm|ollama))'"),
        _missing_hint,
    ),
    Rule(
        c.EXECUTABLE_MISSING,
        ("no module named",),
        rx(r"No module named '?vllm'?"),
        fixed(
            "vLLM is not installed for this Python: point the service's command at the vllm "
            "executable of the virtualenv that has it"
        ),
        VLLM,
    ),
    Rule(
        c.KILLED,
        ("killed",),
        rx(r"^\s*Killed\s*$"),
        fixed("killed (SIGKILL): out of host memory? check dmesg for the OOM killer"),
    ),
    Rule(  # the kernel's OOM killer took Ollama's runner
        c.KILLED,
        ("signal: killed",),
        rx(r"(?:llama runner|llama-server) process has terminated: signal: killed"),
        fixed("the runner was killed (SIGKILL): out of host memory? dmesg shows the OOM killer"),
        OLLAMA,
    ),
    Rule(
        c.ENGINE_DEAD,
        (
            "enginedeaderror",
            "enginecore encountered",
            "engine core initialization failed",
            "engine process failed",
            "enginecore failed to start",
        ),
        rx(
            r"EngineDeadError|EngineCore encountered (?:an issue|a fatal error)"
            r"|Engine core initialization failed|Engine process failed to start"
            r"|EngineCore failed to start"
        ),
        fixed(_VLLM_DEAD),
        VLLM,
        tier=WRAPPER,
    ),
    Rule(
        c.ENGINE_DEAD,
        ("terminated", "no longer running", "exited", "failed to start a llama runner"),
        rx(
            r"(?:llama runner|llama-server) (?:process )?(?:has )?(?:terminated|exited)"
            r"(?:[:,]? (?:with )?(?:error=\\?\"?|error: )?exit status (?P<exit_status>\w+))?"
            # up to the quote that closes Go's error="..." (escaped as \" inside JSON-ish logs)
            r"(?:[: ]+error: ?(?P<reason>(?:[^\"\\]|\\(?!\"))+))?"
            r"|llama runner process no longer running: (?P<exit_code>-?\d+)"
            r"|failed to start a llama runner"
        ),
        _runner_dead_hint,
        OLLAMA,
        tier=WRAPPER,
    ),
    Rule(  # newer Ollama's words for a runner that died; the reason is in the server log
        c.ENGINE_DEAD,
        ("model runner has unexpectedly stopped", "unable to load model"),
        rx(r"model runner has unexpectedly stopped|unable to load model: (?P<model>\S+)"),
        fixed(
            "Ollama's runner failed to load or run the model: the reason is in the server log "
            "above this line (often a model newer than this Ollama: upgrade it)"
        ),
        OLLAMA,
        tier=WRAPPER,
    ),
    Rule(  # Ollama gave up on a runner that was still loading (OLLAMA_LOAD_TIMEOUT, 5m)
        c.ENGINE_DEAD,
        ("timed out waiting for llama runner",),
        rx(r"timed out waiting for llama runner to start(?: - progress (?P<progress>[\d.]+))?"),
        lambda found: (
            "the runner did not finish loading in time"
            + (f" (progress {found.text('progress')})" if found.text("progress") else "")
            + ": raise OLLAMA_LOAD_TIMEOUT in the service's env (slow disk, big model) or use a "
            "smaller model"
        ),
        OLLAMA,
        tier=WRAPPER,
    ),
    Rule(  # systemd's summary of the main process: killed by the kernel (OOM killer?) ...
        c.KILLED,
        ("code=killed",),
        rx(r"code=killed, status=9/KILL"),
        fixed("killed (SIGKILL): out of host memory? check dmesg for the OOM killer"),
    ),
    Rule(  # ... or crashed with a core dump
        c.ENGINE_DEAD,
        ("code=dumped",),
        rx(r"code=dumped, status=\d+/(?P<signal_name>[A-Z]+)"),
        lambda found: (
            f"the engine crashed (SIG{found.text('signal_name')}, core dumped); the lines above "
            "it, or coredumpctl, show where"
        ),
        tier=WRAPPER,
    ),
    Rule(  # vLLM's front end after a worker process died
        c.ENGINE_DEAD,
        ("got fatal signal from worker",),
        rx(r"Got fatal signal from worker processes"),
        fixed(_VLLM_DEAD),
        VLLM,
        tier=WRAPPER,
    ),
    Rule(  # a crash with no reason given: the process's or Go runtime's last words
        c.ENGINE_DEAD,
        ("segmentation fault", "core dumped", "sigabrt", "sigsegv", "sigill", "sigbus"),
        rx(
            r"Segmentation fault|core dumped"
            r"|^(?:\S+ \S+ )?SIG(?:ABRT: abort|SEGV: segmentation violation|ILL: illegal"
            r" instruction|BUS: bus error)"
        ),
        _DEAD,
        tier=WRAPPER,
    ),
    Rule(  # llama.cpp's assertions, old (`GGML_ASSERT: file:line: cond`) and new form
        c.ENGINE_DEAD,
        ("ggml_assert",),
        rx(r"GGML_ASSERT[(:]"),
        fixed(
            "llama.cpp failed an internal check (GGML_ASSERT) and the runner died: often a model "
            "file this engine version does not handle; upgrade it or try another quantization"
        ),
    ),
    Rule(  # tensor parallelism: the GPUs could not talk to each other
        c.ENGINE_DEAD,
        ("nccl error",),
        rx(r"NCCL error: (?P<what>[\w ]+)"),
        lambda found: (
            f"NCCL, which links the GPUs, failed ({found.text('what').strip()}): in a container "
            "use --ipc=host or a larger --shm-size; try setting NCCL_P2P_DISABLE; "
            "NCCL_DEBUG=INFO in the service's env says more"
        ),
        VLLM,
    ),
    Rule(  # CUDA errors other than out-of-memory (that one is cuda_oom, which ranks higher)
        c.ENGINE_DEAD,
        ("cuda error",),
        rx(r"CUDA error: (?P<what>[a-z][\w ,'-]+)"),
        _cuda_error_hint,
    ),
)


# The supervisor's own stops (Failure.reason in service/service.py): the signal that ended
# the engine was ours, so "killed from outside" would send the operator looking for a
# culprit that does not exist.
_OWN_STOPS = {
    "startup_timeout": Diagnosis(
        c.STARTUP_TIMEOUT,
        "stopped by the supervisor: not ready within health.startup_timeout; a large model "
        "may need longer (raise it), else its last lines show where the load got stuck",
    ),
    "health": Diagnosis(
        c.UNRESPONSIVE,
        "stopped by the supervisor: health.failures liveness probes in a row failed (hung "
        "engine?); if it is only slow under load, raise health.timeout or health.failures",
    ),
}


def own_stop(reason: str | None) -> Diagnosis | None:
    """The diagnosis of an engine the supervisor itself stopped for ``reason``, if it did."""
    return _OWN_STOPS.get(reason or "")
