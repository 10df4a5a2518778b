"""Finish a capture from what is on disk: assemble the videos, list and hash every file, write the manifest.

Both the normal end of a capture and the recovery of an interrupted one come through here.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from capture.finalize import (
    TILE_SEGMENTS,
    ProbeCache,
    SegmentSet,
    cut_tiles,
    join_tiles,
    mux_composite,
    probe_segments,
    segment_set,
    write_frame_times,
)
from capture.prefinish import Prefinisher
from evidence import (
    Artifact,
    ArtifactRole,
    CaptureStatus,
    EvidenceError,
    Layout,
    Manifest,
    Provenance,
    Step,
    SyncQuality,
    TileResult,
    TileStatus,
)
from evidence.layout import COMPOSITE, FRAME_TIMES
from hashing import digest_file

_MEDIA_TYPES = {
    ".mp4": "video/mp4",
    ".ts": "video/mp2t",
    ".mkv": "video/x-matroska",
    ".png": "image/png",
    ".html": "text/html; charset=utf-8",
    ".har": "application/json",
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
    ".csv": "text/csv",
    ".pem": "application/x-pem-file",
    ".log": "text/plain",
    ".tsq": "application/timestamp-query",
    ".tsr": "application/timestamp-reply",
}

_TILE_FILES: list[tuple[str, ArtifactRole, str]] = [
    (r"video\.mp4", ArtifactRole.TILE_VIDEO, "the tile's own video, cropped from the composite, with its audio"),
    (r"screenshot-(start|end)\.png", ArtifactRole.SCREENSHOT, "full-page screenshot"),
    (r"dom-(start|end)\.html", ArtifactRole.DOM, "the page's DOM as HTML"),
    (r"network\.har", ArtifactRole.HAR, "network log (HAR 1.2)"),
    (r"console\.jsonl", ArtifactRole.CONSOLE, "browser console messages"),
    (r"timeline\.jsonl", ArtifactRole.TIMELINE, "page events: loads, navigations, errors, media URLs"),
    (r"certificates\.pem", ArtifactRole.CERTIFICATE, "TLS certificate chain"),
    (r"page\.json", ArtifactRole.PAGE_INFO, "requested and final URL, redirects, title, status, remote IP"),
    (r"streams/stream\d+\.mkv", ArtifactRole.STREAM, "original media stream copied with ffmpeg -c copy"),
    (r"streams/stream\d+\.json", ArtifactRole.STREAM_INFO, "how and when the stream was copied"),
]


def classify(relative: str) -> tuple[ArtifactRole, int | None, str] | None:
    """Role, tile and description of a file in a capture directory; None for files that are not evidence."""
    if relative == COMPOSITE:
        return ArtifactRole.COMPOSITE, None, "synchronized multi-screen composite, one audio track per tile"
    if relative == FRAME_TIMES:
        return ArtifactRole.FRAME_TIMES, None, "wall-clock time of every composite frame"
    if match := re.fullmatch(r"segments/video_\d{5}\.ts", relative):
        return ArtifactRole.SEGMENT, None, "screen recording segment as written during the capture"
    if match := re.fullmatch(r"segments/audio(\d)_\d{5}\.ts", relative):
        return ArtifactRole.AUDIO_SEGMENT, int(match.group(1)), "audio recording segment as written"
    if re.fullmatch(r"segments/(video|audio\d)\.csv", relative):
        return ArtifactRole.LOG, None, "segment list written by the recorder"
    if match := re.fullmatch(r"tiles/(\d)/(.+)", relative):
        tile = int(match.group(1))
        for pattern, role, description in _TILE_FILES:
            if re.fullmatch(pattern, match.group(2)):
                return role, tile, description
        return None
    if relative == "chain.jsonl":
        return ArtifactRole.SEGMENT_CHAIN, None, "rolling hash chain of the segments, appended as each closed"
    if re.fullmatch(r"timestamps/chain-\d+\.\d+\.(tsq|tsr|chain\.pem)", relative):
        return ArtifactRole.TIMESTAMP, None, "RFC 3161 request/token over the segment chain head while recording"
    if re.fullmatch(r"logs/[\w.-]+\.log", relative):
        return ArtifactRole.LOG, None, "program output during the capture"
    return None


def list_artifacts(capture_dir: Path) -> tuple[Artifact, ...]:
    artifacts = []
    for path in sorted(capture_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(capture_dir).as_posix()
        found = classify(relative)
        if found is None:
            continue
        role, tile, description = found
        size, digests = digest_file(path)
        artifacts.append(
            Artifact(
                path=relative,
                role=role,
                media_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                size=size,
                digests=digests,
                tile=tile,
                description=description,
            )
        )
    return tuple(artifacts)


@dataclass(frozen=True)
class Assembly:
    """What the finalize step produced, and what went wrong on the way."""

    recorded_seconds: float
    frames: int
    problems: tuple[str, ...]
    composite: bool
    remarks: tuple[str, ...] = ()  # worth recording, not a fault


def assemble_videos(
    capture_dir: Path,
    layout: Layout,
    *,
    t0: float,
    usable_tiles: list[int],
    ffmpeg_path: str,
    ffprobe: str,
    prefinished: Prefinisher | None = None,
) -> Assembly:
    """Composite, tile videos and frame times from the closed segments; with `prefinished`, from what it did
    while the capture recorded where that still holds."""
    log = capture_dir / "logs" / "finalize.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    remarks: list[str] = []
    probes = prefinished.probes if prefinished is not None else ProbeCache()
    probe_segments(capture_dir, ffprobe, probes)  # what was not read while recording, several at a time
    video = segment_set(capture_dir, "video", ffprobe, probes)
    audio: dict[int, SegmentSet] = {t.tile: segment_set(capture_dir, f"audio{t.tile}", ffprobe, probes)
                                    for t in layout.tiles}
    for segments in [video, *audio.values()]:
        if segments.damaged:
            problems.append(f"{segments.name}: undecodable segments left out: {', '.join(segments.damaged)}")
        if segments.too_short:
            remarks.append(f"{segments.name}: left out of the videos as too short for ffmpeg to read as MPEG-TS "
                           f"(kept as evidence): "
                           f"{', '.join(segments.too_short)}")
    for tile, segments in audio.items():
        if not segments.segments:
            what = ("its audio segments were all too short to assemble (kept as evidence)" if segments.too_short
                    else "no audio was recorded")
            problems.append(f"tile {tile}: {what}; its track is silence")
    if video.first_pts is None:
        return Assembly(recorded_seconds=0.0, frames=0, problems=(*problems, "no video was recorded"),
                        composite=False, remarks=tuple(remarks))
    origin = video.first_pts
    try:
        composite, mux_remarks = mux_composite(capture_dir, layout, video, audio, origin=origin,
                                               ffmpeg_path=ffmpeg_path, ffprobe=ffprobe, log=log)
        remarks.extend(mux_remarks)
    except EvidenceError as exc:
        return Assembly(recorded_seconds=0.0, frames=0, problems=(*problems, str(exc)), composite=False,
                        remarks=tuple(remarks))
    _frames_path, frames, covered = write_frame_times(capture_dir, video, t0=t0, origin=origin)
    try:
        join_tiles(capture_dir, layout, video, composite, tiles=usable_tiles, ffmpeg_path=ffmpeg_path,
                   ffprobe=ffprobe, log=log,
                   cut_before=prefinished.cut_segments if prefinished and not prefinished.abandoned else None)
    except EvidenceError as joining:
        # The tiles' segments could not be cut or joined: cut each tile from the composite in one go instead.
        shutil.rmtree(capture_dir / TILE_SEGMENTS, ignore_errors=True)
        try:
            cut_tiles(capture_dir, layout, composite, tiles=usable_tiles, ffmpeg_path=ffmpeg_path, log=log)
            remarks.append(f"tile videos cut from the composite after cutting them segment by segment failed "
                           f"({joining})")
        except EvidenceError as exc:
            problems.append(str(exc))
    recorded = covered + 1.0 / layout.fps if frames else 0.0
    return Assembly(recorded_seconds=recorded, frames=frames, problems=tuple(problems), composite=True,
                    remarks=tuple(remarks))


def overall_status(tiles: tuple[TileResult, ...], *, composite: bool, interrupted: bool) -> CaptureStatus:
    recorded = [t for t in tiles if t.status in (TileStatus.COMPLETE, TileStatus.PARTIAL)]
    if not composite or not recorded:
        return CaptureStatus.FAILED
    if interrupted or len(recorded) < len(tiles) or any(t.status == TileStatus.PARTIAL for t in tiles):
        return CaptureStatus.PARTIAL
    return CaptureStatus.COMPLETE


def build_manifest(
    capture_dir: Path,
    *,
    capture_id: str,
    status: CaptureStatus,
    reason: str,
    started_at: datetime,
    ended_at: datetime,
    requested_duration: float | None,
    recorded_seconds: float,
    provenance: Provenance,
    layout: Layout,
    tiles: tuple[TileResult, ...],
    steps: tuple[Step, ...],
    sync: SyncQuality | None = None,
) -> Manifest:
    return Manifest(
        capture_id=capture_id,
        status=status,
        reason=reason,
        started_at=started_at,
        ended_at=ended_at,
        requested_duration_seconds=requested_duration,
        recorded_seconds=round(recorded_seconds, 3),
        provenance=provenance,
        layout=layout,
        tiles=tiles,
        steps=steps,
        artifacts=list_artifacts(capture_dir),
        sync=sync,
    )


def read_tile_result(capture_dir: Path, tile: int, url: str, default_reason: str) -> TileResult:
    """A tile's result from its page.json, as far as the capture got; used by recovery."""
    path = capture_dir / "tiles" / str(tile) / "page.json"
    if not path.exists():
        return TileResult(tile=tile, url=url, status=TileStatus.PARTIAL, reason=default_reason)
    info = json.loads(path.read_text(encoding="utf-8"))
    status = TileStatus(info.get("status", "partial"))
    if status in (TileStatus.RECORDING, TileStatus.LOADING, TileStatus.PENDING, TileStatus.COMPLETE):
        status = TileStatus.PARTIAL
    return TileResult(
        tile=tile,
        url=url,
        status=status,
        reason=info.get("reason") or default_reason,
        final_url=info.get("final_url"),
        redirect_chain=tuple(info.get("redirect_chain") or ()),
        title=info.get("title"),
        http_status=info.get("http_status"),
        remote_ip=info.get("remote_ip"),
        user_agent=info.get("user_agent"),
        media_urls=tuple(info.get("media_urls") or ()),
    )

