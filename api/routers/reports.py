"""The evidence report (电子数据提取笔录 / 固证报告) of a capture: a printable page, and a PDF that is itself registered
(stored as a locked version, indexed by SHA-256 and SM3, entered in the custody record) when it is made."""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from api.context import Context, RateLimiter
from api.deps import CaptureAccess, ContextDep, require_capture_file_role, require_capture_role
from api.models import ReportPublic
from api.routers.captures import throttle
from evidence import CustodyAction
from service.report import ReportError, Still, gather, generate_report, report_html, reports_of

router = APIRouter(tags=["reports"])

MEMBERS = ("investigator", "case_handler", "court")
# A report is evidence in its own right: made by those who handle the case, read by every member.
MakeReport = Annotated[CaptureAccess, Depends(require_capture_role("investigator", "case_handler", scope="export"))]
ReadReport = Annotated[CaptureAccess, Depends(require_capture_file_role(*MEMBERS))]
ListReports = Annotated[CaptureAccess, Depends(require_capture_role(*MEMBERS))]
PAGE_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'"
STILLS_KEPT = 16
REPORTS_PER_MINUTE = 6


class StillCache:
    """The stills of a capture's printable page, cut once from its checked composite: the page is opened more
    often than a report is made, and an hour of video is read from the store to make them. The PDF always cuts
    its own from the store."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, tuple[list[Still], datetime | None, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, capture_id: str) -> tuple[list[Still], datetime | None, str] | None:
        with self._lock:
            found = self._kept.get(capture_id)
            if found is not None:
                self._kept.move_to_end(capture_id)
            return found

    def put(self, capture_id: str, stills: list[Still], at: datetime | None, problem: str) -> None:
        with self._lock:
            self._kept[capture_id] = (stills, at, problem)
            while len(self._kept) > STILLS_KEPT:
                self._kept.popitem(last=False)


def _made_recently(ctx: Context) -> RateLimiter:
    return ctx.shared("reports_made", lambda: RateLimiter(REPORTS_PER_MINUTE))


def _stills(ctx: Context) -> StillCache:
    return ctx.shared("report_stills", StillCache)


def _public_url(ctx: Context) -> str:
    """Where the QR code sends a court: configured, never taken from a request's Host header, which the caller
    chooses (a report whose QR code opens a look-alike site would be signed, stored and registered)."""
    if not ctx.settings.public_url:
        raise HTTPException(409, "the service does not know its own address: set WZ_PUBLIC_URL (where people reach "
                                 "the viewer, e.g. https://evidence.example.gov.cn/) so the report's QR code opens "
                                 "its hash check there")
    return ctx.settings.public_url


def _page(ctx: Context, capture_id: str, actor: str) -> str:
    cache = _stills(ctx)
    kept = cache.get(capture_id)
    facts = gather(ctx.engine, ctx.services, capture_id, stills=kept)
    if kept is None:
        cache.put(capture_id, facts.stills, facts.still_at, facts.still_problem)
    return report_html(facts, base_url=_public_url(ctx), generated_by=actor, generated_at=datetime.now(UTC))


def _answer(row: Any) -> ReportPublic:
    return ReportPublic(path=row.path, size=row.size, sha256=row.sha256, sm3=row.sm3, version_id=row.version_id,
                        custody_seq=row.custody_seq, generated_at=row.acquired_at)


@router.get("/captures/{capture_id}/report.html", response_class=HTMLResponse,
            summary="The evidence report as a printable page (no script; print it, or make the registered PDF)")
async def report_page(ctx: ContextDep, access: ReadReport) -> HTMLResponse:
    capture = access.capture
    if capture.record is None:
        raise HTTPException(409, f"the capture is {capture.state}; a report is made once it is preserved")
    try:
        html = await run_in_threadpool(_page, ctx, capture.id, access.principal.actor)
    except ReportError as exc:
        raise HTTPException(409, str(exc)) from exc
    count = throttle(ctx).due(access.principal.actor, capture.id, "report")
    if count:
        await run_in_threadpool(ctx.record, access.principal.actor, CustodyAction.VIEWED, capture.id,
                                {"what": "report", "reads": count})
    return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "private, no-store",
                                       "X-Content-Type-Options": "nosniff"})


@router.post("/captures/{capture_id}/report", response_model=ReportPublic, status_code=201,
             summary="Make the evidence report PDF (Chromium's print of the page) and register it: stored (WORM), "
                     "indexed by SHA-256 and SM3, entered in the custody record; download it as an artifact")
async def make_report(ctx: ContextDep, access: MakeReport) -> ReportPublic:
    capture = access.capture
    wait = _made_recently(ctx).retry_after(access.principal.actor)
    if wait:
        raise HTTPException(429, f"at most {REPORTS_PER_MINUTE} reports a minute from one user (each is kept for "
                                 "years in locked storage); try again later", headers={"Retry-After": str(wait)})
    if capture.record is None:
        raise HTTPException(409, f"the capture is {capture.state}; a report is made once it is preserved")
    try:
        made = await run_in_threadpool(generate_report, ctx.engine, ctx.services, capture.id,
                                       actor=access.principal.actor, base_url=_public_url(ctx))
    except ReportError as exc:
        raise HTTPException(409, str(exc)) from exc
    return ReportPublic(path=made.path, size=made.size, sha256=made.sha256, sm3=made.sm3, version_id=made.version_id,
                        custody_seq=made.custody_seq, generated_at=made.generated_at)


@router.get("/captures/{capture_id}/reports", response_model=list[ReportPublic],
            summary="The report PDFs made of this capture, oldest first")
def list_reports(ctx: ContextDep, access: ListReports) -> list[ReportPublic]:
    return [_answer(row) for row in reports_of(ctx.engine, access.capture.id)]
