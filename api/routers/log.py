"""The custody log as a transparency log: its signed checkpoint, its entries, inclusion and consistency proofs.

The checkpoint and the proofs are public: they hold hashes only, and anyone holding a checkpoint checks a proof
offline with RFC 9162's algorithm (custody/proofs.py). Entries name people and captures: a caller sees an entry
about a case (or a capture of a case) they are a member of, or any entry if they are an admin. Every proof names
the tree size it is against.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import select

from api.deps import ContextDep, PrincipalDep, not_found
from api.models import (
    CheckpointPublic,
    ConsistencyProofPublic,
    CustodyEntryPublic,
    InclusionProofPublic,
)
from custody.proofs import checkpoint_body
from evidence import CustodyAction, CustodyEntry, UsageError
from service.db import captures, case_members

router = APIRouter(tags=["log"])
MAX_SEQ = 2**31 - 1  # the ledger numbers entries with 32-bit integers
Seq = Annotated[int, Path(ge=1, le=MAX_SEQ, description="the entry's number (its seq; leaf index + 1)")]


def entry_public(entry: CustodyEntry) -> CustodyEntryPublic:
    return CustodyEntryPublic.model_validate(entry.model_dump(mode="json"))


@router.get("/log/checkpoint", response_model=CheckpointPublic,
            summary="The newest signed, timestamped checkpoint (public)")
def checkpoint(ctx: ContextDep) -> CheckpointPublic:
    latest = ctx.services.ledger.latest_checkpoint()
    if latest is None:
        latest = ctx.services.checkpoint()
    token = None
    if latest.timestamp is not None and latest.timestamp.response_path:
        path = ctx.services.checkpoint_dir / latest.timestamp.response_path
        if path.is_file():
            token = base64.b64encode(path.read_bytes()).decode("ascii")
    return CheckpointPublic(
        tree_size=latest.tree_size, root_hash=latest.root_hash, at=latest.at, signer=latest.signer,
        signature=latest.signature, body=checkpoint_body(latest).decode("utf-8"),
        signer_certificate=ctx.services.pem(ctx.services.signer.certificate()).decode("ascii"),
        timestamp=latest.timestamp.model_dump(mode="json") if latest.timestamp else None, timestamp_token=token)


@router.get("/log/entries/{index}", response_model=CustodyEntryPublic,
            summary="One entry (a member of its case, or an admin)")
def entry(index: Seq, ctx: ContextDep, principal: PrincipalDep) -> CustodyEntryPublic:
    found = ctx.services.ledger.entries(start=index, end=index)
    if not found:
        raise not_found("entry")
    item = found[0]
    if principal.role != "admin":
        with ctx.engine.connect() as conn:
            case_id = item.subject
            capture = conn.execute(select(captures.c.case_id).where(captures.c.id == item.subject)).first()
            if capture is not None:
                case_id = capture.case_id
            member = conn.execute(select(case_members.c.role).where(case_members.c.case_id == case_id,
                                                                    case_members.c.user_id == principal.user_id)
                                  ).first()
        if member is None:
            raise not_found("entry")
    ctx.record(principal.actor, CustodyAction.VIEWED, item.subject, {"what": "log entry", "seq": item.seq})
    return entry_public(item)


@router.get("/log/proof/inclusion", response_model=InclusionProofPublic,
            summary="RFC 9162 inclusion proof of entry `index` in the tree of `tree_size` entries (public)")
def inclusion(ctx: ContextDep, index: Annotated[int, Query(ge=1, le=MAX_SEQ)],
              tree_size: Annotated[int, Query(ge=1, le=MAX_SEQ)]) -> InclusionProofPublic:
    try:
        proof = ctx.services.ledger.inclusion_proof(index, tree_size)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from exc
    return InclusionProofPublic.model_validate(proof.to_json())


@router.get("/log/proof/consistency", response_model=ConsistencyProofPublic,
            summary="RFC 9162 consistency proof from the tree of `first` entries to that of `second` (public)")
def consistency(ctx: ContextDep, first: Annotated[int, Query(ge=0, le=MAX_SEQ)],
                second: Annotated[int, Query(ge=0, le=MAX_SEQ)]) -> ConsistencyProofPublic:
    try:
        proof = ctx.services.ledger.consistency_proof(first, second)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from exc
    return ConsistencyProofPublic.model_validate(proof.to_json())

