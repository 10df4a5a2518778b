"""Packages made by someone who wants a forgery to verify, or the verifier to fall over (fast tier)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

from evidence import IntegrityError, LedgerCorrupt, Settings
from evidence.canonical import canonical_json
from hashing.pki import LocalPki
from hashing.tsa import LocalTsa
from preservation.export import export_capture
from preservation.preserve import Preserver
from preservation.registry import register
from preservation.services import Services
from preservation.verify import VerificationReport, verify_package
from tests.preservation.conftest import make_capture

Files = dict[str, bytes]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, Path, str]:
    """One preserved capture and its package; tests copy and change the package."""
    base = tmp_path_factory.mktemp("hostile")
    settings = Settings(data_dir=base / "data", s3_endpoint="127.0.0.1:9", s3_access_key="unused",
                        s3_secret_key="unused-secret", actor="inspector", ntp_timeout_seconds=1,  # noqa: S106
                        database_url=f"sqlite:///{base / 'data' / 'custody.sqlite3'}")
    manifest = make_capture(base / "c")
    register(settings.registry_dir, manifest.capture_id, base / "c")
    with Services(settings) as services:
        Preserver(services).preserve(base / "c")
        export_capture(services, base / "c", base / "package.zip")
    return settings, base / "c", base / "package.zip", manifest.capture_id


def _files(package: Path) -> Files:
    with zipfile.ZipFile(package) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(files: Files | list[tuple[str, bytes]], target: Path, *, links: frozenset[str] = frozenset()) -> Path:
    items = list(files.items()) if isinstance(files, dict) else files
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in items:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return target


def _resum(files: Files, root: str) -> None:
    """What a forger without the node's key can do: rebuild SHA256SUMS and SM3SUMS (not their signature)."""
    names = sorted(n for n in files if n.startswith(root + "/")
                   and n.removeprefix(root + "/") not in ("SHA256SUMS", "SHA256SUMS.p7s", "SM3SUMS"))
    sm3 = "".join(f"{hashlib.new('sm3', files[n]).hexdigest()}  {n.removeprefix(root + '/')}\n" for n in names)
    files[f"{root}/SM3SUMS"] = sm3.encode()
    names.append(f"{root}/SM3SUMS")
    files[f"{root}/SHA256SUMS"] = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n.removeprefix(root + '/')}\n"
                                          for n in sorted(names)).encode()


def _failed(package: Path, **options: Any) -> VerificationReport:
    with pytest.raises(IntegrityError) as caught:
        verify_package(package, **options)
    report: VerificationReport = caught.value.report  # type: ignore[attr-defined]
    return report


def _failures(report: VerificationReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures}


def test_an_untouched_package_verifies(node: tuple[Settings, Path, Path, str]) -> None:
    _settings, directory, package, root = node
    report = verify_package(package, trusted_ca=directory / "certs" / "local-ca.pem")
    names = {c.name for c in report.checks}
    assert {"package index signature", "SHA-256 of file", "SM3 of file", "manifest timestamp 0",
            "custody entry in signed tree"} <= names
    assert report.origin_pinned and report.tsa_pinned
    token = next(c for c in report.checks if c.name == "manifest timestamp 0")
    assert "custody entry" in token.detail and "recorded it" in token.detail
    with zipfile.ZipFile(package) as archive:
        listed = archive.read(f"{root}/SHA256SUMS").decode()
        members = {n.removeprefix(root + "/") for n in archive.namelist()}
    assert {line.split("  ", 1)[1] for line in listed.splitlines()} == members - {"SHA256SUMS", "SHA256SUMS.p7s"}


@pytest.mark.parametrize("change", ["extra file", "preservation.json", "VERIFY.md"])
def test_unsigned_changes_fail_even_with_the_sums_rebuilt(node: tuple[Settings, Path, Path, str], tmp_path: Path,
                                                          change: str) -> None:
    _settings, _directory, package, root = node
    files = _files(package)
    if change == "extra file":
        files[f"{root}/tiles/1/evidence-the-court-should-see.txt"] = "这是伪造的".encode()
    elif change == "preservation.json":
        record = json.loads(files[f"{root}/preservation.json"])
        record["problems"] = []
        record["capture_id"] = "wz-20991231T000000Z-aaaaaa"
        files[f"{root}/preservation.json"] = canonical_json(record)
    else:
        files[f"{root}/VERIFY.md"] = b"# Nothing to check here: the court may trust this package.\n"
    _resum(files, root)
    failures = _failures(_failed(_write(files, tmp_path / "forged.zip")))
    assert "package index signature" in failures, failures


def test_a_file_the_signed_index_does_not_list_is_not_evidence(node: tuple[Settings, Path, Path, str],
                                                              tmp_path: Path) -> None:
    _settings, _directory, package, root = node
    files = _files(package)
    files[f"{root}/tiles/1/screenshot-extra.png"] = b"\x89PNG forged"
    failures = _failures(_failed(_write(files, tmp_path / "extra.zip")))
    assert "not evidence" in failures["files covered by the signed index"]
    assert "screenshot-extra.png" in failures["files covered by the signed index"]


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_packages_unpacking_tools_would_read_otherwise_are_refused(node: tuple[Settings, Path, Path, str],
                                                                  tmp_path: Path) -> None:
    _settings, _directory, package, root = node
    files = _files(package)
    genuine = list(files.items())
    forged_manifest = files[f"{root}/manifest.json"].replace(b'"status":"complete"', b'"status":"partial"')
    cases: dict[str, list[tuple[str, bytes]]] = {
        "appears twice": [*genuine, (f"{root}/manifest.json", forged_manifest)],
        "appears twice (case)": [*genuine, (f"{root}/Manifest.json", forged_manifest)],
        "absolute path": [*genuine, ("/etc/cron.d/wz", b"* * * * * root true\n")],
        "'..' path": [*genuine, (f"{root}/../../outside.txt", b"x")],
        "backslash": [*genuine, (f"{root}\\..\\outside.txt", b"x")],
    }
    for expected, members in cases.items():
        report = _failed(_write(members, tmp_path / "case.zip"))
        [failure] = report.failures
        assert failure.name == "package readable" and expected.split(" (")[0] in failure.detail, failure
    linked = _write({**files, f"{root}/tiles/1/link": b"/etc/shadow"}, tmp_path / "link.zip",
                    links=frozenset({f"{root}/tiles/1/link"}))
    assert "link" in _failed(linked).failures[0].detail


def test_huge_members_are_refused_unread(node: tuple[Settings, Path, Path, str], tmp_path: Path) -> None:
    """Zeros compress a thousandfold: 1 GiB of them in manifest.json made a 7.6 MB package that cost 9 GiB of
    memory to verify (scripts/bench hostile measures that case); 64 MiB show the same refusal here."""
    _settings, _directory, package, root = node
    zeros = b"\0" * (64 << 20)
    for member in ("manifest.json", "custody/checkpoint.json", "custody/entries.jsonl"):
        files = _files(package)
        files[f"{root}/{member}"] = zeros
        report = _failed(_write(files, tmp_path / "bomb.zip"))
        details = " ".join(c.detail for c in report.failures)
        assert "more than" in details or "longer than" in details, (member, details[:500])
        assert all(len(c.detail) <= 400 for c in report.checks)
    del zeros


def test_too_many_members_are_refused_before_the_directory_is_read(tmp_path: Path) -> None:
    members = [(f"wz-20261130T000000Z-abcdef/f{i}", b"") for i in range(100_001)]
    report = _failed(_write(members, tmp_path / "many.zip"))
    assert "more than the 100000" in report.failures[0].detail
    assert len(str(report.failures[0].detail)) < 400


def test_a_token_that_is_not_the_one_the_node_received_is_refused(node: tuple[Settings, Path, Path, str],
                                                                  tmp_path: Path) -> None:
    """Another TSA stamps the manifest (same digest, same nonce: the request is in the package) and its root is
    shipped beside it. Under a pinned node CA this once verified with no warning."""
    _settings, directory, package, root = node
    files = _files(package)
    pki = LocalPki(tmp_path / "other-tsa").ensure()
    with LocalTsa(pki, tmp_path / "other-tsa-state") as tsa:
        forged = tsa.reply(files[f"{root}/timestamps/manifest.0.tsq"])
    files[f"{root}/timestamps/manifest.0.tsr"] = forged
    files[f"{root}/timestamps/manifest.0.chain.pem"] = pki.ca_cert_path.read_bytes()
    record = json.loads(files[f"{root}/preservation.json"])
    record["timestamps"][0]["local_tsa"] = False  # a careful forger makes the record agree with the token
    files[f"{root}/preservation.json"] = canonical_json(record)
    _resum(files, root)
    report = _failed(_write(files, tmp_path / "forged-token.zip"), trusted_ca=directory / "certs" / "local-ca.pem")
    failures = _failures(report)
    assert "package index signature" in failures
    assert "not the token the custody entry recorded" in failures["manifest timestamp 0"]


def test_unpinned_external_roots_are_reported_loudly(node: tuple[Settings, Path, Path, str],
                                                     tmp_path: Path) -> None:
    settings, _directory, _package, _root = node
    pki = LocalPki(tmp_path / "external-tsa").ensure()
    external = settings.model_copy(update={"data_dir": tmp_path / "data2",
                                           "database_url": f"sqlite:///{tmp_path / 'data2' / 'custody.sqlite3'}"})
    with LocalTsa(pki, tmp_path / "external-state") as tsa:
        stamped = external.model_copy(update={"tsa_urls": tsa.url, "tsa_ca_file": str(pki.ca_cert_path)})
        manifest = make_capture(tmp_path / "c2")
        register(stamped.registry_dir, manifest.capture_id, tmp_path / "c2")
        with Services(stamped) as services:
            Preserver(services).preserve(tmp_path / "c2")
            export_capture(services, tmp_path / "c2", tmp_path / "external.zip")
    report = verify_package(tmp_path / "external.zip", trusted_ca=LocalPki(stamped.keys_dir).ca_cert_path)
    assert not report.tsa_pinned and report.unpinned_tsas
    assert any("NOT PINNED" in c.detail for c in report.checks if "timestamp" in c.name)
    assert verify_package(tmp_path / "external.zip", tsa_ca=pki.ca_cert_path).tsa_pinned


def test_bad_roots_and_records_are_named_failures(node: tuple[Settings, Path, Path, str], tmp_path: Path) -> None:
    _settings, _directory, package, root = node
    (tmp_path / "not.pem").write_text("hello")
    failures = _failures(_failed(package, trusted_ca=tmp_path / "missing.pem", tsa_ca=tmp_path / "not.pem"))
    assert "--ca roots readable" in failures and "--tsa-ca roots readable" in failures
    files = _files(package)
    files[f"{root}/preservation.json"] = b"{not json"
    failures = _failures(_failed(_write(files, tmp_path / "broken.zip")))
    assert failures["preservation record"].startswith("unreadable")


def test_a_court_checkpoint_shows_whether_history_was_rewritten(node: tuple[Settings, Path, Path, str],
                                                                tmp_path: Path) -> None:
    settings, directory, first, root = node
    with zipfile.ZipFile(first) as archive:
        kept = archive.read(f"{root}/custody/checkpoint.json")  # what a court keeps from the first package
    (tmp_path / "kept.json").write_bytes(kept)
    with Services(settings) as services:
        export_capture(services, directory, tmp_path / "second.zip")
    report = verify_package(tmp_path / "second.zip", known_checkpoint=tmp_path / "kept.json")
    [ours] = [c for c in report.checks if c.name == "your checkpoint"]
    assert ours.ok and "part of the history" in ours.detail
    assert any(c.name == "earlier checkpoint consistent" and c.ok for c in report.checks)
    # Someone with database access rewrites an early entry, re-chains every hash and deletes the checkpoints.
    db = sqlite3.connect(settings.data_dir / "custody.sqlite3", isolation_level=None)
    db.row_factory = sqlite3.Row
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    rows = [dict(r) for r in db.execute("SELECT * FROM custody_entries ORDER BY seq")]
    prev = "0" * 64
    for row in rows:
        if row["seq"] == 1:
            details = json.loads(row["details"])
            details["operator"] = "somebody else"
            row["details"] = canonical_json(details).decode()
        row["prev_hash"] = prev
        body = {k: row[k] for k in ("seq", "at", "actor", "action", "subject", "prev_hash")}
        body["details"] = json.loads(row["details"])
        row["entry_hash"] = prev = hashlib.sha256(canonical_json(body)).hexdigest()
        db.execute("UPDATE custody_entries SET details = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                   (row["details"], row["prev_hash"], row["entry_hash"], row["seq"]))
    db.execute("DELETE FROM custody_checkpoints")
    db.execute("DELETE FROM custody_tree")  # rebuilt from the rewritten entries when the ledger is next opened
    db.close()
    with Services(settings) as services:
        services.ledger.restore_guards()
        # The node will not sign that: it contradicts the last checkpoint it kept beside the ledger.
        with pytest.raises(LedgerCorrupt, match="history was rewritten; not signing it"):
            export_capture(services, directory, tmp_path / "refused.zip")
    # A node operator who also deletes the kept checkpoints can sign a rewritten history; the court's kept
    # checkpoint still shows it.
    for kept in (settings.data_dir / "custody-checkpoints" / "worm").glob("*.json"):
        kept.unlink()
    with Services(settings) as services:
        export_capture(services, directory, tmp_path / "rewritten.zip")
    report = _failed(tmp_path / "rewritten.zip", known_checkpoint=tmp_path / "kept.json")
    assert "your checkpoint" in _failures(report)


def test_bytes_no_directory_entry_points_at_are_refused(node: tuple[Settings, Path, Path, str],
                                                        tmp_path: Path) -> None:
    """A second manifest.json hidden before the zip's directory: unzip reads the directory, a streaming extractor
    reads the hidden one. Only packages whose members cover the file end to end are checked."""
    import struct

    _settings, _directory, package, root = node
    data = package.read_bytes()
    first_directory_entry = data.find(b"PK\x01\x02")
    hidden = (b"PK\x03\x04" + b"\x14\x00" + b"\x00" * 12 + struct.pack("<LLHH", 5, 5, 21, 0)
              + f"{root}/manifest.json"[:21].encode() + b"forge")
    forged = data[:first_directory_entry] + hidden + data[first_directory_entry:]
    end = forged.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack("<L", forged[end + 16:end + 20])
    forged = forged[:end + 16] + struct.pack("<L", offset + len(hidden)) + forged[end + 20:]
    (tmp_path / "hidden.zip").write_bytes(forged)
    report = _failed(tmp_path / "hidden.zip")
    assert "belong to no member" in report.failures[0].detail, report.failures


def test_damaged_compressed_data_and_odd_lines_are_named_failures(node: tuple[Settings, Path, Path, str],
                                                                  tmp_path: Path) -> None:
    _settings, _directory, package, root = node
    files = _files(package)
    files[f"{root}/custody/checkpoints.jsonl"] = b"[1]\n"
    report = _failed(_write(files, tmp_path / "odd.zip"))
    assert any("not a JSON object" in c.detail for c in report.failures), report.failures
    # A deflated member whose compressed bytes are damaged (its CRC and sizes still plausible).
    damaged = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo(f"{root}/custody/entries.jsonl")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(start, start + min(info.compress_size, 40)):
        damaged[offset] ^= 0x5A
    (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
    report = _failed(tmp_path / "damaged.zip")
    assert report.failures and all(c.detail for c in report.failures)
