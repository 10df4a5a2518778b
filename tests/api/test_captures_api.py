"""Launching, stopping and downloading, as an adversary tries them: what is refused, what is kept, what is cut off.

No worker runs here: launched captures stay queued, which is what these tests need. Recorded captures are made
without a browser (tests/preservation) and preserved in the real store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from api.routers.evidence import DownloadCutOff
from api.security import Principal, issue_media_ticket, new_api_token
from service.db import api_tokens, captures, evidence_files, users
from storage import S3Endpoint
from tests.api.conftest import Service, open_service
from tests.api.test_roles import preserved_capture

pytestmark = pytest.mark.integration


def case_with(service: Service, *members: tuple[str, str]) -> str:
    service.add_user("wang", "investigator")
    case_id: str = service.post("/cases", "wang", json={"title": "adversary"}).json()["id"]
    for name, role in members:
        service.add_user(name, role)
        assert service.request("PUT", f"/cases/{case_id}/members/{name}", "wang", json={"role": role}).status_code \
            == 200
    return case_id


def user_id(service: Service, name: str) -> int:
    with service.ctx.engine.connect() as conn:
        return int(conn.execute(select(users.c.id).where(users.c.name == name)).scalar_one())


def test_launch_queues_the_job_and_its_custody_entry_together(service: Service) -> None:
    case_id = case_with(service, ("li", "investigator"))
    launched = service.post(f"/cases/{case_id}/captures", "wang",
                            json={"urls": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], "duration": 30,
                                  "second_officer": "li"})
    assert launched.status_code == 202, launched.text
    capture = launched.json()
    assert "no worker is running" in capture["note"]
    with service.ctx.engine.connect() as conn:
        job = conn.execute(text("SELECT queue_name, status, args FROM procrastinate_jobs")).one()
    assert job.queue_name == "captures-2" and job.status == "todo" and job.args["capture_id"] == capture["id"]
    entry = service.ctx.services.ledger.entries(subject=capture["id"])[0]
    assert entry.action.value == "capture-requested" and entry.actor == "wang"
    assert entry.details["second_officer"] == "li"


def test_a_failed_custody_write_queues_nothing(service: Service) -> None:
    case_id = case_with(service)
    with service.ctx.engine.begin() as conn:  # the ledger's insert fails, as a full disk or a lost lock would
        conn.exec_driver_sql("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; "
                             "END $$ LANGUAGE plpgsql")
        conn.exec_driver_sql("CREATE TRIGGER refuse_capture BEFORE INSERT ON custody_entries FOR EACH ROW "
                             "WHEN (NEW.action = 'capture-requested') EXECUTE FUNCTION refuse()")
    client = TestClient(service.client.app, raise_server_exceptions=False)
    answer = client.post(f"/api/v1/cases/{case_id}/captures", json={"urls": ["http://127.0.0.1:9/"]},
                         headers={"Authorization": f"Bearer {service.tokens['wang']}"})
    assert answer.status_code == 500 and "disk full" not in answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    with service.ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM captures")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar_one() == 0


@pytest.mark.parametrize(("body", "says"), [
    ({"urls": []}, "urls"),
    ({"urls": ["http://127.0.0.1:9/"] * 10}, "urls"),
    ({"urls": ["file:///etc/passwd"]}, "http(s)"),
    ({"urls": ["javascript:alert(1)"]}, "http(s)"),
    ({"urls": ["http://user:pw@127.0.0.1:9/"]}, "passwords"),
    ({"urls": ["http://127.0.0.1:9/"], "duration": -1}, "duration"),
    ({"urls": ["http://127.0.0.1:9/"], "duration": 10**9}, "maximum"),
    ({"urls": ["http://127.0.0.1:9/"], "fps": 240}, "fps"),
    ({"urls": ["http://127.0.0.1:9/"], "layout": "../../x"}, "layout"),
    ({"urls": ["http://127.0.0.1:9/"], "tile_size": "3840x2160"}, "tile_size"),
    ({"urls": ["http://127.0.0.1:9/"], "second_officer": "nobody"}, "second_officer"),
    ({"urls": ["http://127.0.0.1:9/"], "second_officer": "wang"}, "other than the operator"),
    ({"urls": ["http://127.0.0.1:9/"], "out_dir": "/etc"}, "out_dir"),
])
def test_bad_launches_say_what_to_fix(service: Service, body: dict[str, object], says: str) -> None:
    case_id = case_with(service)
    answer = service.post(f"/cases/{case_id}/captures", "wang", json=body)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]


def test_private_targets_are_refused_unless_allowlisted(tmp_path: Path, s3_server: S3Endpoint) -> None:
    for service in open_service(tmp_path / "data", s3_server, capture_allow_private=False):
        case_id = case_with(service)
        for url in ("http://127.0.0.1:8080/", "http://10.0.0.5/", "http://[::1]/", "http://169.254.169.254/latest",
                    "http://localhost/", "http://0x7f000001/", "http://[::ffff:127.0.0.1]/"):
            answer = service.post(f"/cases/{case_id}/captures", "wang", json={"urls": [url]})
            assert answer.status_code == 422, (url, answer.text)
            assert "refusing" in answer.json()["detail"], answer.text


def test_the_tile_size_asked_for_is_kept_with_the_capture(service: Service) -> None:
    case_id = case_with(service)
    launched = service.post(f"/cases/{case_id}/captures", "wang",
                            json={"urls": ["http://127.0.0.1:9/"], "tile_size": "960x540"})
    assert launched.status_code == 202, launched.text
    assert launched.json()["tile_size"] == "960x540"
    assert service.request("GET", f"/captures/{launched.json()['id']}", "wang").json()["tile_size"] == "960x540"
    default = service.post(f"/cases/{case_id}/captures", "wang", json={"urls": ["http://127.0.0.1:9/"]})
    assert default.json()["tile_size"] == "640x360"


def test_a_closed_case_takes_no_capture(service: Service) -> None:
    case_id = case_with(service)
    service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "opened"})
    service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "closed", "outcome": "fined"})
    answer = service.post(f"/cases/{case_id}/captures", "wang", json={"urls": ["http://127.0.0.1:9/"]})
    assert answer.status_code == 409


def test_stopping_a_queued_capture_is_a_recorded_failure(service: Service) -> None:
    case_id = case_with(service)
    capture_id = service.post(f"/cases/{case_id}/captures", "wang",
                              json={"urls": ["http://127.0.0.1:9/"]}).json()["id"]
    stopped = service.post(f"/captures/{capture_id}/stop", "wang")
    assert stopped.status_code == 202
    assert stopped.json()["state"] == "failed" and "nothing was recorded" in stopped.json()["reason"]
    with service.ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM procrastinate_jobs")).scalar_one() == "cancelled"
    actions = [e.action.value for e in service.ctx.services.ledger.entries(subject=capture_id)]
    assert actions == ["capture-requested", "capture-stop-requested", "capture-ended"]
    assert service.post(f"/captures/{capture_id}/stop", "wang").status_code == 409


def test_witness_rules(service: Service) -> None:
    case_id = case_with(service, ("li", "investigator"), ("qian", "investigator"))
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    with service.ctx.engine.begin() as conn:
        conn.execute(update(captures).where(captures.c.id == capture_id).values(
            second_officer_id=user_id(service, "li"), ended_at=datetime.now(UTC)))
    assert service.post(f"/captures/{capture_id}/witness", "qian").status_code == 403
    assert service.post(f"/captures/{capture_id}/witness", "li").status_code == 200
    assert service.post(f"/captures/{capture_id}/witness", "li").status_code == 409
    with service.ctx.engine.begin() as conn:
        conn.execute(update(captures).where(captures.c.id == capture_id).values(
            witnessed_at=None, ended_at=datetime(2020, 1, 1, tzinfo=UTC)))
    late = service.post(f"/captures/{capture_id}/witness", "li")
    assert late.status_code == 409 and "too late" in late.json()["detail"]


def test_paths_name_index_rows_never_files(service: Service) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    for path in ("../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "preservation.json",
                 "composite.mp4%00.txt", "COMPOSITE.MP4", "composite.mp4/", "keys/signer.key"):
        answer = service.get(f"/captures/{capture_id}/artifacts/{path}", "wang")
        assert answer.status_code in (404, 422), (path, answer.status_code)
    ok = service.get(f"/captures/{capture_id}/artifacts/tiles/1/page.json", "wang")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(("header", "status", "length"), [
    ("bytes=0-99", 206, 100), ("bytes=-100", 206, 100), ("bytes=299900-", 206, 100), ("bytes=0-0,5-9", 200, None),
    ("items=0-9", 200, None), ("bytes=abc", 200, None), ("bytes=300000-", 416, None), ("bytes=-0", 416, None),
    ("bytes=9-5", 200, None),
])
def test_ranges(service: Service, header: str, status: int, length: int | None) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    answer = service.get(f"/captures/{capture_id}/artifacts/composite.mp4", "wang", headers={"Range": header})
    assert answer.status_code == status, answer.text[:200]
    if length is not None:
        assert len(answer.content) == length
    if status == 200:
        assert len(answer.content) == 300_000


def test_a_download_whose_bytes_differ_is_cut_off_and_recorded(service: Service) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    with service.ctx.engine.begin() as conn:  # the index says one thing, the store holds another
        conn.execute(update(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                  evidence_files.c.path == "composite.mp4").values(sha256="0" * 64))
    with pytest.raises(DownloadCutOff):
        service.get(f"/captures/{capture_id}/artifacts/composite.mp4", "wang")
    cut = [e for e in service.ctx.services.ledger.entries(subject=capture_id) if e.action.value == "download-cut-off"]
    assert len(cut) == 1 and cut[0].details["path"] == "composite.mp4" and cut[0].actor == "wang"
    assert cut[0].details["expected_sha256"] == "0" * 64


def test_media_tickets_open_one_captures_files_and_nothing_else(service: Service) -> None:
    """A player or a download link cannot send a header, so a file URL may carry a ticket: only for the capture
    it names, only for its files, only while it lasts and while its user (and token) may still read."""
    case_id = case_with(service, ("zhao", "case_handler"))
    wang = user_id(service, "wang")
    first = preserved_capture(service, case_id, wang)
    second = preserved_capture(service, case_id, wang)
    answer = service.post(f"/captures/{first}/media-ticket", "zhao")
    assert answer.status_code == 200 and answer.json()["capture_id"] == first
    ticket = answer.json()["ticket"]

    def fetch(path: str, value: str = ticket, **kwargs: object) -> int:
        return service.get(path, params={"ticket": value}, **kwargs).status_code  # type: ignore[arg-type]

    assert fetch(f"/captures/{first}/artifacts/composite.mp4") == 200
    assert fetch(f"/captures/{first}/artifacts/composite.mp4", headers={"Range": "bytes=0-9"}) == 206
    assert fetch(f"/captures/{first}/manifest") == 200
    assert fetch(f"/captures/{first}/export") == 200
    assert fetch(f"/captures/{second}/artifacts/composite.mp4") == 401  # another capture of the same case
    assert fetch(f"/captures/{first}") == 401  # not a file: the ticket is not a sign-in
    assert fetch(f"/cases/{case_id}") == 401
    assert service.get("/me", ticket).status_code == 401  # nor a bearer token
    assert fetch(f"/captures/{first}/artifacts/composite.mp4", service.tokens["zhao"]) == 401  # a login is no ticket
    forged = ticket[:-4] + ("AAAA" if not ticket.endswith("AAAA") else "BBBB")
    assert fetch(f"/captures/{first}/artifacts/composite.mp4", forged) == 401

    zhao = user_id(service, "zhao")
    lapsed, _ = issue_media_ticket(service.ctx.secret, Principal(zhao, "zhao", "case_handler"), first, minutes=-1)
    assert fetch(f"/captures/{first}/artifacts/composite.mp4", lapsed) == 401
    read_only, _ = issue_media_ticket(service.ctx.secret, Principal(zhao, "zhao", "case_handler", token_id="none",  # noqa: S106
                                                                    scopes=("read",)), first)
    assert fetch(f"/captures/{first}/artifacts/composite.mp4", read_only) == 401  # its token does not exist

    downloads = [e for e in service.ctx.services.ledger.entries(subject=first) if e.action.value == "downloaded"]
    assert downloads and all(e.actor == "zhao" for e in downloads)  # the custody record names the ticket's user

    assert service.request("DELETE", f"/cases/{case_id}/members/zhao", "wang").status_code == 204
    assert fetch(f"/captures/{first}/artifacts/composite.mp4") == 404  # no longer a member: as if it never was
    with service.ctx.engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == zhao).values(disabled=True))
    assert fetch(f"/captures/{first}/artifacts/composite.mp4") == 401


def test_a_scripts_ticket_keeps_its_tokens_scopes_and_lapses_with_it(service: Service) -> None:
    case_id = case_with(service)
    wang = user_id(service, "wang")
    capture_id = preserved_capture(service, case_id, wang)
    token_id, token, secret_sha256 = new_api_token()
    with service.ctx.engine.begin() as conn:
        conn.execute(api_tokens.insert().values(id=token_id, user_id=wang, name="player", secret_sha256=secret_sha256,
                                                scopes=["read"], created_at=datetime.now(UTC)))
    ticket = service.post(f"/captures/{capture_id}/media-ticket", token).json()["ticket"]
    assert service.get(f"/captures/{capture_id}/manifest", params={"ticket": ticket}).status_code == 200
    assert service.get(f"/captures/{capture_id}/export", params={"ticket": ticket}).status_code == 403  # no export
    with service.ctx.engine.begin() as conn:
        conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=datetime.now(UTC)))
    assert service.get(f"/captures/{capture_id}/manifest", params={"ticket": ticket}).status_code == 401


def test_the_preservation_record_lists_the_timestamp_tokens(service: Service) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    record = service.get(f"/captures/{capture_id}/preservation", "wang").json()
    assert record["schema"] and record["capture_id"] == capture_id and record["complete"] is True
    granted = [t for t in record["timestamps"] if t["status"] == "granted"]
    assert granted and granted[0]["local_tsa"] is True and granted[0]["serial_number"] is not None
    assert record["manifest"]["sha256"] == service.get(f"/captures/{capture_id}", "wang").json()["manifest_sha256"]


def test_a_captured_pages_html_never_renders_on_the_services_origin(service: Service) -> None:
    """A media ticket rides in the URL, so a captured page's own HTML opened from the viewer must not run as a
    page of this origin (it could read the ticket): it downloads, in a sandbox, with no referrer."""
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    ticket = service.post(f"/captures/{capture_id}/media-ticket", "wang").json()["ticket"]
    with service.ctx.engine.begin() as conn:  # as a captured page's DOM is indexed
        conn.execute(update(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                  evidence_files.c.path == "tiles/1/page.json")
                     .values(media_type="text/html; charset=utf-8"))
    html = "tiles/1/page.json"
    page = service.get(f"/captures/{capture_id}/artifacts/{html}", params={"ticket": ticket})
    assert page.status_code == 200
    assert page.headers["content-disposition"].startswith("attachment;")
    assert page.headers["content-security-policy"].startswith("sandbox;")
    assert page.headers["referrer-policy"] == "no-referrer"
    video = service.get(f"/captures/{capture_id}/artifacts/composite.mp4", params={"ticket": ticket},
                        headers={"Range": "bytes=0-99"})
    assert video.headers["content-disposition"].startswith("inline;")  # a player still plays it


def test_a_ticket_carries_only_what_reading_files_needs(service: Service) -> None:
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    ticket = service.post(f"/captures/{capture_id}/media-ticket", "wang").json()
    claims = jwt.decode(ticket["ticket"], options={"verify_signature": False})
    assert sorted(claims["scp"]) == ["export", "read"]
    lasts = datetime.fromisoformat(ticket["expires_at"]) - datetime.now(UTC)
    assert lasts.total_seconds() <= service.settings.access_token_minutes * 60 + 5  # no longer than a sign-in


def test_an_index_row_the_ledger_does_not_back_registers_nothing(service: Service) -> None:
    """A forger who can write the evidence index (not the append-only ledger) adds a row for a file of their own
    and points it at a genuine custody entry: the hash check must not call that file registered."""
    case_id = case_with(service)
    capture_id = preserved_capture(service, case_id, user_id(service, "wang"))
    with service.ctx.engine.begin() as conn:
        genuine = conn.execute(select(evidence_files).where(evidence_files.c.capture_id == capture_id,
                                                            evidence_files.c.path == "composite.mp4")).one()
        conn.execute(evidence_files.insert().values(
            sha256="ab" * 32, sm3="cd" * 32, size=5, capture_id=capture_id, path="forged.mp4", role="composite",
            media_type="video/mp4", acquired_at=genuine.acquired_at, bucket=genuine.bucket,
            object_key=genuine.object_key, version_id=genuine.version_id, custody_seq=genuine.custody_seq))
        conn.execute(evidence_files.insert().values(
            sha256="ef" * 32, sm3="01" * 32, size=5, capture_id=capture_id, path="orphan.mp4", role="composite",
            media_type="video/mp4", acquired_at=genuine.acquired_at, custody_seq=None))
    for body in ({"sha256": "ab" * 32}, {"sm3": "cd" * 32}, {"sha256": "ef" * 32}):
        answer = service.post("/verify/hash", json=body).json()
        assert answer["registered"] is False and answer["matches"] == [], (body, answer)
    assert service.post("/verify/hash", json={"sha256": genuine.sha256}).json()["registered"] is True
