"""A capture measures its own synchronization, so a court need not trust a benchmark run months earlier.

While recording: the machine's CPU (all cores, /proc/stat, once a second) and each tile's video frames as its
browser reports them (decoded and dropped, read-only, every few seconds). After assembly: the composite's frame
intervals from the grab time of every frame (frames.csv). From these, a verdict per tile: `in-sync` when every
composite frame came within two frame periods of the last (the screen is grabbed whole, so every tile of a frame is
from the same instant) and the tile's browser dropped no more than 1 % of its video frames in any window;
`degraded` with when and how much otherwise; `not-measured` for a tile that never recorded.

It reads; it changes nothing on the pages and never slows the recording (a page that does not answer within the
sampling deadline is skipped for that round).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence import (
    CompositeTiming,
    DegradedCause,
    DegradedSpan,
    MachineLoad,
    SyncQuality,
    SyncVerdict,
    TileStatus,
    TileSync,
)

SATURATED_BUSY = 0.95  # the share of all cores' time that counts as saturated
DROPPED_BOUND = 0.01  # a window with more of the tile's video frames dropped is degraded
LATE_PERIODS = 2.0  # a composite interval over two frame periods means at least one frame was missed
MIN_WINDOW_FRAMES = 10  # fewer decoded frames in a window say nothing about a dropped share
SPAN_JOIN_SECONDS = 1.0  # spans closer than this are one span
LIVE_WINDOW_SAMPLES = 3
COST_WINDOW_SECONDS = 5.0  # a tile's cost is judged over the last few seconds, and its peak over windows this long
# A tile's browser costs "far more" when it uses this many times the other tiles' median and at least HEAVY_CORES:
# then, while every core is busy and another tile keeps dropping frames, its CPU priority is lowered to
# LOWERED_NICENESS so the others keep their rate (SyncMonitor.costly_tile).
HEAVY_FACTOR = 2.0
HEAVY_CORES = 0.5
LOWERED_NICENESS = 10

METHOD = (
    "composite: the interval between the grab times of consecutive frames (frames.csv); a frame later than "
    f"{LATE_PERIODS:g} frame periods after the one before is late. Browser: each tile's video elements' decoded "
    "and dropped frame counters (getVideoPlaybackQuality), read-only, every few seconds; a window with more than "
    f"{DROPPED_BOUND:.0%} dropped is degraded. Machine: /proc/stat of all cores about once a second; "
    f"saturated at {SATURATED_BUSY:.0%} busy or more. A tile is in-sync when no composite frame was late and its "
    "browser dropped no more than the bound in any window while it recorded. Cost: the CPU time of each tile's "
    "browser and all its processes, about once a second; mean cores over the recording and the most over any "
    f"{COST_WINDOW_SECONDS:g} s (the mean where less was recorded). A tile whose browser used, over the last "
    f"{COST_WINDOW_SECONDS:g} s, at least {HEAVY_FACTOR:g} times the median of the other tiles not held back, and "
    f"more than its fair share of the machine (at least {HEAVY_CORES:g} cores), while every core was saturated and "
    f"another tile's browser dropped more than the bound in each of its last two windows, had its CPU priority "
    f"lowered (nice {LOWERED_NICENESS})."
)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores since boot, or None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


@dataclass
class VideoReading:
    at: float  # epoch seconds
    decoded: int  # cumulative, as the page reports it
    dropped: int


@dataclass
class SyncMonitor:
    """Collects the readings during the recording and judges them once the composite exists."""

    fps: int
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (epoch, busy share since the reading before)
    video: dict[int, list[VideoReading]] = field(default_factory=dict)
    unanswered: dict[int, int] = field(default_factory=dict)  # reads of a tile's counters that had no answer in time
    tile_cpu: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # (epoch, browser CPU s so far)
    lowered: dict[int, float] = field(default_factory=dict)  # tile -> epoch its browser's priority was lowered
    _last_cpu: tuple[float, float] | None = None

    def sample_cpu(self, now: float) -> None:
        times = _cpu_times()
        if times is None:
            return
        if self._last_cpu is not None:
            busy = times[0] - self._last_cpu[0]
            total = times[1] - self._last_cpu[1]
            if total > 0:
                self.cpu.append((now, min(1.0, max(0.0, busy / total))))
        self._last_cpu = times

    def add_video(self, tile: int, now: float, decoded: int, dropped: int) -> None:
        self.video.setdefault(tile, []).append(VideoReading(now, decoded, dropped))

    def add_unanswered(self, tile: int) -> None:
        self.unanswered[tile] = self.unanswered.get(tile, 0) + 1

    def add_tile_cpu(self, tile: int, now: float, seconds: float) -> None:
        self.tile_cpu.setdefault(tile, []).append((now, seconds))

    def recent_cores(self) -> dict[int, float]:
        """Each measured tile's cores over about the last COST_WINDOW_SECONDS."""
        cores = {}
        for tile, readings in self.tile_cpu.items():
            last = readings[-1]
            first = next((r for r in reversed(readings) if last[0] - r[0] >= COST_WINDOW_SECONDS), None)
            if first is not None:
                cores[tile] = (last[1] - first[1]) / (last[0] - first[0])
        return cores

    def costly_tile(self, recording: set[int]) -> tuple[int, float, float] | None:
        """While every core is saturated and another recording tile keeps dropping frames past the bound, the
        recording tile not yet held back whose browser costs far more than the others not held back (twice their median)
        and more than its fair share of the machine (and at least HEAVY_CORES): (tile, its cores, the others'
        median cores); None otherwise. Only harm justifies it: lowering a tile's priority costs that tile its own
        timing, and the kernel's scheduler often keeps the other tiles' short bursts on time by itself. A lone
        room beside near-idle product pages is not held back: it costs less than a fair share of the machine."""
        state = self.live_state()
        if not state["cpu_saturated_seconds"]:
            return None
        recent = {tile: value for tile, value in self.recent_cores().items() if tile in recording}
        cores = {tile: value for tile, value in recent.items() if tile not in self.lowered}
        if len(cores) < 2:
            return None
        heaviest = max(cores, key=cores.__getitem__)
        median = statistics.median(value for tile, value in cores.items() if tile != heaviest)
        fair_share = self.cores / len(recent)
        if cores[heaviest] < max(HEAVY_CORES, fair_share) or cores[heaviest] < HEAVY_FACTOR * median:
            return None
        if not any(self._suffering(tile) for tile in recording if tile != heaviest):
            return None  # nobody else suffers: leave it be
        return heaviest, cores[heaviest], median

    def _suffering(self, tile: int) -> bool:
        """The tile's browser dropped more than the bound in each of its last two windows (about 4 s): harm that
        lasts, not one frame lost in one window."""
        windows = _windows(self.video.get(tile, [])[-3:])
        return len(windows) == 2 and all(_over_bound(decoded, dropped) is not None
                                         for _, _, decoded, dropped in windows)

    def live_state(self) -> dict[str, Any]:
        """Whether the machine keeps up now: every core saturated over the last seconds, and the tiles whose
        browser dropped more than the bound in its last window (tile -> dropped share)."""
        recent = [busy for _, busy in self.cpu[-LIVE_WINDOW_SAMPLES:]]
        saturated = len(recent) == LIVE_WINDOW_SAMPLES and min(recent) >= SATURATED_BUSY
        dropping = {}
        for tile, readings in sorted(self.video.items()):
            # Only the last window: this runs every second of a capture that may last hours.
            for _, _, decoded, dropped in _windows(readings[-2:]):
                if (share := _over_bound(decoded, dropped)) is not None:
                    dropping[tile] = round(share, 3)
        return {"cpu_saturated_seconds": LIVE_WINDOW_SAMPLES if saturated else 0, "dropping": dropping,
                "lowered": sorted(self.lowered)}

    def live_warning(self) -> str:
        """What to say on the progress line when the machine is not keeping up; empty when it is."""
        state = self.live_state()
        problems = []
        if state["cpu_saturated_seconds"]:
            problems.append(f"every core busy for {state['cpu_saturated_seconds']} s")
        problems += [f"tile {tile} dropping {share:.0%} of its video frames"
                     for tile, share in state["dropping"].items()]
        if problems:
            problems += [f"tile {tile} costs far more than the others: its priority is lowered"
                         for tile in state["lowered"]]
        return ("machine not keeping up: " + "; ".join(problems)) if problems else ""

    def judge(self, frames: list[tuple[float, float]], statuses: dict[int, TileStatus]) -> SyncQuality:
        """`frames`: (composite seconds, epoch seconds) of every composite frame; `statuses`: each tile's end."""
        origin = frames[0][1] - frames[0][0] if frames else 0.0
        composite, late_spans = _composite_timing(frames, self.fps)
        tiles = []
        for tile, status in sorted(statuses.items()):
            mean, peak = _cost(self.tile_cpu.get(tile, []))
            lowered = self.lowered.get(tile)
            cost: dict[str, Any] = {
                "cpu_cores_mean": mean, "cpu_cores_peak": peak,
                "priority_lowered_at_seconds": round(max(0.0, lowered - origin), 3) if lowered is not None else None}
            if status == TileStatus.FAILED:  # what it cost before it failed is still said
                tiles.append(TileSync(tile=tile, verdict=SyncVerdict.NOT_MEASURED, remark="the tile did not record",
                                      **cost))
                continue
            readings = self.video.get(tile, [])
            spans = list(late_spans) + _dropped_spans(readings, origin)
            decoded, dropped = _totals(readings)
            missed = self.unanswered.get(tile, 0)
            if missed:
                remark = (f"its browser did not answer {missed} of {missed + len(readings)} reads of its video "
                          "counters in time")
            else:
                remark = "" if decoded else "no video on the page: its browser reported no video frames"
            if composite is None:
                verdict, remark = SyncVerdict.NOT_MEASURED, "no composite frames to measure"
            else:
                verdict = SyncVerdict.DEGRADED if spans else SyncVerdict.IN_SYNC
            tiles.append(TileSync(
                tile=tile, verdict=verdict, video_frames_decoded=decoded if decoded else None,
                video_frames_dropped=dropped if decoded else None,
                dropped_share=round(dropped / decoded, 5) if decoded else None,
                spans=tuple(sorted(spans, key=lambda s: s.start_seconds)), remark=remark,
                **cost,
            ))
        return SyncQuality(method=METHOD, composite=composite, machine=self._machine_load(), tiles=tuple(tiles))

    def _machine_load(self) -> MachineLoad | None:
        if not self.cpu:
            return None
        shares = [busy for _, busy in self.cpu]
        saturated = 0.0
        for (before, _), (at, busy) in itertools.pairwise(self.cpu):
            if busy >= SATURATED_BUSY:
                saturated += at - before
        return MachineLoad(cores=self.cores, samples=len(shares), busy_mean=round(sum(shares) / len(shares), 4),
                           busy_p95=round(_percentile(shares, 0.95), 4), saturated_seconds=round(saturated, 1))


def read_frame_times(path: Path) -> list[tuple[float, float]]:
    """(composite seconds, epoch seconds) of every frame in frames.csv."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [(float(row["composite_seconds"]), float(row["epoch_seconds"])) for row in csv.DictReader(handle)]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _cost(readings: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """(mean cores over all readings, the most over any COST_WINDOW_SECONDS) of one tile's browser."""
    if len(readings) < 2 or readings[-1][0] <= readings[0][0]:
        return None, None
    mean = (readings[-1][1] - readings[0][1]) / (readings[-1][0] - readings[0][0])
    peak = mean
    end = 0
    for start_at, start_cpu in readings:
        while end < len(readings) and readings[end][0] - start_at < COST_WINDOW_SECONDS:
            end += 1
        if end == len(readings):
            break
        peak = max(peak, (readings[end][1] - start_cpu) / (readings[end][0] - start_at))
    return round(mean, 3), round(peak, 3)


def _composite_timing(frames: list[tuple[float, float]], fps: int) -> tuple[CompositeTiming | None,
                                                                             list[DegradedSpan]]:
    if len(frames) < 2:
        return None, []
    intervals = [(b[1] - a[1]) * 1000 for a, b in itertools.pairwise(frames)]
    bound = LATE_PERIODS * 1000 / fps
    longest = max(range(len(intervals)), key=intervals.__getitem__)
    late = [(frames[i][0], frames[i + 1][0], ms) for i, ms in enumerate(intervals) if ms > bound]
    timing = CompositeTiming(
        fps=fps, frames=len(frames), interval_p50_ms=round(_percentile(intervals, 0.5), 1),
        interval_p95_ms=round(_percentile(intervals, 0.95), 1), interval_max_ms=round(intervals[longest], 1),
        longest_gap_at_seconds=round(frames[longest][0], 3), late_frames=len(late),
    )
    return timing, _joined(DegradedCause.COMPOSITE_LATE, late, round(bound, 1))


def _windows(readings: list[VideoReading]) -> list[tuple[float, float, int, int]]:
    """(start, end, decoded, dropped) between consecutive readings; a counter that went down started again
    (the page replaced its video element), so its new value is the window's count."""
    windows = []
    for before, after in itertools.pairwise(readings):
        restarted = after.decoded < before.decoded or after.dropped < before.dropped
        decoded = after.decoded if restarted else after.decoded - before.decoded
        dropped = after.dropped if restarted else after.dropped - before.dropped
        windows.append((before.at, after.at, decoded, dropped))
    return windows


def _totals(readings: list[VideoReading]) -> tuple[int, int]:
    if not readings:
        return 0, 0
    decoded, dropped = readings[0].decoded, readings[0].dropped
    for _, _, window_decoded, window_dropped in _windows(readings):
        decoded += window_decoded
        dropped += window_dropped
    return decoded, dropped


def _over_bound(decoded: int, dropped: int) -> float | None:
    """A window's dropped share when it says something (enough frames) and is past the bound; None otherwise."""
    if decoded < MIN_WINDOW_FRAMES or dropped / decoded <= DROPPED_BOUND:
        return None
    return dropped / decoded


def _dropped_spans(readings: list[VideoReading], origin: float) -> list[DegradedSpan]:
    bad = [(start - origin, end - origin, share) for start, end, decoded, dropped in _windows(readings)
           if (share := _over_bound(decoded, dropped)) is not None]
    return _joined(DegradedCause.BROWSER_DROPPED, bad, DROPPED_BOUND)


def _joined(cause: DegradedCause, stretches: list[tuple[float, float, float]], bound: float) -> list[DegradedSpan]:
    """Stretches (start, end, figure) closer than SPAN_JOIN_SECONDS as one span each, with the worst figure."""
    spans: list[list[float]] = []
    for start, end, figure in sorted(stretches):
        if spans and start - spans[-1][1] <= SPAN_JOIN_SECONDS:
            spans[-1][1] = max(spans[-1][1], end)
            spans[-1][2] = max(spans[-1][2], figure)
        else:
            spans.append([start, end, figure])
    return [DegradedSpan(cause=cause, start_seconds=round(max(0.0, s), 3), end_seconds=round(max(0.0, e), 3),
                         worst=round(w, 4), bound=bound) for s, e, w in spans]
