"""Finishing while recording: probes and tile cuts done beside the recording, at idle priority, used by finalize
only while they still hold; the tile videos keep the composite's clock, gaps included."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from capture import finalize
from capture.assemble import assemble_videos
from capture.finalize import TILE_SEGMENTS, tile_segment
from capture.layout import build_layout
from capture.prefinish import Prefinisher
from evidence import EvidenceError
from tests.capture.test_finalize import T0, _audio, _video

URLS = ["https://a.example/1", "https://b.example/2"]


def packet_times(path: Path, stream: str = "v:0") -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", "packet=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return sorted(float(value) for value in out.split() if value not in ("", "N/A"))


def recorded(directory: Path, *, seconds: float = 17.0) -> None:
    _video(directory, start=10.0, seconds=seconds)
    for tile in (1, 2):
        _audio(directory, tile, start=10.0, seconds=seconds)


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[object]:
    calls: list[object] = []
    real = getattr(finalize, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(finalize, name, counted)
    return calls


def test_what_was_done_while_recording_is_not_done_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded(tmp_path)
    layout = build_layout(URLS)
    early = Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe")
    early.step()
    screen = sorted((tmp_path / "segments").glob("video_*.ts"))
    assert early.cut == len(screen) == 4
    assert early.probed == len(list((tmp_path / "segments").glob("*.ts")))  # the screen's and the sound's
    assert all(tile_segment(tmp_path, tile, s).exists() for tile in (1, 2) for s in screen)
    probes = count_calls(monkeypatch, "_probe_packets")
    cuts = count_calls(monkeypatch, "cut_segment")

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe", prefinished=early)

    assert assembly.composite and assembly.problems == (), assembly.problems
    assert probes == [] and cuts == []
    composite = packet_times(tmp_path / "composite.mp4")
    for tile in (1, 2):
        assert packet_times(tmp_path / "tiles" / str(tile) / "video.mp4") == composite
        assert packet_times(tmp_path / "tiles" / str(tile) / "video.mp4", "a:0") == \
            packet_times(tmp_path / "composite.mp4", f"a:{tile - 1}")
    assert not (tmp_path / TILE_SEGMENTS).exists()  # the cut segments go once the videos are joined


def test_a_lost_segment_leaves_the_same_gap_in_every_tile_video(tmp_path: Path) -> None:
    recorded(tmp_path, seconds=22.0)
    (tmp_path / "segments" / "video_00002.ts").unlink()  # ten seconds in: five seconds of picture lost
    layout = build_layout(URLS)
    early = Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe")
    early.step()

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe", prefinished=early)

    assert assembly.composite
    composite = packet_times(tmp_path / "composite.mp4")
    gaps = [later - earlier for earlier, later in itertools.pairwise(composite)]
    assert max(gaps) > 4.9  # the composite keeps the gap where the segment was lost ...
    for tile in (1, 2):
        assert packet_times(tmp_path / "tiles" / str(tile) / "video.mp4") == composite  # ... and so does each tile


def test_a_tile_segment_changed_after_it_was_cut_is_cut_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    recorded(tmp_path)
    layout = build_layout(URLS)
    early = Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe")
    early.step()
    first = tile_segment(tmp_path, 2, tmp_path / "segments" / "video_00001.ts")
    other = tile_segment(tmp_path, 1, tmp_path / "segments" / "video_00001.ts")
    first.write_bytes(other.read_bytes())  # tile 1's picture put in place of tile 2's
    planted = tile_segment(tmp_path, 1, tmp_path / "segments" / "video_00003.ts")
    early.cut_segments.pop(planted)  # a file this process did not write
    cuts = count_calls(monkeypatch, "cut_segment")

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe", prefinished=early)

    assert assembly.composite and assembly.problems == ()
    assert sorted(Path(str(call[2])).name for call in cuts) == ["video_00001.ts", "video_00003.ts"]


def test_without_work_done_in_this_process_every_tile_segment_is_cut_at_the_end(tmp_path: Path) -> None:
    """A recovery in a new process trusts no file in the work folder."""
    recorded(tmp_path)
    layout = build_layout(URLS)
    Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe").step()
    for path in (tmp_path / TILE_SEGMENTS).rglob("*.ts"):
        path.write_bytes(b"\x47" + bytes(187))  # nothing a tile video could be made of

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe")

    assert assembly.composite and assembly.problems == ()
    assert not any("from the composite" in remark for remark in assembly.remarks)  # cut by segment, not the old way
    composite = packet_times(tmp_path / "composite.mp4")
    assert packet_times(tmp_path / "tiles" / "1" / "video.mp4") == composite


def test_its_programs_run_only_on_idle_time_and_stop_at_once(tmp_path: Path) -> None:
    recorded(tmp_path, seconds=22.0)
    layout = build_layout(URLS)
    early = Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe")
    seen: list[tuple[int, int]] = []
    started = threading.Event()
    real = early._started

    def watched(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):  # already finished
            # chrt and nice set the priority, then ffmpeg replaces them in the same process.
            for _ in range(200):
                if Path(f"/proc/{process.pid}/comm").read_text().strip() == "ffmpeg":
                    break
                time.sleep(0.01)
            seen.append((os.sched_getscheduler(process.pid), os.getpriority(os.PRIO_PROCESS, process.pid)))
        real(process)
        started.set()

    early._started = watched  # type: ignore[method-assign]
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    early.start()
    assert started.wait(30), "no tile cut started"
    early.stop()

    assert seen and seen[0] == (os.SCHED_IDLE, 19)
    # Only its own thread was lowered: the recording's threads (this one here) keep their priority.
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())) == before
    assert not early._thread.is_alive()
    assert list((tmp_path / TILE_SEGMENTS).rglob("*.part")) == []  # a cut ended half-way leaves nothing
    assert not early.abandoned and early.problems == []
    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe", prefinished=early)
    assert assembly.composite and assembly.problems == ()
    assert packet_times(tmp_path / "tiles" / "2" / "video.mp4") == packet_times(tmp_path / "composite.mp4")


def test_what_was_not_read_while_recording_is_read_once_at_the_end_several_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded(tmp_path)
    probes = count_calls(monkeypatch, "_probe_packets")
    threads: set[str] = set()
    counted = finalize._probe_packets

    def where(*args: object, **kwargs: object) -> object:
        threads.add(threading.current_thread().name)
        return counted(*args, **kwargs)

    monkeypatch.setattr(finalize, "_probe_packets", where)
    layout = build_layout(URLS)

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe")

    assert assembly.composite and assembly.problems == ()
    on_disk = sorted(str(p) for p in (tmp_path / "segments").glob("*.ts") if p.stat().st_size)
    assert sorted(str(call[1]) for call in probes) == on_disk  # each once, none twice
    assert threads and all(name.startswith("probe") for name in threads)  # on the pool, before the sets are made


def test_a_link_planted_in_the_work_folder_is_not_followed(tmp_path: Path) -> None:
    """A tile folder that leads to the recorded segments would turn a tile cut's rename into overwriting one."""
    recorded(tmp_path)
    segments = tmp_path / "segments"
    before = {p.name: p.read_bytes() for p in segments.glob("video_*.ts")}
    (tmp_path / TILE_SEGMENTS).mkdir(parents=True)
    (tmp_path / TILE_SEGMENTS / "1").symlink_to(segments)
    early = Prefinisher(tmp_path, build_layout(URLS), ffmpeg_path="ffmpeg", ffprobe="ffprobe")

    with pytest.raises(EvidenceError, match="leads outside"):
        early.step()

    assert {p.name: p.read_bytes() for p in segments.glob("video_*.ts")} == before


def test_a_trusted_tile_segment_at_the_wrong_times_sends_the_tile_back_to_the_composite_cut(tmp_path: Path) -> None:
    """As when a segment's first frames do not decode: the join's own check finds the shift, and the tiles are cut
    from the composite, with a remark, instead of a tile video whose frames are not at the composite's times."""
    recorded(tmp_path)
    layout = build_layout(URLS)
    early = Prefinisher(tmp_path, layout, ffmpeg_path="ffmpeg", ffprobe="ffprobe")
    early.step()
    shifted = tile_segment(tmp_path, 1, tmp_path / "segments" / "video_00002.ts")
    shifted.write_bytes(tile_segment(tmp_path, 1, tmp_path / "segments" / "video_00003.ts").read_bytes())
    early.cut_segments[shifted] = finalize.sha256_of(shifted)  # trusted, but its frames are five seconds on

    assembly = assemble_videos(tmp_path, layout, t0=T0, usable_tiles=[1, 2], ffmpeg_path="ffmpeg",
                               ffprobe="ffprobe", prefinished=early)

    assert assembly.composite and assembly.problems == ()
    assert any("cut from the composite" in remark and "not at the composite's" in remark
               for remark in assembly.remarks), assembly.remarks
    composite = packet_times(tmp_path / "composite.mp4")
    assert packet_times(tmp_path / "tiles" / "1" / "video.mp4") == composite
    assert not (tmp_path / TILE_SEGMENTS).exists()
