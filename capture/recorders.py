"""The recorders: one ffmpeg for the whole display, one per tile's audio, one per copied stream.

All of them stamp packets with wall-clock time (`-copyts`) shifted by one shared epoch `t0`
(`-output_ts_offset -t0`), so the screen and every audio track sit on one clock and can be muxed
afterwards without drift. They write closed MPEG-TS segments: a crash loses at most the open one,
and a truncated TS still plays.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import ffmpeg

from capture.processes import spawn, stop
from evidence import ComponentMissing, Layout
from evidence.layout import SEGMENT_DIR

_PROXY_VARIABLES = {"no_proxy", "http_proxy", "https_proxy", "all_proxy", "ftp_proxy"}
CLOCK_TEXT = r"%{pts:gmtime:0:%Y-%m-%d %H\:%M\:%S}.%{eif:mod(t*1000,1000):d:3} UTC"


class Recorder(Protocol):
    """Anything that records while the capture runs and must be stopped cleanly."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> int | None: ...

    def alive(self) -> bool: ...


def find_font() -> str:
    """A font with CJK glyphs, so Chinese hosts and paths in labels are legible."""
    candidates = [
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ]
    if shutil.which("fc-match"):
        result = subprocess.run(
            ["fc-match", "-f", "%{file}", "Noto Sans CJK SC"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.insert(0, result.stdout.strip())
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    raise ComponentMissing("no font for the burned-in labels; install fonts-noto-cjk (./scripts/setup)")


def tile_label(tile: int, url: str, limit: int = 70) -> str:
    parts = urlsplit(url)
    text = f"[{tile}] {parts.hostname or ''}{(':' + str(parts.port)) if parts.port else ''}{parts.path or '/'}"
    if parts.query:
        text += "?" + parts.query
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _FfmpegRecorder:
    name = "ffmpeg"

    def __init__(self, ffmpeg_path: str, log: Path) -> None:
        self._ffmpeg = ffmpeg_path
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []

    def _start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.process = spawn(argv, env=env, log=self._log)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        # SIGINT makes ffmpeg flush and close the open segment; escalate only if it hangs.
        if self.process is None:
            return None
        return stop(self.process, sig=signal.SIGINT, grace=15)

    def _with_globals(self, compiled: list[str]) -> list[str]:
        # ffmpeg-python places global options after the output, where ffmpeg ignores -copyts.
        return [self._ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", "-copyts", "-y", *compiled[1:]]


def _segment_options(t0: float, segment_seconds: int, segment_list: Path) -> dict[str, object]:
    return {
        "muxdelay": 0,
        "muxpreload": 0,
        "output_ts_offset": f"{-t0:.6f}",
        "f": "segment",
        "segment_time": segment_seconds,
        "segment_format": "mpegts",
        "segment_list": str(segment_list),
        "segment_list_type": "csv",
    }


class ScreenRecorder(_FfmpegRecorder):
    """x11grab of the whole display, with the UTC clock and tile labels burned in."""

    name = "screen"

    def __init__(
        self,
        *,
        display: str,
        layout: Layout,
        capture_dir: Path,
        t0: float,
        capture_id: str,
        segment_seconds: int,
        ffmpeg_path: str,
        log: Path,
    ) -> None:
        super().__init__(ffmpeg_path, log)
        self.display = display
        self.layout = layout
        self.capture_dir = capture_dir
        self.t0 = t0
        self.capture_id = capture_id
        self.segment_seconds = segment_seconds

    def build_argv(self) -> list[str]:
        font = find_font()
        layout = self.layout
        labels_dir = self.capture_dir / "work"
        labels_dir.mkdir(parents=True, exist_ok=True)
        header_file = labels_dir / "header.txt"
        header_file.write_text(f"网证 Wangzheng  {self.capture_id}", encoding="utf-8")
        stream = ffmpeg.input(
            self.display, f="x11grab", framerate=layout.fps, video_size=(layout.width, layout.height), draw_mouse=0
        )
        header = layout.header_rect
        stream = stream.drawtext(
            textfile=str(header_file), fontfile=font, fontsize=15, fontcolor="white", x=header.x + 8, y=header.y + 4
        )
        stream = stream.drawtext(
            text=CLOCK_TEXT, escape_text=False, fontfile=font, fontsize=15, fontcolor="yellow",
            x=f"{header.x + header.width}-tw-8", y=header.y + 4,
        )
        for tile in layout.tiles:
            label_file = labels_dir / f"label-{tile.tile}.txt"
            label_file.write_text(tile_label(tile.tile, tile.url), encoding="utf-8")
            box = tile.label_rect
            stream = stream.drawtext(
                textfile=str(label_file), fontfile=font, fontsize=13, fontcolor="white", x=box.x + 6, y=box.y + 3
            )
        gop = layout.fps * self.segment_seconds
        segments = self.capture_dir / SEGMENT_DIR
        segments.mkdir(parents=True, exist_ok=True)
        out = ffmpeg.output(
            stream,
            str(segments / "video_%05d.ts"),
            vcodec="libx264",
            preset="ultrafast",
            crf=23,
            pix_fmt="yuv420p",
            g=gop,
            keyint_min=gop,
            sc_threshold=0,
            fps_mode="passthrough",
            enc_time_base="1:90000",
            **_segment_options(self.t0, self.segment_seconds, segments / "video.csv"),
        )
        return self._with_globals(out.compile(cmd=self._ffmpeg))

    def start(self) -> None:
        self._start(self.build_argv())


class AudioRecorder(_FfmpegRecorder):
    """Every tile's PulseAudio sink monitor, each to its own AAC segments on the shared clock, in one ffmpeg.

    One process rather than one per tile: each ffmpeg maps some 40 MB of shared libraries, counted again
    in every process's RSS, while the inputs are read on their own threads and keep their own timestamps.
    The sinks live on one private PulseAudio server, so they would fail together anyway.
    """

    name = "audio"

    def __init__(
        self,
        *,
        sinks: dict[int, str],
        capture_dir: Path,
        t0: float,
        segment_seconds: int,
        ffmpeg_path: str,
        env: dict[str, str],
        log: Path,
    ) -> None:
        super().__init__(ffmpeg_path, log)
        self.sinks = dict(sinks)
        self.capture_dir = capture_dir
        self.t0 = t0
        self.segment_seconds = segment_seconds
        self.env = env

    def build_argv(self) -> list[str]:
        segments = self.capture_dir / SEGMENT_DIR
        segments.mkdir(parents=True, exist_ok=True)
        outputs = []
        for tile, sink in sorted(self.sinks.items()):
            stream = ffmpeg.input(f"{sink}.monitor", f="pulse", sample_rate=48000, channels=2, thread_queue_size=1024)
            outputs.append(ffmpeg.output(
                stream["a"],  # an explicit -map N:a: without it ffmpeg would pick the first output's track itself
                str(segments / f"audio{tile}_%05d.ts"),
                acodec="aac",
                audio_bitrate="128k",
                **_segment_options(self.t0, self.segment_seconds, segments / f"audio{tile}.csv"),
            ))
        return self._with_globals(ffmpeg.merge_outputs(*outputs).compile(cmd=self._ffmpeg))

    def start(self) -> None:
        self._start(self.build_argv(), env=self.env)


class StreamCopier(_FfmpegRecorder):
    """Copies a media stream the page plays (HLS, FLV, DASH, MP4) byte-for-byte in its codecs."""

    def __init__(
        self,
        *,
        tile: int,
        index: int,
        url: str,
        directory: Path,
        referer: str,
        user_agent: str | None,
        cookies: str,
        ffmpeg_path: str,
        log: Path,
        proxy: str,
    ) -> None:
        super().__init__(ffmpeg_path, log)
        self.name = f"stream-{tile}-{index}"
        self.proxy = proxy  # the tile's egress proxy: the copy reaches only what the page was allowed to
        self.tile = tile
        self.url = url
        self.directory = directory
        self.output = directory / f"stream{index}.mkv"
        self.referer = referer
        self.user_agent = user_agent
        self.cookies = cookies
        self.started_at: datetime | None = None

    def build_argv(self) -> list[str]:
        headers = f"Referer: {self.referer}\r\n"
        if self.cookies:
            headers += f"Cookie: {self.cookies}\r\n"
        options: dict[str, object] = {"headers": headers, "rw_timeout": 15_000_000, "http_proxy": self.proxy,
                                      # No file:, no data:, no protocol that could leave the egress proxy.
                                      "protocol_whitelist": "http,https,tls,tcp,crypto,httpproxy"}
        if self.user_agent:
            options["user_agent"] = self.user_agent
        out = ffmpeg.output(ffmpeg.input(self.url, **options), str(self.output), map="0", c="copy", f="matroska")
        compiled = out.compile(cmd=self._ffmpeg)
        return [self._ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", "-y", *compiled[1:]]

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started_at = datetime.now(UTC)
        # ffmpeg skips -http_proxy for hosts in no_proxy and would then resolve and connect on its own.
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
        self._start(self.build_argv(), env=env)

    def write_info(self, exit_code: int | None) -> None:
        info = {
            "tile": self.tile,
            "url": self.url,
            "file": self.output.name,
            "method": "ffmpeg -c copy (codecs untouched, remuxed into Matroska)",
            "referer": self.referer,
            "user_agent": self.user_agent,
            "cookies_sent": [c.split("=")[0] for c in self.cookies.split("; ") if c],
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": datetime.now(UTC).isoformat(),
            "ffmpeg_exit_code": exit_code,
        }
        (self.directory / f"{self.output.stem}.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
