"""The custody service over HTTP: signing in, cases and their loop, members, the log, the public hash check."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from custody.proofs import ConsistencyProof, InclusionProof, verify_consistency_proof, verify_inclusion_proof
from evidence import Checkpoint, CustodyEntry
from storage import S3Endpoint
from tests.api.conftest import PASSWORD, Service, open_service

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def actions(service: Service, case_id: str, who: str) -> list[str]:
    answer = service.get(f"/cases/{case_id}/custody", who)
    assert answer.status_code == 200, answer.text
    return [e["action"] for e in answer.json()]


def test_sign_in_and_me(service: Service) -> None:
    service.add_user("wang.investigator", "investigator")
    me = service.get("/me", "wang.investigator")
    assert me.status_code == 200
    assert me.json()["name"] == "wang.investigator" and me.json()["role"] == "investigator"
    assert "password_hash" not in me.text
    anonymous = service.get("/me")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == PROBLEM
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "POST /api/v1/auth/token" in anonymous.json()["detail"]
    forged = service.get("/me", service.tokens["wang.investigator"][:-3] + "AAA")
    assert forged.status_code == 401


def test_token_is_never_taken_from_the_query_string(service: Service) -> None:
    token = service.add_user("li.handler", "case_handler")
    assert service.get(f"/me?access_token={token}").status_code == 401
    assert service.get(f"/me?token={token}").status_code == 401


def test_wrong_passwords_lock_the_account_and_the_lock_is_a_custody_event(service: Service) -> None:
    service.add_user("zhao.court", "court")
    limit = service.settings.login_max_failures
    for _ in range(limit):
        wrong = service.client.post("/api/v1/auth/token", data={"username": "zhao.court", "password": "guess" * 3})
        assert wrong.status_code == 401 and wrong.headers["content-type"] == PROBLEM
    # Locked: even the right password is refused, with the same answer as a wrong one.
    locked = service.client.post("/api/v1/auth/token", data={"username": "zhao.court", "password": PASSWORD})
    assert locked.status_code == 401
    assert locked.json()["detail"] == wrong.json()["detail"]
    unknown = service.client.post("/api/v1/auth/token", data={"username": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401 and unknown.json()["detail"] == wrong.json()["detail"]
    entries = service.ctx.services.ledger.entries(subject="user:zhao.court")
    assert [e.action.value for e in entries][-1] == "login-locked"
    assert entries[-1].details["failures"] == limit


def test_a_case_follows_lead_opened_closed_and_every_step_is_custody(service: Service) -> None:
    service.add_user("wang", "investigator")
    created = service.post("/cases", "wang", json={"title": "直播间虚假宣传 livestream fraud",
                                                   "reference": "西市监 2026-118"})
    assert created.status_code == 201, created.text
    case = created.json()
    case_id = case["id"]
    assert case["state"] == "lead" and case["your_role"] == "investigator"
    assert [m["user"] for m in case["members"]] == ["wang"]

    skip = service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "closed", "outcome": "fined"})
    assert skip.status_code == 409 and "lead -> opened -> closed" in skip.json()["detail"]
    opened = service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "opened"})
    assert opened.status_code == 200 and opened.json()["state"] == "opened"
    no_outcome = service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "closed"})
    assert no_outcome.status_code == 422 and "outcome" in no_outcome.json()["detail"]
    closed = service.request("PATCH", f"/cases/{case_id}", "wang",
                             json={"state": "closed", "outcome": "罚款 fined 20,000 CNY"})
    assert closed.status_code == 200 and closed.json()["outcome"] == "罚款 fined 20,000 CNY"
    back = service.request("PATCH", f"/cases/{case_id}", "wang", json={"state": "opened"})
    assert back.status_code == 409

    seen = actions(service, case_id, "wang")
    assert seen[0] == "case-created"
    assert seen.count("case-state-changed") == 2
    entries = service.ctx.services.ledger.entries(subject=case_id)
    changes = [e for e in entries if e.action.value == "case-state-changed"]
    assert [(e.details["from"], e.details["state"], e.actor) for e in changes] == [
        ("lead", "opened", "wang"), ("opened", "closed", "wang")]


def test_members_and_the_same_404_for_a_case_you_may_not_see(service: Service) -> None:
    service.add_user("wang", "investigator")
    service.add_user("zhao.court", "court")
    service.add_user("qian.outsider", "investigator")
    case_id = service.post("/cases", "wang", json={"title": "price fraud"}).json()["id"]

    hidden = service.get(f"/cases/{case_id}", "zhao.court")
    missing = service.get("/cases/C-20000101-000000", "zhao.court")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()

    wrong_role = service.request("PUT", f"/cases/{case_id}/members/zhao.court", "wang", json={"role": "investigator"})
    assert wrong_role.status_code == 422 and "court" in wrong_role.json()["detail"]
    added = service.request("PUT", f"/cases/{case_id}/members/zhao.court", "wang", json={"role": "court"})
    assert added.status_code == 200 and {m["user"] for m in added.json()} == {"wang", "zhao.court"}
    seen = service.get(f"/cases/{case_id}", "zhao.court")
    assert seen.status_code == 200 and seen.json()["your_role"] == "court"
    assert service.request("PATCH", f"/cases/{case_id}", "zhao.court", json={"title": "x"}).status_code == 403
    assert service.get(f"/cases/{case_id}", "qian.outsider").status_code == 404
    assert [c["id"] for c in service.get("/cases", "zhao.court").json()] == [case_id]
    assert service.get("/cases", "qian.outsider").json() == []

    removed = service.request("DELETE", f"/cases/{case_id}/members/zhao.court", "wang")
    assert removed.status_code == 204
    assert service.get(f"/cases/{case_id}", "zhao.court").status_code == 404
    last = service.request("DELETE", f"/cases/{case_id}/members/wang", "wang")
    assert last.status_code == 422
    entries = service.ctx.services.ledger.entries(subject=case_id)
    assert [(e.action.value, e.details.get("user")) for e in entries if e.action.value.startswith("member")] == [
        ("member-set", "zhao.court"), ("member-removed", "zhao.court")]
    # Reading is custody too: the court's view of the case was recorded with its name.
    assert any(e.action.value == "viewed" and e.actor == "zhao.court" for e in entries)


@pytest.mark.parametrize(("body", "says"), [
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "x", "colour": "red"}, "colour"),
    ({"title": "x" * 1000}, "title"),
    ({"title": "line\nbreak"}, "title"),
])
def test_bad_case_bodies_say_what_to_fix(service: Service, body: dict[str, object], says: str) -> None:
    service.add_user("wang", "investigator")
    answer = service.post("/cases", "wang", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert says in answer.json()["detail"]


def test_oversized_and_malformed_bodies(service: Service) -> None:
    service.add_user("wang", "investigator")
    big = service.post("/cases", "wang", content=b'{"title": "' + b"x" * (2 << 20) + b'"}',
                       headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.headers["content-type"] == PROBLEM

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the bytes as they arrive
        yield b'{"title": "'
        for _ in range(64):
            yield b"x" * (64 << 10)
        yield b'"}'

    chunked = service.post("/cases", "wang", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.headers["content-type"] == PROBLEM, chunked.text
    assert "at most" in chunked.json()["detail"]
    broken = service.post("/cases", "wang", content=b'{"title": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422


def test_checkpoint_and_proofs_check_offline(service: Service) -> None:
    service.add_user("wang", "investigator")
    case_id = service.post("/cases", "wang", json={"title": "proofs"}).json()["id"]
    for _ in range(3):
        service.get(f"/cases/{case_id}", "wang")
    service.ctx.services.checkpoint()

    answer = service.get("/log/checkpoint")  # anonymous: the log is public
    assert answer.status_code == 200
    published = answer.json()
    certificate = x509.load_pem_x509_certificate(published["signer_certificate"].encode())
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(base64.b64decode(published["signature"]), published["body"].encode(),
                      ec.ECDSA(hashes.SHA256()))
    body = json.loads(published["body"])
    assert body["tree_size"] == published["tree_size"] and body["root_hash"] == published["root_hash"]
    assert published["timestamp_token"], "the checkpoint is timestamped"
    checkpoint = Checkpoint.model_validate({k: published[k] for k in (
        "tree_size", "root_hash", "at", "signer", "signature", "timestamp")})

    created = next(e for e in service.ctx.services.ledger.entries(subject=case_id))
    entry = CustodyEntry.model_validate(service.get(f"/log/entries/{created.seq}", "wang").json())
    proof = service.get(f"/log/proof/inclusion?index={entry.seq}&tree_size={checkpoint.tree_size}")
    assert proof.status_code == 200
    verify_inclusion_proof(entry, InclusionProof.from_json(proof.json()), checkpoint)

    consistency = service.get(f"/log/proof/consistency?first={entry.seq}&second={checkpoint.tree_size}")
    assert consistency.status_code == 200
    verify_consistency_proof(ConsistencyProof.from_json(consistency.json()), None, checkpoint)

    beyond = service.get(f"/log/proof/inclusion?index={checkpoint.tree_size + 50}&tree_size={checkpoint.tree_size}")
    assert beyond.status_code == 404 and beyond.headers["content-type"] == PROBLEM
    assert service.get("/log/proof/inclusion?index=abc&tree_size=1").status_code == 422
    assert service.get(f"/log/entries/{created.seq}").status_code == 401


def test_hash_lookup_is_anonymous_rate_limited_and_recorded(tmp_path: Path, s3_server: S3Endpoint) -> None:
    for service in open_service(tmp_path / "data", s3_server, hash_lookups_per_minute=3):
        unknown = "ab" * 32
        for _ in range(3):
            answer = service.post("/verify/hash", json={"sha256": unknown})
            assert answer.status_code == 200, answer.text
            assert answer.json()["registered"] is False and answer.json()["matches"] == []
        limited = service.post("/verify/hash", json={"sha256": unknown})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        lookups = service.ctx.services.ledger.entries(subject="hash-check")
        assert len(lookups) == 3
        assert lookups[0].details["digest"] == unknown and lookups[0].actor == "anonymous (testclient)"


@pytest.mark.parametrize("body", [
    {}, {"sha256": "zz" * 32}, {"sha256": "ab" * 31}, {"sha256": "ab" * 32, "sm3": "cd" * 32}, {"md5": "ab" * 16},
])
def test_hash_lookup_refuses_what_is_not_one_digest(service: Service, body: dict[str, str]) -> None:
    answer = service.post("/verify/hash", json=body)
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
