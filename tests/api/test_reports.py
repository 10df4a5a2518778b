"""The evidence report: the PDF is made by Chromium from the printable page, is registered like evidence (a locked
object version, indexed by both digests, a custody entry) and carries the manifest's digest and a QR code that
opens the hash check; the printable page runs no script and shows hostile titles as text. Read as a person
would: pdftotext for the words, pdftoppm and OpenCV's QR decoder for the code."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import cv2
import pytest
from sqlalchemy import select, update

from service.db import cases, evidence_files
from service.report import readable_url
from storage import S3Endpoint
from tests.api.conftest import Service, open_service
from tests.api.test_captures_api import case_with, user_id
from tests.api.test_roles import preserved_capture

pytestmark = pytest.mark.integration


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, check=True,
                          text=True).stdout


def _qr_codes(pdf: Path, folder: Path) -> list[str]:
    """The QR codes OpenCV reads on the first page; a decoder misses a code at one resolution and finds it at
    another, so a few are tried, as a person holds a phone nearer."""
    for dpi in (150, 200, 300):
        prefix = folder / f"page-{dpi}"
        subprocess.run(["pdftoppm", "-r", str(dpi), "-png", "-f", "1", "-l", "1", str(pdf), str(prefix)], check=True)
        found = []
        for image in sorted(folder.glob(f"page-{dpi}*.png")):
            picture = cv2.imread(str(image))
            # OpenCV's two decoders miss different codes: the first answer of either counts.
            text = cv2.QRCodeDetector().detectAndDecode(picture)[0] or \
                cv2.QRCodeDetectorAruco().detectAndDecode(picture)[0]
            if text:
                found.append(text)
        if found:
            return found
    return []


def test_a_report_pdf_is_registered_evidence_with_the_digest_and_its_qr_code(tmp_path: Path,
                                                                              s3_server: S3Endpoint) -> None:
    for service in open_service(tmp_path / "data", s3_server, public_url="https://evidence.example.gov.cn/"):
        case_id = case_with(service, ("zhao", "case_handler"))
        capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
        manifest_sha256 = service.get(f"/captures/{capture_id}", "wang").json()["manifest_sha256"]

        made = service.post(f"/captures/{capture_id}/report", "zhao")
        assert made.status_code == 201, made.text
        report = made.json()
        assert report["path"].startswith("reports/report-") and report["path"].endswith(".pdf")
        pdf_bytes = service.get(f"/captures/{capture_id}/artifacts/{report['path']}", "wang").content
        assert pdf_bytes.startswith(b"%PDF-") and hashlib.sha256(pdf_bytes).hexdigest() == report["sha256"]
        pdf = tmp_path / "report.pdf"
        pdf.write_bytes(pdf_bytes)

        text = _pdf_text(pdf)
        assert manifest_sha256 in text.replace(" ", "") and capture_id in text
        assert "电子数据提取笔录" in text
        assert "ffmpeg could not read a frame" in text  # this capture's composite is not a video: said, not hidden
        link = f"https://evidence.example.gov.cn/#/verify?sha256={manifest_sha256}"
        assert _qr_codes(pdf, tmp_path) == [link]

        # Registered: indexed by both digests, in the custody record, found by the public hash check.
        with service.ctx.engine.connect() as conn:
            row = conn.execute(select(evidence_files).where(evidence_files.c.path == report["path"])).one()
        assert (row.sha256, row.sm3, row.role, row.custody_seq) == (report["sha256"], report["sm3"], "report",
                                                                    report["custody_seq"])
        entry = service.ctx.services.ledger.entries(start=report["custody_seq"], end=report["custody_seq"])[0]
        assert entry.action.value == "report-generated" and entry.actor == "zhao"
        assert entry.details["sha256"] == report["sha256"] and entry.details["manifest_sha256"] == manifest_sha256
        answer = service.post("/verify/hash", json={"sm3": report["sm3"]}).json()
        assert answer["registered"] and answer["matches"][0]["role"] == "report"
        assert answer["matches"][0]["capture_id"] == capture_id
        listed = service.get(f"/captures/{capture_id}/reports", "wang").json()
        assert [r["sha256"] for r in listed] == [report["sha256"]]


def test_the_printable_page_runs_nothing_and_shows_hostile_text_as_text(service: Service) -> None:
    case_id = case_with(service)
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    with service.ctx.engine.begin() as conn:
        conn.execute(update(cases).where(cases.c.id == case_id).values(title=hostile))
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    page = service.get(f"/captures/{capture_id}/report.html", "wang")
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text


def test_no_report_from_bytes_that_do_not_check(service: Service) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    with service.ctx.engine.begin() as conn:  # the index names other bytes than the store holds
        conn.execute(update(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                  evidence_files.c.path == "composite.mp4").values(sm3="0" * 64))
    refused = service.post(f"/captures/{capture_id}/report", "wang")
    assert refused.status_code == 409 and "do not match" in refused.json()["detail"]
    assert service.get(f"/captures/{capture_id}/reports", "wang").json() == []
    assert not [e for e in service.ctx.services.ledger.entries(subject=capture_id)
                if e.action.value == "report-generated"]


def test_the_qr_code_never_comes_from_the_callers_host_header(tmp_path: Path, s3_server: S3Endpoint) -> None:
    for service in open_service(tmp_path / "data", s3_server, public_url=""):
        case_id = case_with(service)
        capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
        spoofed = {"Host": "verify-wangzheng.example"}
        for answer in (service.post(f"/captures/{capture_id}/report", "wang", headers=spoofed),
                       service.get(f"/captures/{capture_id}/report.html", "wang", headers=spoofed)):
            assert answer.status_code == 409 and "WZ_PUBLIC_URL" in answer.json()["detail"]
        assert "verify-wangzheng" not in service.get(f"/captures/{capture_id}/reports", "wang").text


def test_no_report_of_another_captures_manifest(service: Service) -> None:
    """The index row of one capture's manifest pointed at another capture's (genuine, signed) manifest: the
    report would state the other capture's pages under this one's id. Refused."""
    case_id = case_with(service)
    wang = user_id(service, "wang")
    first, second = preserved_capture(service, case_id, wang), preserved_capture(service, case_id, wang)
    with service.ctx.engine.begin() as conn:
        other = conn.execute(select(evidence_files).where(evidence_files.c.capture_id == second,
                                                          evidence_files.c.path == "manifest.json")).one()
        conn.execute(update(evidence_files).where(evidence_files.c.capture_id == first,
                                                  evidence_files.c.path == "manifest.json")
                     .values(sha256=other.sha256, sm3=other.sm3, size=other.size, object_key=other.object_key,
                             version_id=other.version_id))
    refused = service.post(f"/captures/{first}/report", "wang")
    assert refused.status_code == 409, refused.text


@pytest.mark.parametrize(("url", "read"), [
    ("https://shop.example/p?q=%E6%9C%80%E4%BD%8E%E4%BB%B7", "https://shop.example/p?q=最低价"),
    ("https://shop.example/%E2%80%AEgpj.exe", "https://shop.example/%E2%80%AEgpj.exe"),  # right-to-left override
    ("https://shop.example/a%e2%80%8bb", "https://shop.example/a%E2%80%8Bb"),  # zero-width space
    ("https://shop.example/a%0Ab%20c", "https://shop.example/a%0Ab%20c"),
    ("https://shop.example/%2541", "https://shop.example/%2541"),  # not "%41", which reads as "A"
    ("https://shop.example/a%2Fb%3Fc%23d", "https://shop.example/a%2Fb%3Fc%23d"),  # no new path, query or fragment
    ("https://shop.example/%E6%9C", "https://shop.example/%E6%9C"),  # a broken escape: the URL as it came
])
def test_the_report_reads_urls_as_text_and_hides_nothing(url: str, read: str) -> None:
    assert readable_url(url) == read
