"""Evidence downloads: the manifest's exact signed bytes, every artifact by its object version, the package.

Every file is streamed from the WORM store by the version id recorded when it was stored, never from a path a
caller names: the path in the URL is only looked up in the capture's index. Each answer carries the file's
SHA-256 as its ETag and in `Repr-Digest` (RFC 9530), and its SM3 in `Wangzheng-SM3`. A full download is checked
as it streams: its last bytes are held back until the whole digest matches, and a mismatch cuts the download off
and goes into the custody record. Range requests (206) let a player seek in a long video.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select
from starlette.background import BackgroundTask

from api.context import Context
from api.deps import CaptureAccess, ContextDep, require_capture_file_role, require_capture_role
from api.models import MediaTicketPublic
from api.routers.captures import throttle
from api.security import MEDIA_TICKET_MINUTES, issue_media_ticket
from evidence import CustodyAction, EvidenceError, PreservationRecord
from evidence.files import write_atomic
from evidence.layout import MANIFEST, PRESERVATION, has_preservation
from hashing import digest_file
from preservation.export import export_capture
from preservation.record import object_key
from service.db import evidence_files

router = APIRouter(tags=["evidence"])

MEMBERS = ("investigator", "case_handler", "court")
ReadEvidence = Annotated[CaptureAccess, Depends(require_capture_file_role(*MEMBERS))]
ReadCapture = Annotated[CaptureAccess, Depends(require_capture_role(*MEMBERS))]
ArtifactPath = Annotated[str, PathParam(max_length=1024, pattern=r"^[^\x00-\x1f\x7f]+$",
                                        description="the artifact's path in the manifest")]


INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


class DownloadCutOff(RuntimeError):
    """The stored bytes did not match the manifest: the download was stopped before its end."""


def _digest_headers(row: Any) -> dict[str, str]:
    sha = bytes.fromhex(row.sha256)
    return {"ETag": f'"{row.sha256}"', "Repr-Digest": f"sha-256=:{base64.b64encode(sha).decode()}:",
            "Wangzheng-SM3": row.sm3, "Accept-Ranges": "bytes", "Cache-Control": "private, no-transform",
            "X-Content-Type-Options": "nosniff"}


def _file_row(ctx: Context, capture_id: str, path: str) -> Any:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                        evidence_files.c.path == path)).first()
    if row is None:
        raise HTTPException(404, f"the capture has no file {path[:200]!r}, or it is not preserved yet")
    if row.version_id is None:
        raise HTTPException(409, f"{path[:200]} is not in the store yet (it waits in its worker's spool); try "
                                 "again after the next sync", headers={"Retry-After": "60"})
    return row


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range; None to send the whole file (RFC 9110 lets a server
    ignore a Range it does not support); 416 when it cannot be satisfied."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    unsatisfiable = HTTPException(416, f"the range {header[:100]!r} is outside the file's {size} bytes",
                                  headers={"Content-Range": f"bytes */{size}"})
    try:
        if first_text == "":
            suffix = int(last_text)
            if suffix <= 0:
                raise unsatisfiable
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first < 0:
        return None
    if first >= size:
        raise unsatisfiable
    if last < first:
        return None
    return first, min(last, size - 1)


def _verified_stream(ctx: Context, row: Any, actor: str) -> Iterator[bytes]:
    """The whole object, its last chunk held back until size and SHA-256 match the index.

    Hashing runs on its own thread (hashlib releases the GIL) while the next chunk is read and the previous one
    sent, at most two chunks behind, so checking costs little throughput and memory stays flat."""
    store = ctx.services.store()
    digest = hashlib.sha256()
    size = 0
    held: bytes | None = None
    hashing: deque[Future[None]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="download-digest") as hasher:
        for chunk in store.read(row.object_key, row.version_id):
            if held is not None:
                yield held
            hashing.append(hasher.submit(digest.update, chunk))
            while len(hashing) > 2:
                hashing.popleft().result()
            size += len(chunk)
            held = chunk
        while hashing:
            hashing.popleft().result()
    if size != row.size or digest.hexdigest() != row.sha256:
        ctx.record(actor, CustodyAction.DOWNLOAD_CUT_OFF, row.capture_id, {
            "path": row.path, "version_id": row.version_id, "expected_sha256": row.sha256,
            "stored_sha256": digest.hexdigest(), "expected_size": row.size, "stored_size": size})
        raise DownloadCutOff(f"{row.capture_id}/{row.path} version {row.version_id}: the stored bytes do not match "
                             "the manifest; the download was cut off")
    if held is not None:
        yield held


def _serve(ctx: Context, access: CaptureAccess, row: Any, range_header: str | None,
           if_none_match: str | None) -> Response:
    headers = _digest_headers(row)
    name = Path(row.path).name.replace('"', "")
    # A captured page's own HTML (or SVG, or anything else that can run script) must never render as a page of
    # this origin, where it could read a media ticket from its URL: only pictures, video and sound open inline,
    # and every answer is a sandbox with no referrer to leak.
    inline = row.media_type in INLINE_TYPES or row.media_type.startswith(("video/", "audio/"))
    headers["Content-Disposition"] = f'{"inline" if inline else "attachment"}; filename="{name}"'
    headers["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
    headers["Referrer-Policy"] = "no-referrer"
    actor = access.principal.actor
    if if_none_match is not None and f'"{row.sha256}"' in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    wanted = _parse_range(range_header, row.size) if range_header else None
    store = ctx.services.store()
    if wanted is None:
        ctx.record(actor, CustodyAction.DOWNLOADED, row.capture_id,
                   {"path": row.path, "version_id": row.version_id, "sha256": row.sha256, "bytes": row.size})
        headers["Content-Length"] = str(row.size)
        return StreamingResponse(_verified_stream(ctx, row, actor), media_type=row.media_type, headers=headers)
    first, last = wanted
    count = throttle(ctx).due(actor, row.capture_id, f"range:{row.path}")
    if count:  # a player seeking asks many ranges: one custody entry a minute, with how many
        ctx.record(actor, CustodyAction.DOWNLOADED, row.capture_id,
                   {"path": row.path, "version_id": row.version_id, "sha256": row.sha256,
                    "range": f"{first}-{last}", "range_requests": count})
    headers["Content-Range"] = f"bytes {first}-{last}/{row.size}"
    headers["Content-Length"] = str(last - first + 1)
    return StreamingResponse(store.read(row.object_key, row.version_id, offset=first, length=last - first + 1),
                             status_code=206, media_type=row.media_type, headers=headers)


@router.post("/captures/{capture_id}/media-ticket", response_model=MediaTicketPublic,
             summary="A ticket for this capture's files in a URL (?ticket=), for a video player, an image or a "
                     "download link, which cannot send the Authorization header")
async def media_ticket(ctx: ContextDep, access: ReadCapture) -> MediaTicketPublic:
    # A signed-in user's ticket lapses with their sign-in; a script's lasts as long as a long video needs.
    minutes = MEDIA_TICKET_MINUTES if access.principal.token_id else min(MEDIA_TICKET_MINUTES,
                                                                         ctx.settings.access_token_minutes)
    ticket, expires = issue_media_ticket(ctx.secret, access.principal, access.capture.id, minutes)
    return MediaTicketPublic(ticket=ticket, capture_id=access.capture.id, expires_at=expires)


@router.get("/captures/{capture_id}/preservation", response_model=PreservationRecord, response_model_by_alias=True,
            summary="What preservation did: the manifest's digests, its signature, every timestamp token (TSA, "
                    "time, serial, local or third party) and every stored object version")
def preservation(access: ReadCapture) -> PreservationRecord:
    if access.capture.record is None:
        raise HTTPException(409, f"the capture is {access.capture.state}; it has no preservation record yet")
    return PreservationRecord.model_validate(access.capture.record)


@router.get("/captures/{capture_id}/manifest", summary="The manifest's exact signed bytes (its SHA-256 is the one "
            "a court holds)", response_class=Response, responses={200: {"content": {"application/json": {}}}})
def manifest(ctx: ContextDep, access: ReadEvidence,
             range_header: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
             if_none_match: Annotated[str | None, Header(alias="If-None-Match", max_length=1000)] = None
             ) -> Response:
    row = _file_row(ctx, access.capture.id, MANIFEST)
    if access.capture.manifest_sha256 != row.sha256:
        raise HTTPException(500, "the evidence index and the capture disagree on the manifest's digest; run "
                                 "`wz verify` on this capture")
    return _serve(ctx, access, row, range_header, if_none_match)


@router.get("/captures/{capture_id}/artifacts/{path:path}", summary="One artifact, streamed from the store by its "
            "version; Range requests give 206", response_class=Response,
            responses={200: {"content": {"*/*": {}}, "description": "the file, with its own media type"},
                       206: {"content": {"*/*": {}}, "description": "a byte range of the file"},
                       304: {"description": "not modified (If-None-Match)"}})
def artifact(path: ArtifactPath, ctx: ContextDep, access: ReadEvidence,
             range_header: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
             if_none_match: Annotated[str | None, Header(alias="If-None-Match", max_length=1000)] = None
             ) -> Response:
    return _serve(ctx, access, _file_row(ctx, access.capture.id, path), range_header, if_none_match)


def _from_store(ctx: Context, capture_id: str, record: PreservationRecord, folder: Path) -> Path:
    """The capture's preserved files, read back from the store by version and checked, as a capture directory."""
    store = ctx.services.store()
    directory = folder / capture_id
    for stored in record.stored:
        relative = stored.key.removeprefix(object_key(capture_id, ""))
        target = (directory / relative).resolve()
        if not target.is_relative_to(directory.resolve()):
            raise EvidenceError(f"stored key {stored.key} points outside its capture")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as sink:
            for chunk in store.read(stored.key, stored.version_id):
                sink.write(chunk)
        size, digests = digest_file(target)
        if size != stored.size or digests != stored.digests:
            raise EvidenceError(f"{stored.key} version {stored.version_id}: the stored bytes do not match what was "
                                "stored; the package is not made")
    write_atomic(directory / PRESERVATION, record.model_dump_json(by_alias=True).encode())
    return directory


@router.get("/captures/{capture_id}/export", summary="The verifiable package of `wz export` (a zip)",
            response_class=FileResponse, responses={200: {"content": {"application/zip": {}}}})
async def export(ctx: ContextDep, access: Annotated[CaptureAccess, Depends(require_capture_file_role(
        *MEMBERS, scope="export"))]) -> FileResponse:
    capture = access.capture
    if capture.record is None:
        raise HTTPException(409, f"the capture is {capture.state}; a package is made once it is preserved")
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=_exports_dir(ctx)))
    try:
        local = Path(capture.directory) if capture.directory else None
        if local is None or not has_preservation(local):
            record = PreservationRecord.model_validate(capture.record)
            local = await run_in_threadpool(_from_store, ctx, capture.id, record, folder)
        output = folder / f"{capture.id}.zip"
        await run_in_threadpool(export_capture, ctx.services, local, output, actor=access.principal.actor)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(output, media_type="application/zip", filename=output.name,
                        background=BackgroundTask(shutil.rmtree, folder, True))


def _exports_dir(ctx: Context) -> Path:
    folder = ctx.settings.data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

