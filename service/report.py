"""The evidence report (电子数据提取笔录 / 固证报告): one capture as Chinese regulators record an extraction.

Case, operators, time and place, tool and versions, method, URLs, a still of the composite and of each tile, every
digest, the timestamp tokens, the custody checkpoint, and a QR code that opens the hash check for the manifest's
digest. Everything in it is read from the store and the ledger and checked first (the manifest's and the
composite's bytes against the index), never from a worker's folder that could have changed since.

The printable page is HTML without script; the PDF is Chromium's print of that same page. A generated PDF is
registered like evidence: stored as a locked object version, indexed by SHA-256 and SM3 (so the public hash check
knows it), and entered in the custody record.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import segno
from jinja2 import Environment, FileSystemLoader, select_autoescape
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine, insert, select

from evidence import CustodyAction, EvidenceError, Manifest, PreservationRecord, Settings, SignatureInvalid
from evidence.model import Checkpoint, CustodyEntry
from hashing import digest_file
from hashing.signing import verify_detached
from preservation.record import object_key
from preservation.services import Services
from service.db import captures, case_members, cases, evidence_files, users

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_ROLE = "report"
REPORTS_FOLDER = "reports"
# What the custody table of a report lists one by one; reads (viewed, downloaded) are counted, not listed.
COUNTED_ACTIONS = {CustodyAction.VIEWED, CustodyAction.DOWNLOADED}

_environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                           trim_blocks=True, lstrip_blocks=True)


class ReportError(EvidenceError):
    """The report cannot be made: the capture is not preserved, or its stored bytes do not check."""


@dataclass(frozen=True)
class Still:
    label: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@dataclass(frozen=True)
class ReportFacts:
    capture: Any
    case: Any
    members: list[Any]
    operator: str
    second_officer: str | None
    manifest: Manifest
    manifest_sm3: str
    record: PreservationRecord
    custody: list[CustodyEntry]
    checkpoint: Checkpoint | None
    stills: list[Still]
    still_at: datetime | None
    still_problem: str = ""


def _index_row(engine: Engine, capture_id: str, path: str) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                        evidence_files.c.path == path)).first()
    if row is None or row.version_id is None:
        raise ReportError(f"{capture_id}/{path} is not in the store yet; make the report once the capture is stored")
    if row.object_key != object_key(capture_id, path):  # an index row pointed at another capture's object
        raise ReportError(f"the index names {row.object_key} for {capture_id}/{path}; run `wz verify` on this capture")
    return row


def _fetch_checked(services: Services, row: Any, target: Path) -> Path:
    """The object version the index names, written to `target` and checked against the index's digests."""
    with target.open("wb") as sink:
        for chunk in services.store().read(row.object_key, row.version_id):
            sink.write(chunk)
    size, digests = digest_file(target)
    if size != row.size or digests.sha256 != row.sha256 or digests.sm3 != row.sm3:
        raise ReportError(f"{row.capture_id}/{row.path} version {row.version_id}: the stored bytes do not match the "
                          "index; run `wz verify` on this capture")
    return target


def _stills(settings: Settings, manifest: Manifest, composite: Path, folder: Path) -> tuple[list[Still], float, str]:
    """A frame from the middle of the composite, and each tile cut from that same frame; or, when the recorded
    file cannot be decoded, no still and why (the report says so rather than not being made)."""
    at = max(0.0, manifest.recorded_seconds / 2)
    frame_file = folder / "still.png"
    done = subprocess.run([settings.ffmpeg, "-v", "error", "-ss", f"{at:.3f}", "-i", str(composite), "-frames:v",
                           "1", "-y", str(frame_file)], capture_output=True, timeout=120, check=False)
    frame = cv2.imread(str(frame_file)) if done.returncode == 0 and frame_file.exists() else None
    if frame is None:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return [], at, f"ffmpeg could not read a frame of the composite: {why[-1][:300] if why else 'no frame'}"
    stills = [Still("composite", frame_file.read_bytes())]
    for tile in manifest.layout.tiles:
        rect = tile.rect
        crop: np.ndarray[Any, Any] = frame[rect.y:rect.y + rect.height, rect.x:rect.x + rect.width]
        ok, encoded = cv2.imencode(".png", crop)
        if ok:
            stills.append(Still(str(tile.tile), encoded.tobytes()))
    return stills, at, ""


def _frame_time(frames_csv: Path | None, seconds: float) -> datetime | None:
    """The wall-clock time of the composite frame nearest `seconds` (frames.csv), if the capture kept it."""
    if frames_csv is None:
        return None
    best: tuple[float, str] | None = None
    with frames_csv.open(encoding="utf-8") as rows:
        next(rows, None)
        for line in rows:
            parts = line.split(",")
            if len(parts) < 3:
                continue
            try:
                distance = abs(float(parts[1]) - seconds)
            except ValueError:
                continue
            if best is None or distance < best[0]:
                best = (distance, parts[2])
            elif distance > best[0]:
                break
    if best is None:
        return None
    return datetime.fromisoformat(best[1].replace("Z", "+00:00"))


def gather(engine: Engine, services: Services, capture_id: str, *,
           stills: tuple[list[Still], datetime | None, str] | None = None) -> ReportFacts:
    """Everything the report states, read from the index, the store and the ledger, and checked. `stills` (cut
    before from the same checked composite) spares reading the composite again."""
    operator = users.alias("operator")
    officer = users.alias("officer")
    with engine.connect() as conn:
        capture = conn.execute(select(captures, operator.c.name.label("operator_name"),
                                      officer.c.name.label("officer_name"))
                               .join(operator, operator.c.id == captures.c.requested_by)
                               .outerjoin(officer, officer.c.id == captures.c.second_officer_id)
                               .where(captures.c.id == capture_id)).one()
        case = conn.execute(select(cases).where(cases.c.id == capture.case_id)).one()
        members = list(conn.execute(select(users.c.name, case_members.c.role, case_members.c.added_at)
                                    .join(users, users.c.id == case_members.c.user_id)
                                    .where(case_members.c.case_id == case.id).order_by(case_members.c.added_at)))
    if capture.record is None or capture.manifest_sha256 is None:
        raise ReportError(f"the capture is {capture.state}; a report is made once it is preserved")
    record = PreservationRecord.model_validate(capture.record)
    with tempfile.TemporaryDirectory(prefix="report-") as temporary:
        folder = Path(temporary)
        manifest_row = _index_row(engine, capture_id, "manifest.json")
        if manifest_row.sha256 != capture.manifest_sha256:
            raise ReportError("the evidence index and the capture disagree on the manifest's digest; run `wz verify`")
        manifest_file = _fetch_checked(services, manifest_row, folder / "manifest.json")
        signature = _fetch_checked(services, _index_row(engine, capture_id, "manifest.p7s"), folder / "manifest.p7s")
        try:  # signed by this node: the database alone cannot make a manifest the report would state
            verify_detached(manifest_file, signature.read_bytes(), [services.pki.ca_certificate()])
        except SignatureInvalid as exc:
            raise ReportError(f"the manifest's signature does not verify: {exc}; run `wz verify`") from exc
        manifest = Manifest.model_validate_json(manifest_file.read_bytes())
        if manifest.capture_id != capture_id or record.capture_id != capture_id or \
                record.manifest.sha256 != manifest_row.sha256 or \
                any(t.message_imprint != manifest_row.sha256 for t in record.timestamps):
            raise ReportError(f"the stored manifest, its preservation record and capture {capture_id} do not agree; "
                              "run `wz verify`")
        kept, still_at, still_problem = stills if stills is not None else ([], None, "")
        composite = next((a for a in manifest.artifacts if a.role.value == "composite"), None)
        if composite is not None and stills is None:
            video = _fetch_checked(services, _index_row(engine, capture_id, composite.path), folder / "composite.mp4")
            kept, seconds, still_problem = _stills(services.settings, manifest, video, folder)
            frames = next((a for a in manifest.artifacts if a.role.value == "frame-times"), None)
            frames_file = _fetch_checked(services, _index_row(engine, capture_id, frames.path),
                                         folder / "frames.csv") if frames is not None else None
            still_at = _frame_time(frames_file, seconds)
    custody = services.ledger.entries(subject=capture_id)
    return ReportFacts(capture=capture, case=case, members=members, operator=capture.operator_name,
                       second_officer=capture.officer_name, manifest=manifest, manifest_sm3=manifest_row.sm3,
                       record=record, custody=custody, checkpoint=services.ledger.latest_checkpoint(),
                       stills=kept, still_at=still_at, still_problem=still_problem)


def verify_link(base_url: str, manifest_sha256: str) -> str:
    """The viewer's hash check for this digest: what the QR code opens."""
    return f"{base_url.rstrip('/')}/#/verify?sha256={quote(manifest_sha256)}"


def qr_svg_uri(link: str) -> str:
    return str(segno.make(link, error="m").svg_data_uri(scale=4, border=2))


# The report's words for the values it prints, as the viewer's Chinese says them (the strings test holds the two
# the same); the stored value follows in English, as the record has it.
REPORT_LABELS: dict[str, str] = {
    "capture.complete": "完成", "capture.partial": "部分完成", "capture.failed": "失败",
    "capture.interrupted": "中断",
    "tile.pending": "等待", "tile.loading": "加载中", "tile.recording": "录制中", "tile.complete": "完成",
    "tile.partial": "部分完成", "tile.failed": "失败",
    "role.investigator": "调查员", "role.case_handler": "办案人员", "role.court": "法院", "role.admin": "管理员",
    "action.captured": "录制完成", "action.hashed": "计算哈希", "action.signed": "签名",
    "action.timestamped": "加盖时间戳", "action.timestamp-pending": "时间戳待签发",
    "action.stored": "写入防篡改存储", "action.legal-hold": "法律保全",
    "action.legal-hold-released": "解除法律保全", "action.exported": "导出证据包",
    "action.export-written": "证据包已写出", "action.verified": "在线验证",
    "action.guards-restored": "恢复防篡改触发器", "action.user-created": "创建用户",
    "action.token-created": "创建令牌", "action.token-revoked": "吊销令牌", "action.login-locked": "登录锁定",
    "action.case-created": "创建案件", "action.case-updated": "修改案件",
    "action.case-state-changed": "案件状态变更", "action.member-set": "设置成员",
    "action.member-removed": "移除成员", "action.viewed": "查看", "action.downloaded": "下载",
    "action.download-cut-off": "下载被中止（存储内容不符）", "action.hash-lookup": "哈希核验",
    "action.package-verified": "证据包核验", "action.capture-requested": "发起取证",
    "action.capture-started": "开始取证", "action.capture-stop-requested": "请求停止",
    "action.capture-witnessed": "第二取证人确认", "action.capture-interrupted": "取证中断",
    "action.capture-ended": "取证结束", "action.report-generated": "生成固证报告",
}


def label(kind: str, value: object) -> str:
    """`完成 complete`: the report's word for a stored value, with the value itself; an unknown value as it is."""
    text = str(getattr(value, "value", value))
    word = REPORT_LABELS.get(f"{kind}.{text}")
    return f"{word} {text}" if word else text


_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# decodeURI's reserved characters: decoding them would change which path, query or fragment a reader sees.
_RESERVED = set(";/?:@&=+$,#%")


def readable_url(url: str) -> str:
    """The URL as a person reads it (a Chinese search term decoded), hiding nothing: reserved characters, controls,
    bidirectional and zero-width marks and spaces stay escaped, and broken escapes leave the URL as it came."""

    def decode(run: re.Match[str]) -> str:
        text = bytes.fromhex(run.group(0).replace("%", "")).decode("utf-8")
        return "".join(quote(ch, safe="") if ch in _RESERVED or ch.isspace()
                       or unicodedata.category(ch)[0] in "CZ" else ch for ch in text)

    try:
        return _ESCAPE_RUN.sub(decode, url)
    except UnicodeDecodeError:
        return url


def _utc(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_html(facts: ReportFacts, *, base_url: str, generated_by: str, generated_at: datetime) -> str:
    manifest = facts.manifest
    link = verify_link(base_url, facts.capture.manifest_sha256)
    listed = [e for e in facts.custody if e.action not in COUNTED_ACTIONS]
    reads = sum(1 for e in facts.custody if e.action in COUNTED_ACTIONS)
    timestamps = [("清单 manifest", t) for t in facts.record.timestamps] + \
        [("分段链 segment chain", t) for t in facts.record.chain_timestamps]
    template = _environment.get_template("report.html")
    return template.render(
        f=facts, m=manifest, p=manifest.provenance, link=link, qr=qr_svg_uri(link), listed=listed, reads=reads,
        timestamps=timestamps, utc=_utc, readable_url=readable_url, label=label, generated_by=generated_by,
        generated_at=generated_at, size=_size, components=sorted(manifest.provenance.components.items()))


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value} B" if unit == "B" else f"{value:.1f} {unit}"
        value = value / 1024  # type: ignore[assignment]
    return f"{value} B"


def _chromium(settings: Settings) -> str:
    found = shutil.which(settings.chromium)
    if found is None:
        raise ReportError(f"{settings.chromium} is not installed; scripts/setup installs Debian's chromium")
    return found


def render_pdf(settings: Settings, html: str, target: Path) -> Path:
    """Chromium's print to PDF of the report page (A4, page numbers in the footer)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(settings), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            # Offline: the page holds everything it shows (data: images); any request out is refused.
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("data:")
                       else route.continue_())
            page.set_content(html, wait_until="load")
            page.pdf(path=str(target), format="A4", print_background=True, display_header_footer=True,
                     header_template="<span></span>",
                     footer_template='<div style="font-size:8px;width:100%;text-align:center;color:#555">'
                                     '<span class="pageNumber"></span> / <span class="totalPages"></span></div>',
                     margin={"top": "14mm", "bottom": "16mm", "left": "12mm", "right": "12mm"})
        finally:
            browser.close()
    return target


@dataclass(frozen=True)
class RegisteredReport:
    path: str
    size: int
    sha256: str
    sm3: str
    version_id: str
    custody_seq: int
    generated_at: datetime


@contextmanager
def _scratch(settings: Settings) -> Iterator[Path]:
    root = settings.data_dir / "reports"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="report-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def generate_report(engine: Engine, services: Services, capture_id: str, *, actor: str,
                    base_url: str) -> RegisteredReport:
    """Make the PDF, store it as a locked version, index it by both digests and enter it in the custody record,
    the index row and the custody entry in one transaction."""
    settings = services.settings
    facts = gather(engine, services, capture_id)
    generated_at = datetime.now(UTC)
    html = report_html(facts, base_url=base_url, generated_by=actor, generated_at=generated_at)
    # Random, not derived from the page: two reports asked for in the same second must not share a key.
    relative = f"{REPORTS_FOLDER}/report-{generated_at:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.pdf"
    with _scratch(settings) as folder:
        pdf = render_pdf(settings, html, folder / "report.pdf")
        size, digests = digest_file(pdf)
        store = services.store()
        # A case on legal hold holds every version of its evidence, this report's included.
        stored = store.verify(store.put_file(object_key(capture_id, relative), pdf, content_type="application/pdf",
                                             digests=digests, legal_hold=bool(facts.case.legal_hold)))
    with engine.begin() as conn:
        entry = services.record_in(conn, actor, CustodyAction.REPORT_GENERATED, capture_id, {
            "path": relative, "sha256": digests.sha256, "sm3": digests.sm3, "size": size,
            "version_id": stored.version_id, "manifest_sha256": facts.capture.manifest_sha256})
        conn.execute(insert(evidence_files).values(
            sha256=digests.sha256, sm3=digests.sm3, size=size, capture_id=capture_id, path=relative,
            role=REPORT_ROLE, media_type="application/pdf", acquired_at=generated_at, bucket=stored.bucket,
            object_key=stored.key, version_id=stored.version_id, custody_seq=entry.seq))
    services.after_commit(entry)
    return RegisteredReport(path=relative, size=size, sha256=digests.sha256, sm3=digests.sm3,
                            version_id=stored.version_id, custody_seq=entry.seq, generated_at=generated_at)


def reports_of(engine: Engine, capture_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                              evidence_files.c.role == REPORT_ROLE)
                                 .order_by(evidence_files.c.acquired_at)))
