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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

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


def process_trees(roots: Iterable[int]) -> dict[int, list[psutil.Process]]:
    """Each root process with all its descendants (one pass over /proc for all roots); a root that is gone maps to
    an empty list."""
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(int(process.info["ppid"] or 0), []).append(process)
    trees: dict[int, list[psutil.Process]] = {}
    for root in roots:
        try:
            tree = [psutil.Process(root)]
        except psutil.Error:
            trees[root] = []
            continue
        index = 0
        while index < len(tree):
            tree.extend(children.get(tree[index].pid, []))
            index += 1
        trees[root] = tree
    return trees


class TreeCpu:
    """The CPU time a process tree has used, summed from each process's growth between reads, so what a process
    used up to its last read stays counted after it ends (a tile's browser starts and ends renderers as the page
    navigates). What a process uses after its last read, or between two reads it never appears in, is not seen."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._last: dict[tuple[int, float], float] = {}

    def read(self, tree: list[psutil.Process]) -> float:
        for process in tree:
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            self.seconds += max(0.0, used - self._last.get(key, 0.0))
            self._last[key] = used
        return self.seconds


def lower_priority(tree: list[psutil.Process], niceness: int) -> int:
    """Set every thread of a process tree to at least `niceness` (Linux nice applies per thread; threads and
    processes started later inherit it from the thread that starts them). Returns how many threads changed."""
    changed = 0
    for process in tree:
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{process.pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    if os.getpriority(os.PRIO_PROCESS, int(task.name)) < niceness:
                        os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)
                        changed += 1
    return changed
