"""A capture directory made without recording anything, for testing preservation, export and verification
on their own: real keys, a real local TSA (OpenSSL), a SQLite ledger, and a store that is down (files wait in
the spool), so these tests need no browser, display, sound server, object store or database server; and the
node's services on a real SeaweedFS, for the integration tests that want the store up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capture.assemble import build_manifest
from capture.layout import build_layout
from evidence import (
    CaptureStatus,
    ClockCheck,
    Manifest,
    Provenance,
    Settings,
    TileResult,
    TileStatus,
)
from evidence.layout import write_manifest
from preservation.registry import register
from preservation.services import Services
from storage import S3Endpoint
from tests.conftest import s3_env


def make_capture(directory: Path, *, capture_id: str | None = None, case_id: str = "CASE-1") -> Manifest:
    """A finished capture's files and manifest, as recording would leave them (bytes are random)."""
    capture_id = capture_id or f"wz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    files = {
        "composite.mp4": os.urandom(300_000),
        "frames.csv": b"frame,composite_seconds,utc,epoch_seconds,segment\n0,0.000000,2026-11-30T00:00:00Z,1,v\n",
        "segments/video_00000.ts": os.urandom(50_000),
        "segments/audio1_00000.ts": os.urandom(20_000),
        "tiles/1/screenshot-start.png": os.urandom(10_000),
        "tiles/1/page.json": b'{"final_url": "https://shop.example/item/1", "status": "complete"}',
        "logs/screen.log": b"",
    }
    for relative, data in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    url = "https://shop.example/item/1"
    now = datetime.now(UTC)
    provenance = Provenance(
        tool="wangzheng", tool_version="test", git_commit=None, python="3", components={}, os="test", kernel="test",
        hostname="test-host", ip_addresses=("192.0.2.1",), user_agent=None, launch_flags=(), options={},
        operator="inspector", case_id=case_id, proxy={}, etc_hosts_sha256=None, resolv_conf=None, dns={},
        clock=ClockCheck(server="none", checked_at=now, error="unavailable: test"), timezone="UTC",
        browser_profile="fresh",
    )
    manifest = build_manifest(
        directory, capture_id=capture_id, status=CaptureStatus.COMPLETE, reason="", started_at=now, ended_at=now,
        requested_duration=5.0, recorded_seconds=5.0, provenance=provenance, layout=build_layout([url]),
        tiles=(TileResult(tile=1, url=url, status=TileStatus.COMPLETE),), steps=(),
    )
    write_manifest(directory, manifest)
    return manifest


@dataclass
class Node:
    """One capturing node's data directory and settings (environment variables are set while it is in use)."""

    data_dir: Path
    settings: Settings

    def capture(self, directory: Path, **options: str) -> Manifest:
        manifest = make_capture(directory, **options)
        register(self.settings.registry_dir, manifest.capture_id, directory)
        return manifest


def store_down_env(data_dir: Path) -> dict[str, str]:
    return {
        "WZ_DATA_DIR": str(data_dir),
        "WZ_NTP_TIMEOUT_SECONDS": "1",
        "WZ_S3_ENDPOINT": "127.0.0.1:9",
        "WZ_S3_ACCESS_KEY": "unused",
        "WZ_S3_SECRET_KEY": "unused-secret",
        "WZ_ACTOR": "inspector",
        "WZ_DATABASE_URL": f"sqlite:///{data_dir / 'custody.sqlite3'}",  # no database server in the fast tier
    }


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    for name in [k for k in os.environ if k.startswith("WZ_")]:
        monkeypatch.delenv(name)
    for name, value in store_down_env(tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    yield Node(tmp_path / "data", Settings())


@pytest.fixture
def services(tmp_path: Path, s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """The node's services on a real SeaweedFS with Object Lock (a bucket of its own) and a SQLite ledger."""
    for name, value in {"WZ_DATA_DIR": str(tmp_path / "data"), "WZ_ACTOR": "inspector",
                        "WZ_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'custody.sqlite3'}",
                        **s3_env(s3_server, f"wz-svc-{tmp_path.name[-20:].lower().replace('_', '-')}")}.items():
        monkeypatch.setenv(name, value)
    with Services(Settings()) as opened:
        yield opened
