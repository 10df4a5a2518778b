"""A capture job's life in the service's database, shared by the API and the workers.

States: queued -> starting -> recording -> finalizing -> preserving -> complete | partial | failed; any state from
starting on becomes `interrupted` when its worker stops beating (killed, its host down), and an interrupted
capture becomes partial (or failed) once its worker or its host finalizes what was recorded. Every change of
state is an event (the progress stream) and, where a person would ask "who and when", a custody entry.

Heartbeats and staleness use the database's clock, so workers on hosts whose clocks differ agree.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, text, update

from evidence import (
    CaptureStatus,
    CustodyAction,
    EvidenceError,
    Manifest,
    PreservationRecord,
    Settings,
    StepName,
)
from evidence.layout import has_manifest, has_preservation, load_manifest, load_preservation
from preservation.record import preservation_state
from preservation.registry import locate
from preservation.services import Services
from service.db import capture_events, captures
from service.index import index_capture

ACTIVE = ("starting", "recording", "finalizing", "preserving")
FINAL = ("complete", "partial", "failed")
STALE_SECONDS = 30.0  # a capture whose worker has not beaten for this long is interrupted
HEARTBEAT_SECONDS = 2.0


def add_event(conn: Connection, capture_id: str, kind: str, message: str, **fields: Any) -> None:
    """One entry of the capture's progress stream (what GET /captures/{id}/events sends)."""
    conn.execute(insert(capture_events).values(
        capture_id=capture_id, at=func.now(), kind=kind,
        event={"kind": kind, "message": message[:2000], **fields}))


def set_state(conn: Connection, capture_id: str, state: str, reason: str = "", **values: Any) -> None:
    conn.execute(update(captures).where(captures.c.id == capture_id).values(state=state, reason=reason[:4000],
                                                                            **values))
    add_event(conn, capture_id, "state", f"{state}{': ' + reason if reason else ''}", state=state, reason=reason)


def manifest_summary(manifest: Manifest, record: PreservationRecord, directory: Path) -> dict[str, Any]:
    """What the API shows of a finished capture: status, tiles, the manifest's digests, timestamps, storage."""
    state = preservation_state(directory, manifest, record)
    return {
        "status": manifest.status.value,
        "reason": manifest.reason,
        "started_at": manifest.started_at.isoformat(),
        "ended_at": manifest.ended_at.isoformat(),
        "recorded_seconds": manifest.recorded_seconds,
        "recording": next((step.detail for step in manifest.steps if step.name == StepName.RECORD), ""),
        "requested_seconds": manifest.requested_duration_seconds,
        "tiles": [{"tile": t.tile, "url": t.url, "status": t.status.value, "reason": t.reason}
                  for t in manifest.tiles],
        "artifacts": len(manifest.artifacts),
        "bytes": sum(a.size for a in manifest.artifacts),
        "manifest_sha256": record.manifest.sha256,
        "manifest_sm3": record.manifest.sm3,
        "signed": record.signature is not None,
        "timestamps": [{"tsa": t.tsa_name or t.tsa_url, "local_tsa": t.local_tsa, "status": t.status.value,
                        "time": t.gen_time.isoformat() if t.gen_time else None} for t in record.timestamps],
        "stored_objects": len(record.stored),
        "preserved": state.preserved,
        "not_yet_stored": list(state.missing)[:50],
        "problems": list(record.problems),
    }


def finish_from_directory(engine: Engine, services: Services, capture_id: str, directory: Path, *,
                          note: str = "") -> str | None:
    """Set a capture's final state from its manifest and preservation record; index its files. Returns the
    state, or None when the directory holds no preserved capture yet."""
    if not has_manifest(directory) or not has_preservation(directory):
        return None
    manifest = load_manifest(directory)
    record = load_preservation(directory)
    state = {CaptureStatus.COMPLETE: "complete", CaptureStatus.PARTIAL: "partial"}.get(manifest.status, "failed")
    reason = "; ".join(part for part in (manifest.reason, note) if part)
    summary = manifest_summary(manifest, record, directory)
    ended = None
    with engine.begin() as conn:
        before = conn.execute(select(captures.c.state).where(captures.c.id == capture_id).with_for_update()).first()
        if before is None:
            return None
        set_state(conn, capture_id, state, reason, summary=summary, record=record.model_dump(mode="json"),
                  manifest_sha256=record.manifest.sha256, directory=str(directory), ended_at=manifest.ended_at)
        if before.state != state:  # the end and its custody entry commit together: no reader sees one alone
            ended = services.record_in(conn, services.actor, CustodyAction.CAPTURE_ENDED, capture_id,
                                       {"state": state, "reason": reason[:1000],
                                        "manifest_sha256": record.manifest.sha256,
                                        "recorded_seconds": manifest.recorded_seconds, "was": before.state})
    if ended is not None:
        services.after_commit(ended)
    index_capture(engine, directory, services.ledger)
    return state


def fail(engine: Engine, services: Services, capture_id: str, reason: str) -> None:
    """A capture that ended without a manifest: a recorded failure, never a silent disappearance."""
    with engine.begin() as conn:
        set_state(conn, capture_id, "failed", reason, ended_at=func.now())
        ended = services.record_in(conn, services.actor, CustodyAction.CAPTURE_ENDED, capture_id,
                                   {"state": "failed", "reason": reason[:1000]})
    services.after_commit(ended)


def mark_stale_interrupted(engine: Engine, services: Services, *, detected_by: str) -> list[str]:
    """Captures whose worker has not beaten for STALE_SECONDS become `interrupted`; returns their ids."""
    with engine.begin() as conn:
        stale = list(conn.execute(
            select(captures.c.id, captures.c.worker, captures.c.heartbeat_at, captures.c.state)
            .where(captures.c.state.in_(ACTIVE),
                   captures.c.heartbeat_at < func.now() - text(f"interval '{int(STALE_SECONDS)} seconds'"))
            .with_for_update(skip_locked=True)))
        for row in stale:
            reason = (f"its worker {row.worker} stopped sending heartbeats after {_iso(row.heartbeat_at)} (killed, "
                      "or its host went down) while the capture was " + row.state + "; what was recorded is "
                      "finalized and preserved when that worker, or any wz command on its host, starts again")
            set_state(conn, row.id, "interrupted", reason)
    for row in stale:
        services.record(CustodyAction.CAPTURE_INTERRUPTED, row.id,
                        {"worker": row.worker, "last_heartbeat": _iso(row.heartbeat_at), "was": row.state,
                         "detected_by": detected_by})
    return [row.id for row in stale]


def reconcile_local(engine: Engine, services: Services, settings: Settings) -> list[tuple[str, str]]:
    """Interrupted (or stale) captures recorded on this host whose recovery has run: give them their final state.

    Recovery itself (finalizing the recording, preserving it) is the capture and preservation layers' job; this
    only brings the service's record in line with what is now on disk."""
    with engine.connect() as conn:
        rows = list(conn.execute(select(captures.c.id).where(
            and_(captures.c.state.in_((*ACTIVE, "interrupted")),
                 (captures.c.state == "interrupted") | (captures.c.heartbeat_at < func.now() - text(
                     f"interval '{int(STALE_SECONDS)} seconds'"))))))
    done = []
    for row in rows:
        try:
            directory = locate(settings.registry_dir, row.id)
        except EvidenceError:
            continue  # recorded on another host
        state = finish_from_directory(engine, services, row.id, directory,
                                      note="finalized after its worker was interrupted")
        if state is not None:
            done.append((row.id, state))
    return done


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "never"
