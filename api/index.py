"""The digest index behind the public hash check: every registered file of every capture on this node."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert

from api.db import evidence_digests
from evidence import EvidenceError
from evidence.layout import MANIFEST, has_manifest, has_preservation, load_manifest, load_preservation
from preservation.registry import known


def index_capture(engine: Engine, capture_dir: Path) -> int:
    """Add a preserved capture's files (its artifacts and its manifest); returns how many rows are new."""
    if not has_manifest(capture_dir) or not has_preservation(capture_dir):
        return 0
    manifest = load_manifest(capture_dir)
    record = load_preservation(capture_dir)
    rows = [{"sha256": a.digests.sha256, "sm3": a.digests.sm3, "capture_id": manifest.capture_id, "path": a.path,
             "role": a.role.value, "acquired_at": _acquired(a.started_at, manifest.ended_at)}
            for a in manifest.artifacts]
    rows.append({"sha256": record.manifest.sha256, "sm3": record.manifest.sm3, "capture_id": manifest.capture_id,
                 "path": MANIFEST, "role": "manifest", "acquired_at": manifest.ended_at})
    with engine.begin() as conn:
        present = {row.path for row in conn.execute(select(evidence_digests.c.path).where(
            evidence_digests.c.capture_id == manifest.capture_id))}
        new = [row for row in rows if row["path"] not in present]
        for start in range(0, len(new), 1000):
            conn.execute(insert(evidence_digests).values(new[start:start + 1000]).on_conflict_do_nothing())
    return len(new)


def index_registered(engine: Engine, registry_dir: Path) -> int:
    """Every capture this node registered (the CLI's and the workers'), idempotently."""
    added = 0
    for _capture_id, directory in known(registry_dir):
        try:
            added += index_capture(engine, directory)
        except (EvidenceError, OSError, ValueError):
            continue  # an unreadable capture is reported by `wz verify`, not by the index
    return added


def _acquired(started: datetime | None, ended: datetime) -> datetime:
    return started or ended
