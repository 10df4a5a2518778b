"""Child processes that die with us and stop gracefully.

Every helper process (Xvfb, PulseAudio, Chromium, ffmpeg) is started with PR_SET_PDEATHSIG so that
a `kill -9` of the capture does not leave recorders running; ffmpeg then receives SIGTERM and closes
its open segment properly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from evidence import ComponentMissing

_PR_SET_PDEATHSIG = 1
# Loaded once here: loading a library in the forked child could deadlock on a lock another thread held.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # Own process group: a Ctrl-C on the terminal reaches us only; we stop children in order.
    os.setpgid(0, 0)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a helper process whose stdout and stderr go to `log` (or nowhere)."""
    sink: IO[bytes] | int = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = log.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=sink,
            stderr=sink,
            cwd=cwd,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only async-signal-safe calls in the child
        )
    except FileNotFoundError as exc:
        raise ComponentMissing(f"{argv[0]} is not installed; run ./scripts/setup") from exc
    finally:
        if not isinstance(sink, int):
            sink.close()


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
    """Ask a process to end with `sig`, then kill it after `grace` seconds. Returns its exit code."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=5)


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll a zero-argument callable until it returns true or `timeout` passes."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
