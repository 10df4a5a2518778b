"""Captures: launched by an investigator of the case, recorded by a worker, followed live, stopped, witnessed.

Launching commits the capture row, the "capture requested" custody entry and the queued job in one transaction.
A started capture cannot be discarded: `stop` ends it normally (finalized, signed, timestamped, stored). A second
officer (行政处罚法 第42条), named at launch, confirms with their own login while it records or soon after.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func, insert, select, update

from api.context import Context
from api.deps import (
    CaptureAccess,
    CaseAccess,
    ContextDep,
    require_capture_role,
    require_case_role,
)
from api.models import CaptureCreate, CapturePublic, OfficerPublic
from capture.layout import build_layout
from capture.targets import TargetPolicy, validate_targets
from evidence import CustodyAction, EvidenceError
from service.captures import ACTIVE, FINAL
from service.db import capture_events, capture_previews, captures, case_members, users, workers
from service.queue import cancel_or_abort as queue_cancel_or_abort
from service.queue import defer_capture

router = APIRouter(tags=["captures"])

WITNESS_WINDOW = timedelta(hours=1)  # "right after": the second officer confirms within an hour of the end
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
VIEW_RECORD_SECONDS = 60.0  # polled reads (the preview) are recorded once a minute per viewer


class ViewThrottle:
    """Reads a page repeats every few seconds (a preview, a player's range requests) go into the custody
    record once per minute per viewer and item, with how many there were."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def due(self, actor: str, subject: str, what: str) -> int:
        """0 when not yet due; else how many reads this entry stands for."""
        key = (actor, subject, what)
        now = time.monotonic()
        with self._lock:
            since, count = self._seen.get(key, (0.0, 0))
            count += 1
            if since and now - since < VIEW_RECORD_SECONDS:
                self._seen[key] = (since, count)
                return 0
            self._seen[key] = (now, 0)
            if len(self._seen) > 50_000:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < VIEW_RECORD_SECONDS}
            return count


def throttle(ctx: Context) -> ViewThrottle:
    return ctx.shared("view_throttle", ViewThrottle)


def capture_public(conn: Any, capture_id: str, note: str = "") -> CapturePublic:
    operator = users.alias("operator")
    officer = users.alias("officer")
    row = conn.execute(select(captures, operator.c.name.label("operator_name"), officer.c.name.label("officer_name"))
                       .join(operator, operator.c.id == captures.c.requested_by)
                       .outerjoin(officer, officer.c.id == captures.c.second_officer_id)
                       .where(captures.c.id == capture_id)).one()
    asked = row.request
    return CapturePublic(
        id=row.id, case_id=row.case_id, state=row.state, reason=row.reason, urls=asked["urls"],
        duration=asked.get("duration"), fps=asked.get("fps", 15), layout=asked.get("layout", "auto"),
        tile_size=asked.get("tile_size", "640x360"), tiles=row.tiles, operator=row.operator_name,
        second_officer=OfficerPublic(user=row.officer_name, confirmed_at=row.witnessed_at)
        if row.officer_name else None,
        created_at=row.created_at, started_at=row.started_at, ended_at=row.ended_at, worker=row.worker,
        heartbeat_at=row.heartbeat_at, progress=row.progress, summary=row.summary,
        manifest_sha256=row.manifest_sha256, note=note)


def _check_request(ctx: Context, body: CaptureCreate) -> list[str]:
    """The URLs as the capture will visit them, checked by the capture's own target rules; 422 on any problem."""
    settings = ctx.settings
    if body.duration is not None and body.duration > settings.max_duration_seconds:
        raise HTTPException(422, f"duration {body.duration:g} s is over the maximum of "
                                 f"{settings.max_duration_seconds:g} s")
    try:
        build_layout(list(body.urls), spec=body.layout, fps=body.fps, size=body.tile_size)
        policy = TargetPolicy.from_settings(settings.capture_allow_networks, settings.capture_allow_private)
        targets = validate_targets(list(body.urls), policy=policy)
    except EvidenceError as exc:
        raise HTTPException(422, str(exc)) from exc
    return [t.url for t in targets]


def _workers_note(conn: Any, tiles: int) -> str:
    alive = conn.execute(select(func.max(workers.c.tiles)).where(
        workers.c.stopped_at.is_(None), workers.c.heartbeat_at > func.now() - timedelta(seconds=30))).scalar()
    if alive is None:
        return "no worker is running now; the capture waits in the queue until one starts (wz worker)"
    if alive < tiles:
        return (f"no running worker has a budget of {tiles} tiles (the largest has {alive}); the capture waits "
                f"in the queue until one does (wz worker --tiles {tiles})")
    return ""


@router.post("/cases/{case_id}/captures", response_model=CapturePublic, status_code=202,
             summary="Launch a capture of 1-9 pages (investigator of the case); answers at once with its id")
def launch(body: CaptureCreate, response: Response, ctx: ContextDep, access: Annotated[CaseAccess, Depends(
        require_case_role("investigator", scope="capture"))]) -> CapturePublic:
    if access.case.state == "closed":
        raise HTTPException(status.HTTP_409_CONFLICT, "the case is closed; it takes no new captures")
    urls = _check_request(ctx, body)
    principal = access.principal
    now = datetime.now(UTC)
    capture_id = f"wz-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    request = {"urls": urls, "duration": body.duration, "fps": body.fps, "layout": body.layout,
               "tile_size": body.tile_size}
    with ctx.engine.begin() as conn:
        officer_id = None
        if body.second_officer is not None:
            officer = conn.execute(select(users.c.id, case_members.c.role)
                                   .join(case_members, case_members.c.user_id == users.c.id)
                                   .where(users.c.name == body.second_officer,
                                          case_members.c.case_id == access.case.id)).first()
            if officer is None or officer.role != "investigator":
                raise HTTPException(422, f"second_officer: {body.second_officer} is not an investigator of this "
                                         "case; add them to the case first")
            if officer.id == principal.user_id:
                raise HTTPException(422, "second_officer: the second officer is someone other than the operator")
            officer_id = officer.id
        conn.execute(insert(captures).values(
            id=capture_id, case_id=access.case.id, requested_by=principal.user_id, state="queued", reason="",
            request=request, tiles=len(urls), created_at=now, second_officer_id=officer_id))
        job_id = defer_capture(conn, capture_id, len(urls))
        conn.execute(update(captures).where(captures.c.id == capture_id).values(job_id=job_id))
        entry = ctx.record_in(conn, principal.actor, CustodyAction.CAPTURE_REQUESTED, capture_id, {
            "case": access.case.id, "urls": urls, "duration": body.duration, "fps": body.fps,
            "layout": body.layout, "tile_size": body.tile_size, "operator": principal.name,
            "second_officer": body.second_officer or "none: launched without a second officer"})
        conn.execute(insert(capture_events).values(capture_id=capture_id, at=func.now(), kind="state", event={
            "kind": "state", "message": "queued", "state": "queued", "reason": ""}))
        note = _workers_note(conn, len(urls))
    ctx.after_commit(entry)
    response.headers["Location"] = f"/api/v1/captures/{capture_id}"
    with ctx.engine.connect() as conn:
        return capture_public(conn, capture_id, note)


@router.get("/cases/{case_id}/captures", response_model=list[CapturePublic], summary="The captures of a case")
def list_captures(ctx: ContextDep, access: Annotated[CaseAccess, Depends(require_case_role(
        "investigator", "case_handler", "court"))]) -> list[CapturePublic]:
    ctx.record(access.principal.actor, CustodyAction.VIEWED, access.case.id, {"what": "capture list"})
    with ctx.engine.connect() as conn:
        ids = conn.execute(select(captures.c.id).where(captures.c.case_id == access.case.id)
                           .order_by(captures.c.created_at.desc()).limit(1000)).scalars().all()
        return [capture_public(conn, capture_id) for capture_id in ids]


ReadCapture = Annotated[CaptureAccess, Depends(require_capture_role("investigator", "case_handler", "court"))]


@router.get("/captures/{capture_id}", response_model=CapturePublic,
            summary="A capture: its state, tiles, progress and manifest summary")
def get_capture(ctx: ContextDep, access: ReadCapture) -> CapturePublic:
    # A page following a recording asks every few seconds: one custody entry a minute, with how many reads.
    count = throttle(ctx).due(access.principal.actor, access.capture.id, "capture")
    if count:
        ctx.record(access.principal.actor, CustodyAction.VIEWED, access.capture.id, {"what": "capture", "reads": count})
    with ctx.engine.connect() as conn:
        return capture_public(conn, access.capture.id)


def _sse(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.get("/captures/{capture_id}/events", summary="The progress stream (Server-Sent Events); reconnect with "
            "Last-Event-ID to continue where it broke off", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(request: Request, ctx: ContextDep, access: ReadCapture,
                 last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None
                 ) -> StreamingResponse:
    after = 0
    if last_event_id:
        if not last_event_id.isdigit():
            raise HTTPException(422, "Last-Event-ID is the id of the last event received (a number)")
        after = int(last_event_id)
    capture_id = access.capture.id
    await run_in_threadpool(ctx.record, access.principal.actor, CustodyAction.VIEWED, capture_id,
                            {"what": "progress stream", "after": after})

    def fetch(since: int) -> tuple[list[Any], str]:
        with ctx.engine.connect() as conn:
            rows = list(conn.execute(select(capture_events).where(capture_events.c.capture_id == capture_id,
                                                                  capture_events.c.id > since)
                                     .order_by(capture_events.c.id).limit(500)))
            state = conn.execute(select(captures.c.state).where(captures.c.id == capture_id)).scalar_one()
        return rows, state

    async def stream() -> AsyncIterator[bytes]:
        last = after
        quiet_since = time.monotonic()
        yield b"retry: 2000\n\n"
        while True:
            rows, state = await run_in_threadpool(fetch, last)
            for row in rows:
                last = row.id
                yield _sse(row.id, row.kind, {**row.event, "at": row.at.isoformat(), "capture_id": capture_id})
            if rows:
                quiet_since = time.monotonic()
                continue
            if state in FINAL:
                yield _sse(last, "end", {"kind": "end", "message": f"the capture is {state}", "state": state,
                                         "capture_id": capture_id})
                return
            if await request.is_disconnected():
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(EVENT_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/captures/{capture_id}/preview.jpg", summary="The newest preview of a recording (JPEG, at most a "
            "few seconds old while it records)", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def preview(ctx: ContextDep, access: ReadCapture) -> Response:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(capture_previews.c.jpeg, capture_previews.c.at,
                                  (func.now() - capture_previews.c.at).label("age"))
                           .where(capture_previews.c.capture_id == access.capture.id)).first()
    if row is None:
        raise HTTPException(404, "no preview yet: a preview exists while the capture records")
    count = throttle(ctx).due(access.principal.actor, access.capture.id, "preview")
    if count:
        ctx.record(access.principal.actor, CustodyAction.VIEWED, access.capture.id,
                   {"what": "preview", "reads": count})
    return Response(row.jpeg, media_type="image/jpeg", headers={
        "Cache-Control": "no-store", "Preview-Taken-At": row.at.isoformat(),
        "Age": str(max(0, int(row.age.total_seconds())))})


@router.post("/captures/{capture_id}/stop", response_model=CapturePublic, status_code=202,
             summary="End a recording normally: it is finalized, signed, timestamped and stored (investigator)")
def stop(ctx: ContextDep, access: Annotated[CaptureAccess, Depends(require_capture_role(
        "investigator", scope="capture"))]) -> CapturePublic:
    capture_id = access.capture.id
    principal = access.principal
    with ctx.engine.begin() as conn:
        row = conn.execute(select(captures).where(captures.c.id == capture_id).with_for_update()).one()
        if row.state in (*FINAL, "interrupted"):
            raise HTTPException(status.HTTP_409_CONFLICT, f"the capture is {row.state}; there is nothing to stop")
        if row.stop_requested_by is not None:
            return capture_public(conn, capture_id, "a stop was asked already; the capture is ending")
        values: dict[str, Any] = {"stop_requested_by": principal.user_id, "stop_requested_at": func.now()}
        if row.state == "queued":
            # Nothing was recorded: it ends as a recorded failure, never silently.
            values.update(state="failed", reason=f"stopped by {principal.name} before a worker started it; "
                                                  "nothing was recorded", ended_at=func.now())
        conn.execute(update(captures).where(captures.c.id == capture_id).values(**values))
        if row.job_id is not None:
            queue_cancel_or_abort(conn, row.job_id)
        entry = ctx.record_in(conn, principal.actor, CustodyAction.CAPTURE_STOP_REQUESTED, capture_id,
                              {"state": row.state})
        if row.state == "queued":
            conn.execute(insert(capture_events).values(capture_id=capture_id, at=func.now(), kind="state", event={
                "kind": "state", "message": f"failed: {values['reason']}", "state": "failed",
                "reason": values["reason"]}))
            ended = ctx.record_in(conn, principal.actor, CustodyAction.CAPTURE_ENDED, capture_id,
                                  {"state": "failed", "reason": values["reason"]})
            entry = ended
        else:
            conn.execute(insert(capture_events).values(capture_id=capture_id, at=func.now(), kind="stop", event={
                "kind": "stop", "message": f"stop asked by {principal.name}", "by": principal.name}))
    ctx.after_commit(entry)
    with ctx.engine.connect() as conn:
        return capture_public(conn, capture_id)


@router.post("/captures/{capture_id}/witness", response_model=CapturePublic,
             summary="The second officer named at launch confirms the capture with their own login")
def witness(ctx: ContextDep, access: Annotated[CaptureAccess, Depends(require_capture_role(
        "investigator", scope="capture"))]) -> CapturePublic:
    capture_id = access.capture.id
    principal = access.principal
    with ctx.engine.begin() as conn:
        row = conn.execute(select(captures, func.now().label("now")).where(captures.c.id == capture_id)
                           .with_for_update(of=captures)).one()
        if principal.token_id is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "a second officer confirms with their own sign-in, "
                                                           "not with a script's API token")
        if row.second_officer_id != principal.user_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only the second officer named when the capture was "
                                                           "launched confirms it")
        if row.witnessed_at is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"confirmed already at {row.witnessed_at.isoformat()}")
        if row.state == "queued":
            raise HTTPException(status.HTTP_409_CONFLICT, "the capture has not started; confirm while it "
                                                          "records or right after")
        if row.state in FINAL and row.ended_at is not None and row.now - row.ended_at > WITNESS_WINDOW:
            raise HTTPException(status.HTTP_409_CONFLICT, "too late: a second officer confirms while the capture "
                                                          "records or within an hour of its end")
        conn.execute(update(captures).where(captures.c.id == capture_id).values(witnessed_at=func.now()))
        entry = ctx.record_in(conn, principal.actor, CustodyAction.CAPTURE_WITNESSED, capture_id,
                              {"officer": principal.name, "state": row.state,
                               "while_recording": row.state in ACTIVE})
        conn.execute(insert(capture_events).values(capture_id=capture_id, at=func.now(), kind="witness", event={
            "kind": "witness", "message": f"confirmed by the second officer {principal.name}",
            "by": principal.name}))
    ctx.after_commit(entry)
    with ctx.engine.connect() as conn:
        return capture_public(conn, capture_id)
