"""Finishing work done while a capture still records, so the investigator does not wait for it afterwards.

Each closed segment is probed (the readings kept in memory) and each closed screen segment's tiles are cut into
the tiles' own segments (work/tiles/, each one's SHA-256 kept in memory), by programs that run only on CPU time
nothing else wants (SCHED_IDLE, nice 19): a recording that needs every core takes it all and this work
waits. What is not done when the recording ends is done by finalize as before, and finalize uses a tile segment
only while its bytes are still the ones cut here.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path

from capture.finalize import (
    MIN_PROBE_BYTES,
    ProbeCache,
    closed_segment_names,
    cut_segment,
    sha256_of,
    stream_of,
    tile_segment,
)
from evidence import EvidenceError, Layout
from evidence.layout import SEGMENT_DIR

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
CUT_THREADS = 1  # encoder threads per tile beside a recording: bursts stay small
STOP_SECONDS = 60.0


def idle_prefix() -> tuple[str, ...] | None:
    """The commands that start a program on idle CPU time only (SCHED_IDLE, then nice 19); None when missing.

    The programs are lowered, not this thread: a Python thread at idle priority could be switched out while it
    holds the interpreter's lock and stall the recording's own threads until it ran again."""
    chrt, nice = shutil.which("chrt"), shutil.which("nice")
    if chrt is None or nice is None:
        return None
    return (chrt, "--idle", "0", nice, "-n", "19")


class Prefinisher:
    """Probes closed segments and cuts closed screen segments into tile segments, until stopped."""

    def __init__(self, capture_dir: Path, layout: Layout, *, ffmpeg_path: str, ffprobe: str) -> None:
        self.capture_dir = capture_dir
        self.layout = layout
        self.ffmpeg_path = ffmpeg_path
        self.ffprobe = ffprobe
        self.probes = ProbeCache()
        self.cut_segments: dict[Path, str] = {}  # each tile segment written here, with its SHA-256
        self.probed = 0
        self.cut = 0
        self.problems: list[str] = []
        self.abandoned = False  # still running after stop(): finalize trusts none of its cuts
        self._prefix = idle_prefix()
        self._stop = threading.Event()
        self._running: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="prefinish", daemon=True)
        self._log = capture_dir / "logs" / "prefinish.log"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop now: a cut under way is killed (SIGKILL: a program on idle time may wait long for the CPU to act
        on a gentler signal); its partial files are dropped and finalize cuts that segment."""
        self._stop.set()
        with self._lock:
            if self._running is not None and self._running.poll() is None:
                self._running.kill()
        if self._thread.is_alive():
            self._thread.join(STOP_SECONDS)
        if self._thread.is_alive():
            self.abandoned = True
            self.problems.append(f"still running {STOP_SECONDS:.0f} s after the recording ended; its cuts were "
                                 "not used")

    def _started(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running = process
            if self._stop.is_set():
                process.kill()

    def _run(self) -> None:
        if self._prefix is None:
            self.problems.append("chrt or nice is missing, so nothing could run at idle priority: nothing was "
                                 "done before the recording ended")
            return
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.step()
            except (EvidenceError, OSError, subprocess.SubprocessError) as exc:
                # Not evidence and not fatal: finalize does whatever is left, the slow way.
                if not self._stop.is_set():
                    self.problems.append(str(exc))
                    log.warning("finishing during the recording stopped: %s", exc)
                return

    def step(self) -> None:
        """One pass: probe what closed since the last, then cut the screen segments that closed."""
        segments = self.capture_dir / SEGMENT_DIR
        self._log.parent.mkdir(parents=True, exist_ok=True)
        for name in closed_segment_names(self.capture_dir):
            if self._stop.is_set():
                return
            path = segments / name
            if not path.exists() or path.stat().st_size == 0:
                continue
            stream = stream_of(name)
            if not self.probes.has(path, stream):
                self.probed += 1
            probe = self.probes.probe(self.ffprobe, path, stream, self._prefix or ())
            if not name.startswith("video_") or path.stat().st_size < MIN_PROBE_BYTES:
                continue
            tiles = [t.tile for t in self.layout.tiles]
            if all(tile_segment(self.capture_dir, number, path).exists() for number in tiles):
                continue
            if not probe.times or probe.format_name != "mpegts":
                continue  # finalize leaves it out of the videos too
            try:
                cut_segment(self.capture_dir, self.layout, path, tiles=tiles, ffmpeg_path=self.ffmpeg_path,
                            log=self._log, threads=CUT_THREADS, started=self._started, prefix=self._prefix or (),
                            keep=lambda: not self._stop.is_set())
            except EvidenceError:
                if self._stop.is_set():
                    return  # ended by stop(): finalize cuts it
                raise
            for number in tiles:
                written = tile_segment(self.capture_dir, number, path)
                self.cut_segments[written] = sha256_of(written)
            self.cut += 1
