"""A private PulseAudio server with one null sink per tile, so each page's sound stays apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from capture.processes import spawn, stop, wait_for
from evidence import ComponentMissing

SAMPLE_RATE = 48000


class AudioServer:
    """PulseAudio in user mode with a private runtime directory (works as root too)."""

    def __init__(self, *, pulseaudio: str = "pulseaudio", log: Path | None = None) -> None:
        self._pulseaudio = pulseaudio
        self._log = log
        self._runtime = Path(tempfile.mkdtemp(prefix="wz-pulse-"))
        self._runtime.chmod(0o700)
        self.sinks: dict[int, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        runtime = str(self._runtime)
        return {
            **os.environ,
            "PULSE_RUNTIME_PATH": runtime,
            "XDG_RUNTIME_DIR": runtime,
            "HOME": runtime,
            "PULSE_SERVER": f"unix:{runtime}/native",
        }

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=20, check=False)

    def start(self) -> None:
        if shutil.which(self._pulseaudio) is None or shutil.which("pactl") is None:
            raise ComponentMissing("pulseaudio and pactl are needed for per-tile audio; run ./scripts/setup")
        # Not daemonized: as our child it dies with us (PDEATHSIG) even after a kill -9.
        self.process = spawn(
            [self._pulseaudio, "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
             "--load=module-native-protocol-unix", "--log-target=stderr"],
            env=self.env(),
            log=self._log,
        )
        if not wait_for(lambda: self.process is None or self.process.poll() is not None
                        or self._run("pactl", "info").returncode == 0, 15, 0.1):
            raise ComponentMissing("PulseAudio started but does not answer pactl info")
        if self.process.poll() is not None:
            raise ComponentMissing(f"PulseAudio would not start; see {self._log}")

    def add_sink(self, tile: int) -> str:
        name = f"wz_tile{tile}"
        result = self._run(
            "pactl", "load-module", "module-null-sink", f"sink_name={name}", f"rate={SAMPLE_RATE}", "channels=2",
            f"sink_properties=device.description=Wangzheng_tile_{tile}",
        )
        if result.returncode != 0:
            raise ComponentMissing(f"could not create the audio sink for tile {tile}: {result.stderr.strip()}")
        self.sinks[tile] = name
        return name

    def recording_streams(self) -> int:
        """How many recording streams (an ffmpeg input each) are connected to the sinks' monitors."""
        result = self._run("pactl", "list", "short", "source-outputs")
        return len([line for line in result.stdout.splitlines() if line.strip()]) if result.returncode == 0 else 0

    def version(self) -> str:
        result = self._run(self._pulseaudio, "--version")
        return result.stdout.strip() or "unknown"

    def close(self) -> None:
        if self.process is not None:
            stop(self.process, grace=5)
            self.process = None
        shutil.rmtree(self._runtime, ignore_errors=True)
