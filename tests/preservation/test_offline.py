"""Preservation, export and offline verification on a capture made without recording (fast tier)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from evidence import PreservationRecord, PreservationStep, Settings
from evidence.layout import load_preservation
from hashing.pki import LocalPki
from hashing.tsa import LocalTsa
from preservation.export import export_capture
from preservation.preserve import Preserver
from preservation.services import Services
from preservation.verify import verify_package
from tests.conftest import REPO
from tests.preservation.conftest import Node

FORBIDDEN_FOR_THE_VERIFIER = ("capture", "storage", "custody.ledger", "preservation.services",
                              "preservation.preserve", "sqlalchemy", "psycopg", "minio", "ffmpeg", "playwright",
                              "cv2", "numpy", "fastapi", "uvicorn")


def test_offline_verification_loads_no_recording_database_s3_or_web_code() -> None:
    probe = ("import json, sys; import preservation.verify; "
             "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = json.loads(result.stdout)
    offending = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_FOR_THE_VERIFIER)]
    assert offending == []
    assert "preservation.verify" in loaded and "custody.proofs" in loaded


@pytest.fixture
def external_tsa(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TSA of another organisation: its own CA, which the capturing node does not otherwise trust."""
    pki = LocalPki(tmp_path / "tsa-org").ensure()
    with LocalTsa(pki, tmp_path / "tsa-org-state") as tsa:
        yield tsa.url, pki.ca_cert_path


def _preserve_and_export(settings: Settings, directory: Path, package: Path) -> PreservationRecord:
    with Services(settings) as services:
        record = Preserver(services).preserve(directory)
        export_capture(services, directory, package)
    return record


def test_a_package_stamped_by_an_external_tsa_verifies_under_one_trust_rule(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_tsa: tuple[str, Path]) -> None:
    """Every token in a package (manifest, segment chain, custody checkpoint) is checked by the same rule. The
    checkpoint token used to be checked against the node's roots alone, so an untouched package failed."""
    url, tsa_root = external_tsa
    monkeypatch.setenv("WZ_TSA_URLS", url)
    monkeypatch.setenv("WZ_TSA_CA_FILE", str(tsa_root))
    settings = Settings()
    node.capture(tmp_path / "c")
    package = tmp_path / "package.zip"
    record = _preserve_and_export(settings, tmp_path / "c", package)
    assert [t.local_tsa for t in record.timestamps] == [False]
    with zipfile.ZipFile(package) as archive:
        assert any(n.endswith(".tsr") and "/custody/" in n for n in archive.namelist())  # the checkpoint's token

    unpinned = verify_package(package)
    tokens = [c for c in unpinned.checks if "timestamp" in c.name]
    assert {c.name for c in tokens} >= {"manifest timestamp 0", "custody checkpoint timestamp"}
    assert all(c.ok and "root taken from the evidence" in c.detail for c in tokens), tokens

    pinned = verify_package(package, tsa_ca=tsa_root)
    tokens = [c for c in pinned.checks if "timestamp" in c.name]
    assert all(c.ok and "pinned" in c.detail and "from the evidence" not in c.detail for c in tokens), tokens


def test_the_preservation_record_is_typed_and_resumable(node: Node, tmp_path: Path) -> None:
    node.capture(tmp_path / "c")
    with Services(node.settings) as services:
        record = Preserver(services).preserve(tmp_path / "c")
    assert record.done == (PreservationStep.CAPTURED, PreservationStep.HASHED, PreservationStep.SIGNED,
                           PreservationStep.TIMESTAMPED)
    assert record.complete and record.signature is not None and record.stored == ()  # the store is down
    assert any("kept in the spool" in problem for problem in record.problems)
    assert load_preservation(tmp_path / "c") == record
    with pytest.raises(Exception, match="frozen"):
        record.complete = False  # type: ignore[misc]
    schema = PreservationRecord.model_json_schema(by_alias=True)
    assert {"capture_id", "manifest", "timestamps", "stored", "custody_seqs"} <= set(schema["properties"])


def test_a_record_written_before_the_schema_was_named_still_reads(node: Node, tmp_path: Path) -> None:
    node.capture(tmp_path / "c")
    with Services(node.settings) as services:
        record = Preserver(services).preserve(tmp_path / "c")
    first_format = record.model_dump(mode="json", by_alias=True)
    del first_format["schema"]
    first_format["stored"] = {}
    assert PreservationRecord.model_validate(first_format) == record


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_pending_requests_go_to_the_tsas_configured_now_and_say_so(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TSA a capture was stamped by went away and the node now uses another. `wz timestamp --pending` used to
    skip such a request without a word, and never retried a request over the segment chain (chain-NNNNNN.tsq)."""
    gone = LocalPki(tmp_path / "gone-tsa").ensure()
    monkeypatch.setenv("WZ_TSA_URLS", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("WZ_TSA_CA_FILE", str(gone.ca_cert_path))
    monkeypatch.setenv("WZ_TSA_TIMEOUT_SECONDS", "2")
    directory = tmp_path / "c"
    node.capture(directory)
    with Services(Settings()) as services:
        record = Preserver(services).preserve(directory)
        # A request over the segment chain head that got no answer while recording.
        services.timestamper.stamp(hashlib.sha256(b"chain head").digest(), directory, "chain-000003")
    assert [t.status.value for t in record.timestamps] == ["pending"]
    assert (directory / "timestamps" / "chain-000003.0.tsq").exists()
    assert not (directory / "timestamps" / "chain-000003.0.tsr").exists()

    for name in ("WZ_TSA_URLS", "WZ_TSA_CA_FILE"):
        monkeypatch.delenv(name)  # the node now uses its local TSA
    said: list[str] = []
    with Services(Settings()) as services:
        retried = Preserver(services, report=said.append).retry_timestamps(directory)
        actions = [(e.action.value, e.details.get("of")) for e in services.ledger.entries(subject=retried.capture_id)]
    assert [t.status.value for t in retried.timestamps] == ["granted"] and retried.timestamps[0].local_tsa
    assert any("is no longer configured; the kept request went to" in line for line in said), said
    [chain] = retried.chain_timestamps
    assert chain.response_path == "timestamps/chain-000003.0.tsr" and (directory / chain.response_path).exists()
    assert any("segment chain timestamp chain-000003.0 granted" in line for line in said), said
    assert ("timestamped", "segment chain head") in actions and actions.count(("timestamped", None)) == 1
