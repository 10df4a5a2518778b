"""The virtual X display the tile windows live on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from capture.processes import spawn, stop, wait_for
from evidence import ComponentMissing


def _free_display_number(start: int = 99) -> int:
    for number in range(start, start + 400):
        if not Path(f"/tmp/.X{number}-lock").exists() and not Path(f"/tmp/.X11-unix/X{number}").exists():
            return number
    raise ComponentMissing("no free X display number between :99 and :499; stale Xvfb processes?")


class VirtualDisplay:
    """An Xvfb screen of exactly the composite's size."""

    def __init__(self, width: int, height: int, *, xvfb: str = "Xvfb", log: Path | None = None) -> None:
        self.width = width
        self.height = height
        self._xvfb = xvfb
        self._log = log
        self.number = -1
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f":{self.number}"

    def start(self) -> None:
        for _attempt in range(5):
            self.number = _free_display_number()
            self.process = spawn(
                [self._xvfb, self.name, "-screen", "0", f"{self.width}x{self.height}x24", "-nolisten", "tcp",
                 "-nocursor"],
                log=self._log,
            )
            process = self.process
            socket_path = Path(f"/tmp/.X11-unix/X{self.number}")

            def settled(path: Path = socket_path, proc: subprocess.Popen[bytes] = process) -> bool:
                return path.exists() or proc.poll() is not None

            # Another Xvfb may have taken the number meanwhile: then ours exits and we try the next.
            if wait_for(settled, 10) and process.poll() is None and socket_path.exists():
                return
        raise ComponentMissing(f"Xvfb would not start (see {self._log}); is the package xvfb installed?")

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.name}

    def close(self) -> None:
        if self.process is not None:
            stop(self.process, grace=5)
            self.process = None
