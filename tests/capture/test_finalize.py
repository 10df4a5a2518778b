"""Finalize from segments on disk, made here by the real ffmpeg on the shared clock the recorders use."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from capture.assemble import assemble_videos
from capture.finalize import MIN_PROBE_BYTES, mux_composite, segment_set
from capture.layout import build_layout
from evidence import RecorderFailed

T0 = 1_795_795_624.0  # the capture's epoch: segment times are seconds after it


def _segments(directory: Path, name: str, source: str, codec: list[str]) -> None:
    """Closed MPEG-TS segments the way the recorders write them (-copyts, shifted by -t0, 5 s each)."""
    segments = directory / "segments"
    segments.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-copyts", "-y", "-f", "lavfi", "-i", source, *codec,
         "-muxdelay", "0", "-muxpreload", "0", "-output_ts_offset", f"{-T0:.6f}", "-f", "segment",
         "-segment_time", "5", "-segment_format", "mpegts", "-segment_list", str(segments / f"{name}.csv"),
         "-segment_list_type", "csv", str(segments / f"{name}_%05d.ts")],
        check=True, timeout=120,
    )


def _video(directory: Path, *, start: float, seconds: float) -> None:
    _segments(directory, "video",
              f"testsrc=size=1280x784:rate=15,trim=duration={seconds},setpts=PTS+({T0}+{start})/TB",
              ["-vcodec", "libx264", "-preset", "ultrafast", "-g", "75", "-fps_mode", "passthrough",
               "-enc_time_base", "1:90000"])


def _audio(directory: Path, tile: int, *, start: float, seconds: float) -> None:
    _segments(directory, f"audio{tile}",
              f"sine=f={220 * tile}:r=48000,atrim=duration={seconds},asetpts=PTS+({T0}+{start})/TB",
              ["-acodec", "aac", "-ac", "2"])


def _streams(path: Path) -> list[str]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_tracks_that_start_apart_and_a_tile_without_sound(tmp_path: Path) -> None:
    _video(tmp_path, start=10.0, seconds=12.0)
    _audio(tmp_path, 1, start=9.0, seconds=13.0)  # the audio recorder came up before the screen
    _audio(tmp_path, 2, start=16.0, seconds=6.0)  # ... and this one six seconds late
    layout = build_layout(["https://a.example/1", "https://b.example/2", "https://c.example/3"])

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2, 3], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe")

    assert assembly.composite, assembly.problems
    assert assembly.frames == 180
    assert assembly.recorded_seconds == pytest.approx(12.0, abs=0.01)
    assert assembly.problems == ("tile 3: no audio was recorded; its track is silence",)
    assert _streams(tmp_path / "composite.mp4") == ["video", "audio", "audio", "audio"]
    for tile in (1, 2, 3):
        assert _streams(tmp_path / "tiles" / str(tile) / "video.mp4") == ["video", "audio"]
    rows = (tmp_path / "frames.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 181
    assert rows[1].split(",")[3] == f"{T0 + 10.0:.6f}"  # the first frame at its wall-clock time


def test_ffmpeg_failure_says_why(tmp_path: Path) -> None:
    _video(tmp_path, start=10.0, seconds=6.0)
    _audio(tmp_path, 1, start=10.0, seconds=6.0)
    layout = build_layout(["https://a.example/1"])
    video = segment_set(tmp_path, "video", "ffprobe")
    audio = {1: segment_set(tmp_path, "audio1", "ffprobe")}
    for segment in audio[1].segments:
        segment.unlink()  # gone between probing and muxing
    log = tmp_path / "finalize.log"

    with pytest.raises(RecorderFailed) as caught:
        mux_composite(tmp_path, layout, video, audio, origin=video.first_pts or 0.0, ffmpeg_path="ffmpeg",
                      ffprobe="ffprobe", log=log)

    message = str(caught.value)
    assert "could not assemble the composite" in message
    assert "No such file or directory" in message  # ffmpeg's own words, not only "see the log"
    assert str(log) in message
    assert "$ ffmpeg" in log.read_text(encoding="utf-8")


def test_a_one_packet_segment_stays_evidence_but_out_of_the_videos(tmp_path: Path) -> None:
    _video(tmp_path, start=10.0, seconds=12.0)
    _audio(tmp_path, 1, start=15.5, seconds=6.0)  # just past the 15 s boundary: its first segment holds one packet
    first = tmp_path / "segments" / "audio1_00000.ts"
    assert first.stat().st_size < MIN_PROBE_BYTES
    layout = build_layout(["https://a.example/1"])

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1], ffmpeg_path="ffmpeg", ffprobe="ffprobe")

    assert assembly.composite and assembly.problems == ()
    assert any("audio1_00000.ts" in remark and "kept as evidence" in remark for remark in assembly.remarks)
    assert first.exists()
    assert _streams(tmp_path / "composite.mp4") == ["video", "audio"]


def test_audio_that_cannot_be_copied_is_encoded_again_and_said_so(tmp_path: Path) -> None:
    _video(tmp_path, start=10.0, seconds=8.0)
    # SMPTE 302M audio travels in MPEG-TS but not in MP4: ffmpeg refuses to copy it, as it refuses a track
    # whose parameters it could not read.
    _segments(tmp_path, "audio1", f"sine=f=440:r=48000,atrim=duration=8,asetpts=PTS+({T0}+10)/TB",
              ["-ac", "2", "-acodec", "s302m", "-strict", "-2"])
    layout = build_layout(["https://a.example/1"])

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1], ffmpeg_path="ffmpeg", ffprobe="ffprobe")

    assert assembly.composite and assembly.problems == ()
    [remark] = [r for r in assembly.remarks if "encoded again" in r]
    assert "Could not find tag for codec s302m" in remark  # ffmpeg's reason, carried into the manifest's step
    codecs = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
                             str(tmp_path / "composite.mp4")], capture_output=True, text=True, check=True).stdout
    assert codecs.split() == ["h264", "aac"]


def test_a_segment_that_ffmpeg_reads_as_another_format_stays_out_of_the_videos(tmp_path: Path) -> None:
    """A first segment of ten packets passed the size rule but ffmpeg's probe took it for MPEG-PS with MP2 audio,
    and the composite failed ("sample rate not set"). Only what the probe reads as MPEG-TS is assembled."""
    _video(tmp_path, start=10.0, seconds=12.0)
    _audio(tmp_path, 1, start=10.0, seconds=12.0)
    first = tmp_path / "segments" / "audio1_00000.ts"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=f=300:r=48000:d=1", "-acodec", "mp2", "-f", "mpeg", str(first)], check=True, timeout=60)
    assert first.stat().st_size >= MIN_PROBE_BYTES
    layout = build_layout(["https://a.example/1"])

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1], ffmpeg_path="ffmpeg", ffprobe="ffprobe")

    assert assembly.composite and assembly.problems == ()
    assert any("audio1_00000.ts" in remark and "MPEG-TS" in remark for remark in assembly.remarks)
    assert _streams(tmp_path / "composite.mp4") == ["video", "audio"]


def test_chaining_the_segments_again_adds_nothing(tmp_path: Path) -> None:
    """Recovery after kill -9 chains what the dead process left; a second recovery (or a poll after the first)
    found "segments/x.ts" in chain.jsonl and compared it with "x.ts" from the segment list: every segment was
    appended again."""
    from capture.chain import SegmentChain

    _video(tmp_path, start=10.0, seconds=12.0)
    first = SegmentChain(tmp_path)
    added = first.poll()
    assert added == 3
    assert SegmentChain(tmp_path).poll() == 0  # as a second recovery would
    assert first.poll() == 0
    lines = (tmp_path / "chain.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(line)["file"] for line in lines}) == 3
