"""The evidence file index: every registered file of every capture, by its digests and its object version.

It answers the public hash check and tells the API which object version to stream for a download. A row is made
from the signed manifest (artifacts) and the preservation record (the manifest, its signature, the timestamp
tokens, and the version each file was stored as); files still waiting in the spool get their version when a later
sync stores them and the capture is indexed again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert

from custody.ledger import Ledger
from evidence import CustodyAction, EvidenceError, Manifest, PreservationRecord
from evidence.layout import (
    MANIFEST,
    SIGNATURE,
    has_manifest,
    has_preservation,
    load_manifest,
    load_preservation,
)
from preservation.record import object_key, preserved_files
from preservation.registry import known
from service.db import evidence_files

_ROLE_OF_MEDIA = {"application/timestamp-query": "timestamp-request", "application/timestamp-reply": "timestamp",
                  "application/x-pem-file": "certificate", "application/pkcs7-signature": "signature"}


def file_rows(capture_dir: Path, manifest: Manifest, record: PreservationRecord) -> list[dict[str, Any]]:
    """One row per preserved file; digests from the manifest or the record, never from the files on disk."""
    artifacts = {a.path: a for a in manifest.artifacts}
    stored = {s.key: s for s in record.stored}
    rows = []
    for path, media in preserved_files(capture_dir, manifest, record):
        obj = stored.get(object_key(manifest.capture_id, path))
        artifact = artifacts.get(path)
        if artifact is not None:
            sha256, sm3, size, role = artifact.digests.sha256, artifact.digests.sm3, artifact.size, artifact.role.value
            acquired: datetime = artifact.started_at or manifest.ended_at
        elif path == MANIFEST:
            sha256, sm3, size, role = record.manifest.sha256, record.manifest.sm3, record.manifest.size, "manifest"
            acquired = manifest.ended_at
        elif obj is not None:  # signature, certificates, tokens: known by what the store verified
            sha256, sm3, size, acquired = obj.digests.sha256, obj.digests.sm3, obj.size, manifest.ended_at
            role = "signature" if path == SIGNATURE else _ROLE_OF_MEDIA.get(media, "record")
        else:
            continue
        rows.append({"sha256": sha256, "sm3": sm3, "size": size, "capture_id": manifest.capture_id,
                     "path": path, "role": role, "media_type": media, "acquired_at": acquired,
                     "bucket": obj.bucket if obj else None, "object_key": obj.key if obj else None,
                     "version_id": obj.version_id if obj else None})
    return rows


def registering_entries(ledger: Ledger, capture_id: str) -> dict[str, int]:
    """The custody entry that registered each file of a capture: `stored` (by object key) and, for the manifest,
    `hashed`. The hash check proves these, so it never scans the log to find them."""
    found: dict[str, int] = {}
    prefix = object_key(capture_id, "")
    for entry in ledger.entries(subject=capture_id):
        if entry.action == CustodyAction.HASHED and MANIFEST not in found:
            found[MANIFEST] = entry.seq
        elif entry.action == CustodyAction.STORED and isinstance(entry.details.get("key"), str):
            found.setdefault(str(entry.details["key"]).removeprefix(prefix), entry.seq)
    return found


def index_capture(engine: Engine, capture_dir: Path, ledger: Ledger | None = None) -> int:
    """Add (or complete with their object versions and registering entries) a preserved capture's files;
    returns rows added or updated."""
    if not has_manifest(capture_dir) or not has_preservation(capture_dir):
        return 0
    manifest = load_manifest(capture_dir)
    record = load_preservation(capture_dir)
    rows = file_rows(capture_dir, manifest, record)
    seqs = registering_entries(ledger, manifest.capture_id) if ledger is not None else {}
    for row in rows:
        row["custody_seq"] = seqs.get(row["path"])
    changed = 0
    with engine.begin() as conn:
        present = {row.path: row for row in conn.execute(
            select(evidence_files.c.path, evidence_files.c.version_id, evidence_files.c.sha256,
                   evidence_files.c.custody_seq)
            .where(evidence_files.c.capture_id == manifest.capture_id))}
        new = [row for row in rows if row["path"] not in present]
        for start in range(0, len(new), 1000):
            conn.execute(insert(evidence_files).values(new[start:start + 1000]).on_conflict_do_nothing())
        changed += len(new)
        for row in rows:
            known_row = present.get(row["path"])
            if known_row is None or known_row.sha256 != row["sha256"]:
                continue  # an index row never changes its digest; `wz verify` reports such a capture
            values: dict[str, Any] = {}
            if known_row.version_id is None and row["version_id"] is not None:
                values.update(bucket=row["bucket"], object_key=row["object_key"], version_id=row["version_id"])
            if known_row.custody_seq is None and row["custody_seq"] is not None:
                values["custody_seq"] = row["custody_seq"]
            if values:
                conn.execute(update(evidence_files).where(evidence_files.c.capture_id == manifest.capture_id,
                                                          evidence_files.c.path == row["path"]).values(**values))
                changed += 1
    return changed


def index_registered(engine: Engine, registry_dir: Path, ledger: Ledger | None = None) -> int:
    """Every capture this node registered (the CLI's and the workers'), idempotently."""
    changed = 0
    for _capture_id, directory in known(registry_dir):
        try:
            changed += index_capture(engine, directory, ledger)
        except (EvidenceError, OSError, ValueError):
            continue  # an unreadable capture is reported by `wz verify`, not by the index
    return changed
