"""Whether a process is alive, by the rule the caller needs.

A zombie has exited but not been reaped. For a recorder or a capture (capture/), a zombie is dead: it writes
nothing more. For a server that holds ports (storage/'s SeaweedFS), a zombie whose other threads still run
is alive: until they end, its sockets stay bound and a new server could not take its ports.
"""

from __future__ import annotations

import os
from pathlib import Path


def _state(pid: int) -> str | None:
    try:
        # The command name in parentheses may itself hold spaces or parentheses: split after the last one.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, *, holds_ports: bool = False) -> bool:
    """True while `pid` runs. A zombie counts as dead, unless `holds_ports` and its other threads still run."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    state = _state(pid)
    if state is None:
        return False
    if state != "Z":
        return True
    if not holds_ports:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False
