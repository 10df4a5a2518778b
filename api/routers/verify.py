"""Verification for courts, without signing in: is this digest registered evidence, and does this package verify.

The hash check answers what a file is (its capture, its role, when it was acquired, its timestamps, the custody
proof of its registration), never what it shows: no content, URL, case or person. It is rate-limited per client
and every lookup is a custody event. A package is streamed to disk with a size limit and verified offline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import or_, select

from api.deps import ContextDep, client_of, optional_principal
from api.models import (
    HashAnswer,
    HashMatch,
    HashQuery,
    InclusionProofPublic,
    PackageReport,
    TimestampPublic,
    VerificationCheck,
)
from api.security import Principal
from evidence import Checkpoint, CustodyAction, EvidenceError, IntegrityError, TimestampStatus
from evidence.layout import MANIFEST, PRESERVATION, load_preservation
from preservation.record import object_key
from preservation.registry import locate
from preservation.verify import VerificationReport, verify_package
from service.db import evidence_files

router = APIRouter(tags=["verify"])
UPLOAD_CHUNK = 1 << 20


def _actor(principal: Principal | None, client: str) -> str:
    return principal.actor if principal is not None else f"anonymous ({client})"


def _limited(ctx: ContextDep, client: str) -> None:
    wait = ctx.hash_lookups.retry_after(client)
    if wait:
        raise HTTPException(429, f"at most {ctx.settings.hash_lookups_per_minute} lookups a minute from one "
                                 "client; try again later", headers={"Retry-After": str(wait)})


@router.post("/verify/hash", response_model=HashAnswer,
             summary="Is this SHA-256 or SM3 registered evidence? (no sign-in needed)")
def verify_hash(body: HashQuery, request: Request, ctx: ContextDep,
                principal: Annotated[Principal | None, Depends(optional_principal)]) -> HashAnswer:
    client = client_of(request)
    _limited(ctx, client)
    digest = (body.sha256 or body.sm3 or "").lower()
    column = evidence_files.c.sha256 if body.sha256 else evidence_files.c.sm3
    with ctx.engine.connect() as conn:
        found = list(conn.execute(select(evidence_files).where(or_(column == digest)).limit(20)))
    # The index is a convenience; the custody ledger is the record. A row counts only when the entry that
    # registered it names this very file, so a row written into the index alone registers nothing.
    registered = [(row, seq) for row in found
                  if (seq := _registering_entry(ctx, row)) is not None]
    rows = [row for row, _seq in registered]
    checkpoint = _checkpoint(ctx, max((seq for _row, seq in registered), default=0)) if rows else None
    matches = [_match(ctx, row, seq, checkpoint.tree_size if checkpoint else None) for row, seq in registered]
    ctx.record(_actor(principal, client), CustodyAction.HASH_LOOKUP, "hash-check",
               {"algorithm": "sha256" if body.sha256 else "sm3", "digest": digest, "found": len(matches),
                "captures": sorted({m.capture_id for m in matches})})
    note = ("registered evidence: the capture, its role, when it was acquired, its timestamps and the custody "
            "proof of its registration" if matches else
            "not registered here: no file of any capture on this node has this digest")
    return HashAnswer(registered=bool(matches), matches=matches,
                      checkpoint_tree_size=checkpoint.tree_size if checkpoint else None, note=note)


CHECKPOINT_FRESH_SECONDS = 1.0


def _checkpoint(ctx: ContextDep, covering: int) -> Checkpoint | None:
    """The latest signed checkpoint, read again when the one held is over a second old or does not yet cover
    entry `covering` (a capture registered since): a lookup answers against a checkpoint at most a second older
    than the newest, and every checkpoint is signed and timestamped, so each answer stays provable."""
    held: tuple[float, Checkpoint | None] | None = ctx.extra.get("checkpoint")
    now = time.monotonic()
    if held is not None and now - held[0] < CHECKPOINT_FRESH_SECONDS and \
            (held[1] is not None and held[1].tree_size >= covering):
        return held[1]
    latest = ctx.services.ledger.latest_checkpoint()
    ctx.extra["checkpoint"] = (now, latest)
    return latest


def _inclusion(ctx: ContextDep, seq: int, tree_size: int) -> InclusionProofPublic:
    """The proof of entry `seq` in the signed tree of `tree_size` entries: a fact that never changes, so kept."""
    proofs: dict[tuple[int, int], InclusionProofPublic] = ctx.extra.setdefault("proofs", {})
    proof = proofs.get((seq, tree_size))
    if proof is None:
        proof = InclusionProofPublic.model_validate(ctx.services.ledger.inclusion_proof(seq, tree_size).to_json())
        if len(proofs) > 10_000:
            proofs.clear()
        proofs[(seq, tree_size)] = proof
    return proof


def _timestamps(ctx: ContextDep, capture_id: str) -> list[TimestampPublic]:
    """The granted manifest timestamps of a capture on this node, read again only when its record changes."""
    places: dict[str, Path] = ctx.extra.setdefault("capture_dirs", {})
    try:
        directory = places.get(capture_id) or locate(ctx.settings.registry_dir, capture_id)
        changed = (directory / PRESERVATION).stat().st_mtime_ns
    except (EvidenceError, OSError):
        places.pop(capture_id, None)
        try:  # the place held may be stale: look it up once more
            directory = locate(ctx.settings.registry_dir, capture_id)
            changed = (directory / PRESERVATION).stat().st_mtime_ns
        except (EvidenceError, OSError):  # a capture whose directory moved still answers by its index row
            return []
    if len(places) > 10_000:
        places.clear()
    places[capture_id] = directory
    cache: dict[str, tuple[int, list[TimestampPublic]]] = ctx.extra.setdefault("timestamps", {})
    cached = cache.get(capture_id)
    if cached is not None and cached[0] == changed:
        return cached[1]
    record = load_preservation(directory)
    stamps = [TimestampPublic(tsa=t.tsa_name or ("local TSA" if t.local_tsa else "TSA"), local_tsa=t.local_tsa,
                              time=t.gen_time, serial=t.serial_number)
              for t in record.timestamps if t.status == TimestampStatus.GRANTED]
    if len(cache) > 10_000:
        cache.clear()
    cache[capture_id] = (changed, stamps)
    return stamps


def _registering_seq(ctx: ContextDep, capture_id: str, path: str, tree_size: int) -> int | None:
    """A file indexed before its registering entry was known: find it in the capture's entries."""
    key = object_key(capture_id, path)
    for entry in ctx.services.ledger.entries(subject=capture_id, end=tree_size):
        if (path == MANIFEST and entry.action == CustodyAction.HASHED) or \
                (entry.action == CustodyAction.STORED and entry.details.get("key") == key):
            return entry.seq
    return None


ENTRY_NAMES_KEPT = 100_000


def _registering_entry(ctx: ContextDep, row: Any) -> int | None:
    """The seq of the custody entry that registered this index row, if that entry is about its capture and names
    its digests (a stored object's, the manifest's, a report's); None when the ledger does not back the row."""
    capture_id, path = str(row.capture_id), str(row.path)
    seq = row.custody_seq if row.custody_seq is not None else \
        _registering_seq(ctx, capture_id, path, ctx.services.ledger.size())
    if seq is None:
        return None
    names: dict[int, tuple[str, str, str]] = ctx.extra.setdefault("entry_names", {})
    named = names.get(seq)
    if named is None:  # entries never change: each is read once
        entries = ctx.services.ledger.entries(start=seq, end=seq)
        if not entries:
            return None
        details = entries[0].details
        named = (entries[0].subject, str(details.get("sha256") or details.get("manifest_sha256") or ""),
                 str(details.get("sm3") or details.get("manifest_sm3") or ""))
        if len(names) > ENTRY_NAMES_KEPT:
            names.clear()
        names[seq] = named
    return seq if named == (capture_id, row.sha256, row.sm3) else None


def _match(ctx: ContextDep, row: Any, seq: int, tree_size: int | None) -> HashMatch:
    capture_id = str(row.capture_id)
    proof = None
    if tree_size is not None and seq <= tree_size:
        proof = _inclusion(ctx, seq, tree_size)
    return HashMatch(capture_id=capture_id, role=str(row.role), acquired_at=row.acquired_at,
                     timestamps=_timestamps(ctx, capture_id), custody_proof=proof)


@router.post("/verify/package", response_model=PackageReport, summary="Verify an exported package (the zip as "
             "the request body, application/zip; no sign-in needed)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/zip": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def verify_uploaded_package(request: Request, ctx: ContextDep,
                                  principal: Annotated[Principal | None, Depends(optional_principal)]
                                  ) -> PackageReport:
    client = client_of(request)
    _limited(ctx, client)
    limit = ctx.settings.max_package_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"a package may have at most {limit} bytes")
    folder = ctx.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="package-", suffix=".zip", dir=folder)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(handle, "wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"a package may have at most {limit} bytes")
                digest.update(chunk)
                sink.write(chunk)
        if size == 0:
            raise HTTPException(422, "send the package as the request body (Content-Type: application/zip)")
        try:
            report = await run_in_threadpool(verify_package, path)  # CPU-bound: off the event loop
        except IntegrityError as exc:
            failed: VerificationReport | None = getattr(exc, "report", None)
            if failed is None:
                raise
            report = failed
    finally:
        path.unlink(missing_ok=True)
    await run_in_threadpool(ctx.record, _actor(principal, client), CustodyAction.PACKAGE_VERIFIED, "package-check",
                            {"size": size, "sha256": digest.hexdigest(), "ok": report.ok,
                             "checks": len(report.checks), "failed": len(report.failures)})
    return PackageReport(ok=report.ok, origin_pinned=report.origin_pinned, tsa_pinned=report.tsa_pinned,
                         third_party_time=report.third_party_time,
                         checks=[VerificationCheck(name=c.name, subject=c.subject, ok=c.ok, detail=c.detail)
                                 for c in report.checks])
