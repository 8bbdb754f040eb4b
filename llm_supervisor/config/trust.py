"""Config files are trusted only when only trusted users can change them (OpenSSH's
StrictModes: ``safe_path()`` in misc.c accepts a file or directory owned by root or the
user, with ``mode & 022 == 0``; sshd also walks the parents, we check the config dir).

A profile's ``command:`` runs as the daemon's user, so a profile that someone else can write
is a way to run code as root. Running as root, a config file or the config directory itself
that is writable by group or other, or owned by anyone but root or the daemon's user, is
refused; the running config stays. As another user the daemon can only run what that user
could run anyway, so nothing is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def strict() -> bool:
    return os.geteuid() == 0


def untrusted_reason(path: Path, *, enforce: bool | None = None) -> str | None:
    """Why ``path`` must not be trusted, or None. Symlinks are judged by their target."""
    if not (strict() if enforce is None else enforce):
        return None
    try:
        info = path.stat()
    except OSError:
        return None  # reading it reports the problem with its own message
    trusted_owners = {0, os.geteuid()}
    if info.st_uid not in trusted_owners:
        return (
            f"owned by uid {info.st_uid}, not root or the daemon's user: refused, because "
            "its commands would run as the daemon's user (chown root it)"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        return (
            f"writable by group or others (mode {mode:04o}): refused, because anyone who "
            f"can edit it can run commands as the daemon's user (chmod go-w {path})"
        )
    return None
