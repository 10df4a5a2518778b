"""What the benchmarks share: a capture's manifest written without recording anything."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path


def write_bench_manifest(directory: Path, capture_id: str) -> None:
    """A complete one-tile manifest over the files already in `directory` (a benchmark's stand-in capture)."""
    from capture.assemble import build_manifest
    from capture.layout import build_layout
    from evidence import CaptureStatus, ClockCheck, Provenance, TileResult, TileStatus
    from evidence.layout import write_manifest

    url = "https://shop.example/item"
    now = datetime.now(UTC)
    provenance = Provenance(
        tool="wangzheng", tool_version="bench", git_commit=None, python="3", components={}, os="bench",
        kernel="bench", hostname="bench", ip_addresses=(), user_agent=None, launch_flags=(), options={},
        operator="bench", case_id=None, proxy={}, etc_hosts_sha256=None, resolv_conf=None, dns={},
        clock=ClockCheck(server="none", checked_at=now, error="unavailable: bench"), timezone="UTC",
        browser_profile="none")
    manifest = build_manifest(directory, capture_id=capture_id, status=CaptureStatus.COMPLETE, reason="",
                              started_at=now, ended_at=now, requested_duration=None, recorded_seconds=0.0,
                              provenance=provenance, layout=build_layout([url]),
                              tiles=(TileResult(tile=1, url=url, status=TileStatus.COMPLETE),), steps=())
    write_manifest(directory, manifest)
