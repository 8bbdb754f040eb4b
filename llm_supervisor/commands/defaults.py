"""What cli.py and the commands share: exit codes and the default config directory.

A leaf (stdlib only), so commands never import cli.py, which imports them.
"""

from __future__ import annotations

import os

# sysexits.h, plus 3 for "some service is not ready" (as systemctl is-active uses 3)
EX_OK = 0
EX_NOT_READY = 3
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78


def default_config_dir() -> str:
    """$CONFIGURATION_DIRECTORY (systemd) else /etc/llm-supervisor."""
    configured = os.environ.get("CONFIGURATION_DIRECTORY", "")
    return configured.split(":")[0] if configured else "/etc/llm-supervisor"
