"""pid_alive: a zombie is dead for a recorder, and alive for a server while its other threads hold its ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from system.processes import pid_alive

# The main thread ends with pthread_exit while another thread goes on: the process shows as a zombie ("Z")
# whose second thread still runs, as weed looked when it held its ports after its main thread was gone.
LEADER_EXITS_FIRST = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=False).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def _wait_for_state(pid: int, want: str) -> None:
    deadline = time.monotonic() + 10
    while _state(pid) != want:
        assert time.monotonic() < deadline, f"process {pid} never reached state {want}"
        time.sleep(0.05)


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    assert pid_alive(os.getpid()) and pid_alive(os.getpid(), holds_ports=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid) and not pid_alive(child.pid, holds_ports=True)
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_zombie_is_dead_for_both_rules() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_for_state(child.pid, "Z")  # exited, not reaped yet
    try:
        assert not pid_alive(child.pid)
        assert not pid_alive(child.pid, holds_ports=True)
    finally:
        child.wait()


def test_a_zombie_leader_whose_threads_run_still_holds_its_ports() -> None:
    child = subprocess.Popen([sys.executable, "-c", LEADER_EXITS_FIRST])
    try:
        _wait_for_state(child.pid, "Z")
        assert len(os.listdir(f"/proc/{child.pid}/task")) > 1
        assert not pid_alive(child.pid)  # for a recorder: it will write nothing more
        assert pid_alive(child.pid, holds_ports=True)  # for a server: its sockets are still bound
    finally:
        child.kill()
        child.wait()
