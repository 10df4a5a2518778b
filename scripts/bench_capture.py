"""Capture benchmark: record 1, 2, 4 and 6 demo tiles with `wz capture` and measure what it costs.

Run through `scripts/bench capture [--profile 720p30] [--tile-size 640x360] [--tiles 1,2,4,6] [--duration 30]
[--heavy] [--json FILE]`.

For each tile count N the demo rooms 1..N are recorded, their streams encoded as --profile says (default 720p30:
1280x720 at 30 fps, H.264 High at 2.5 Mbit/s, as livestream platforms send; 360p15 is the light rooms of the tests).
Per run it reports, from the time codes the demo pages draw and from the process tree of `wz capture`:

- each tile's distinct frames per second, after the first seconds while pages load, counted two ways: per `fps`
  composite frames (capture.analysis.sync_report) and per wall-clock second (frames.csv), since the composite is
  stamped with grab times and holds fewer or more than `fps` frames a second when the grab falls behind or catches up;
- the composite's own frame rate and gaps, and how old each tile's picture is when grabbed (stamp minus time code);
- the skew between tiles within one composite frame (p50 / p95 / max, ms);
- the browser's dropped-frame share (getVideoPlaybackQuality, summed over tiles that play video);
- CPU cores used during the recording phase in all, by program and by program's thread (Chromium names its threads:
  Media, Compositor, VizCompositorThread...; unnamed ones count under the program's name), peak RSS and PSS of the
  whole process tree, and each tile's browser cores as the capture itself measured them (manifest `sync`);
- time from launching `wz capture` to its first composite frame, and to the frame by which every tile's time code
  has been read; from the end of the recording to `wz capture` exiting (finalize, hashing, storing);
- for long runs (`--duration 900`), the tree's summed RSS and process count at each minute of the recording and its
  growth after the first minute.

It prints the figures as a Markdown table (and --json FILE); it never fails on a slow figure. The exit status is 1
only when `wz capture` fails (its figures are still shown when the recording could be measured).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import itertools
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from capture.analysis import sync_report, tile_timecodes
from capture.fixtures import PATH_HEAVY_PAGE, FixtureServer, live_path
from capture.fixtures.media import PROFILES, ROOM_TONES
from capture.layout import DEFAULT_TILE_SIZE, TILE_SIZES
from capture.timecode import timecode_delta_ms, timecode_from_epoch_ms
from evidence import Manifest, StepName
from evidence.layout import load_manifest

REPO = Path(__file__).resolve().parent.parent
WZ = REPO / ".venv" / "bin" / "wz"
ROOMS = len(ROOM_TONES)
MAX_TILES = ROOMS
DEFAULT_TILES = (1, 2, 4, 6)
DEFAULT_PROFILE = "720p30"
DEFAULT_DURATION = 30.0
DEFAULT_SKIP = 8.0
SAMPLE_INTERVAL = 0.5
GIB = 1024**3
# How long a capture may take beyond its duration (start-up, finalizing, hashing) before the bench gives up on it.
OVERRUN_SECONDS = 300.0
TARGET_TILES = 4
EMBEDDED_S3_PORTS = range(21000, 22700)
PR_SET_CHILD_SUBREAPER = 36
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# How long processes may outlive `wz capture` before the bench stops them and reports them.
ORPHAN_GRACE_SECONDS = 5.0


# -- process-tree sampling -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # wall clock (epoch seconds) of the sample
    cpu_seconds: float  # CPU time the tree used from launch up to this sample (see TreeSampler)
    rss: int  # sum of the resident set sizes of the tree, bytes
    pss: int | None  # sum of the proportional set sizes (shared pages split between processes), bytes
    processes: int
    cpu_by_program: dict[str, float]  # cumulative CPU seconds per program up to this sample
    cpu_by_thread: dict[str, float]  # cumulative CPU seconds per "program: thread name" up to this sample
    rss_by_program: dict[str, int] = field(default_factory=dict)  # summed RSS per program at this sample


class TreeSampler(threading.Thread):
    """Samples every process below the bench every `interval` seconds: CPU time, RSS and PSS, CPU by program.

    The bench starts no process but `wz capture`, so "below the bench" is the capture's process tree, plus, once
    `become_subreaper()` has run, the processes that outlive their parent (Chromium's crashpad handlers are
    double-forked at start; its zygotes and renderers are orphaned when the browser is stopped) instead of their
    going to init. The sampler reaps those orphans (never `wz capture` itself: subprocess does that).

    CPU accounting: each live process (keyed by pid and start time) contributes the growth of its own user+system
    time since the previous sample; a process first seen contributes all it has used so far. What a process uses
    between its last sample and its exit is lost, and so is a process that starts and ends between two samples
    (ffprobe, short helpers): the sampled total is a lower bound. `children_user/children_system` are left out on
    purpose: they would count again the CPU of children already sampled. The rusage of the reaped processes (see
    `run_capture`) gives the exact total over the whole run, to compare.
    """

    def __init__(self, capture_pid: int, interval: float = SAMPLE_INTERVAL, *, pss: bool = True) -> None:
        super().__init__(name=f"tree-sampler-{capture_pid}", daemon=True)
        self.capture_pid = capture_pid
        self.interval = interval
        self.pss = pss
        self.samples: list[Sample] = []
        self.cpu_seconds = 0.0
        self.cpu_by_program: dict[str, float] = {}
        self.cpu_by_thread: dict[str, float] = {}
        self._last_thread_cpu: dict[tuple[int, float, int], float] = {}
        self.own_cpu_seconds = 0.0
        self.max_processes = 0
        self._last_cpu: dict[tuple[int, float], float] = {}
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        started = time.thread_time()
        try:
            while True:
                self._sample()
                if self._stop_event.wait(self.interval):
                    break
        finally:
            self.own_cpu_seconds = time.thread_time() - started

    def _sample(self) -> None:
        try:
            processes = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        rss = 0
        rss_by_program: dict[str, int] = {}
        pss: int | None = 0 if self.pss else None
        counted = 0
        for process in processes:
            try:
                with process.oneshot():
                    key = (int(process.pid), float(process.create_time()))
                    times = process.cpu_times()
                    used = float(times.user + times.system)
                    memory = process.memory_full_info() if self.pss else process.memory_info()
                    label = program(str(process.name()), list(process.cmdline()))
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            delta = max(0.0, used - self._last_cpu.get(key, 0.0))
            self._last_cpu[key] = used
            self.cpu_seconds += delta
            self.cpu_by_program[label] = self.cpu_by_program.get(label, 0.0) + delta
            self._sample_threads(key, label)
            rss += int(memory.rss)
            rss_by_program[label] = rss_by_program.get(label, 0) + int(memory.rss)
            if pss is not None:
                pss += int(memory.pss)
            counted += 1
        self.max_processes = max(self.max_processes, counted)
        self.samples.append(Sample(at=time.time(), cpu_seconds=self.cpu_seconds, rss=rss, pss=pss, processes=counted,
                                   cpu_by_program=dict(self.cpu_by_program), cpu_by_thread=dict(self.cpu_by_thread),
                                   rss_by_program=rss_by_program))
        reap_orphans(self.capture_pid)

    def _sample_threads(self, key: tuple[int, float], label: str) -> None:
        """Add each thread's CPU growth under "program: thread name" (Chromium names its threads: Media,
        Compositor, VizCompositorTh, ThreadPoolForeg..., which says where a renderer's time goes)."""
        pid, created = key
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{pid}/task"):
                try:
                    stat = Path(task.path, "stat").read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                name = stat[stat.index("(") + 1: stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
                thread_key = (pid, created, int(task.name))
                delta = max(0.0, used - self._last_thread_cpu.get(thread_key, 0.0))
                self._last_thread_cpu[thread_key] = used
                group = f"{label}: {thread_name(name)}"
                self.cpu_by_thread[group] = self.cpu_by_thread.get(group, 0.0) + delta


def thread_name(name: str) -> str:
    """Threads of one pool share a name but for a number (ThreadPoolForeg, in0:0...): count them together."""
    return name.rstrip("0123456789:/-_ ") or name


def program(name: str, cmdline: list[str]) -> str:
    """A short label for what a process is: Chromium's by --type, ffmpeg by what it records."""
    kind = next((arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--type=")), None)
    if kind is not None or name == "chromium":
        sub = next((arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--utility-sub-type=")), "")
        return f"chromium {kind or 'browser'}" + (f" {sub.split('.')[0]}" if sub else "")
    if name == "ffmpeg":
        joined = " ".join(cmdline)
        if "x11grab" in joined:
            return "ffmpeg x11grab"
        if "-f pulse" in joined:
            return "ffmpeg pulse"
        return "ffmpeg stream copy" if "-headers" in joined else "ffmpeg finalize"
    if name.startswith("node") and "playwright" in " ".join(cmdline):
        return "playwright driver"
    return name


def reap_orphans(capture_pid: int) -> list[Any]:
    """Reap the bench's children that have exited, except `wz capture`; return those still running."""
    running = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in children:
        if child.pid == capture_pid:
            continue
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(child.pid, os.WNOHANG)
            if pid == 0:
                running.append(child)
    return running


def become_subreaper() -> bool:
    """Have processes orphaned below the bench re-parented to it rather than to init (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def drain_orphans(capture_pid: int, grace: float = ORPHAN_GRACE_SECONDS) -> list[str]:
    """After `wz capture` exits, wait for what it left running; stop (by pid) what is still there after `grace`."""
    deadline = time.monotonic() + grace
    running = reap_orphans(capture_pid)
    while running and time.monotonic() < deadline:
        time.sleep(0.2)
        running = reap_orphans(capture_pid)
    if not running:
        return []
    leftovers = []
    for child in running:
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{child.pid} {' '.join(child.cmdline())[:80]}")
            child.terminate()
    _, alive = psutil.wait_procs(running, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    reap_orphans(capture_pid)
    return leftovers


def cores_between(samples: list[Sample], start: float, end: float
                  ) -> tuple[float, dict[str, float], dict[str, float]] | None:
    """Mean CPU cores used between two wall-clock moments (CPU time over elapsed time of the first and last sample
    inside them), in all, per program and per program's thread."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2 or inside[-1].at <= inside[0].at:
        return None
    first, last = inside[0], inside[-1]
    elapsed = last.at - first.at

    def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        per_label = {label: (seconds - before.get(label, 0.0)) / elapsed for label, seconds in after.items()}
        return dict(sorted(((k, v) for k, v in per_label.items() if v > 0), key=lambda item: -item[1]))

    return ((last.cpu_seconds - first.cpu_seconds) / elapsed, rates(first.cpu_by_program, last.cpu_by_program),
            rates(first.cpu_by_thread, last.cpu_by_thread))


def by_minute(samples: list[Sample], start: float, end: float) -> list[Sample]:
    """The sample nearest each whole minute of the recording (1, 2, ... min after `start`, up to `end`)."""
    chosen = []
    minute = 1
    while start + 60 * minute <= end:
        moment = start + 60 * minute
        nearest = min(samples, key=lambda sample: abs(sample.at - moment), default=None)
        if nearest is not None and abs(nearest.at - moment) <= 5 * SAMPLE_INTERVAL:
            chosen.append(nearest)
        minute += 1
    return chosen


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


# -- one capture -----------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    tiles: int
    urls: list[str]
    duration_seconds: float
    skip_seconds: float
    measured: bool = False  # the recording could be measured (it may still have failed: see `failure`)
    failure: str = ""
    status: str = ""
    capture_dir: str = ""
    exit_code: int | None = None
    load_average_at_launch: float | None = None
    # time codes
    fps: int | None = None
    composite_frames: int | None = None
    frames_csv_rows: int | None = None
    # composite frames per wall-clock second (frames.csv), over the whole recording and after the first `skip` s
    composite_fps_whole: float | None = None
    composite_fps_window: float | None = None
    composite_gap_p95_ms: float | None = None  # wall-clock gaps between composite frames after `skip` s
    composite_gap_max_ms: float | None = None
    composite_gap_max_ms_whole: float | None = None
    picture_age_p50_ms: float | None = None  # frame's wall-clock stamp minus the time code a tile shows in it
    picture_age_p95_ms: float | None = None
    picture_age_max_ms: float | None = None
    picture_age_min_ms: float | None = None
    distinct_fps: dict[int, float] = field(default_factory=dict)  # sync_report's: new time codes per `fps` frames
    distinct_fps_wall: dict[int, float] = field(default_factory=dict)  # new time codes per wall-clock second
    distinct_fps_min: float | None = None
    distinct_fps_mean: float | None = None
    distinct_fps_wall_min: float | None = None
    distinct_fps_wall_mean: float | None = None
    decoded_share: dict[int, float] = field(default_factory=dict)
    advancing: dict[int, bool] = field(default_factory=dict)
    first_decoded_frame: dict[int, int | None] = field(default_factory=dict)
    skew_frames: int = 0
    skew_p50_ms: float | None = None
    skew_p95_ms: float | None = None
    skew_max_ms: float | None = None
    # the browser's own counters
    video_frames_total: float | None = None
    video_frames_dropped: float | None = None
    dropped_share: float | None = None
    dropped_share_per_tile: dict[int, float] = field(default_factory=dict)
    # the capture's own measure (manifest sync): each tile's browser cores, and the tiles it held back
    tile_cores: dict[int, float] = field(default_factory=dict)
    priority_lowered: dict[int, float] = field(default_factory=dict)  # tile -> composite seconds
    # process tree
    recording_seconds: float | None = None
    cores_recording: float | None = None
    cores_recording_by_program: dict[str, float] = field(default_factory=dict)
    cores_recording_by_thread: dict[str, float] = field(default_factory=dict)
    cores_whole_run: float | None = None
    cpu_seconds_sampled: float | None = None
    cpu_seconds_rusage: float | None = None
    cpu_seconds_by_program: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    peak_pss_bytes: int | None = None
    max_processes: int | None = None
    samples: int = 0
    sampler_cpu_seconds: float | None = None
    # start-up
    launch_to_exit_seconds: float | None = None
    stop_to_exit_seconds: float | None = None  # from the end of the recording to wz exiting (finalize, hash, store)
    # long captures: the tree's summed RSS and process count at each whole minute of the recording
    rss_by_minute_bytes: list[int] = field(default_factory=list)
    processes_by_minute: list[int] = field(default_factory=list)
    rss_growth_after_first_minute: float | None = None  # (most at a later minute - at minute 1) / at minute 1
    rss_growth_by_program_mib: dict[str, float] = field(default_factory=dict)  # last minute minus minute 1
    launch_to_first_frame_seconds: float | None = None
    launch_to_all_tiles_decoded_seconds: float | None = None
    launch_to_all_tiles_decoded_same_frame_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_s3_port() -> int:
    """A WZ_EMBEDDED_S3_PORT whose whole block is free, so each run's own SeaweedFS starts whatever else runs here.

    SeaweedFS takes S3 at P, its other servers at P+1..P+8 and one gRPC port at P+8+10000, all of them below the
    kernel's ephemeral range (32768 on Linux by default).
    """
    for _ in range(100):
        port = EMBEDDED_S3_PORTS.start + secrets.randbelow(len(EMBEDDED_S3_PORTS))
        if all(_port_free(p) for p in [*range(port, port + 9), port + 8 + 10000]):
            return port
    raise RuntimeError(f"no free block of ports for the embedded SeaweedFS in {EMBEDDED_S3_PORTS}")


def tile_urls(base_url: str, tiles: int, *, heavy: bool = False) -> list[str]:
    """Rooms 1..N; with `heavy`, the last tile is the page that takes every core (as a room too large to decode)."""
    urls = [base_url + live_path(room) for room in range(1, min(tiles, ROOMS) + 1)]
    if heavy:
        urls[-1] = base_url + PATH_HEAVY_PAGE
    return urls


def frame_epochs(capture_dir: Path) -> list[float]:
    with (capture_dir / "frames.csv").open(newline="", encoding="utf-8") as handle:
        return [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]


def recording_window(manifest: Manifest) -> tuple[float, float] | None:
    for step in manifest.steps:
        if step.name == StepName.RECORD:
            return step.started_at.timestamp(), step.ended_at.timestamp()
    return None


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile, the same rule as capture.analysis uses for the skew."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def _lowest(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _stderr_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def overrun(duration: float) -> float:
    """How long a capture may run past its duration: finalizing a long one takes longer."""
    return max(OVERRUN_SECONDS, 0.5 * duration)


def run_capture(base_url: str, tiles: int, duration: float, skip: float, workdir: Path, *, pss: bool,
                tile_size: str = DEFAULT_TILE_SIZE, heavy: bool = False) -> RunResult:
    urls = tile_urls(base_url, tiles, heavy=heavy)
    result = RunResult(tiles=tiles, urls=urls, duration_seconds=duration, skip_seconds=skip)
    run_dir = workdir / f"tiles-{tiles}"
    out = run_dir / "capture"
    run_dir.mkdir(parents=True, exist_ok=True)
    result.capture_dir = str(out)
    stderr_log = run_dir / "wz-stderr.log"
    env = {**os.environ, "WZ_DATA_DIR": str(run_dir / "data"), "WZ_CAPTURE_ALLOW_PRIVATE": "1",
           "WZ_NTP_TIMEOUT_SECONDS": "1", "WZ_EMBEDDED_S3_PORT": str(free_s3_port())}
    argv = [str(WZ), "capture", *urls, "--duration", f"{duration:g}", "--tile-size", tile_size, "--out", str(out),
            "--json", "--operator", "bench", "--case", f"BENCH-{tiles}"]
    print(f"bench: {tiles} tile(s), {duration:g} s: {' '.join(urls)}", file=sys.stderr, flush=True)

    result.load_average_at_launch = os.getloadavg()[0]
    rusage_before = children_cpu_seconds()
    with stderr_log.open("wb") as err:
        launched = time.time()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO)
        sampler = TreeSampler(process.pid, pss=pss)
        sampler.start()
        try:
            stdout, _ = process.communicate(timeout=duration + overrun(duration))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # wz finishes what it has on SIGTERM
            try:
                stdout, _ = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, _ = process.communicate()
            result.notes.append(f"wz capture overran {duration + overrun(duration):g} s and was stopped")
        except KeyboardInterrupt:
            # The terminal sent SIGINT to wz too; let it finish its manifest before leaving.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=120)
            raise
        finally:
            exited = time.time()
            leftovers = drain_orphans(process.pid)
            sampler.stop()
            sampler.join()
    if leftovers:
        result.notes.append(f"{len(leftovers)} process(es) still ran {ORPHAN_GRACE_SECONDS:g} s after wz capture "
                            f"exited and were stopped: " + "; ".join(leftovers))
    result.exit_code = process.returncode
    result.cpu_seconds_rusage = children_cpu_seconds() - rusage_before
    result.launch_to_exit_seconds = exited - launched
    result.cpu_seconds_sampled = sampler.cpu_seconds
    result.cpu_seconds_by_program = dict(sorted(sampler.cpu_by_program.items(), key=lambda item: -item[1]))
    result.sampler_cpu_seconds = sampler.own_cpu_seconds
    result.samples = len(sampler.samples)
    result.max_processes = sampler.max_processes
    if sampler.samples:
        result.peak_rss_bytes = max(s.rss for s in sampler.samples)
        if pss:
            result.peak_pss_bytes = max(s.pss or 0 for s in sampler.samples)
    result.cores_whole_run = sampler.cpu_seconds / (exited - launched)

    summary: dict[str, Any] = {}
    lines = stdout.decode("utf-8", errors="replace").strip().splitlines()
    if lines:
        with contextlib.suppress(json.JSONDecodeError):
            summary = json.loads(lines[-1])
    result.status = str(summary.get("status", ""))
    if not result.status:
        with contextlib.suppress(OSError, ValueError):
            result.status = load_manifest(out).status.value
    if process.returncode != 0 or result.status != "complete":
        reason = str(summary.get("reason") or "") or _stderr_tail(stderr_log, lines=1)
        tile_problems = [f"tile {t.get('tile')}: {t.get('status')} {t.get('reason', '')}".strip()
                         for t in summary.get("tiles", []) if t.get("status") != "complete"]
        result.failure = (f"wz capture exited {process.returncode} with status {result.status or 'unknown'}: "
                          + "; ".join([reason, *tile_problems]).strip("; ")
                          + f" (stderr: {stderr_log})")
    # Measure whatever was recorded, even when wz failed afterwards (e.g. storing the evidence).
    if (out / "manifest.json").exists() and (out / "composite.mp4").exists() and (out / "frames.csv").exists():
        try:
            analyse(result, out, launched, sampler.samples)
            result.measured = True
        except Exception as exc:  # a broken capture must not hide the figures of the other runs
            result.notes.append(f"could not measure the capture: {type(exc).__name__}: {exc}")
    return result


def analyse(result: RunResult, out: Path, launched: float, samples: list[Sample]) -> None:
    manifest = load_manifest(out)
    fps = manifest.layout.fps
    result.fps = fps
    codes = tile_timecodes(out / "composite.mp4", manifest.layout)
    epochs = frame_epochs(out)
    result.composite_frames = len(codes)
    result.frames_csv_rows = len(epochs)
    report = sync_report(codes, fps, skip_seconds=result.skip_seconds)
    first_decoded = report.first_decoded_frame
    # Distinct frames/s as sync_report counts them: new time codes per `fps` composite frames, i.e. how often a tile
    # shows a new picture from one composite frame to the next. The composite itself is stamped with wall-clock grab
    # times and is not evenly spaced: when the grab falls behind (at start, under load) it stalls, then grabs frames
    # back to back until it has caught up. Its timing is measured separately, from frames.csv.
    result.distinct_fps = dict(report.distinct_fps)
    if len(codes) != len(epochs):
        result.notes.append(f"{len(codes)} decoded composite frames but {len(epochs)} rows in frames.csv")
    if len(epochs) >= 2:
        start = min(int(result.skip_seconds * fps), len(epochs) - 1)  # the same frames as sync_report's window
        result.composite_fps_whole = (len(epochs) - 1) / (epochs[-1] - epochs[0])
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(epochs)]
        result.composite_gap_max_ms_whole = max(gaps)
        window_gaps = gaps[start:]
        if window_gaps:
            result.composite_fps_window = len(window_gaps) / (epochs[-1] - epochs[start])
            result.composite_gap_p95_ms = percentile(window_gaps, 0.95)
            result.composite_gap_max_ms = max(window_gaps)
            seconds = epochs[-1] - epochs[start] + 1 / fps
            result.distinct_fps_wall = {
                tile: len({f[tile] for f in codes[start:] if f.get(tile) is not None}) / seconds
                for tile in report.distinct_fps
            }
            # How old each tile's picture is when grabbed: the frame's wall-clock stamp minus the time code the page
            # drew (both from this machine's clock). Negative would mean frames.csv stamps a frame before its content.
            ages = [float(timecode_delta_ms(timecode_from_epoch_ms(epoch * 1000), value))
                    for frame, epoch in zip(codes[start:], epochs[start:], strict=False)
                    for value in frame.values() if value is not None]
            if ages:
                result.picture_age_p50_ms = percentile(ages, 0.5)
                result.picture_age_p95_ms = percentile(ages, 0.95)
                result.picture_age_max_ms = max(ages)
                result.picture_age_min_ms = min(ages)
                early = [age for age in ages if age < 0]
                if early:
                    result.notes.append(f"{len(early)} of {len(ages)} tile pictures after {result.skip_seconds:g} s "
                                        f"are stamped before the time code they show (at most {-min(early):.0f} ms): "
                                        "frames.csv's stamp can precede the actual grab")
        late = 1000 * 2 / fps
        if result.composite_gap_max_ms_whole > late:
            worst = max(range(len(gaps)), key=gaps.__getitem__)
            result.notes.append(
                f"the composite's longest gap between frames is {result.composite_gap_max_ms_whole:.0f} ms "
                f"(after frame {worst}, {epochs[worst] - epochs[0]:.1f} s in); {sum(g > late for g in gaps)} of "
                f"{len(gaps)} gaps are over {late:.0f} ms")

    result.decoded_share = dict(report.decoded_share)
    result.advancing = dict(report.advancing)
    result.first_decoded_frame = dict(first_decoded)
    if result.distinct_fps:
        values = list(result.distinct_fps.values())
        result.distinct_fps_min = min(values)
        result.distinct_fps_mean = sum(values) / len(values)
    if result.distinct_fps_wall:
        values = list(result.distinct_fps_wall.values())
        result.distinct_fps_wall_min = min(values)
        result.distinct_fps_wall_mean = sum(values) / len(values)
    for tile, share in report.decoded_share.items():
        if share < 0.9:
            result.notes.append(f"tile {tile}: time code read in only {share:.0%} of the frames "
                                f"after {result.skip_seconds:g} s")
        if not report.advancing.get(tile, False):
            result.notes.append(f"tile {tile}: time code does not advance")
    result.skew_frames = len(report.skew_ms)
    if len(manifest.layout.tiles) >= 2:
        result.skew_p50_ms = _finite(report.skew_p50)
        result.skew_p95_ms = _finite(report.skew_p95)
        result.skew_max_ms = _finite(report.skew_max)

    totals = [(t.tile, t.metrics["video_frames_total"], t.metrics.get("video_frames_dropped", 0.0))
              for t in manifest.tiles if t.metrics.get("video_frames_total")]
    if totals:
        result.video_frames_total = sum(total for _, total, _ in totals)
        result.video_frames_dropped = sum(dropped for _, _, dropped in totals)
        result.dropped_share = result.video_frames_dropped / result.video_frames_total
        result.dropped_share_per_tile = {tile: dropped / total for tile, total, dropped in totals}

    if manifest.sync is not None:
        result.tile_cores = {t.tile: t.cpu_cores_mean for t in manifest.sync.tiles if t.cpu_cores_mean is not None}
        result.priority_lowered = {t.tile: t.priority_lowered_at_seconds for t in manifest.sync.tiles
                                   if t.priority_lowered_at_seconds is not None}

    window = recording_window(manifest)
    if window is not None:
        record_start, record_end = window
        result.recording_seconds = record_end - record_start
        if result.launch_to_exit_seconds is not None:
            result.stop_to_exit_seconds = launched + result.launch_to_exit_seconds - record_end
        minutes = by_minute(samples, record_start, record_end)
        result.rss_by_minute_bytes = [sample.rss for sample in minutes]
        result.processes_by_minute = [sample.processes for sample in minutes]
        if len(minutes) >= 2:
            result.rss_growth_after_first_minute = (max(s.rss for s in minutes[1:]) - minutes[0].rss) / minutes[0].rss
            first, last = minutes[0].rss_by_program, minutes[-1].rss_by_program
            growth = {label: (last.get(label, 0) - first.get(label, 0)) / 2**20 for label in {*first, *last}}
            result.rss_growth_by_program_mib = dict(sorted(growth.items(), key=lambda item: -abs(item[1])))
        cores = cores_between(samples, record_start, record_end)
        if cores is not None:
            result.cores_recording, result.cores_recording_by_program, result.cores_recording_by_thread = cores

    if epochs:
        result.launch_to_first_frame_seconds = epochs[0] - launched
        firsts = list(first_decoded.values())
        if firsts and all(f is not None for f in firsts):
            last_first = max(f for f in firsts if f is not None)
            if last_first < len(epochs):
                result.launch_to_all_tiles_decoded_seconds = epochs[last_first] - launched
        same = next((i for i, frame in enumerate(codes)
                     if frame and all(v is not None for v in frame.values())), None)
        if same is not None and same < len(epochs):
            result.launch_to_all_tiles_decoded_same_frame_seconds = epochs[same] - launched
        if epochs[0] < launched:
            result.notes.append("the first composite frame is stamped before wz capture was launched")


# -- report ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    label: str
    value: Callable[[RunResult], float | None]
    check: Callable[[float], bool]


TARGETS: dict[str, Target] = {
    # Both counts must reach it: a new picture in (nearly) every composite frame, and that many frames a second.
    "fps": Target("≥ 14.5 per tile, both counts", lambda r: _lowest(r.distinct_fps_min, r.distinct_fps_wall_min),
                  lambda v: v >= 14.5),
    "skew": Target("p95 ≤ 67 ms", lambda r: r.skew_p95_ms, lambda v: v <= 67),
    "dropped": Target("< 1 %", lambda r: r.dropped_share, lambda v: v < 0.01),
    "cores": Target("≤ 2 cores", lambda r: r.cores_recording, lambda v: v <= 2),
    "rss": Target("≤ 3 GiB", lambda r: None if r.peak_rss_bytes is None else r.peak_rss_bytes / GIB,
                  lambda v: v <= 3),
    "first_frame": Target("≤ 5 s", lambda r: r.launch_to_first_frame_seconds, lambda v: v <= 5),
    # How far within (negative) or over 0.1 x the recorded seconds + 30 s the stop-to-exit time is.
    "stop_to_exit": Target("≤ 0.1 × recorded + 30 s", lambda r: None if r.stop_to_exit_seconds is None
                           or r.recording_seconds is None
                           else r.stop_to_exit_seconds - (0.1 * r.recording_seconds + 30), lambda v: v <= 0),
    "memory_flat": Target("growth < 5 % after minute 1", lambda r: r.rss_growth_after_first_minute,
                          lambda v: v < 0.05),
}


def target_met(key: str, run: RunResult | None) -> bool | None:
    """Whether `run` meets target `key`; None when it did not run or has no such figure."""
    if run is None or not run.measured:
        return None
    target = TARGETS[key]
    value = target.value(run)
    return None if value is None else target.check(value)


def target_verdict(key: str, run: RunResult | None) -> str:
    label = TARGETS[key].label
    if run is None or not run.measured:
        return f"{label} (not run)"
    met = target_met(key, run)
    return f"{label}: {'n/a' if met is None else '✅ met' if met else '❌ missed'}"


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def per_tile(values: dict[int, float], spec: str = ".1f") -> str:
    return " · ".join(fmt(values[t], spec) for t in sorted(values)) if values else "n/a"


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024**2:,.0f} MiB"


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / GIB
    return f"{model}, {os.cpu_count()} logical cores, {memory:.0f} GiB RAM, Linux {platform.release()}"


def markdown(runs: list[RunResult]) -> str:
    target_run = next((r for r in runs if r.tiles == TARGET_TILES), None)
    columns = [f"{r.tiles} tile{'s' if r.tiles > 1 else ''}" for r in runs]
    header = ["metric", *columns, f"target ({TARGET_TILES} tiles)"]
    rows: list[tuple[str, Callable[[RunResult], str], str]] = [
        ("capture status", lambda r: (r.status or "failed") + (f" (wz exit {r.exit_code})" if r.exit_code else ""),
         ""),
        ("composite frames/s by wall clock: whole / after skip",
         lambda r: f"{fmt(r.composite_fps_whole)} / {fmt(r.composite_fps_window)}", ""),
        ("composite frame gap p95 / max after skip (ms)",
         lambda r: f"{fmt(r.composite_gap_p95_ms, '.0f')} / {fmt(r.composite_gap_max_ms, '.0f')}", ""),
        ("distinct frames/s per tile, per wall-clock second", lambda r: per_tile(r.distinct_fps_wall), ""),
        ("distinct frames/s per tile, per `fps` composite frames", lambda r: per_tile(r.distinct_fps), ""),
        ("distinct frames/s, min over tiles: wall clock / per frames",
         lambda r: f"{fmt(r.distinct_fps_wall_min)} / {fmt(r.distinct_fps_min)}", target_verdict("fps", target_run)),
        ("time code read, min share of frames",
         lambda r: fmt(min(r.decoded_share.values()) * 100, ".0f", " %") if r.decoded_share else "n/a", ""),
        ("skew p50 / p95 / max (ms)",
         lambda r: f"{fmt(r.skew_p50_ms, '.0f')} / {fmt(r.skew_p95_ms, '.0f')} / {fmt(r.skew_max_ms, '.0f')}",
         target_verdict("skew", target_run)),
        ("picture age at grab p50 / p95 / max (ms)",
         lambda r: f"{fmt(r.picture_age_p50_ms, '.0f')} / {fmt(r.picture_age_p95_ms, '.0f')} / "
         f"{fmt(r.picture_age_max_ms, '.0f')}", ""),
        ("browser cores per tile (the capture's own measure)", lambda r: per_tile(r.tile_cores, ".2f")
         + "".join(f"; tile {tile} held back at {at:g} s" for tile, at in r.priority_lowered.items()), ""),
        ("browser dropped frames",
         lambda r: fmt(None if r.dropped_share is None else r.dropped_share * 100, ".2f", " %")
         + (f" ({r.video_frames_dropped:.0f} of {r.video_frames_total:.0f})" if r.video_frames_total else ""),
         target_verdict("dropped", target_run)),
        ("CPU cores, recording", lambda r: fmt(r.cores_recording, ".2f"), target_verdict("cores", target_run)),
        ("CPU cores, launch to exit (sampled / rusage)",
         lambda r: f"{fmt(r.cores_whole_run, '.2f')} / "
         + fmt(None if r.cpu_seconds_rusage is None or not r.launch_to_exit_seconds
               else r.cpu_seconds_rusage / r.launch_to_exit_seconds, ".2f"), ""),
        ("peak RSS, process tree (sum over processes)", lambda r: mib(r.peak_rss_bytes),
         target_verdict("rss", target_run)),
        ("peak PSS, process tree (shared pages split)", lambda r: mib(r.peak_pss_bytes), ""),
        ("processes in tree (max)", lambda r: fmt(r.max_processes, "d"), ""),
        ("bench's own sampling, cores (not counted)",
         lambda r: fmt(None if r.sampler_cpu_seconds is None or not r.launch_to_exit_seconds
                       else r.sampler_cpu_seconds / r.launch_to_exit_seconds, ".2f"), ""),
        ("launch → first composite frame", lambda r: fmt(r.launch_to_first_frame_seconds, ".2f", " s"),
         target_verdict("first_frame", target_run)),
        ("launch → every tile's time code read", lambda r: fmt(r.launch_to_all_tiles_decoded_seconds, ".2f", " s"),
         ""),
        ("launch → wz exits", lambda r: fmt(r.launch_to_exit_seconds, ".1f", " s"), ""),
        ("recording stopped → wz exits", lambda r: fmt(r.stop_to_exit_seconds, ".1f", " s"),
         target_verdict("stop_to_exit", target_run)),
        ("summed RSS at each minute of recording (processes)", lambda r: " · ".join(
            f"{rss / 2**20:,.0f} ({count})" for rss, count in zip(r.rss_by_minute_bytes, r.processes_by_minute,
                                                                   strict=True)) or "n/a (under a minute)", ""),
        ("summed RSS growth after minute 1", lambda r: fmt(None if r.rss_growth_after_first_minute is None
                                                          else r.rss_growth_after_first_minute * 100, ".1f", " %"),
         target_verdict("memory_flat", target_run)),
        ("load average (1 min) at launch", lambda r: fmt(r.load_average_at_launch, ".2f"), ""),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for label, cell, target in rows:
        cells = [cell(r) if r.measured or label == "capture status" else "—" for r in runs]
        lines.append("| " + " | ".join([label, *cells, target]) + " |")
    return "\n".join(lines)


def render(runs: list[RunResult], duration: float, skip: float, profile: str, *,
           tile_size: str = DEFAULT_TILE_SIZE, heavy: bool = False) -> str:
    room = PROFILES[profile]
    stream = (f"H.264 High {room.video_kbps} kbit/s" if room.video_kbps else "H.264 baseline, constant quality")
    parts = [
        f"Capture benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {duration:g} s per run, demo rooms "
        f"{room.name} ({room.width}x{room.height} at {room.fps} fps, {stream}, AAC {room.audio_kbps} kbit/s), "
        f"tiles of {tile_size}, frame rates and skew measured after the first {skip:g} s."
        + (" The last tile of each run is the heavy page (a thread spinning per core), not a room." if heavy else ""),
        f"Machine: {machine_line()}.",
        "",
        markdown(runs),
    ]
    notes = [f"- {r.tiles} tile(s): {note}" for r in runs for note in r.notes]
    for run in runs:
        if run.cores_recording_by_program:
            top = [f"{label} {cores:.2f}" for label, cores in run.cores_recording_by_program.items() if cores >= 0.01]
            notes.append(f"- {run.tiles} tile(s): cores while recording, by program: {', '.join(top)}")
        if run.rss_growth_by_program_mib:
            grew = [f"{label} {mib_:+,.0f}" for label, mib_ in run.rss_growth_by_program_mib.items() if abs(mib_) >= 1]
            notes.append(f"- {run.tiles} tile(s): summed RSS from minute 1 to the last minute, by program (MiB): "
                         + ", ".join(grew))
        if run.cores_recording_by_thread:
            top = [f"{label} {cores:.2f}" for label, cores in run.cores_recording_by_thread.items() if cores >= 0.02]
            notes.append(f"- {run.tiles} tile(s): cores while recording, by thread (≥ 0.02): {', '.join(top)}")
    notes += [f"- {r.tiles} tile(s) FAILED: {r.failure}" for r in runs if r.failure]
    if notes:
        parts += ["", "Notes:", *notes]
    return "\n".join(parts)


# -- command line ----------------------------------------------------------------------------------------------------


def parse_tiles(text: str) -> list[int]:
    try:
        tiles = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--tiles takes numbers like 1,2,4,6, not {text!r}") from exc
    if not tiles or any(not 1 <= t <= MAX_TILES for t in tiles):
        raise argparse.ArgumentTypeError(f"each tile count must be 1 to {MAX_TILES}")
    return tiles


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench capture", description=__doc__.splitlines()[0] if __doc__
                                     else None)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help="how the demo rooms' streams are encoded (default: 720p30, what platforms send)")
    parser.add_argument("--tile-size", choices=list(TILE_SIZES), default=DEFAULT_TILE_SIZE,
                        help=f"each tile's size in the composite (default {DEFAULT_TILE_SIZE})")
    parser.add_argument("--heavy", action="store_true",
                        help="record the last tile on /fail/heavy-page, a page that takes every core as a room too "
                             "large to decode would: do the other tiles keep their rate?")
    parser.add_argument("--tiles", type=parse_tiles, default=list(DEFAULT_TILES),
                        help="comma-separated tile counts to record (default: 1,2,4,6)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds per capture (default: 30)")
    parser.add_argument("--skip", type=float, default=DEFAULT_SKIP,
                        help="seconds left out of the frame-rate and skew figures while pages load (default: 8)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON to FILE")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the captures in DIR (default: a temporary directory, removed afterwards)")
    parser.add_argument("--no-pss", dest="pss", action="store_false",
                        help="sample only RSS, not PSS (PSS reads /proc/PID/smaps_rollup of every process)")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wangzheng-bench",
                        help="where the demo media are made once and kept (default: ~/.cache/wangzheng-bench)")
    return parser


def keep_failure_logs(run_dir: Path, into: Path) -> Path:
    """Copy a failed run's logs, manifest and wz stderr out of the scratch directory before it is removed."""
    target = into / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{run_dir.name}"
    target.mkdir(parents=True, exist_ok=True)
    for source in (run_dir / "capture" / "logs", run_dir / "capture" / "work"):
        if source.is_dir():
            shutil.copytree(source, target / source.name, dirs_exist_ok=True)
    for source in (run_dir / "wz-stderr.log", run_dir / "capture" / "manifest.json",
                   *sorted((run_dir / "capture" / "segments").glob("*.csv"))):
        if source.is_file():
            shutil.copy2(source, target / source.name)
    return target


@contextlib.contextmanager
def work_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise SystemExit(f"bench: --keep {keep} is not empty")
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="wz-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= args.skip + 2:
        print(f"bench: --duration must be over --skip + 2 s ({args.skip + 2:g} s)", file=sys.stderr)
        return 2
    if not WZ.exists():
        print(f"bench: {WZ} is missing; run ./scripts/setup", file=sys.stderr)
        return 1
    subreaper = become_subreaper()
    if not subreaper:
        print("bench: could not become a child subreaper; processes orphaned by the capture go uncounted",
              file=sys.stderr)
    runs: list[RunResult] = []
    print(f"bench: preparing the demo pages in {args.cache} (the first time takes a while)", file=sys.stderr,
          flush=True)
    with FixtureServer(args.cache, profile=args.profile) as server, work_directory(args.keep) as workdir:
        for tiles in args.tiles:
            run = run_capture(server.base_url, tiles, args.duration, args.skip, workdir, pss=args.pss,
                              tile_size=args.tile_size, heavy=args.heavy)
            runs.append(run)
            if run.failure:
                print(f"bench: {tiles} tile(s) failed: {run.failure}", file=sys.stderr, flush=True)
                if args.keep is None:
                    kept = keep_failure_logs(workdir / f"tiles-{tiles}", args.cache / "failed")
                    print(f"bench: its logs are kept in {kept}", file=sys.stderr, flush=True)
        if args.keep is not None:
            print(f"bench: captures kept in {workdir}", file=sys.stderr)
    print(render(runs, args.duration, args.skip, args.profile, tile_size=args.tile_size, heavy=args.heavy))
    if args.json is not None:
        target_run = next((r for r in runs if r.tiles == TARGET_TILES), None)
        document = {
            "generated_at": datetime.now(UTC).isoformat(),
            "machine": machine_line(),
            "profile": args.profile,
            "tile_size": args.tile_size,
            "heavy_last_tile": args.heavy,
            "duration_seconds": args.duration,
            "skip_seconds": args.skip,
            "sample_interval_seconds": SAMPLE_INTERVAL,
            "subreaper": subreaper,
            "targets": {key: {"tiles": TARGET_TILES, "target": t.label, "met": target_met(key, target_run)}
                        for key, t in TARGETS.items()},
            "runs": [asdict(r) for r in runs],
        }
        args.json.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"bench: figures written to {args.json}", file=sys.stderr)
    failed = [r for r in runs if r.failure]
    for run in failed:
        print(f"bench: capture of {run.tiles} tile(s) failed: {run.failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
