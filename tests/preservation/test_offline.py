"""Preservation, export and offline verification on a capture made without recording (fast tier)."""

from __future__ import annotations

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
