"""Command line: parses arguments, dispatches, and maps typed errors to exit codes.

This is the only module that turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .commands.defaults import EX_CONFIG, EX_NOT_READY, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE
from .errors import ConfigError, DaemonUnreachableError, SupervisorError

# What `llm-supervisor --help` says the program is for (this module's docstring is for
# maintainers).
DESCRIPTION = "Supervise vLLM and Ollama model servers on a GPU host."
__all__ = ["EX_CONFIG", "EX_NOT_READY", "EX_OK", "EX_SOFTWARE", "EX_UNAVAILABLE", "main"]

# subcommand -> module in llm_supervisor.commands with `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "run": "Run the daemon in the foreground.",
    "check": "Validate the config directory; exit 78 on errors.",
    "schema": "Print the JSON schema of profiles and policy.",
    "status": "Show services, GPUs and models; exit 3 if some service is not ready.",
    "start": "Start services (clears fatal).",
    "stop": "Stop services.",
    "restart": "Restart services.",
    "reload": "Re-read the config directory and apply what changed.",
    "logs": "Show or follow a service's output.",
    "gpus": "Show GPUs, their memory and who holds it.",
    "diagnose": "Classify an engine log: cause, hint, numbers.",
    "upgrade": "Re-execute the daemon in place with the installed code; engines keep running.",
    "ui": "Serve the status page on 127.0.0.1 through the control socket; print its URL.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-supervisor", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"llm-supervisor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f".commands.{name}", __package__)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for issue in exc.warnings:
            print(f"warning: {issue.format()}", file=sys.stderr)
        for issue in exc.issues:
            print(issue.format(), file=sys.stderr)
        print(f"{len(exc.issues)} error(s); config rejected", file=sys.stderr)
        return EX_CONFIG
    except DaemonUnreachableError as exc:
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except SupervisorError as exc:
        print(f"llm-supervisor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `llm-supervisor logs x | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
