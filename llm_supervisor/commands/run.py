"""``llm-supervisor run``: the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..control.address import default_control_address, server_token
from .defaults import default_config_dir

if TYPE_CHECKING:
    from ..gateway.limits import GatewayLimits


def _from_env(var: str, root_default: str, user_default: str) -> Path:
    """systemd's *_DIRECTORY variables first, then the usual place for root or a user."""
    value = os.environ.get(var, "")
    if value:
        return Path(value.split(":")[0])
    return Path(root_default if os.geteuid() == 0 else user_default)


def default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local/state")
    return _from_env("STATE_DIRECTORY", "/var/lib/llm-supervisor", f"{xdg}/llm-supervisor")


def default_log_dir() -> Path:
    return _from_env("LOGS_DIRECTORY", "/var/log/llm-supervisor", "logs")


def parse_hostport(value: str) -> tuple[str, int] | None:
    if value.lower() in {"off", "none", ""}:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or 'off', got {value!r}")
    return host.strip("[]"), int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", type=Path, default=Path(default_config_dir()))
    parser.add_argument("--state-dir", type=Path, default=None, help="orphan registry")
    parser.add_argument("--log-dir", type=Path, default=None, help="<service>.log files")
    parser.add_argument("--control", default=None, help="unix:PATH or HOST:PORT")
    parser.add_argument(
        "--gateway", type=parse_hostport, default=("127.0.0.1", 11434),
        help="HOST:PORT of the gateway (default 127.0.0.1:11434), or 'off'",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-keys", type=Path, default=None,
        help="YAML list of gateway API keys (default: $CREDENTIALS_DIRECTORY/gateway-keys "
        "if present); without keys the gateway is open",
    )  # fmt: skip
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token for TCP")
    parser.add_argument("--socket-group", default=None, help="group owning the control socket")
    parser.add_argument("--shutdown-timeout", type=float, default=60.0)
    parser.add_argument("--no-watch", action="store_true", help="reload only on SIGHUP/CLI")
    parser.add_argument(
        "--gpu-interval", type=float, default=5.0, help="seconds between NVML readings"
    )
    parser.add_argument(
        "--log-format", choices=["auto", "json", "console", "journal"], default="auto"
    )
    parser.add_argument("--log-level", default="info")
    add_gateway_limit_arguments(parser)


def _size(value: str) -> int:
    from ..config.fieldtypes import parse_size

    try:
        size = parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {value!r}")
    return size


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def add_gateway_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """What one client may cost the gateway (gateway/limits.py has the reasons)."""
    parser.add_argument(
        "--gateway-max-body", type=_size, default=100 << 20, metavar="SIZE",
        help="largest request body the gateway parses (default 100MiB; larger: 413)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-max-connections", type=_positive(int), default=None, metavar="N",
        help="open client connections (default: (descriptor limit - 256) / 2)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-header-timeout", type=_positive(float), default=30.0, metavar="S",
        help="seconds for a started request's headers to arrive (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-keepalive-timeout", type=_positive(float), default=75.0, metavar="S",
        help="seconds an idle client connection stays open (default 75)",
    )  # fmt: skip
    parser.add_argument(
        "--gateway-body-timeout", type=_positive(float), default=60.0, metavar="S",
        help="seconds between two reads of a request body (default 60)",
    )  # fmt: skip


def gateway_limits(args: argparse.Namespace) -> GatewayLimits:
    from ..gateway.limits import GatewayLimits  # aiohttp: only for the daemon, not the CLI

    return GatewayLimits(
        max_body=args.gateway_max_body,
        max_connections=args.gateway_max_connections,
        header_timeout=args.gateway_header_timeout,
        keepalive_timeout=args.gateway_keepalive_timeout,
        body_timeout=args.gateway_body_timeout,
    )


def tune_gc() -> None:
    """The garbage collector set for a long-running server (bench/gateway_bench.py runs the
    gateway the same way).

    Everything imported so far lives as long as the daemon: freezing it keeps the cyclic
    GC from walking it again and again (gateway p99 at 64 clients: 21 ms → 10 ms; the
    full-heap collections were the tail). Young collections every 10,000 allocations
    instead of 700: nearly all request garbage is freed by reference counting anyway
    (gateway CPU per request about 5 % lower).
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run(args: argparse.Namespace) -> int:
    import uvloop

    from ..config.keysfile import gateway_keys_file
    from ..daemon.daemon import Daemon, DaemonOptions
    from ..logsetup import configure_logging

    control = default_control_address(args.control)
    server_token(control, args.token_file)  # TCP without a token: refused before anything runs
    configure_logging(args.log_format, args.log_level)
    options = DaemonOptions(
        config_dir=args.config_dir,
        state_dir=args.state_dir or default_state_dir(),
        log_dir=args.log_dir or default_log_dir(),
        control=control,
        gateway=args.gateway,
        gateway_keys=gateway_keys_file(args.gateway_keys),
        token_file=args.token_file,
        socket_group=args.socket_group,
        shutdown_timeout=args.shutdown_timeout,
        watch=not args.no_watch,
        gpu_interval=args.gpu_interval,
        gateway_limits=gateway_limits(args),
    )
    tune_gc()
    # uvloop, as vLLM's own API server and uvicorn[standard] use: measured with
    # bench/gateway_bench.py it takes about 12 % of the gateway's CPU per request away.
    return uvloop.run(Daemon(options).run())
