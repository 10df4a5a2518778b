"""Turn closed segments into the deliverables: the composite MP4, each tile's MP4, the frame times.

Works from what is on disk alone, so the same code finishes a normal capture and recovers an
interrupted one. Segments are joined by ffmpeg's concat demuxer with the measured distance between segment starts,
so every packet keeps its recorded time on the capture's shared clock: a lost segment leaves a gap,
never a shift.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import ffmpeg

from evidence import Layout, RecorderFailed
from evidence.layout import SEGMENT_DIR

_SEGMENT = re.compile(r"^(video|audio\d)_(\d{5})\.ts$")
# ffmpeg's MPEG-TS probe wants ten 188-byte packets; below that it guesses ("detected only with low score")
# and a guessed stream, first in a concat list, can leave the composite without codec parameters. Such a
# segment (a recorder that started just past a segment boundary writes one packet, ~20 ms) stays evidence
# but is left out of the videos. Ten packets are not always enough either (a 1,880-byte AAC segment was taken
# for MPEG-PS with MP2 audio): a segment is used only when ffmpeg's own probe, the one the concat demuxer
# runs, reads it as MPEG-TS.
MIN_PROBE_BYTES = 10 * 188
TILE_SEGMENTS = "work/tiles"  # each tile's video, cut one closed segment at a time: work/tiles/<tile>/<segment>


@dataclass(frozen=True)
class SegmentSet:
    """The playable segments of one recorder, in order, and the ones that were not."""

    name: str
    segments: tuple[Path, ...]
    damaged: tuple[str, ...]
    first_pts: float | None
    times: tuple[tuple[float, ...], ...] = ()  # each playable segment's packet times, sorted, probed once
    too_short: tuple[str, ...] = ()  # decodable, but too small for the concat demuxer to probe reliably

    @property
    def starts(self) -> tuple[float, ...]:
        return tuple(segment[0] for segment in self.times)


@dataclass(frozen=True)
class _Probe:
    format_name: str
    times: list[float]


def _probe_packets(ffprobe: str, path: Path, stream: str, prefix: Sequence[str] = ()) -> _Probe:
    """What ffmpeg's probe makes of a segment: its container and the stream's packet times. `prefix` runs it
    through another program (one that lowers its priority)."""
    result = subprocess.run(
        [*prefix, ffprobe, "-v", "error", "-select_streams", stream, "-show_entries",
         "format=format_name:packet=pts_time", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    try:
        info = json.loads(result.stdout or "{}")
    except ValueError:
        info = {}
    times = []
    for packet in info.get("packets", []):
        value = packet.get("pts_time")
        if value not in (None, "N/A"):
            times.append(float(value))
    return _Probe(format_name=str(info.get("format", {}).get("format_name", "")), times=times)


class ProbeCache:
    """ffprobe's reading of each closed segment, kept in memory by the process that recorded them: a segment read
    while the capture was still recording is not read again at its end (one ffprobe per segment took a tenth of
    the recorded time). The readings place every frame on the capture's clock, so they are never kept in a file
    someone could edit before finalize; a recovery in another process reads every segment again.

    A reading counts only for the file as it was read (its size and modification time). Safe from two threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], tuple[int, int, _Probe]] = {}

    def probe(self, ffprobe: str, path: Path, stream: str, prefix: Sequence[str] = ()) -> _Probe:
        stat = path.stat()
        key = (str(path), stream)
        with self._lock:
            known = self._known.get(key)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        probe = _probe_packets(ffprobe, path, stream, prefix)
        with self._lock:
            self._known[key] = (stat.st_size, stat.st_mtime_ns, probe)
        return probe

    def has(self, path: Path, stream: str) -> bool:
        stat = path.stat()
        with self._lock:
            known = self._known.get((str(path), stream))
        return known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns)


PROBE_WORKERS = 4  # ffprobe is mostly start-up: several at once use the cores a single one leaves idle


def probe_segments(capture_dir: Path, ffprobe: str, probes: ProbeCache) -> int:
    """Probe, several at a time, every non-empty segment on disk not yet read; returns how many were read now."""
    directory = capture_dir / SEGMENT_DIR
    wanted = []
    for path in sorted(directory.glob("*.ts")) if directory.is_dir() else []:
        found = _SEGMENT.match(path.name)
        if found and path.stat().st_size and not probes.has(path, stream_of(found.group(1))):
            wanted.append((path, stream_of(found.group(1))))
    if wanted:
        with ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="probe") as pool:
            list(pool.map(lambda job: probes.probe(ffprobe, *job), wanted))
    return len(wanted)


def stream_of(name: str) -> str:
    """The stream ffprobe reads in a segment of recorder `name`."""
    return "v:0" if name.startswith("video") else "a:0"


def closed_segment_names(capture_dir: Path) -> list[str]:
    """Segments the recorders closed, from their segment lists (the one open at a crash is never listed)."""
    names: list[str] = []
    for listing in sorted((capture_dir / SEGMENT_DIR).glob("*.csv")):
        with listing.open(newline="", encoding="utf-8") as handle:
            names.extend(row[0] for row in csv.reader(handle) if row)
    return names


def segment_set(capture_dir: Path, name: str, ffprobe: str, probes: ProbeCache | None = None) -> SegmentSet:
    """Playable segments of recorder `name` (`video`, `audio1`, ...); empty or undecodable ones are set aside."""
    probes = probes or ProbeCache()
    directory = capture_dir / SEGMENT_DIR
    found = sorted(p for p in directory.glob(f"{name}_*.ts") if _SEGMENT.match(p.name))
    good: list[Path] = []
    damaged: list[str] = []
    too_short: list[str] = []
    times: list[tuple[float, ...]] = []
    stream = stream_of(name)
    closed = set(closed_segment_names(capture_dir))
    for path in found:
        size = path.stat().st_size
        if size == 0 and path.name not in closed:
            # The file ffmpeg had just opened when the capture died: no bytes, no evidence, unplayable.
            path.unlink()
            continue
        # Empty or undecodable segments stay on disk (they may be in the hash chain) but out of the videos.
        probe = probes.probe(ffprobe, path, stream) if size else None
        if probe is None or not probe.times:
            damaged.append(path.name)
            continue
        if size < MIN_PROBE_BYTES or probe.format_name != "mpegts":
            too_short.append(path.name)
            continue
        times.append(tuple(sorted(probe.times)))
        good.append(path)
    return SegmentSet(name=name, segments=tuple(good), damaged=tuple(damaged),
                      first_pts=times[0][0] if times else None, times=tuple(times), too_short=tuple(too_short))


def write_concat_list(segments: SegmentSet, path: Path) -> None:
    """An ffconcat list whose per-file durations are the gaps between first timestamps.

    The concat demuxer places file i at the sum of the earlier durations; giving it the true distance
    between segment starts keeps every packet at its recorded time, gaps included, with no drift.
    """
    starts = segments.starts
    lines = ["ffconcat version 1.0"]
    for index, segment in enumerate(segments.segments):
        lines.append(f"file '{segment.resolve()}'")
        if index + 1 < len(starts):
            lines.append(f"duration {starts[index + 1] - starts[index]:.6f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run(argv: list[str], log: Path, what: str, started: Callable[[subprocess.Popen[bytes]], None] | None = None
         ) -> None:
    """Run ffmpeg with its output in `log`; `started` is handed the process (so another thread can stop it)."""
    with log.open("ab") as sink:
        sink.write(("$ " + " ".join(argv) + "\n").encode())
        sink.flush()  # before ffmpeg writes to the same file
        begun = sink.tell()
        with subprocess.Popen(argv, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL) as process:
            if started is not None:
                started(process)
            code = process.wait()
    if code != 0:
        # ffmpeg's last words name the cause; the full output stays in the log.
        with log.open("rb") as source:
            source.seek(begun)
            said = [line.strip() for line in source.read().decode("utf-8", "replace").splitlines() if line.strip()]
        reason = f": {' | '.join(said[-4:])}" if said else ""
        raise RecorderFailed(f"ffmpeg could not {what} (exit {code}){reason}; see {log}")


def mux_composite(
    capture_dir: Path,
    layout: Layout,
    video: SegmentSet,
    audio: dict[int, SegmentSet],
    *,
    origin: float,
    ffmpeg_path: str,
    ffprobe: str,
    log: Path,
) -> tuple[Path, tuple[str, ...]]:
    """composite.mp4: the screen video and one AAC track per tile, all shifted by `origin` together.

    The audio is copied as recorded. Should ffmpeg refuse to copy it (it takes each track's parameters from
    the first segment), the tracks are encoded again from the same segments and the returned remark says so.
    """
    if not video.segments:
        raise RecorderFailed("the screen recorder left no playable segment; nothing to assemble")
    work = capture_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    inputs = []
    duration = None
    for segments in [video, *(audio[t.tile] for t in layout.tiles if audio[t.tile].segments)]:
        assert segments.first_pts is not None
        listing = work / f"{segments.name}.ffconcat"
        write_concat_list(segments, listing)
        # Each list starts at 0; shifting it by its own first timestamp puts all on the video's clock.
        inputs.append(ffmpeg.input(str(listing), f="concat", safe=0, thread_queue_size=512,
                                   itsoffset=f"{segments.first_pts - origin:.6f}"))
    streams = [inputs[0]["v"]]
    metadata: dict[str, str] = {}
    next_input = 1
    for index, tile in enumerate(layout.tiles):
        if audio[tile.tile].segments:
            streams.append(inputs[next_input]["a"])
            next_input += 1
        else:
            # No audio was recorded for this tile: a silent track keeps track i = tile i.
            if duration is None:
                duration = video_duration(video)
            streams.append(ffmpeg.input("anullsrc=r=48000:cl=stereo", f="lavfi", t=f"{duration:.3f}")["a"])
        # MP4 keeps a track's name in its handler box; players list tracks by it.
        metadata[f"metadata:s:a:{index}"] = f"handler_name=Tile {tile.tile}: {tile.url}"
    output_path = capture_dir / "composite.mp4"

    def mux(encode_audio: bool) -> None:
        out = ffmpeg.output(
            *streams,
            str(output_path),
            vcodec="copy",
            acodec="aac" if encode_audio else "copy",
            movflags="+faststart",
            # Tracks may start seconds apart (a late audio recorder); the muxer must hold packets meanwhile.
            max_muxing_queue_size=65536,
            **{"metadata:s:v:0": "handler_name=Wangzheng synchronized multi-screen composite"},
            **metadata,
        )
        argv = out.compile(cmd=ffmpeg_path)
        _run([argv[0], "-hide_banner", "-loglevel", "warning", "-y", *argv[1:]], log, "assemble the composite")

    # A silent track has to be encoded, and one -acodec covers every audio track.
    encode = duration is not None
    try:
        mux(encode)
    except RecorderFailed as refused:
        if encode:
            raise
        mux(True)
        # Only the audio changed between the two attempts, so it was what ffmpeg could not copy.
        return output_path, (f"audio tracks encoded again from the segments after copying them failed "
                             f"({refused})",)
    return output_path, ()


def video_duration(video: SegmentSet) -> float:
    return max(0.0, video.times[-1][-1] - (video.first_pts or 0.0)) if video.times else 0.0


# How a tile's own video is encoded: the same for a tile cut from the composite and one cut segment by segment.
TILE_ENCODING: dict[str, str | int] = {"vcodec": "libx264", "preset": "veryfast", "crf": 20, "pix_fmt": "yuv420p",
                                       "fps_mode": "passthrough", "enc_time_base": "1:90000"}


def cut_tiles(
    capture_dir: Path, layout: Layout, composite: Path, *, tiles: Sequence[int], ffmpeg_path: str, log: Path
) -> dict[int, Path]:
    """Each tile's own video, cropped from the composite's frames at full tile resolution, with its audio."""
    if not tiles:
        return {}
    source = ffmpeg.input(str(composite))
    split = source["v"].filter_multi_output("split", len(tiles))
    outputs = []
    paths: dict[int, Path] = {}
    for index, number in enumerate(tiles):
        tile = layout.tile(number)
        rect = tile.rect
        cropped = split[index].crop(rect.x, rect.y, rect.width, rect.height)
        path = capture_dir / "tiles" / str(number) / "video.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        paths[number] = path
        audio_index = [t.tile for t in layout.tiles].index(number)
        outputs.append(
            ffmpeg.output(
                cropped,
                source[f"a:{audio_index}"],
                str(path),
                acodec="copy",
                movflags="+faststart",
                **TILE_ENCODING,
                **{"metadata:s:a:0": f"handler_name=Tile {number}: {tile.url}"},
            )
        )
    argv = ffmpeg.merge_outputs(*outputs).compile(cmd=ffmpeg_path)
    _run([argv[0], "-hide_banner", "-loglevel", "warning", "-y", *argv[1:]], log, "cut the tile videos")
    return paths


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def tile_segment(capture_dir: Path, tile: int, segment: Path) -> Path:
    """Where tile `tile`'s picture in screen segment `segment` is kept until the tile's video is joined."""
    return capture_dir / TILE_SEGMENTS / str(tile) / segment.name


def cut_segment(
    capture_dir: Path, layout: Layout, segment: Path, *, tiles: Sequence[int], ffmpeg_path: str, log: Path,
    threads: int | None = None, started: Callable[[subprocess.Popen[bytes]], None] | None = None,
    prefix: Sequence[str] = (), keep: Callable[[], bool] = lambda: True,
) -> None:
    """Each tile's picture in one closed screen segment, cropped and encoded as that tile's own segment with the
    same timestamps. Each is written under a name of its own and renamed when whole, and only if `keep()` still
    says so: one that exists is complete. `threads` bounds the encoders' threads and `prefix` runs ffmpeg
    through another program (work done beside a recording)."""
    source = ffmpeg.input(str(segment))
    split = source["v"].filter_multi_output("split", len(tiles))
    outputs = []
    writing: list[tuple[Path, Path]] = []
    run = secrets.token_hex(4)  # two cuts of one segment at once never share a file
    for index, number in enumerate(tiles):
        rect = layout.tile(number).rect
        final = tile_segment(capture_dir, number, segment)
        _own_directory(capture_dir, final.parent)
        partial = final.with_name(f"{final.name}.{run}.part")
        writing.append((partial, final))
        options: dict[str, str | int] = {**TILE_ENCODING, "f": "mpegts", "muxdelay": 0, "muxpreload": 0}
        if threads is not None:
            options["threads"] = threads
        outputs.append(ffmpeg.output(split[index].crop(rect.x, rect.y, rect.width, rect.height), str(partial),
                                     **options))
    # -copyts: every frame keeps the time it has in the screen segment, so the tile's segments join on the
    # composite's clock exactly as the screen's did.
    argv = ffmpeg.merge_outputs(*outputs).global_args("-copyts").compile(cmd=ffmpeg_path)
    try:
        _run([*prefix, argv[0], "-hide_banner", "-loglevel", "warning", "-y", *argv[1:]], log,
             f"cut the tiles of {segment.name}", started)
        if not keep():
            raise RecorderFailed(f"the cut of {segment.name} was stopped")
    except RecorderFailed:
        for partial, _final in writing:
            partial.unlink(missing_ok=True)
        raise
    for partial, final in writing:
        partial.replace(final)


def _own_directory(capture_dir: Path, directory: Path) -> None:
    """Make `directory` (inside the capture's work folder) and refuse one that leads elsewhere: a link planted
    there could turn a tile segment's rename into the overwriting of a recorded segment."""
    directory.mkdir(parents=True, exist_ok=True)
    if directory.resolve() != capture_dir.resolve() / directory.relative_to(capture_dir):
        raise RecorderFailed(f"{directory} leads outside the capture's work folder; it was not written to")


def join_tiles(
    capture_dir: Path, layout: Layout, video: SegmentSet, composite: Path, *, tiles: Sequence[int],
    ffmpeg_path: str, ffprobe: str, log: Path, cut_before: Mapping[Path, str] | None = None,
) -> dict[int, Path]:
    """Each tile's own video from its segments, on the composite's clock, with the tile's audio track copied from
    the composite. The segments are removed after.

    `cut_before` holds the SHA-256 of each tile segment this process cut while recording: one is used only if
    its bytes are still those, and every other is cut now, so a file put in the work folder meanwhile (or left by
    an earlier process) never becomes a tile's video."""
    if not tiles:
        return {}
    trusted = cut_before or {}
    for segment in video.segments:
        wanted = [tile_segment(capture_dir, number, segment) for number in tiles]
        if not all(path in trusted and path.exists() and sha256_of(path) == trusted[path]
                   for path in wanted):
            cut_segment(capture_dir, layout, segment, tiles=tiles, ffmpeg_path=ffmpeg_path, log=log)
    work = capture_dir / "work"
    paths: dict[int, Path] = {}
    for number in tiles:
        tile = layout.tile(number)
        listing = work / f"tile{number}.ffconcat"
        # The same list as the composite's screen video, file for file: the same durations, the same clock.
        write_concat_list(replace(video, segments=tuple(tile_segment(capture_dir, number, s) for s in video.segments)),
                          listing)
        path = capture_dir / "tiles" / str(number) / "video.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        audio_index = [t.tile for t in layout.tiles].index(number)
        out = ffmpeg.output(ffmpeg.input(str(listing), f="concat", safe=0)["v"],
                            ffmpeg.input(str(composite))[f"a:{audio_index}"], str(path), vcodec="copy",
                            acodec="copy", movflags="+faststart",
                            **{"metadata:s:a:0": f"handler_name=Tile {number}: {tile.url}"})
        argv = out.compile(cmd=ffmpeg_path)
        _run([argv[0], "-hide_banner", "-loglevel", "warning", "-y", *argv[1:]], log,
             f"join the video of tile {number}")
        paths[number] = path
    # What the join promises, checked: every tile's frames at the composite's times. A segment whose first frames
    # did not decode, or a tile segment that is not what it should be, shows here, never as a silent shift.
    expected = frame_times(composite, ffprobe)
    if not expected:
        raise RecorderFailed(f"ffprobe read no frame times from {composite}, so the tile videos cannot be checked")
    for number, path in paths.items():
        found = frame_times(path, ffprobe)
        if len(found) != len(expected) or any(abs(a - b) > FRAME_TIME_TOLERANCE for a, b in zip(found, expected,
                                                                                               strict=True)):
            raise RecorderFailed(f"tile {number}'s joined video has {len(found)} frames, not at the composite's "
                                 f"{len(expected)} frame times")
    shutil.rmtree(capture_dir / TILE_SEGMENTS, ignore_errors=True)
    return paths


FRAME_TIME_TOLERANCE = 0.0005  # seconds: time-base rounding, far below one frame


def frame_times(path: Path, ffprobe: str) -> list[float]:
    """The presentation times of a file's video packets, in order of time; raises when ffprobe cannot read it
    (`_probe_packets` reads segments, whose failures are findings, not errors)."""
    result = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                             "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise RecorderFailed(f"ffprobe could not read {path}: {result.stderr.strip()[-300:]}")
    return sorted(float(value) for value in result.stdout.split() if value not in ("", "N/A"))


def write_frame_times(capture_dir: Path, video: SegmentSet, *, t0: float, origin: float) -> tuple[Path, int, float]:
    """frames.csv: the wall-clock time of every composite frame. Returns (path, frames, seconds covered)."""
    path = capture_dir / "frames.csv"
    count = 0
    first: float | None = None
    last = 0.0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "composite_seconds", "utc", "epoch_seconds", "segment"])
        for segment, packets in zip(video.segments, video.times, strict=True):
            for pts in packets:
                epoch = t0 + pts
                moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")
                writer.writerow([count, f"{pts - origin:.6f}", moment.replace("+00:00", "Z"), f"{epoch:.6f}",
                                 segment.name])
                first = pts if first is None else first
                last = pts
                count += 1
    return path, count, (last - first) if first is not None else 0.0
