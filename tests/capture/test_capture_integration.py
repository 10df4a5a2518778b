"""End to end: real Chromium on Xvfb, PulseAudio sinks and ffmpeg, against the demo pages."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import pytest

from capture.analysis import audio_tone, sync_report, tile_timecodes
from capture.fixtures import (
    PATH_FAIL_404,
    PATH_FAIL_HANG_LOAD,
    PATH_FAIL_HANG_RENDERER,
    PATH_HEAVY_PAGE,
    PATH_PRODUCT,
    PATH_SLOW_RENDERER,
    ROOM_TONES,
    FixtureServer,
    flv_path,
    live_path,
)
from capture.sync import read_frame_times
from cli.main import sync_lines
from evidence import ArtifactRole, CaptureStatus, DegradedCause, Manifest, StepName, SyncVerdict, TileStatus
from evidence.layout import FRAME_TIMES, load_manifest
from hashing import digest_file
from storage import S3Endpoint
from tests.conftest import REPO, base_env, wz

pytestmark = pytest.mark.integration

DURATION = 12.0


def ffprobe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def decodes_fully(path: Path) -> bool:
    """Every frame of every stream decodes without a single decoder complaint."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
         str(path)],
        capture_output=True, text=True, check=False,
    )
    counts = [int(x) for x in result.stdout.split() if x.strip().isdigit()]
    return result.returncode == 0 and not result.stderr.strip() and bool(counts) and min(counts) > 0


@pytest.fixture(scope="module")
def four_rooms(demo_server: FixtureServer, tmp_path_factory: pytest.TempPathFactory,
               s3_server: S3Endpoint) -> tuple[Manifest, Path, dict]:
    """One capture of three livestream rooms and the product page, shared by the assertions below."""
    base = tmp_path_factory.mktemp("four")
    out = base / "capture"
    env = base_env(base / "data", s3_server)
    urls = [demo_server.base_url + live_path(r) for r in (1, 2, 3)] + [demo_server.base_url + PATH_PRODUCT]
    result = wz(["capture", *urls, "--duration", str(DURATION), "--out", str(out), "--json", "--case", "T-1",
                 "--operator", "tester"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return load_manifest(out), out, summary


def test_summary_and_manifest_agree(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, summary = four_rooms
    assert summary["status"] == "complete" == manifest.status.value
    assert summary["capture_id"] == manifest.capture_id
    assert Path(summary["manifest"]) == out / "manifest.json"
    assert [t["status"] for t in summary["tiles"]] == ["complete"] * 4
    assert manifest.provenance.operator == "tester" and manifest.provenance.case_id == "T-1"
    assert [s.name for s in manifest.steps] == [StepName.INIT, StepName.ENVIRONMENT, StepName.SETUP, StepName.RECORD,
                                                StepName.LOAD, StepName.COLLECT, StepName.FINALIZE, StepName.MANIFEST]
    finalize = next(s for s in manifest.steps if s.name == StepName.FINALIZE)
    # The epoch sits just before the recorders start: no track begins with a fragment too short to assemble.
    assert "left out" not in finalize.detail, finalize.detail


def test_composite_has_the_duration_layout_and_one_track_per_tile(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    composite = out / "composite.mp4"
    info = ffprobe(composite)
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert len(video) == 1 and video[0]["codec_name"] == "h264"
    assert (video[0]["width"], video[0]["height"]) == (manifest.layout.width, manifest.layout.height) == (1280, 784)
    assert len(audio) == 4 and all(s["codec_name"] == "aac" for s in audio)
    for index, stream in enumerate(audio):
        assert stream["tags"]["handler_name"] == f"Tile {index + 1}: {manifest.tiles[index].url}"
    duration = float(video[0]["duration"])
    assert abs(duration - DURATION) < 1.0, duration
    assert abs(manifest.recorded_seconds - DURATION) < 1.0
    assert decodes_fully(composite)
    # faststart: the index comes before the media data
    head = composite.read_bytes()[:200_000]
    assert head.find(b"moov") < head.find(b"mdat")


def test_each_audio_track_carries_its_own_room(four_rooms: tuple[Manifest, Path, dict]) -> None:
    _, out, _ = four_rooms
    for track, room in enumerate((1, 2, 3)):
        frequency, level = audio_tone(out / "composite.mp4", track, skip_seconds=5)
        assert abs(frequency - ROOM_TONES[room]) < 5, (track, frequency)
        assert level > 0.01
    _, silence = audio_tone(out / "composite.mp4", 3, skip_seconds=5)
    assert silence < 0.001  # the product page has no sound: a silent track


def _snapshot_frames(out: Path, manifest: Manifest) -> set[int]:
    """Composite frames grabbed while a tile's full-page screenshot was drawn (DevTools redraws the window at the
    screenshot's scale meanwhile; each tile's timeline says when: snapshot-started ... snapshot)."""
    epochs = [epoch for _, epoch in read_frame_times(out / FRAME_TIMES)]
    inside: set[int] = set()
    for tile in manifest.tiles:
        events = [json.loads(line) for line in (out / "tiles" / str(tile.tile) / "timeline.jsonl").read_text()
                  .splitlines()]
        started: dict[str, float] = {}
        for event in events:
            at = datetime.fromisoformat(event["t"].replace("Z", "+00:00")).timestamp()
            if event["event"] == "snapshot-started":
                started[event["label"]] = at
            elif event["event"] == "snapshot" and event["label"] in started:
                begin = started.pop(event["label"]) - 0.1
                inside |= {i for i, epoch in enumerate(epochs) if begin <= epoch <= at + 0.1}
    return inside


def test_every_tile_time_code_advances_in_sync(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    codes = tile_timecodes(out / "composite.mp4", manifest.layout)
    drawn = _snapshot_frames(out, manifest)
    assert drawn, "the start screenshots are not in the timelines"
    # Outside those moments every tile's time code reads and advances.
    report = sync_report([f for i, f in enumerate(codes) if i not in drawn], manifest.layout.fps, skip_seconds=6)
    for tile in (1, 2, 3, 4):
        assert report.decoded_share[tile] > 0.9, report
        assert report.advancing[tile], report
        assert report.distinct_fps[tile] > 8, report
    assert report.skew_p50 < 200, report


def test_frame_times_cover_every_composite_frame(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    rows = (out / "frames.csv").read_text().splitlines()
    assert rows[0] == "frame,composite_seconds,utc,epoch_seconds,segment"
    frames = int(cv2.VideoCapture(str(out / "composite.mp4")).get(cv2.CAP_PROP_FRAME_COUNT))
    assert len(rows) - 1 == frames
    epochs = [float(r.split(",")[3]) for r in rows[1:]]
    assert epochs == sorted(epochs)
    assert manifest.started_at.timestamp() - 1 < epochs[0] < epochs[-1] < manifest.ended_at.timestamp()
    assert abs((epochs[-1] - epochs[0]) - DURATION) < 1.0


def test_the_capture_measures_its_own_sync_and_signs_the_verdict(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    sync = manifest.sync
    assert sync is not None and sync.method
    assert sync.composite is not None
    rows = (out / "frames.csv").read_text().splitlines()
    assert sync.composite.frames == len(rows) - 1 and sync.composite.fps == 15
    assert 60 < sync.composite.interval_p50_ms < 73  # 66.7 ms at 15 fps
    assert sync.machine is not None and sync.machine.samples >= DURATION * 0.7  # about one a second
    assert 0 < sync.machine.busy_mean <= 1
    by_tile = {t.tile: t for t in sync.tiles}
    assert sorted(by_tile) == [1, 2, 3, 4]
    for room in (1, 2, 3):  # the rooms play video: their browsers counted its frames
        tile = by_tile[room]
        assert tile.verdict in (SyncVerdict.IN_SYNC, SyncVerdict.DEGRADED)
        # Pages load a few seconds into the recording; no more frames than a 15 fps room sends while it runs.
        assert tile.video_frames_decoded and 30 < tile.video_frames_decoded <= DURATION * 15 * 1.2, tile
        assert tile.verdict == SyncVerdict.IN_SYNC or tile.spans, tile  # degraded always says when and how much
    assert by_tile[4].video_frames_decoded is None and "no video" in by_tile[4].remark
    manifest_step = next(s for s in manifest.steps if s.name == StepName.MANIFEST)
    assert "sync: tile 1 " in manifest_step.detail


def test_tile_videos_are_cut_at_full_tile_resolution(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    for tile in manifest.tiles:
        info = ffprobe(out / "tiles" / str(tile.tile) / "video.mp4")
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert (video["width"], video["height"]) == (640, 360)
        assert len(audio) == 1
    frequency, _ = audio_tone(out / "tiles" / "2" / "video.mp4", 0, skip_seconds=5)
    assert abs(frequency - ROOM_TONES[2]) < 5


def test_page_artifacts_and_stream_copies(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    for tile in manifest.tiles:
        directory = out / "tiles" / str(tile.tile)
        for name in ("screenshot-start.png", "screenshot-end.png", "dom-start.html", "dom-end.html",
                     "network.har", "timeline.jsonl", "page.json"):
            problems = [line for line in (directory / "timeline.jsonl").read_text().splitlines() if "problem" in line]
            assert (directory / name).exists() and (directory / name).stat().st_size > 0, (tile.tile, name, problems)
        assert (directory / "console.jsonl").exists()  # empty when the page logs nothing
        har = json.loads((directory / "network.har").read_text())
        assert any(e["request"]["url"] == tile.url and e["response"]["status"] == 200 for e in har["log"]["entries"])
        assert tile.http_status == 200 and tile.final_url == tile.url and tile.remote_ip == "127.0.0.1"
        assert tile.title
    product_shot = cv2.imread(str(out / "tiles" / "4" / "screenshot-start.png"))
    # Full page, not just the window, and legible: at the page's own CSS width (1280 px), not the tile's half.
    assert product_shot.shape[1] == 1280 and product_shot.shape[0] > 2 * 720, product_shot.shape
    room_shot = cv2.imread(str(out / "tiles" / "1" / "screenshot-end.png"))
    assert room_shot.shape[1] == 1280, room_shot.shape
    for room in (1, 2, 3):
        tile = manifest.tiles[room - 1]
        assert any(u.endswith(".m3u8") for u in tile.media_urls)
        streams = manifest.artifacts_for(ArtifactRole.STREAM, tile=room)
        assert streams, f"no stream copy for room {room}"
        info = ffprobe(out / streams[0].path)
        assert {s["codec_name"] for s in info["streams"]} >= {"h264", "aac"}
        assert float(info["format"]["duration"]) > 3


def test_manifest_lists_every_file_with_its_digests(four_rooms: tuple[Manifest, Path, dict]) -> None:
    manifest, out, _ = four_rooms
    roles = {a.role for a in manifest.artifacts}
    assert {ArtifactRole.COMPOSITE, ArtifactRole.TILE_VIDEO, ArtifactRole.SEGMENT, ArtifactRole.AUDIO_SEGMENT,
            ArtifactRole.FRAME_TIMES, ArtifactRole.SCREENSHOT, ArtifactRole.DOM, ArtifactRole.HAR,
            ArtifactRole.TIMELINE, ArtifactRole.STREAM} <= roles
    for artifact in manifest.artifacts:
        size, digests = digest_file(out / artifact.path)
        assert (size, digests) == (artifact.size, artifact.digests), artifact.path
    assert [t.rect.as_list() for t in manifest.layout.tiles][3] == [640, 424, 640, 360]
    provenance = manifest.provenance
    assert provenance.components["chromium"].startswith("Chromium")
    assert "127.0.0.1" in provenance.dns
    assert provenance.clock.available or (provenance.clock.error or "").startswith("unavailable")
    assert provenance.user_agent and "HeadlessChrome" not in provenance.user_agent
    assert "--mute-audio" not in provenance.launch_flags


def test_http_flv_room_is_recorded_and_its_stream_copied(demo_server: FixtureServer, tmp_path: Path,
                                                         wz_env: dict[str, str]) -> None:
    out = tmp_path / "c"
    urls = [demo_server.url(flv_path(1)), demo_server.url(live_path(2))]

    result = wz(["capture", *urls, "--duration", "10", "--out", str(out), "--json"], wz_env)

    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(out)
    flv_tile = manifest.tiles[0]
    assert flv_tile.status == TileStatus.COMPLETE
    assert [u for u in flv_tile.media_urls if u.endswith("/stream.flv")]
    [stream] = manifest.artifacts_for(ArtifactRole.STREAM, tile=1)
    info = ffprobe(out / stream.path)
    assert {s["codec_name"] for s in info["streams"]} >= {"h264", "aac"}
    assert float(info["format"]["duration"]) > 4
    copied = json.loads((out / stream.path).with_suffix(".json").read_text(encoding="utf-8"))
    assert copied["url"].endswith("/flv/1/stream.flv") and copied["referer"] == urls[0]
    frequency, level = audio_tone(out / "composite.mp4", 0, skip_seconds=4)  # mpegts.js played it, with sound
    assert abs(frequency - ROOM_TONES[1]) < 5 and level > 0.01, (frequency, level)
    codes = tile_timecodes(out / "composite.mp4", manifest.layout)
    assert sync_report(codes, manifest.layout.fps, skip_seconds=5).advancing[1]


def test_failed_tiles_are_recorded_and_the_others_go_on(demo_server: FixtureServer, tmp_path: Path,
                                                        wz_env: dict[str, str]) -> None:
    base = demo_server.base_url
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    urls = [base + PATH_FAIL_404, base + PATH_FAIL_HANG_LOAD, base + PATH_FAIL_HANG_RENDERER, base + live_path(4),
            f"http://127.0.0.1:{closed_port}/unreachable", base + PATH_SLOW_RENDERER]
    env = {**wz_env, "WZ_LOAD_TIMEOUT_SECONDS": "6"}
    # Long enough for a renderer that never answers again to be called hung (20 s without an answer).
    result = wz(["capture", *urls, "--duration", "34", "--out", str(tmp_path / "c"), "--json"], env)
    assert result.returncode == 3, result.stderr[-3000:]
    manifest = load_manifest(tmp_path / "c")
    assert manifest.status == CaptureStatus.PARTIAL
    tiles = {t.tile: t for t in manifest.tiles}
    assert tiles[1].status == TileStatus.FAILED and tiles[1].reason == "HTTP 404"
    assert tiles[2].status == TileStatus.FAILED and "did not finish loading" in tiles[2].reason
    assert tiles[3].status == TileStatus.FAILED and "hung" in tiles[3].reason
    assert tiles[4].status == TileStatus.COMPLETE
    assert tiles[5].status == TileStatus.FAILED and "connection refused" in tiles[5].reason, tiles[5].reason
    # A renderer busy 8 s at a time answers late but answers: recorded, not failed as hung (as a machine swamped by
    # heavy streams would otherwise have its tiles failed).
    assert tiles[6].status == TileStatus.COMPLETE, tiles[6].reason
    assert decodes_fully(tmp_path / "c" / "composite.mp4")
    frequency, _ = audio_tone(tmp_path / "c" / "composite.mp4", 3, skip_seconds=6)
    assert abs(frequency - ROOM_TONES[4]) < 5
    load = next(s for s in manifest.steps if s.name == StepName.LOAD)
    assert load.outcome.value == "partial" and "HTTP 404" in load.detail
    assert manifest.sync is not None  # failed tiles are not judged; the recorded one is
    verdicts = {t.tile: t.verdict for t in manifest.sync.tiles}
    assert verdicts[1] == verdicts[5] == SyncVerdict.NOT_MEASURED
    assert verdicts[4] in (SyncVerdict.IN_SYNC, SyncVerdict.DEGRADED)


def test_a_larger_tile_size_records_every_tile_at_that_size(demo_server: FixtureServer, tmp_path: Path,
                                                              wz_env: dict[str, str]) -> None:
    """--tile-size 960x540: the windows are drawn at 0.75, the composite and each tile's own video hold them at that
    size, the time codes still read, and the full-page screenshot stays at the page's own 1280 CSS px."""
    out = tmp_path / "c"
    urls = [demo_server.base_url + live_path(1), demo_server.base_url + PATH_PRODUCT]
    result = wz(["capture", *urls, "--duration", "10", "--tile-size", "960x540", "--out", str(out), "--json"], wz_env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(out)
    assert [t.rect.as_list() for t in manifest.layout.tiles] == [[0, 48, 960, 540], [960, 48, 960, 540]]
    (video,) = [s for s in ffprobe(out / "composite.mp4")["streams"] if s["codec_type"] == "video"]
    assert (video["width"], video["height"]) == (1920, 588)
    (own,) = [s for s in ffprobe(out / "tiles" / "1" / "video.mp4")["streams"] if s["codec_type"] == "video"]
    assert (own["width"], own["height"]) == (960, 540)
    assert "--force-device-scale-factor=0.75" in manifest.provenance.launch_flags
    report = sync_report(tile_timecodes(out / "composite.mp4", manifest.layout), manifest.layout.fps, skip_seconds=4)
    assert report.advancing[1], report
    shot = cv2.imread(str(out / "tiles" / "2" / "screenshot-start.png"))
    assert shot.shape[1] == 1280, shot.shape


def test_a_tile_that_costs_the_machine_is_named_and_the_room_beside_it_keeps_recording(
        demo_server: FixtureServer, tmp_path: Path, wz_env: dict[str, str]) -> None:
    """A page taking every core (as a 4K 60 fps room would) beside a room: the signed manifest says which tile cost
    what, the room goes on recording, and the heavy tile is held back only if the room's browser dropped frames
    (tests/capture/test_processes.py holds a tile back on real processes)."""
    base = demo_server.base_url
    out = tmp_path / "c"
    result = wz(["capture", base + live_path(1), base + PATH_HEAVY_PAGE, "--duration", "20", "--out", str(out),
                 "--json"], wz_env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(out)
    assert manifest.sync is not None
    room, heavy = manifest.sync.tiles
    assert heavy.cpu_cores_mean is not None and room.cpu_cores_mean is not None
    assert heavy.cpu_cores_mean > 2 * room.cpu_cores_mean, (heavy, room)
    assert heavy.cpu_cores_peak is not None and room.cpu_cores_peak is not None
    assert room.priority_lowered_at_seconds is None
    timeline = [json.loads(line) for line in (out / "tiles" / "2" / "timeline.jsonl").read_text().splitlines()]
    lowered = [e for e in timeline if e["event"] == "priority-lowered"]
    room_dropped = [s for s in room.spans if s.cause == DegradedCause.BROWSER_DROPPED]
    if heavy.priority_lowered_at_seconds is None:
        assert lowered == []
    else:  # only for a cause: the room dropped frames before it
        assert room_dropped and room_dropped[0].start_seconds <= heavy.priority_lowered_at_seconds, room.spans
        assert len(lowered) == 1 and lowered[0]["niceness"] == 10
        assert "its CPU priority lowered at" in sync_lines(manifest.sync)[2]  # what `wz verify` prints
    assert "its browser used" in sync_lines(manifest.sync)[2]
    codes = tile_timecodes(out / "composite.mp4", manifest.layout)
    report = sync_report(codes, manifest.layout.fps, skip_seconds=5)
    assert report.advancing[1] and report.advancing[2]  # both recorded; the room was not starved


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_segments(out: Path, count: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "segments").glob("video_*.ts"))) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the capture did not start recording"
        time.sleep(0.2)


def test_ctrl_c_ends_the_capture_cleanly(demo_server: FixtureServer, tmp_path: Path, wz_env: dict[str, str]) -> None:
    out = tmp_path / "c"
    process = _start(["capture", demo_server.base_url + live_path(1), "--duration", "120", "--out", str(out),
                      "--json"], wz_env)
    _wait_for_segments(out, 2, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "partial"
    manifest = load_manifest(out)
    assert "interrupted" in manifest.reason and "SIGINT" in manifest.reason
    assert 4 < manifest.recorded_seconds < 60
    assert decodes_fully(out / "composite.mp4")
    assert (out / "tiles" / "1" / "screenshot-end.png").exists()


def test_sigterm_without_duration_is_a_normal_end(demo_server: FixtureServer, tmp_path: Path,
                                                  wz_env: dict[str, str]) -> None:
    out = tmp_path / "c"
    process = _start(["capture", demo_server.base_url + PATH_PRODUCT, "--out", str(out), "--json"], wz_env)
    _wait_for_segments(out, 2, process)
    process.send_signal(signal.SIGTERM)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert load_manifest(out).status == CaptureStatus.COMPLETE


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline[:200])
    return found


def test_kill_9_loses_at_most_the_open_segment_and_is_recovered(demo_server: FixtureServer, tmp_path: Path,
                                                                 wz_env: dict[str, str]) -> None:
    out = tmp_path / "c"
    process = _start(["capture", demo_server.base_url + live_path(2), demo_server.base_url + live_path(3),
                      "--duration", "120", "--out", str(out)], wz_env)
    _wait_for_segments(out, 3, process)
    closed_before = len((out / "segments" / "video.csv").read_text().splitlines())
    process.kill()
    process.communicate(timeout=30)
    assert not (out / "manifest.json").exists()

    result = wz(["recover", "--json"], wz_env)
    assert result.returncode == 0, result.stderr
    # The children got SIGTERM when the capture died; whatever still hung on is stopped by the recovery.
    assert not _processes_using(out)
    recovered = json.loads(result.stdout)
    assert [r["capture_id"] for r in recovered] == [json.loads((out / "capture.json").read_text())["capture_id"]]
    manifest = load_manifest(out)
    assert manifest.status == CaptureStatus.PARTIAL
    assert manifest.reason.startswith("interrupted")
    assert manifest.steps[-1].name == StepName.RECOVER
    assert decodes_fully(out / "composite.mp4")
    segments = manifest.artifacts_for(ArtifactRole.SEGMENT)
    assert len(segments) >= closed_before
    assert manifest.recorded_seconds >= closed_before * 4
    for tile in (1, 2):
        assert (out / "tiles" / str(tile) / "video.mp4").exists()
    # A second command finds nothing left to recover.
    again = wz(["recover", "--json"], wz_env)
    assert json.loads(again.stdout) == []
