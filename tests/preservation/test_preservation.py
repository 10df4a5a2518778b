"""capture -> hash -> sign -> timestamp -> store -> custody, end to end against the real SeaweedFS, the local
TSA, OpenSSL and PostgreSQL; exported packages checked offline, by `wz verify` and by the standard tools."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from capture.fixtures import PATH_PRODUCT, FixtureServer, live_path
from hashing.pki import LocalPki
from hashing.tsa import LocalTsa
from storage import S3Endpoint
from tests.conftest import base_env, wz

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def capture(env: dict[str, str], urls: list[str], out: Path, duration: str = "7", expect: int = 0) -> dict[str, Any]:
    result = wz(["capture", *urls, "--duration", duration, "--out", str(out), "--json", "--case", "CASE-7",
                 "--operator", "inspector"], env)
    assert result.returncode == expect, result.stderr[-4000:]
    if expect == 4:  # recorded completely, preservation pending: the last line says what to run
        assert "next: run" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


@pytest.fixture(scope="module")
def preserved(demo_server: FixtureServer, s3_server: S3Endpoint,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("preserved")
    env = base_env(base / "data", s3_server)
    summary = capture(env, [demo_server.base_url + live_path(5), demo_server.base_url + PATH_PRODUCT], base / "c")
    package = base / "package.zip"
    exported = wz(["export", summary["capture_id"], "-o", str(package)], env)
    assert exported.returncode == 0, exported.stderr
    return summary, base / "c", package, env


def test_every_step_is_done_and_on_the_custody_record(preserved: tuple[dict[str, Any], Path, Path, dict]) -> None:
    summary, directory, _package, env = preserved
    record = summary["preservation"]
    assert record["timestamps"] and all(t["status"] == "granted" and t["local_tsa"] for t in record["timestamps"])
    assert record["problems"] == []
    manifest = json.loads((directory / "manifest.json").read_text())
    assert record["stored_objects"] >= len(manifest["artifacts"]) + 2  # + manifest and signature
    shown = wz(["custody", "show", summary["capture_id"], "--json"], env)
    assert shown.returncode == 0, shown.stderr
    entries = json.loads(shown.stdout)
    actions = [e["action"] for e in entries]
    assert actions[:4] == ["captured", "hashed", "signed", "timestamped"]
    assert {"stored", "exported"} <= set(actions)
    stored = [e["details"] for e in entries if e["action"] == "stored"]
    assert all(s["version_id"] and s["retention"] == "COMPLIANCE" and s["verified_at"] for s in stored)
    assert {s["key"] for s in stored} >= {f"captures/{summary['capture_id']}/composite.mp4"}
    assert entries[0]["details"]["operator"] == "inspector" and entries[0]["details"]["case_id"] == "CASE-7"
    assert wz(["custody", "verify"], env).returncode == 0


def test_the_package_verifies_offline_and_online(preserved: tuple[dict[str, Any], Path, Path, dict]) -> None:
    summary, directory, package, env = preserved
    offline = {k: v for k, v in env.items() if not k.startswith("WZ_S3")} | {"WZ_DATA_DIR": "/nonexistent"}
    result = wz(["verify", str(package), "--json"], offline)
    # Verified, but only against the CA the package brought along: exit 5 says so (ORIGIN NOT PINNED).
    assert result.returncode == 5, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and not report["origin_pinned"] and not report["third_party_time"]
    pinned = wz(["verify", str(package), "--ca", str(directory / "certs" / "local-ca.pem")], offline)
    assert pinned.returncode == 0 and "NO THIRD-PARTY TIME" in pinned.stdout, pinned.stdout[-2000:]
    # The capture's own sync verdict, as the verified manifest states it.
    assert re.search(r"^SYNC tile 1: (in-sync|degraded|not-measured)", pinned.stdout, flags=re.M), pinned.stdout
    assert "SYNC composite: " in pinned.stdout
    assert [t["tile"] for t in report["sync"]["tiles"]] == [t["tile"] for t in json.loads(
        (directory / "manifest.json").read_text())["tiles"]]
    names = {c["name"] for c in report["checks"]}
    assert {"package index signature", "SHA-256 of file", "SM3 of file", "artifact matches manifest",
            "manifest signature (CMS)",
            "manifest timestamp 0", "segment chain", "segment chain timestamp", "custody checkpoint signature",
            "custody entry in signed tree"} <= names
    online = wz(["verify", summary["capture_id"], "--json"], env)
    assert online.returncode == 0, online.stdout[-3000:] + online.stderr
    checks = json.loads(online.stdout)["checks"]
    reread = [c for c in checks if c["name"] == "object re-read by version"]
    assert reread and all(c["ok"] and "COMPLIANCE" in c["detail"] for c in reread)


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)


def test_standard_tools_accept_the_package(preserved: tuple[dict[str, Any], Path, Path, dict],
                                           tmp_path: Path) -> None:
    summary, _directory, package, _env = preserved
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    root = tmp_path / summary["capture_id"]
    index = _run("openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "SHA256SUMS.p7s", "-content",
                 "SHA256SUMS", "-CAfile", "certs/local-ca.pem", "-purpose", "any", "-out", "/dev/null", cwd=root)
    assert index.returncode == 0 and "Verification successful" in index.stderr, index.stderr
    unlisted = _run("bash", "-c", "comm -23 <(find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.p7s | "
                    "sed 's|^\\./||' | sort) <(cut -c67- SHA256SUMS | sort)", cwd=root)
    assert unlisted.returncode == 0 and unlisted.stdout == "", unlisted.stdout + unlisted.stderr
    assert "FAILED" not in _run("sha256sum", "-c", "SHA256SUMS", cwd=root).stdout
    assert _run("sha256sum", "-c", "--quiet", "SHA256SUMS", cwd=root).returncode == 0
    for line in (root / "SM3SUMS").read_text().splitlines():
        expected, name = line.split("  ", 1)
        out = _run("openssl", "dgst", "-sm3", "-r", name, cwd=root).stdout.split()[0]
        assert out == expected, name
    cms = _run("openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "manifest.p7s", "-content",
               "manifest.json", "-CAfile", "certs/local-ca.pem", "-purpose", "any", "-out", "/dev/null", cwd=root)
    assert cms.returncode == 0 and "Verification successful" in cms.stderr, cms.stderr
    tokens = sorted((root / "timestamps").glob("*.tsr"))
    assert any(t.name.startswith("manifest.") for t in tokens) and any(t.name.startswith("chain-") for t in tokens)
    stamp = _run("openssl", "ts", "-verify", "-data", "manifest.json", "-in", "timestamps/manifest.0.tsr",
                 "-CAfile", "certs/local-ca.pem", cwd=root)
    assert stamp.returncode == 0 and "Verification: OK" in stamp.stdout, stamp.stdout + stamp.stderr
    text_form = _run("openssl", "ts", "-reply", "-in", "timestamps/manifest.0.tsr", "-text", cwd=root).stdout
    assert "LOCAL TSA (not a trusted third party)" in text_form
    for token in (t for t in tokens if t.name.startswith("chain-")):
        request = token.with_suffix(".tsq").name
        chained = _run("openssl", "ts", "-verify", "-queryfile", f"timestamps/{request}", "-in",
                       f"timestamps/{token.name}", "-CAfile", "certs/local-ca.pem", cwd=root)
        assert chained.returncode == 0, chained.stdout + chained.stderr
    key = _run("openssl", "x509", "-in", "custody/checkpoint-signer.pem", "-pubkey", "-noout", cwd=root).stdout
    (tmp_path / "key.pem").write_text(key)
    checkpoint = _run("openssl", "dgst", "-sha256", "-verify", str(tmp_path / "key.pem"), "-signature",
                      "custody/checkpoint.sig", "custody/checkpoint.body", cwd=root)
    assert checkpoint.returncode == 0 and "Verified OK" in checkpoint.stdout
    listed = _run("bash", "-c", "jq -r '.artifacts[] | \"\\(.digests.sha256)  \\(.path)\"' manifest.json "
                  "| sha256sum -c --quiet", cwd=root)
    assert listed.returncode == 0, listed.stdout + listed.stderr


def _rewrite(package: Path, target: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/" + member):
                data = change(data)
            out.writestr(info, data)


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def _retime_entry(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[0] = lines[0].replace(b'"action":"captured"', b'"action":"deleted"')
    return b"\n".join(lines)


@pytest.mark.parametrize(
    ("member", "change", "named"),
    [
        ("composite.mp4", _flip, "composite.mp4"),
        ("tiles/2/screenshot-start.png", _flip, "screenshot-start.png"),
        ("tiles/1/network.har", _flip, "network.har"),
        ("segments/video_00000.ts", _flip, "video_00000.ts"),
        ("manifest.json", lambda d: d.replace(b'"status":"complete"', b'"status":"partial"', 1), "manifest"),
        ("manifest.p7s", _flip, "manifest.p7s"),
        ("timestamps/manifest.0.tsr", _flip, "manifest.0.tsr"),
        ("chain.jsonl", _flip, "chain.jsonl"),
        ("custody/entries.jsonl", _retime_entry, "entries.jsonl"),
        ("custody/checkpoint.sig", _flip, "checkpoint.sig"),
    ],
)
def test_tampering_is_caught_and_named(preserved: tuple[dict[str, Any], Path, Path, dict], tmp_path: Path,
                                       member: str, change: Callable[[bytes], bytes], named: str) -> None:
    _summary, _directory, package, env = preserved
    tampered = tmp_path / "tampered.zip"
    _rewrite(package, tampered, member, change)
    result = wz(["verify", str(tampered), "--json"], env)
    assert result.returncode == 1, result.stdout[-2000:]
    report = json.loads(result.stdout)
    failures = [c for c in report["checks"] if not c["ok"]]
    assert failures
    assert any(named in c["subject"] or named in c["detail"] for c in failures), failures


def test_a_flipped_byte_in_the_zip_itself_names_the_composite(preserved: tuple[dict[str, Any], Path, Path, dict],
                                                                tmp_path: Path) -> None:
    summary, _directory, package, env = preserved
    damaged = tmp_path / "damaged.zip"
    shutil.copyfile(package, damaged)
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo(f"{summary['capture_id']}/composite.mp4")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    with damaged.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = wz(["verify", str(damaged)], env)
    assert result.returncode == 1
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failing and all("composite.mp4" in line for line in failing), failing
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    broken = wz(["verify", str(truncated)], env)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr


def test_tsa_down_keeps_the_token_pending_until_it_answers(demo_server: FixtureServer, s3_server: S3Endpoint,
                                                            tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "tsa-keys").ensure()
    port = closed_port()
    env = base_env(tmp_path / "data", s3_server) | {
        "WZ_TSA_URLS": f"http://127.0.0.1:{port}/", "WZ_TSA_CA_FILE": str(pki.ca_cert_path),
        "WZ_TSA_TIMEOUT_SECONDS": "3",
    }
    summary = capture(env, [demo_server.base_url + PATH_PRODUCT], tmp_path / "c", duration="5", expect=4)
    stamps = summary["preservation"]["timestamps"]
    assert [t["status"] for t in stamps] == ["pending"] and stamps[0]["error"]
    assert summary["preservation"]["stored_objects"] > 0  # stored all the same
    assert (tmp_path / "c" / "timestamps" / "manifest.0.tsq").exists()
    still = wz(["timestamp", "--pending"], env)
    assert still.returncode == 1 and "timestamp(s) still pending" in still.stderr
    with LocalTsa(pki, tmp_path / "tsa-state", port=port):
        granted = wz(["timestamp", "--pending"], env)
    assert granted.returncode == 0, granted.stderr
    verify = subprocess.run(["openssl", "ts", "-verify", "-data", "manifest.json", "-in", "timestamps/manifest.0.tsr",
                             "-CAfile", str(pki.ca_cert_path)], cwd=tmp_path / "c", capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    entries = json.loads(wz(["custody", "show", summary["capture_id"], "--json"], env).stdout)
    actions = [e["action"] for e in entries]
    manifest_stamps = [e for e in entries if e["action"] == "timestamped" and "of" not in e["details"]]
    chain_stamps = [e for e in entries if e["action"] == "timestamped" and e["details"].get("of")]
    assert "timestamp-pending" in actions and len(manifest_stamps) == 1
    assert chain_stamps and all(e["details"]["after_pending"] for e in chain_stamps)  # taken while recording
    assert wz(["verify", summary["capture_id"]], env).returncode == 0


def test_store_down_spools_and_sync_uploads_later(demo_server: FixtureServer, s3_server: S3Endpoint,
                                                  tmp_path: Path) -> None:
    good = base_env(tmp_path / "data", s3_server)
    down = good | {"WZ_S3_ENDPOINT": f"127.0.0.1:{closed_port()}"}
    summary = capture(down, [demo_server.base_url + PATH_PRODUCT], tmp_path / "c", duration="5", expect=4)
    record = summary["preservation"]
    assert record["stored_objects"] == 0 and any("unavailable" in p for p in record["problems"])
    assert any((tmp_path / "data" / "spool").glob("*.json"))
    synced = wz(["sync"], good)
    assert synced.returncode == 0, synced.stderr
    assert not any((tmp_path / "data" / "spool").glob("*.json"))
    verified = wz(["verify", summary["capture_id"], "--json"], good)
    assert verified.returncode == 0, verified.stdout[-3000:]


def test_the_ledger_on_postgresql(demo_server: FixtureServer, s3_server: S3Endpoint, tmp_path: Path) -> None:
    schema = f"wz_capture_{uuid.uuid4().hex[:10]}"
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        env = base_env(tmp_path / "data", s3_server) | {"WZ_DATABASE_URL": url}
        summary = capture(env, [demo_server.base_url + PATH_PRODUCT], tmp_path / "c", duration="5")
        with admin.begin() as conn:
            query = f'SELECT action FROM "{schema}".custody_entries ORDER BY seq'  # noqa: S608 - our own schema name
            rows = conn.execute(text(query)).scalars().all()
        assert rows[:4] == ["captured", "hashed", "signed", "timestamped"]
        assert wz(["custody", "verify"], env).returncode == 0
        assert wz(["verify", summary["capture_id"]], env).returncode == 0
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_the_embedded_seaweedfs_is_the_default(demo_server: FixtureServer, s3_server: S3Endpoint,
                                               tmp_path: Path) -> None:
    env = {k: v for k, v in base_env(tmp_path / "data", s3_server).items() if not k.startswith("WZ_S3")}
    env |= {"WZ_EMBEDDED_S3_PORT": "20333"}
    try:
        summary = capture(env, [demo_server.base_url + PATH_PRODUCT], tmp_path / "c", duration="4")
        assert summary["preservation"]["stored_objects"] > 0
        assert wz(["verify", summary["capture_id"]], env).returncode == 0
    finally:
        stopped = wz(["services", "stop"], env)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr


def test_pinning_another_ca_refuses_the_package(preserved: tuple[dict[str, Any], Path, Path, dict],
                                                tmp_path: Path) -> None:
    summary, directory, package, env = preserved
    stranger = LocalPki(tmp_path / "stranger").ensure()
    refused = wz(["verify", str(package), "--ca", str(stranger.ca_cert_path), "--json"], env)
    assert refused.returncode == 1
    failed = {c["name"] for c in json.loads(refused.stdout)["checks"] if not c["ok"]}
    assert {"manifest signature (CMS)", "manifest timestamp 0", "custody checkpoint signature"} <= failed
    pinned = wz(["verify", str(package), "--ca", str(directory / "certs" / "local-ca.pem"), "--json"], env)
    assert pinned.returncode == 0, pinned.stdout[-2000:]
    anchors = [c for c in json.loads(pinned.stdout)["checks"] if c["name"] == "trust anchor"]
    assert anchors and "pinned by the verifier" in anchors[0]["detail"]
    del summary


def _restamp_sums(root: str, files: dict[str, bytes]) -> None:
    """Rebuild SHA256SUMS and SM3SUMS the way a forger would, so only the deeper checks can object."""
    import hashlib

    names = sorted(n for n in files if n.startswith(root + "/") and not n.endswith(("/SHA256SUMS", "/SM3SUMS")))
    files[f"{root}/SHA256SUMS"] = "".join(
        f"{hashlib.sha256(files[n]).hexdigest()}  {n.removeprefix(root + '/')}\n" for n in names).encode()
    files[f"{root}/SM3SUMS"] = "".join(
        f"{hashlib.new('sm3', files[n]).hexdigest()}  {n.removeprefix(root + '/')}\n" for n in names).encode()


def test_a_forger_who_strips_the_timestamps_and_rebuilds_the_sums_is_caught(
        preserved: tuple[dict[str, Any], Path, Path, dict], tmp_path: Path) -> None:
    summary, _directory, package, env = preserved
    root = summary["capture_id"]
    with zipfile.ZipFile(package) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    record = json.loads(files[f"{root}/preservation.json"])
    record["timestamps"] = []
    files[f"{root}/preservation.json"] = json.dumps(record).encode()
    for name in [n for n in files if "/timestamps/manifest." in n]:
        del files[name]
    _restamp_sums(root, files)
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as out:
        for name, data in files.items():
            out.writestr(name, data)
    result = wz(["verify", str(forged), "--json"], env)
    assert result.returncode == 1
    failed = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    # Without the node's key the index cannot be signed again; and without a token the time is not proven.
    assert {"package index signature", "manifest timestamp"} <= {c["name"] for c in failed}, failed
    assert not [c for c in failed if c["name"] == "artifact matches manifest"]  # the artifacts are untouched


def test_an_interrupted_preservation_is_finished_by_the_next_command(demo_server: FixtureServer,
                                                                     s3_server: S3Endpoint, tmp_path: Path) -> None:
    env = base_env(tmp_path / "data", s3_server)
    summary = capture(env, [demo_server.base_url + PATH_PRODUCT], tmp_path / "c", duration="4")
    record_path = tmp_path / "c" / "preservation.json"
    record = json.loads(record_path.read_text())
    # As if the process had died right after signing: no token yet, nothing stored, not complete.
    record.update({"done": ["captured", "hashed", "signed"], "timestamps": [], "stored": [], "complete": False})
    record_path.write_text(json.dumps(record))
    result = wz(["custody", "verify"], env)
    assert result.returncode == 0, result.stderr
    finished = json.loads(record_path.read_text())
    assert finished["complete"] is True
    assert [t["status"] for t in finished["timestamps"]] == ["granted"]
    assert finished["timestamps"][0]["response_path"].startswith("timestamps/manifest-")  # never overwrites
    actions = [e["action"] for e in json.loads(wz(["custody", "show", summary["capture_id"], "--json"], env).stdout)]
    assert actions.count("captured") == 1 and actions.count("signed") == 1 and actions.count("timestamped") == 2
    assert wz(["verify", summary["capture_id"]], env).returncode == 0


def test_legal_hold_per_capture_and_per_case(preserved: tuple[dict[str, Any], Path, Path, dict]) -> None:
    from minio import Minio

    summary, directory, _package, env = preserved
    on = wz(["legal-hold", "on", "--case", "CASE-7", "--reason", "court order 2026-77"], env)
    assert on.returncode == 0, on.stderr
    record = json.loads((directory / "preservation.json").read_text())
    client = Minio(env["WZ_S3_ENDPOINT"], access_key=env["WZ_S3_ACCESS_KEY"], secret_key=env["WZ_S3_SECRET_KEY"],
                   secure=False)
    stored = record["stored"][0]
    key = stored["key"]
    assert stored["legal_hold"] is True
    assert client.is_object_legal_hold_enabled(env["WZ_S3_BUCKET"], key, version_id=stored["version_id"])
    off = wz(["legal-hold", "off", "--capture", summary["capture_id"]], env)
    assert off.returncode == 0, off.stderr
    assert not client.is_object_legal_hold_enabled(env["WZ_S3_BUCKET"], key, version_id=stored["version_id"])
    entries = json.loads(wz(["custody", "show", summary["capture_id"], "--json"], env).stdout)
    holds = [e for e in entries if e["action"].startswith("legal-hold")]
    assert [e["action"] for e in holds] == ["legal-hold", "legal-hold-released"]
    assert holds[0]["details"]["reason"] == "court order 2026-77"
    assert "verified" in [e["action"] for e in entries]  # the online verification went on the record too
    unknown = wz(["legal-hold", "on", "--case", "NO-SUCH-CASE"], env)
    assert unknown.returncode == 2 and "no capture of case" in unknown.stderr


def test_embedded_store_port_taken_keeps_the_capture_and_sync_uploads_it(
    demo_server: FixtureServer, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    env = {k: v for k, v in base_env(tmp_path / "data", s3_server).items() if not k.startswith("WZ_S3")}
    with socket.socket() as squatter:  # another program holds the embedded store's port
        squatter.bind(("127.0.0.1", 20433))
        squatter.listen()
        summary = capture(env | {"WZ_EMBEDDED_S3_PORT": "20433"}, [demo_server.base_url + PATH_PRODUCT],
                          tmp_path / "c", duration="4", expect=4)
    record = summary["preservation"]
    assert summary["status"] == "complete" and record["stored_objects"] == 0
    [problem] = [p for p in record["problems"] if "kept in the spool" in p]
    assert "20433" in problem and "WZ_EMBEDDED_S3_PORT" in problem
    moved = env | {"WZ_EMBEDDED_S3_PORT": "20533"}
    try:
        synced = wz(["sync"], moved)
        assert synced.returncode == 0, synced.stderr
        assert not any((tmp_path / "data" / "spool").glob("*.json"))
        assert wz(["verify", summary["capture_id"]], moved).returncode == 0
    finally:
        wz(["services", "stop"], moved)
