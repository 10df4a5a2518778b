"""The custody record of a case and of a capture: who did what, when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy import select

from api.deps import CaseAccess, ContextDep, PrincipalDep, load_case_access, not_found, require_case_role
from api.models import CustodyEntryPublic
from api.routers.log import entry_public
from evidence import CustodyAction
from service.db import captures

router = APIRouter(tags=["custody"])
CaptureId = Annotated[str, Path(pattern=r"^wz-\d{8}T\d{6}Z-[0-9a-f]{6}$")]


@router.get("/cases/{case_id}/custody", response_model=list[CustodyEntryPublic],
            summary="Every custody entry about the case and its captures")
def case_custody(ctx: ContextDep, access: Annotated[CaseAccess, Depends(require_case_role(
        "investigator", "case_handler", "court"))]) -> list[CustodyEntryPublic]:
    with ctx.engine.connect() as conn:
        capture_ids = [row.id for row in conn.execute(select(captures.c.id).where(
            captures.c.case_id == access.case.id))]
    entries = [*ctx.services.ledger.entries(subject=access.case.id)]
    for capture_id in capture_ids:
        entries.extend(ctx.services.ledger.entries(subject=capture_id))
    ctx.record(access.principal.actor, CustodyAction.VIEWED, access.case.id, {"what": "custody record"})
    return [entry_public(e) for e in sorted(entries, key=lambda e: e.seq)]


@router.get("/captures/{capture_id}/custody", response_model=list[CustodyEntryPublic],
            summary="Every custody entry about one capture")
def capture_custody(capture_id: CaptureId, ctx: ContextDep, principal: PrincipalDep) -> list[CustodyEntryPublic]:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(captures.c.case_id).where(captures.c.id == capture_id)).first()
        access = load_case_access(conn, principal, row.case_id) if row is not None else None
    if access is None:
        raise not_found("capture")
    entries = ctx.services.ledger.entries(subject=capture_id)
    ctx.record(principal.actor, CustodyAction.VIEWED, capture_id, {"what": "custody record"})
    return [entry_public(e) for e in entries]
