"""Measure a finished capture: each tile's frame rate and the skew between tiles, from the time codes
that the demo pages draw, and each audio track's tone. Used by the tests and `scripts/bench capture`.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from capture.layout import device_scale
from capture.timecode import TIMECODE_CELL_CSS_PX, decode_timecode, timecode_delta_ms
from evidence import Layout


def iter_frames(video: Path) -> Iterator[npt.NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(video))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield np.asarray(frame, dtype=np.uint8)
    finally:
        capture.release()


def tile_timecodes(video: Path, layout: Layout) -> list[dict[int, int | None]]:
    """Per composite frame, the time code each tile shows (None where it cannot be read)."""
    frames = []
    for frame in iter_frames(video):
        frames.append({t.tile: decode_timecode(frame, (t.rect.x, t.rect.y), TIMECODE_CELL_CSS_PX * device_scale(t.rect))
                       for t in layout.tiles})
    return frames


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class SyncReport:
    frames: int
    seconds: float
    distinct_fps: dict[int, float] = field(default_factory=dict)
    decoded_share: dict[int, float] = field(default_factory=dict)
    first_decoded_frame: dict[int, int | None] = field(default_factory=dict)
    advancing: dict[int, bool] = field(default_factory=dict)
    skew_ms: list[float] = field(default_factory=list)

    @property
    def skew_p50(self) -> float:
        return _percentile(self.skew_ms, 0.5)

    @property
    def skew_p95(self) -> float:
        return _percentile(self.skew_ms, 0.95)

    @property
    def skew_max(self) -> float:
        return max(self.skew_ms) if self.skew_ms else float("nan")


def sync_report(codes: list[dict[int, int | None]], fps: float, *, skip_seconds: float = 0.0) -> SyncReport:
    """Distinct frames per second per tile and the spread of the tiles' clocks within each frame.

    `skip_seconds` leaves out the start, while pages are still loading.
    """
    start = int(skip_seconds * fps)
    window = codes[start:]
    seconds = len(window) / fps if fps else 0.0
    report = SyncReport(frames=len(window), seconds=seconds)
    tiles = sorted({tile for frame in codes for tile in frame})
    for tile in tiles:
        values = [frame.get(tile) for frame in window]
        seen = [v for v in values if v is not None]
        report.distinct_fps[tile] = len(set(seen)) / seconds if seconds else 0.0
        report.decoded_share[tile] = len(seen) / len(values) if values else 0.0
        report.first_decoded_frame[tile] = next((i for i, f in enumerate(codes) if f.get(tile) is not None), None)
        steps = [timecode_delta_ms(b, a) for a, b in itertools.pairwise(seen)]
        report.advancing[tile] = bool(steps) and sum(steps) > 0 and statistics.median(steps) >= 0
    for frame in window:
        shown = [v for v in frame.values() if v is not None]
        if len(shown) >= 2 and len(shown) == len(frame):
            offsets = [timecode_delta_ms(v, shown[0]) for v in shown]
            report.skew_ms.append(float(max(offsets) - min(offsets)))
    return report


def audio_tone(video: Path, track: int, *, ffmpeg: str = "ffmpeg", skip_seconds: float = 0.0) -> tuple[float, float]:
    """(dominant frequency in Hz, RMS level 0..1) of one audio track of a video file."""
    result = subprocess.run(
        [ffmpeg, "-v", "error", "-ss", f"{skip_seconds:.3f}", "-i", str(video), "-map", f"0:a:{track}",
         "-ac", "1", "-ar", "48000", "-f", "s16le", "-"],
        capture_output=True, timeout=300, check=True,
    )
    samples = np.frombuffer(result.stdout, dtype="<i2").astype(np.float64) / 32768.0
    if samples.size == 0:
        return 0.0, 0.0
    rms = float(np.sqrt(np.mean(samples**2)))
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    frequencies = np.fft.rfftfreq(samples.size, 1 / 48000)
    return float(frequencies[int(np.argmax(spectrum[1:])) + 1]), rms
