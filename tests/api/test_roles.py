"""Every endpoint x every role x member / non-member: allowed or refused, and refused the right way.

One world per module: a case whose members are an investigator, a case handler and a court; outsiders of each
role; an admin; anonymous; and an investigator's API token with the `read` scope only. Each row of TABLE names an
endpoint and who may call it; every other caller must be refused with 401 (anonymous), 404 (not a member of the
case: the same answer as a case that does not exist) or 403 (a member whose role, or a token whose scope, does not
allow it). When an endpoint is added, its row goes here: `test_every_route_is_in_the_table` fails otherwise.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from api.security import new_api_token
from preservation.preserve import Preserver
from preservation.registry import register
from service.captures import finish_from_directory
from service.db import api_tokens, capture_previews, captures, case_members, users
from storage import S3Endpoint
from tests.api.conftest import Service, open_service
from tests.preservation.conftest import make_capture

pytestmark = pytest.mark.integration

MEMBERS = ("investigator", "case_handler", "court")
CALLERS = ("anonymous", "admin", "investigator", "case_handler", "court", "investigator-outsider",
           "case_handler-outsider", "court-outsider", "investigator-read-token")


@dataclass
class World:
    service: Service
    case_id: str
    capture_id: str  # recorded (made without a browser), preserved in the real store, indexed
    queued_id: str  # queued, never started: stop is tried on it
    entry_seq: int


def preserved_capture(service: Service, case_id: str, requested_by: int) -> str:
    """A capture as a worker leaves it: files, manifest, preservation in the store, index, state complete."""
    capture_id = f"wz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    with service.ctx.engine.begin() as conn:
        conn.execute(insert(captures).values(id=capture_id, case_id=case_id, requested_by=requested_by,
                                             state="preserving", request={"urls": ["https://shop.example/item/1"]},
                                             tiles=1, created_at=datetime.now(UTC), second_officer_id=requested_by))
    directory = service.settings.captures_dir / capture_id
    make_capture(directory, capture_id=capture_id, case_id=case_id)
    register(service.settings.registry_dir, capture_id, directory)
    Preserver(service.ctx.services).preserve(directory)
    assert finish_from_directory(service.ctx.engine, service.ctx.services, capture_id, directory) == "complete"
    return capture_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Endpoint) -> Iterator[World]:
    for service in open_service(tmp_path_factory.mktemp("roles") / "data", s3_server,
                                hash_lookups_per_minute=100_000):
        service.add_user("admin", "admin")
        for role in MEMBERS:
            service.add_user(role, role)
            service.add_user(f"{role}-outsider", role)
        service.add_user("spare-handler", "case_handler")
        case_id = service.post("/cases", "investigator", json={"title": "the case of the table"}).json()["id"]
        for role in ("case_handler", "court"):
            assert service.request("PUT", f"/cases/{case_id}/members/{role}", "investigator",
                                   json={"role": role}).status_code == 200
        token_id, token, secret_sha256 = new_api_token()
        now = datetime.now(UTC)
        queued_id = f"wz-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        with service.ctx.engine.begin() as conn:
            investigator = conn.execute(users.select().where(users.c.name == "investigator")).one()
            conn.execute(insert(captures).values(id=queued_id, case_id=case_id, requested_by=investigator.id,
                                                 state="queued", request={"urls": ["https://shop.example/"]},
                                                 tiles=1, created_at=now))
            conn.execute(insert(api_tokens).values(id=token_id, user_id=investigator.id, name="read only",
                                                   secret_sha256=secret_sha256, scopes=["read"], created_at=now))
        capture_id = preserved_capture(service, case_id, investigator.id)
        with service.ctx.engine.begin() as conn:
            conn.execute(insert(capture_previews).values(capture_id=capture_id, at=now, jpeg=b"\xff\xd8 a jpeg"))
        service.tokens["investigator-read-token"] = token
        seq = service.ctx.services.ledger.entries(subject=case_id)[0].seq
        yield World(service, case_id, capture_id, queued_id, seq)


def _stoppable(world: World) -> None:
    with world.service.ctx.engine.begin() as conn:
        conn.execute(captures.update().where(captures.c.id == world.queued_id).values(
            state="queued", reason="", stop_requested_by=None, stop_requested_at=None, ended_at=None))


def _unwitnessed(world: World) -> None:
    with world.service.ctx.engine.begin() as conn:
        conn.execute(captures.update().where(captures.c.id == world.capture_id).values(
            witnessed_at=None, ended_at=datetime.now(UTC)))


def _spare_member(world: World) -> None:
    """Put spare-handler back in the case, so removing them can be tried by every caller."""
    with world.service.ctx.engine.begin() as conn:
        ids = {r.name: r.id for r in conn.execute(users.select())}
        conn.execute(case_members.delete().where(case_members.c.case_id == world.case_id,
                                                 case_members.c.user_id == ids["spare-handler"]))
        conn.execute(insert(case_members).values(case_id=world.case_id, user_id=ids["spare-handler"],
                                                 role="case_handler", added_by=ids["investigator"],
                                                 added_at=datetime.now(UTC)))


ANYONE = set(CALLERS)
SIGNED_IN = ANYONE - {"anonymous"}
MEMBER_READERS = {"investigator", "case_handler", "court", "investigator-read-token"}


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # the route's path as FastAPI declares it
    allowed: set[str]
    path: Callable[[World], str]
    body: Callable[[World], dict[str, Any]] | None = None
    form: dict[str, str] | None = None
    prepare: Callable[[World], None] | None = None
    case_scoped: bool = False  # refused to non-members with 404


TABLE = [
    Row("POST", "/api/v1/auth/token", ANYONE, lambda w: "/auth/token",
        form={"username": "court", "password": "correct horse battery"}),
    Row("GET", "/api/v1/me", SIGNED_IN, lambda w: "/me"),
    Row("GET", "/api/v1/users", {"admin"}, lambda w: "/users"),
    Row("POST", "/api/v1/users", {"admin"}, lambda w: "/users",
        body=lambda w: {"name": f"u{uuid.uuid4().hex[:10]}", "role": "court", "password": "a long password"}),
    Row("GET", "/api/v1/cases", SIGNED_IN - {"admin"}, lambda w: "/cases"),
    Row("POST", "/api/v1/cases", {"investigator", "investigator-outsider"}, lambda w: "/cases",
        body=lambda w: {"title": "another case"}),
    Row("GET", "/api/v1/cases/{case_id}", MEMBER_READERS, lambda w: f"/cases/{w.case_id}", case_scoped=True),
    Row("PATCH", "/api/v1/cases/{case_id}", {"investigator"}, lambda w: f"/cases/{w.case_id}",
        body=lambda w: {"title": "the case of the table"}, case_scoped=True),
    Row("PUT", "/api/v1/cases/{case_id}/members/{user}", {"investigator"},
        lambda w: f"/cases/{w.case_id}/members/spare-handler", body=lambda w: {"role": "case_handler"},
        case_scoped=True),
    Row("DELETE", "/api/v1/cases/{case_id}/members/{user}", {"investigator"},
        lambda w: f"/cases/{w.case_id}/members/spare-handler", prepare=_spare_member, case_scoped=True),
    Row("PUT", "/api/v1/cases/{case_id}/legal-hold", {"investigator", "case_handler"},
        lambda w: f"/cases/{w.case_id}/legal-hold", body=lambda w: {"on": False, "reason": "table test"},
        case_scoped=True),
    Row("GET", "/api/v1/cases/{case_id}/custody", MEMBER_READERS, lambda w: f"/cases/{w.case_id}/custody",
        case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/custody", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/custody", case_scoped=True),
    Row("POST", "/api/v1/cases/{case_id}/captures", {"investigator"}, lambda w: f"/cases/{w.case_id}/captures",
        body=lambda w: {"urls": ["http://127.0.0.1:9/"], "duration": 5}, case_scoped=True),
    Row("GET", "/api/v1/cases/{case_id}/captures", MEMBER_READERS, lambda w: f"/cases/{w.case_id}/captures",
        case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}", MEMBER_READERS, lambda w: f"/captures/{w.capture_id}",
        case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/events", MEMBER_READERS, lambda w: f"/captures/{w.capture_id}/events",
        case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/preview.jpg", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/preview.jpg", case_scoped=True),
    Row("POST", "/api/v1/captures/{capture_id}/stop", {"investigator"}, lambda w: f"/captures/{w.queued_id}/stop",
        prepare=_stoppable, case_scoped=True),
    Row("POST", "/api/v1/captures/{capture_id}/witness", {"investigator"},
        lambda w: f"/captures/{w.capture_id}/witness", prepare=_unwitnessed, case_scoped=True),
    Row("POST", "/api/v1/captures/{capture_id}/media-ticket", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/media-ticket", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/preservation", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/preservation", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/report.html", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/report.html", case_scoped=True),
    Row("POST", "/api/v1/captures/{capture_id}/report", {"investigator", "case_handler"},
        lambda w: f"/captures/{w.capture_id}/report", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/reports", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/reports", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/manifest", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/manifest", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/artifacts/{path}", MEMBER_READERS,
        lambda w: f"/captures/{w.capture_id}/artifacts/composite.mp4", case_scoped=True),
    Row("GET", "/api/v1/captures/{capture_id}/export", {"investigator", "case_handler", "court"},
        lambda w: f"/captures/{w.capture_id}/export", case_scoped=True),
    Row("GET", "/api/v1/log/checkpoint", ANYONE, lambda w: "/log/checkpoint"),
    Row("GET", "/api/v1/log/entries/{index}", MEMBER_READERS | {"admin"}, lambda w: f"/log/entries/{w.entry_seq}",
        case_scoped=True),
    Row("GET", "/api/v1/log/proof/inclusion", ANYONE, lambda w: "/log/proof/inclusion?index=1&tree_size=1"),
    Row("GET", "/api/v1/log/proof/consistency", ANYONE, lambda w: "/log/proof/consistency?first=1&second=1"),
    Row("POST", "/api/v1/verify/hash", ANYONE, lambda w: "/verify/hash", body=lambda w: {"sha256": "00" * 32}),
]
# POST /verify/package takes a zip body; its own tests (test_verify_package) cover it for anonymous and signed-in.
NOT_IN_TABLE = {("POST", "/api/v1/verify/package")}


def expected_refusal(row: Row, caller: str) -> int:
    if caller == "anonymous":
        return 401
    outsider = caller.endswith("-outsider") or caller == "admin"
    if row.case_scoped and outsider:
        return 404
    return 403


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("row", TABLE, ids=[f"{r.method} {r.route}" for r in TABLE])
def test_role_table(world: World, row: Row, caller: str) -> None:
    if row.prepare is not None:
        row.prepare(world)
    kwargs: dict[str, Any] = {}
    if row.body is not None:
        kwargs["json"] = row.body(world)
    if row.form is not None:
        kwargs["data"] = row.form
    answer = world.service.request(row.method, row.path(world), None if caller == "anonymous" else caller, **kwargs)
    if caller in row.allowed:
        assert answer.status_code < 300, f"{caller} should be allowed: {answer.status_code} {answer.text[:300]}"
        return
    wanted = expected_refusal(row, caller)
    assert answer.status_code == wanted, f"{caller}: wanted {wanted}, got {answer.status_code} {answer.text[:300]}"
    assert answer.headers["content-type"] == "application/problem+json"
    if wanted == 404:
        assert "no such" in answer.json()["detail"]


def test_every_route_is_in_the_table(world: World) -> None:
    # The OpenAPI document is the contract clients read: every operation it declares.
    document = world.service.client.get("/openapi.json").json()
    declared = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    tabled = {(row.method, row.route) for row in TABLE} | NOT_IN_TABLE
    assert declared - tabled == set(), "endpoints without a row in the role table"
    assert tabled - declared == set(), "rows for endpoints that do not exist"


def test_a_revoked_or_foreign_token_is_refused(tmp_path: Path, s3_server: S3Endpoint) -> None:
    for service in open_service(tmp_path / "data", s3_server):
        service.add_user("wang", "investigator")
        token_id, token, secret_sha256 = new_api_token()
        with service.ctx.engine.begin() as conn:
            wang = conn.execute(users.select().where(users.c.name == "wang")).one()
            conn.execute(insert(api_tokens).values(id=token_id, user_id=wang.id, name="script",
                                                   secret_sha256=secret_sha256, scopes=["read", "capture"],
                                                   created_at=datetime.now(UTC)))
        assert service.get("/me", token).status_code == 200
        other_secret = token[: token.rindex("_") + 1] + "x" * 43
        assert service.get("/me", other_secret).status_code == 401
        with service.ctx.engine.begin() as conn:
            conn.execute(api_tokens.update().where(api_tokens.c.id == token_id).values(revoked_at=datetime.now(UTC)))
        assert service.get("/me", token).status_code == 401
