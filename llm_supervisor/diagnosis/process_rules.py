"""Process failures: port taken, executable missing, killed, engine process died."""

from __future__ import annotations

from . import model as c
from .model import Diagnosis
from .rules import OLLAMA, VLLM, Found, Rule, by_engine, fixed, rx


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
    return f"{cmd} was not found: set the service's command to the engine's full path"


_VLLM_DEAD = "the engine core process died; its root cause is in the lines above this one"
_OLLAMA_DEAD = "the llama runner died while loading or serving; see the lines above this one"
_DEAD = by_engine(_VLLM_DEAD, _OLLAMA_DEAD)


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
        rx(
            r"listen tcp (?P<host>\S*?):(?P<port>\d+): bind: (?:address already in use"
            r"|Only one usage of each socket address)"
        ),
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
    Rule(
        c.ENGINE_DEAD,
        ("engine", "enginecore"),
        rx(
            r"EngineDeadError|EngineCore encountered (?:an issue|a fatal error)"
            r"|Engine core initialization failed|Engine process failed to start"
            r"|EngineCore failed to start"
        ),
        fixed(_VLLM_DEAD),
        VLLM,
    ),
    Rule(
        c.ENGINE_DEAD,
        ("terminated",),
        rx(
            r"(?:llama runner|llama-server) (?:process )?(?:has )?terminated"
            r"(?:[:,]? (?:error=\\?\"?)?exit status (?P<exit_status>\w+))?"
        ),
        fixed(_OLLAMA_DEAD),
        OLLAMA,
    ),
    Rule(
        c.ENGINE_DEAD,
        ("segmentation fault", "core dumped", "ggml_assert"),
        rx(r"Segmentation fault|core dumped|GGML_ASSERT\("),
        _DEAD,
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
