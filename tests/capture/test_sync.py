"""The capture's verdict on its own synchronization, from readings made up to show each case (a fast test)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from capture.sync import METHOD, SyncMonitor
from cli.main import sync_lines
from evidence import DegradedCause, Manifest, SyncQuality, SyncVerdict, TileStatus, TileSync

FPS = 15
START = 1_800_000_000.0


def frames(seconds: float, *, gaps: dict[int, float] | None = None) -> list[tuple[float, float]]:
    """(composite seconds, epoch) at FPS, with `gaps`: frame index -> extra seconds before that frame."""
    out = []
    at = 0.0
    for index in range(int(seconds * FPS)):
        at += (gaps or {}).get(index, 0.0)
        out.append((at, START + at))
        at += 1 / FPS
    return out


def steady(monitor: SyncMonitor, tile: int, seconds: int, *, drop_from: int | None = None) -> None:
    """Video counters every 2 s of a 30 fps room; from `drop_from` on, 10 % of its frames are dropped."""
    decoded = dropped = 0
    for second in range(0, seconds + 1, 2):
        monitor.add_video(tile, START + second, decoded, dropped)
        decoded += 60
        if drop_from is not None and second >= drop_from:
            dropped += 6


def test_frames_on_time_and_no_drops_are_in_sync() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    steady(monitor, 1, 20)
    quality = monitor.judge(frames(20), {1: TileStatus.COMPLETE, 2: TileStatus.COMPLETE})
    one, two = quality.tiles
    assert one.verdict == two.verdict == SyncVerdict.IN_SYNC
    assert one.video_frames_decoded == 600 and one.video_frames_dropped == 0 and one.dropped_share == 0
    assert two.video_frames_decoded is None and "no video" in two.remark  # a product page: composite only
    assert quality.composite is not None
    assert quality.composite.frames == 300 and quality.composite.late_frames == 0
    assert quality.composite.interval_p50_ms == pytest.approx(66.7, abs=0.1)
    assert quality.method == METHOD


def test_a_late_composite_frame_degrades_every_tile_with_when_and_how_much() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    quality = monitor.judge(frames(20, gaps={150: 0.4}), {1: TileStatus.COMPLETE, 2: TileStatus.PARTIAL})
    for tile in quality.tiles:
        assert tile.verdict == SyncVerdict.DEGRADED
        (span,) = tile.spans
        assert span.cause == DegradedCause.COMPOSITE_LATE
        assert span.start_seconds == pytest.approx(149 / FPS, abs=0.01)
        assert span.worst == pytest.approx(466.7, abs=0.5) and span.bound == pytest.approx(133.3, abs=0.1)
    assert quality.composite is not None and quality.composite.late_frames == 1
    assert quality.composite.longest_gap_at_seconds == pytest.approx(149 / FPS, abs=0.01)


def test_one_tile_dropping_frames_degrades_that_tile_only() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    steady(monitor, 1, 20)
    steady(monitor, 2, 20, drop_from=10)
    quality = monitor.judge(frames(20), {1: TileStatus.COMPLETE, 2: TileStatus.COMPLETE})
    assert quality.tiles[0].verdict == SyncVerdict.IN_SYNC
    degraded = quality.tiles[1]
    assert degraded.verdict == SyncVerdict.DEGRADED
    (span,) = degraded.spans  # the windows one after another are one span
    assert span.cause == DegradedCause.BROWSER_DROPPED
    assert (span.start_seconds, span.end_seconds) == (pytest.approx(10.0), pytest.approx(20.0))
    assert span.worst == pytest.approx(0.1)
    assert degraded.dropped_share == pytest.approx(30 / 600)
    assert "tile 2 dropping 10%" in monitor.live_warning()


def test_a_page_that_replaced_its_video_is_counted_from_its_new_start() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    for second, decoded in ((0, 0), (2, 60), (4, 120), (6, 30), (8, 90)):  # a new <video> at 5 s
        monitor.add_video(1, START + second, decoded, 0)
    quality = monitor.judge(frames(10), {1: TileStatus.COMPLETE})
    assert quality.tiles[0].verdict == SyncVerdict.IN_SYNC
    assert quality.tiles[0].video_frames_decoded == 210


def test_a_failed_tile_is_not_measured_and_nothing_is_claimed_without_frames() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    quality = monitor.judge(frames(5), {1: TileStatus.FAILED, 2: TileStatus.COMPLETE})
    assert quality.tiles[0].verdict == SyncVerdict.NOT_MEASURED and quality.tiles[0].remark
    assert quality.tiles[1].verdict == SyncVerdict.IN_SYNC
    empty = SyncMonitor(fps=FPS, cores=2).judge([], {1: TileStatus.COMPLETE})
    assert empty.composite is None and empty.tiles[0].verdict == SyncVerdict.NOT_MEASURED


def test_the_machine_load_and_the_live_warning_come_from_the_cpu_readings() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    for second, busy in enumerate((0.5, 0.6, 0.97, 0.99, 1.0)):
        monitor.cpu.append((START + second, busy))
    assert monitor.live_warning() == "machine not keeping up: every core busy for 3 s"
    quality = monitor.judge(frames(5), {1: TileStatus.COMPLETE})
    assert quality.machine is not None
    assert quality.machine.samples == 5 and quality.machine.saturated_seconds == 3.0
    assert quality.machine.busy_p95 == 1.0 and quality.machine.busy_mean == pytest.approx(0.812)
    monitor.sample_cpu(START + 10)  # the real /proc/stat: a first reading only sets the baseline
    time.sleep(0.2)  # /proc/stat counts in hundredths of a second
    monitor.sample_cpu(START + 11)
    assert len(monitor.cpu) == 6 and 0.0 <= monitor.cpu[-1][1] <= 1.0


def costs(monitor: SyncMonitor, seconds: int, cores: dict[int, float], *, dropping: tuple[int, ...] = (1,)) -> None:
    """Each tile's browser CPU seconds, read once a second, at a steady `cores`; every core saturated throughout;
    the tiles in `dropping` drop 10 % of their video frames in their last two windows."""
    for second in range(seconds + 1):
        monitor.cpu.append((START + second, 1.0))
        for tile, rate in cores.items():
            monitor.add_tile_cpu(tile, START + second, rate * second)
    for tile in dropping:
        monitor.add_video(tile, START + seconds - 4, 540, 0)
        monitor.add_video(tile, START + seconds - 2, 600, 6)
        monitor.add_video(tile, START + seconds, 660, 12)


def test_each_tile_says_what_its_browser_cost() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    for second in range(21):  # 0.2 cores, then 0.8 for 6 s from 10 s on
        monitor.add_tile_cpu(1, START + second, 0.2 * second + 0.6 * max(0, min(second, 16) - 10))
    quality = monitor.judge(frames(20), {1: TileStatus.COMPLETE, 2: TileStatus.COMPLETE})
    one, two = quality.tiles
    assert one.cpu_cores_mean == pytest.approx((0.2 * 20 + 0.6 * 6) / 20, abs=0.001)
    assert one.cpu_cores_peak == pytest.approx(0.8, abs=0.001)  # the most over any 5 s
    assert one.priority_lowered_at_seconds is None
    assert two.cpu_cores_mean is None and two.cpu_cores_peak is None  # never measured: not claimed


def test_a_short_burst_is_averaged_over_the_peak_window() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    for second in range(21):  # 0.2 cores, and 1.2 for 2 s from 10 s on
        monitor.add_tile_cpu(1, START + second, 0.2 * second + 1.0 * max(0, min(second, 12) - 10))
    quality = monitor.judge(frames(20), {1: TileStatus.FAILED})
    (one,) = quality.tiles
    assert one.cpu_cores_peak == pytest.approx((0.2 * 5 + 1.0 * 2) / 5, abs=0.001)  # 5 s windows, not 1 s
    assert one.verdict == SyncVerdict.NOT_MEASURED and one.cpu_cores_mean is not None  # failed: its cost still said


def test_a_tile_far_costlier_than_the_others_on_a_saturated_machine_is_named() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    costs(monitor, 8, {1: 0.3, 2: 1.2, 3: 0.25})
    tile, cores, median = monitor.costly_tile({1, 2, 3}) or (0, 0.0, 0.0)
    assert tile == 2 and cores == pytest.approx(1.2) and median == pytest.approx(0.275)
    monitor.lowered[2] = START + 8
    assert monitor.costly_tile({1, 2, 3}) is None  # lowered once; the next heaviest is not far costlier
    assert "tile 2 costs far more than the others" in monitor.live_warning()
    quality = monitor.judge(frames(8), {1: TileStatus.COMPLETE, 2: TileStatus.COMPLETE, 3: TileStatus.COMPLETE})
    assert quality.tiles[1].priority_lowered_at_seconds == pytest.approx(8.0)
    assert quality.tiles[1].cpu_cores_mean == pytest.approx(1.2)
    assert "nice 10" in quality.method
    lines = sync_lines(quality)
    assert lines[2].startswith("SYNC tile 2: in-sync, its browser used 1.20 cores (peak 1.20), its CPU priority "
                               "lowered at 8 s"), lines
    assert "its browser used 0.30 cores" in lines[1] and "priority" not in lines[1]


@pytest.mark.parametrize(("cores", "saturated", "recording"), [
    ({1: 0.3, 2: 1.2}, False, {1, 2}),  # the machine keeps up: nobody is held back
    ({1: 0.3, 2: 0.55}, True, {1, 2}),  # costlier, but not twice the others
    ({1: 0.1, 2: 0.4}, True, {1, 2}),  # four times, but under half a core: not what saturates the machine
    ({1: 0.3, 2: 1.2, 3: 0.25}, True, {1, 3}),  # the costly tile no longer records
    ({2: 1.2}, True, {2}),  # alone: there is nobody to keep the rate for
    ({1: 0.8, 2: 0.02}, True, {1, 2}),  # a room beside a product page: under its fair share of the machine
])
def test_no_tile_is_held_back_without_cause(cores: dict[int, float], saturated: bool, recording: set[int]) -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    costs(monitor, 8, cores, dropping=(1, 2))
    if not saturated:
        monitor.cpu[:] = [(at, 0.6) for at, _ in monitor.cpu]
    assert monitor.costly_tile(recording) is None


def test_a_costly_tile_is_left_alone_while_nobody_else_suffers() -> None:
    """Lowering a tile's priority costs it its own timing: only another tile dropping frames for a while justifies
    it (a tile dropping its own frames is not harmed by the others; one frame lost in one window is no harm)."""
    monitor = SyncMonitor(fps=FPS, cores=2)
    costs(monitor, 8, {1: 0.3, 2: 1.2, 3: 0.25}, dropping=(2,))
    assert monitor.costly_tile({1, 2, 3}) is None
    monitor.add_video(1, START + 10, 720, 0)
    monitor.add_video(1, START + 12, 780, 1)  # one frame of 60: past the 1 % bound, once
    assert monitor.live_state()["dropping"] == {1: pytest.approx(1 / 60, abs=0.001), 2: pytest.approx(0.1)}
    assert monitor.costly_tile({1, 2, 3}) is None
    costs(monitor, 8, {1: 0.3, 2: 1.2, 3: 0.25}, dropping=(3,))
    assert monitor.costly_tile({1, 2, 3}) is not None


def test_a_second_tile_turning_heavy_is_held_back_too() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    costs(monitor, 8, {1: 0.2, 2: 1.2, 3: 0.9, 4: 0.2})
    monitor.lowered[2] = START + 3  # still the heaviest: nice does not cap what it takes
    assert monitor.costly_tile({1, 2, 3, 4}) == (3, pytest.approx(0.9), pytest.approx(0.2))


def test_a_costly_tile_is_judged_on_its_last_seconds_not_its_whole_past() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    for second in range(31):  # tile 2 was heavy for its first 20 s, then light
        monitor.cpu.append((START + second, 1.0))
        monitor.add_tile_cpu(1, START + second, 0.3 * second)
        monitor.add_tile_cpu(2, START + second, 1.5 * min(second, 20) + 0.3 * max(0, second - 20))
    assert monitor.costly_tile({1, 2}) is None
    assert monitor.recent_cores()[2] == pytest.approx(0.3)


@pytest.mark.parametrize("figure", ["Infinity", "1e999", "-Infinity", "NaN"])
def test_a_forged_cost_cannot_be_infinite(figure: str) -> None:
    """Canonical JSON holds no infinite figure; a forged manifest that does is refused, not printed as one."""
    with pytest.raises(ValidationError):
        TileSync.model_validate_json(f'{{"tile": 1, "verdict": "in-sync", "cpu_cores_mean": {figure}}}')


def test_old_manifests_without_a_verdict_still_load() -> None:
    fields = Manifest.model_fields
    assert fields["sync"].default is None and not fields["sync"].is_required()


def test_a_browser_too_busy_to_answer_is_not_called_a_page_without_video() -> None:
    monitor = SyncMonitor(fps=FPS, cores=2)
    monitor.add_video(1, START, 0, 0)  # a product page: it answers, with no video
    monitor.add_video(1, START + 2, 0, 0)
    for _ in range(5):
        monitor.add_unanswered(2)  # a room whose renderer was starved: no answer in time
    quality = monitor.judge(frames(10), {1: TileStatus.COMPLETE, 2: TileStatus.COMPLETE})
    assert quality.tiles[0].video_frames_decoded is None and "no video" in quality.tiles[0].remark
    assert quality.tiles[1].video_frames_decoded is None
    assert quality.tiles[1].remark == "its browser did not answer 5 of 5 reads of its video counters in time"


@pytest.mark.parametrize("hostile", ["\x1b[3A\x1b[J", "in-sync\nSYNC tile 2: in-sync", "\u202egnp.exe", "\r"])
def test_a_forged_verdict_cannot_write_to_the_terminal_that_prints_it(hostile: str) -> None:
    """`wz verify` prints the remark and the method: a forger's escape sequences could erase the warnings above
    them (ORIGIN NOT PINNED), so a manifest carrying them does not load."""
    quality = SyncMonitor(fps=FPS, cores=2).judge(frames(2), {1: TileStatus.COMPLETE})
    for forged in (
        quality.model_copy(update={"method": hostile}).model_dump(mode="json"),
        {**quality.model_dump(mode="json"),
         "tiles": [{**quality.tiles[0].model_dump(mode="json"), "remark": "late " + hostile}]},
    ):
        with pytest.raises(ValidationError, match="printable"):
            SyncQuality.model_validate(forged)
