"""The custody service end to end, through HTTP only, with `wz serve` and its worker as real processes:
an investigator records four demo rooms with a second officer, follows the progress stream to the end, seeks in
the composite with Range requests, exports the package that verifies offline; a court looks the manifest up and
verifies the package by upload; a case handler puts the case on legal hold and the store refuses deletion."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio
from minio.error import S3Error

from capture.fixtures import FixtureServer
from capture.fixtures.server import live_path
from custody.proofs import InclusionProof, verify_inclusion_proof
from evidence import CustodyEntry
from preservation.verify import verify_package
from storage import S3Endpoint
from tests.api.conftest import Served, serve_process

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path, s3_server: S3Endpoint) -> Iterator[Served]:
    yield from serve_process(tmp_path / "data", s3_server, "--tiles", "4")


def sse_events(client: httpx.Client, path: str, headers: dict[str, str], *, last_event_id: str | None = None,
               stop_after: int | None = None) -> list[dict[str, Any]]:
    """Read a Server-Sent Events stream; each event as {"id", "event", "data"}."""
    events: list[dict[str, Any]] = []
    sent = dict(headers) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    with client.stream("GET", path, headers=sent, timeout=httpx.Timeout(30, read=60)) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in stream.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                    if stop_after is not None and len(events) >= stop_after:
                        return events
                current = {}
                continue
            field, _, value = line.partition(": ")
            if field == "data":
                current["data"] = json.loads(value)
            elif field in ("id", "event"):
                current[field] = value
    return events


def test_end_to_end_through_http(served: Served, demo_server: FixtureServer, s3_server: S3Endpoint) -> None:
    client = served.client
    wang = served.add_user("wang", "investigator")
    li = served.add_user("li", "investigator")
    zhao = served.add_user("zhao", "case_handler")
    judge = served.add_user("judge", "court")
    case_id = client.post("/cases", headers=wang, json={"title": "四个直播间 four rooms"}).json()["id"]
    for name, role in (("li", "investigator"), ("zhao", "case_handler"), ("judge", "court")):
        assert client.put(f"/cases/{case_id}/members/{name}", headers=wang, json={"role": role}).status_code == 200

    urls = [demo_server.base_url + live_path(room) for room in (1, 2, 3, 4)]
    launched = client.post(f"/cases/{case_id}/captures", headers=wang,
                           json={"urls": urls, "duration": 20, "second_officer": "li"})
    assert launched.status_code == 202, launched.text
    capture = launched.json()
    capture_id = capture["id"]
    assert launched.headers["location"] == f"/api/v1/captures/{capture_id}"
    assert capture["state"] == "queued" and capture["tiles"] == 4
    assert capture["second_officer"] == {"user": "li", "confirmed_at": None}

    # The first events, then a reconnect with Last-Event-ID that must lose nothing.
    first = sse_events(client, f"/captures/{capture_id}/events", wang, stop_after=3)
    recording = served.wait_state(capture_id, "wang", ("recording",), timeout=120)
    assert recording["worker"] and recording["heartbeat_at"]
    witnessed = client.post(f"/captures/{capture_id}/witness", headers=li)
    assert witnessed.status_code == 200, witnessed.text
    assert witnessed.json()["second_officer"]["confirmed_at"]
    assert client.post(f"/captures/{capture_id}/witness", headers=wang).status_code == 403
    # The worker grabs a preview every few seconds while recording; until the first, the answer is 404.
    deadline = time.monotonic() + 30
    preview = client.get(f"/captures/{capture_id}/preview.jpg", headers=judge)
    while preview.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
        preview = client.get(f"/captures/{capture_id}/preview.jpg", headers=judge)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg", preview.text
    assert preview.content[:2] == b"\xff\xd8" and int(preview.headers["age"]) <= 3
    progress = client.get(f"/captures/{capture_id}", headers=wang).json()["progress"]
    assert progress["phase"] == "recording" and len(progress["tiles"]) == 4
    assert set(progress["keeping_up"]) == {"cpu_saturated_seconds", "dropping", "lowered"}  # said while recording

    rest = sse_events(client, f"/captures/{capture_id}/events", wang, last_event_id=first[-1]["id"])
    assert rest[-1]["event"] == "end" and rest[-1]["data"]["state"] == "complete", rest[-5:]
    whole = sse_events(client, f"/captures/{capture_id}/events", wang)
    ids = [int(e["id"]) for e in whole[:-1]]
    assert ids == sorted(set(ids))
    assert [e["id"] for e in first + rest] == [e["id"] for e in whole], "a reconnect lost or repeated events"
    states = [e["data"]["state"] for e in whole if e["event"] == "state"]
    assert states == ["queued", "starting", "recording", "finalizing", "preserving", "complete"]
    assert any(e["event"] == "progress" and e["data"]["segments_chained"] > 0 for e in whole)
    assert any(e["event"] == "witness" for e in whole)

    done = client.get(f"/captures/{capture_id}", headers=wang).json()
    assert done["state"] == "complete" and done["summary"]["preserved"], done
    manifest_answer = client.get(f"/captures/{capture_id}/manifest", headers=wang)
    assert manifest_answer.status_code == 200
    assert hashlib.sha256(manifest_answer.content).hexdigest() == done["manifest_sha256"]
    assert manifest_answer.headers["etag"] == f'"{done["manifest_sha256"]}"'
    manifest = json.loads(manifest_answer.content)

    composite = next(a for a in manifest["artifacts"] if a["role"] == "composite")
    size = composite["size"]
    pieces = []
    for first_byte in range(0, size, 1 << 20):  # as a player seeks: 1 MiB ranges, checked whole at the end
        last_byte = min(size, first_byte + (1 << 20)) - 1
        part = client.get(f"/captures/{capture_id}/artifacts/{composite['path']}",
                          headers=wang | {"Range": f"bytes={first_byte}-{last_byte}"})
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes {first_byte}-{last_byte}/{size}"
        assert part.headers["etag"] == f'"{composite["digests"]["sha256"]}"'
        assert part.headers["wangzheng-sm3"] == composite["digests"]["sm3"]
        pieces.append(part.content)
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == composite["digests"]["sha256"]
    outside = client.get(f"/captures/{capture_id}/artifacts/{composite['path']}",
                         headers=wang | {"Range": f"bytes={size + 10}-"})
    assert outside.status_code == 416 and outside.headers["content-range"] == f"bytes */{size}"

    package = client.get(f"/captures/{capture_id}/export", headers=wang)
    assert package.status_code == 200 and package.headers["content-type"] == "application/zip"
    zip_path = served.log.with_name(f"{capture_id}.zip")
    zip_path.write_bytes(package.content)
    report = verify_package(zip_path)
    assert report.ok, [c for c in report.checks if not c.ok]

    # A court: the manifest's hash, then the package by upload.
    looked = client.post("/verify/hash", headers=judge, json={"sha256": done["manifest_sha256"]}).json()
    assert looked["registered"] and looked["matches"][0]["capture_id"] == capture_id
    assert looked["matches"][0]["role"] == "manifest"
    assert not any(url in json.dumps(looked) for url in urls) and "wang" not in json.dumps(looked)
    proof = InclusionProof.from_json(looked["matches"][0]["custody_proof"])
    entry = CustodyEntry.model_validate(client.get(f"/log/entries/{proof.seq}", headers=judge).json())
    verify_inclusion_proof(entry, proof)
    uploaded = client.post("/verify/package", headers=judge | {"content-type": "application/zip"},
                           content=package.content)
    assert uploaded.status_code == 200 and uploaded.json()["ok"], uploaded.text

    # A case handler: legal hold on every object of the case; the store refuses to delete them.
    held = client.put(f"/cases/{case_id}/legal-hold", headers=zhao, json={"on": True, "reason": "court order 7"})
    assert held.status_code == 200 and held.json()["objects"] > 10, held.text
    raw = Minio(s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key, secure=False,
                region="us-east-1")
    record = served.env["WZ_S3_BUCKET"]
    key = f"captures/{capture_id}/{composite['path']}"
    version = next(o.version_id for o in raw.list_objects(record, prefix=key, include_version=True)
                   if o.object_name == key)
    assert raw.is_object_legal_hold_enabled(record, key, version_id=version)
    with pytest.raises(S3Error):
        raw.remove_object(record, key, version_id=version)

    custody = client.get(f"/captures/{capture_id}/custody", headers=judge).json()
    did = [(e["action"], e["actor"]) for e in custody]
    assert ("capture-requested", "wang") in did and ("capture-witnessed", "li") in did
    assert any(a == "capture-started" and actor.startswith("worker ") for a, actor in did)
    assert ("downloaded", "wang") in did and ("exported", "wang") in did
    assert any(a == "capture-ended" for a, _ in did)
    case_custody = [(e["action"], e["actor"]) for e in client.get(f"/cases/{case_id}/custody", headers=zhao).json()]
    assert ("legal-hold", "zhao") in case_custody
    requested = next(e for e in custody if e["action"] == "capture-requested")
    assert requested["details"]["second_officer"] == "li" and requested["details"]["urls"] == urls


def test_stop_ends_an_open_ended_capture_as_evidence(served: Served, demo_server: FixtureServer) -> None:
    client = served.client
    wang = served.add_user("wang", "investigator")
    case_id = client.post("/cases", headers=wang, json={"title": "open-ended"}).json()["id"]
    capture_id = client.post(f"/cases/{case_id}/captures", headers=wang,
                             json={"urls": [demo_server.base_url + live_path(1)]}).json()["id"]
    served.wait_state(capture_id, "wang", ("recording",), timeout=120)
    time.sleep(6)
    stopped = client.post(f"/captures/{capture_id}/stop", headers=wang)
    assert stopped.status_code == 202, stopped.text
    done = served.wait_state(capture_id, "wang", ("complete", "partial", "failed"), timeout=180)
    assert done["state"] == "complete", done
    assert "stopped by wang" in done["summary"]["recording"] and done["summary"]["recorded_seconds"] >= 5
    assert done["summary"]["preserved"] and done["second_officer"] is None
    again = client.post(f"/captures/{capture_id}/stop", headers=wang)
    assert again.status_code == 409
    custody = client.get(f"/captures/{capture_id}/custody", headers=wang).json()
    requested = next(e for e in custody if e["action"] == "capture-requested")
    assert requested["details"]["second_officer"] == "none: launched without a second officer"
    assert any(e["action"] == "capture-stop-requested" and e["actor"] == "wang" for e in custody)
