"""The capture's verdict on its own synchronization, from readings made up to show each case (a fast test)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from capture.sync import METHOD, SyncMonitor
from evidence import DegradedCause, Manifest, SyncQuality, SyncVerdict, TileStatus

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
