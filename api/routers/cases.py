"""Cases: lead (线索) -> opened (立案) -> closed with an outcome (结果反馈); members; legal hold. Every change and
every read of a case is a custody event."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from sqlalchemy import Connection, delete, func, insert, or_, select, update

from api.deps import (
    CASE_ROLES_FOR,
    CaseAccess,
    ContextDep,
    require_case_role,
    require_role,
)
from api.models import CaseCreate, CasePublic, CaseUpdate, LegalHoldPublic, LegalHoldSet, MemberPublic, MemberSet
from api.security import Principal
from evidence import CustodyAction
from service.db import captures, case_members, cases, evidence_files, users

router = APIRouter(tags=["cases"])

UserPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_NEXT_STATE = {"lead": "opened", "opened": "closed"}


def _members(conn: Connection, case_id: str) -> list[MemberPublic]:
    rows = conn.execute(select(users.c.name, case_members.c.role, case_members.c.added_at)
                        .join(users, users.c.id == case_members.c.user_id)
                        .where(case_members.c.case_id == case_id).order_by(users.c.name))
    return [MemberPublic(user=row.name, role=row.role, added_at=row.added_at) for row in rows]


def _public(conn: Connection, case_id: str, your_role: str) -> CasePublic:
    row = conn.execute(select(cases, users.c.name.label("creator")).join(users, users.c.id == cases.c.created_by)
                       .where(cases.c.id == case_id)).one()
    return CasePublic(id=row.id, title=row.title, description=row.description, reference=row.reference,
                      state=row.state, outcome=row.outcome, legal_hold=row.legal_hold, created_by=row.creator,
                      created_at=row.created_at, updated_at=row.updated_at, your_role=your_role,
                      members=_members(conn, case_id))


@router.get("/cases", response_model=list[CasePublic], summary="The cases you are a member of")
def list_cases(ctx: ContextDep, principal: Annotated[Principal, Depends(require_role(
        "investigator", "case_handler", "court"))],
        q: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                                            description="words in the title or reference")] = None,
        state: Annotated[str | None, Query(pattern="^(lead|opened|closed)$")] = None) -> list[CasePublic]:
    query = (select(cases.c.id, case_members.c.role).join(case_members, case_members.c.case_id == cases.c.id)
             .where(case_members.c.user_id == principal.user_id).order_by(cases.c.created_at.desc()))
    if q:
        like = f"%{q.replace('%', '').replace('_', '')}%"
        query = query.where(or_(cases.c.title.ilike(like), cases.c.reference.ilike(like), cases.c.id == q))
    if state:
        query = query.where(cases.c.state == state)
    with ctx.engine.connect() as conn:
        found = [_public(conn, row.id, row.role) for row in conn.execute(query.limit(500))]
    ctx.record(principal.actor, CustodyAction.VIEWED, "case-list",
               {"what": "case list", "q": q or "", "state": state or "", "cases": [c.id for c in found][:100]})
    return found


@router.post("/cases", response_model=CasePublic, status_code=201, summary="Open a case as a lead (investigator)")
def create_case(body: CaseCreate, ctx: ContextDep,
                principal: Annotated[Principal, Depends(require_role("investigator", scope="capture"))]
                ) -> CasePublic:
    now = datetime.now(UTC)
    case_id = f"C-{now:%Y%m%d}-{secrets.token_hex(3)}"
    with ctx.engine.begin() as conn:
        conn.execute(insert(cases).values(id=case_id, title=body.title, description=body.description,
                                          reference=body.reference or "", state="lead", legal_hold=False,
                                          created_by=principal.user_id, created_at=now, updated_at=now))
        conn.execute(insert(case_members).values(case_id=case_id, user_id=principal.user_id, role="investigator",
                                                 added_by=principal.user_id, added_at=now))
    ctx.record(principal.actor, CustodyAction.CASE_CREATED, case_id,
               {"title": body.title, "reference": body.reference or "", "state": "lead"})
    with ctx.engine.connect() as conn:
        return _public(conn, case_id, "investigator")


@router.get("/cases/{case_id}", response_model=CasePublic, summary="One case")
def get_case(ctx: ContextDep, access: Annotated[CaseAccess, Depends(require_case_role(
        "investigator", "case_handler", "court"))]) -> CasePublic:
    ctx.record(access.principal.actor, CustodyAction.VIEWED, access.case.id, {"what": "case"})
    with ctx.engine.connect() as conn:
        return _public(conn, access.case.id, access.role)


@router.patch("/cases/{case_id}", response_model=CasePublic, summary="Change a case (investigator)")
def update_case(body: CaseUpdate, ctx: ContextDep, access: Annotated[CaseAccess, Depends(require_case_role(
        "investigator", scope="capture"))]) -> CasePublic:
    case = access.case
    changes: dict[str, Any] = {}
    if body.title is not None:
        changes["title"] = body.title
    if body.description is not None:
        changes["description"] = body.description
    if body.state is not None and body.state != case.state:
        if _NEXT_STATE.get(case.state) != body.state:
            raise HTTPException(status.HTTP_409_CONFLICT, f"a case goes lead -> opened -> closed; this one is "
                                                          f"{case.state}, it cannot become {body.state}")
        if body.state == "closed" and not (body.outcome or "").strip():
            raise HTTPException(422, "closing a case needs its outcome (结果反馈)")
        changes["state"] = body.state
    if body.outcome is not None:
        if (changes.get("state") or case.state) != "closed":
            raise HTTPException(422, "an outcome is given when the case is closed")
        changes["outcome"] = body.outcome
    if changes:
        with ctx.engine.begin() as conn:
            conn.execute(update(cases).where(cases.c.id == case.id).values(**changes, updated_at=datetime.now(UTC)))
        action = CustodyAction.CASE_STATE_CHANGED if "state" in changes else CustodyAction.CASE_UPDATED
        ctx.record(access.principal.actor, action, case.id,
                   {"from": case.state, **{k: v for k, v in changes.items() if k != "description"},
                    **({"description_changed": True} if "description" in changes else {})})
    with ctx.engine.connect() as conn:
        return _public(conn, case.id, access.role)


@router.put("/cases/{case_id}/members/{user}", response_model=list[MemberPublic],
            summary="Add a member or change their role (investigator)")
def set_member(body: MemberSet, user: UserPath, ctx: ContextDep, access: Annotated[CaseAccess, Depends(
        require_case_role("investigator", scope="capture"))]) -> list[MemberPublic]:
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        member = conn.execute(select(users).where(users.c.name == user, users.c.disabled.is_(False))).first()
        if member is None:
            raise HTTPException(404, f"no user {user!r}")
        if body.role not in CASE_ROLES_FOR.get(member.role, ()):
            raise HTTPException(422, f"{user} is a {member.role}; a {member.role} may be "
                                     f"{' or '.join(CASE_ROLES_FOR.get(member.role, ())) or 'no member'} of a case")
        if member.id == access.principal.user_id:
            raise HTTPException(422, "you cannot change your own role in a case")
        exists = conn.execute(select(case_members).where(case_members.c.case_id == access.case.id,
                                                         case_members.c.user_id == member.id)).first()
        if exists is None:
            conn.execute(insert(case_members).values(case_id=access.case.id, user_id=member.id, role=body.role,
                                                     added_by=access.principal.user_id, added_at=now))
        else:
            conn.execute(update(case_members).where(case_members.c.case_id == access.case.id,
                                                    case_members.c.user_id == member.id).values(role=body.role))
    ctx.record(access.principal.actor, CustodyAction.MEMBER_SET, access.case.id, {"user": user, "role": body.role})
    with ctx.engine.connect() as conn:
        return _members(conn, access.case.id)


@router.delete("/cases/{case_id}/members/{user}", status_code=204, summary="Remove a member (investigator)")
def remove_member(user: UserPath, ctx: ContextDep, access: Annotated[CaseAccess, Depends(
        require_case_role("investigator", scope="capture"))]) -> Response:
    with ctx.engine.begin() as conn:
        member = conn.execute(select(users.c.id).where(users.c.name == user)).first()
        if member is None:
            raise HTTPException(404, f"{user!r} is no member of this case")
        if member.id == access.principal.user_id:
            raise HTTPException(422, "you cannot remove yourself from a case")
        investigators = conn.execute(select(func.count()).select_from(case_members).where(
            case_members.c.case_id == access.case.id, case_members.c.role == "investigator")).scalar_one()
        removed = conn.execute(delete(case_members).where(case_members.c.case_id == access.case.id,
                                                          case_members.c.user_id == member.id)
                               .returning(case_members.c.role)).first()
        if removed is None:
            raise HTTPException(404, f"{user!r} is no member of this case")
        if removed.role == "investigator" and investigators <= 1:
            raise HTTPException(422, "a case keeps at least one investigator")
    ctx.record(access.principal.actor, CustodyAction.MEMBER_REMOVED, access.case.id, {"user": user})
    return Response(status_code=204)


@router.put("/cases/{case_id}/legal-hold", response_model=LegalHoldPublic,
            summary="Set or release legal hold on every stored object of the case (case handler)")
def legal_hold(body: LegalHoldSet, ctx: ContextDep, access: Annotated[CaseAccess, Depends(require_case_role(
        "case_handler", "investigator", scope="export"))]) -> LegalHoldPublic:
    # By the index of stored versions, so a capture recorded on another worker host is held like a local one.
    with ctx.engine.connect() as conn:
        rows = list(conn.execute(
            select(evidence_files.c.capture_id, evidence_files.c.bucket, evidence_files.c.object_key,
                   evidence_files.c.version_id)
            .join(captures, captures.c.id == evidence_files.c.capture_id)
            .where(captures.c.case_id == access.case.id, evidence_files.c.version_id.isnot(None))
            .order_by(evidence_files.c.capture_id, evidence_files.c.path)))
    store = ctx.services.store() if rows else None
    by_capture: dict[str, int] = {}
    for row in rows:
        assert store is not None
        if row.bucket != store.bucket:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{row.capture_id} is stored in the bucket {row.bucket}, "
                                                          f"not the configured {store.bucket}; nothing more was "
                                                          "changed")
        store.set_legal_hold(row.object_key, row.version_id, body.on)
        by_capture[row.capture_id] = by_capture.get(row.capture_id, 0) + 1
    with ctx.engine.begin() as conn:
        conn.execute(update(cases).where(cases.c.id == access.case.id).values(legal_hold=body.on,
                                                                              updated_at=datetime.now(UTC)))
    action = CustodyAction.LEGAL_HOLD if body.on else CustodyAction.LEGAL_HOLD_RELEASED
    actor = access.principal.actor
    with ctx.services.one_checkpoint():
        for capture_id, count in by_capture.items():
            ctx.record(actor, action, capture_id, {"objects": count, "reason": body.reason, "case": access.case.id})
        ctx.record(actor, action, access.case.id,
                   {"captures": len(by_capture), "objects": len(rows), "reason": body.reason})
    return LegalHoldPublic(on=body.on, captures=len(by_capture), objects=len(rows))
