"""S3ObjectStore against the real SeaweedFS: round trips, digest checks, bucket checks, error wrapping."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from minio.commonconfig import ENABLED

from evidence import (
    ConfigurationError,
    DigestMismatch,
    Digests,
    ObjectLockMissing,
    Settings,
    StorageError,
    StoreUnavailable,
)
from hashing import digest_file
from storage import S3Endpoint, S3ObjectStore, UnsafeStorageWarning, store_from_settings
from tests.storage.conftest import closed_port, make_store, random_bytes, versions, write_file

pytestmark = pytest.mark.integration  # a real SeaweedFS

MiB = 1 << 20


def test_new_bucket_has_object_lock_and_versioning(store: S3ObjectStore, raw: Any) -> None:
    assert raw.get_object_lock_config(store.bucket) is not None
    assert raw.get_bucket_versioning(store.bucket).status == ENABLED
    store.ensure_bucket()  # checking an existing, correct bucket again is fine


def test_put_verify_read_round_trip(store: S3ObjectStore, raw: Any, tmp_path: Path) -> None:
    data = random_bytes(3 * MiB + 17)
    path, digests = write_file(tmp_path / "page.har", data)
    stored = store.put_file("captures/c1/page.har", path, content_type="application/json", digests=digests,
                            metadata={"capture-id": "c1"})
    assert stored.bucket == store.bucket and stored.key == "captures/c1/page.har"
    assert stored.version_id and stored.size == len(data) and stored.digests == digests
    assert stored.retention_mode == "COMPLIANCE" and stored.verified_at is None
    assert timedelta(hours=23) < stored.retain_until - stored.retain_until.now(stored.retain_until.tzinfo) \
        <= timedelta(days=1)
    verified = store.verify(stored)
    assert verified.verified_at is not None
    assert verified.model_copy(update={"verified_at": None}) == stored
    assert b"".join(store.read(stored.key, stored.version_id)) == data
    stat = raw.stat_object(store.bucket, stored.key, version_id=stored.version_id)
    assert stat.metadata["x-amz-meta-sha256"] == digests.sha256
    assert stat.metadata["x-amz-meta-sm3"] == digests.sm3
    assert stat.metadata["x-amz-meta-capture-id"] == "c1"
    assert stat.content_type == "application/json"
    retention = raw.get_object_retention(store.bucket, stored.key, version_id=stored.version_id)
    assert retention.mode == "COMPLIANCE" and retention.retain_until_date == stored.retain_until


def test_each_put_is_a_new_version_read_by_its_id(store: S3ObjectStore, tmp_path: Path) -> None:
    first_path, first = write_file(tmp_path / "a", b"first")
    second_path, second = write_file(tmp_path / "b", b"second")
    one = store.put_file("same-key", first_path, content_type="text/plain", digests=first)
    two = store.put_file("same-key", second_path, content_type="text/plain", digests=second)
    assert one.version_id != two.version_id
    assert b"".join(store.read("same-key", one.version_id)) == b"first"
    assert store.verify(one).verified_at and store.verify(two).verified_at


@pytest.mark.parametrize("which", ["sha256", "sm3"])
def test_verify_names_the_digest_that_differs(store: S3ObjectStore, tmp_path: Path, which: str) -> None:
    path, digests = write_file(tmp_path / "f", b"bytes as stored")
    stored = store.put_file("f", path, content_type="text/plain", digests=digests)
    wrong = digests.model_copy(update={which: "0" * 64})
    with pytest.raises(DigestMismatch) as mismatch:
        store.verify(stored.model_copy(update={"digests": wrong}))
    message = str(mismatch.value)
    assert which.upper() in message and stored.key in message and stored.version_id in message
    assert ("SM3" if which == "sha256" else "SHA256") not in message


def test_verify_checks_size_and_recorded_retention(store: S3ObjectStore, tmp_path: Path) -> None:
    path, digests = write_file(tmp_path / "f", b"twelve bytes")
    stored = store.put_file("f", path, content_type="text/plain", digests=digests)
    with pytest.raises(DigestMismatch, match="12 bytes, recorded 13"):
        store.verify(stored.model_copy(update={"size": 13}))
    later = stored.retain_until + timedelta(days=30)
    with pytest.raises(StorageError, match="retained until"):
        store.verify(stored.model_copy(update={"retain_until": later}))


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["single-part", "multipart"])
def test_put_refuses_a_file_that_does_not_match_its_digests(
    store: S3ObjectStore, raw: Any, tmp_path: Path, size: int
) -> None:
    path, digests = write_file(tmp_path / "f", random_bytes(size))
    with path.open("r+b") as handle:  # one byte changed after the digests were recorded
        handle.seek(size - 1)
        handle.write(b"\x00" if handle.read(1) != b"\x00" else b"\x01")
    with pytest.raises(DigestMismatch, match="changed since its digests were recorded"):
        store.put_file("tampered", path, content_type="application/octet-stream", digests=digests)
    assert versions(raw, store.bucket, "tampered") == []  # nothing was stored, not even an aborted version


def test_bucket_without_object_lock_is_refused(endpoint: S3Endpoint, raw: Any, bucket_name: str) -> None:
    raw.make_bucket(bucket_name)
    with pytest.raises(ObjectLockMissing) as missing:
        make_store(endpoint, bucket_name).ensure_bucket()
    assert bucket_name in str(missing.value)
    assert "WZ_UNSAFE_ALLOW_BUCKET_WITHOUT_OBJECT_LOCK" in str(missing.value)


def test_bucket_without_object_lock_with_the_unsafe_flag(
    endpoint: S3Endpoint, raw: Any, bucket_name: str, tmp_path: Path
) -> None:
    raw.make_bucket(bucket_name)
    unsafe = make_store(endpoint, bucket_name, allow_without_object_lock=True)
    with pytest.warns(UnsafeStorageWarning, match="WITHOUT Object Lock"):
        unsafe.ensure_bucket()
    assert raw.get_bucket_versioning(bucket_name).status == ENABLED  # reads by version still work
    path, digests = write_file(tmp_path / "f", b"unprotected")
    stored = unsafe.put_file("f", path, content_type="text/plain", digests=digests)
    assert stored.retention_mode == "NONE"
    assert unsafe.verify(stored).verified_at is not None
    with pytest.raises(StorageError, match="legal hold"):
        unsafe.put_file("g", path, content_type="text/plain", digests=digests, legal_hold=True)
    raw.remove_object(bucket_name, "f", version_id=stored.version_id)  # the danger the flag accepts
    assert versions(raw, bucket_name, "f") == []


def _sent_parts(store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, str]]]:
    """Every request the store's HTTP pool sends from now on: method, URL, headers (lower-case names)."""
    sent: list[tuple[str, str, dict[str, str]]] = []
    http = store.client._http
    send = http.urlopen

    def recording(method: str, url: str, **kwargs: Any) -> Any:
        sent.append((method, url, {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}))
        return send(method, url, **kwargs)

    monkeypatch.setattr(http, "urlopen", recording)
    return sent


def test_on_loopback_part_bodies_go_unsigned_while_requests_stay_signed(
    store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not store.sign_bodies  # the test store is on 127.0.0.1
    size = 2 * 16 * MiB + 5  # three parts
    path, digests = write_file(tmp_path / "video.mp4", random_bytes(size))
    sent = _sent_parts(store, monkeypatch)
    stored = store.put_file("video.mp4", path, content_type="video/mp4", digests=digests)
    assert store.verify(stored).verified_at is not None  # the end-to-end check that replaces body signing
    parts = [h for _url, h in sorted((url, h) for method, url, h in sent if method == "PUT" and "partNumber=" in url)]
    assert [int(h["content-length"]) for h in parts] == [16 * MiB, 16 * MiB, 5]
    assert [h["x-amz-content-sha256"] for h in parts[:2]] == ["UNSIGNED-PAYLOAD"] * 2
    assert all(h["authorization"].startswith("AWS4-HMAC-SHA256 ") for h in parts)
    # Small bodies (a 5-byte last part, the completion's XML) keep a signed payload hash.
    assert parts[2]["x-amz-content-sha256"] == hashlib.sha256(path.read_bytes()[-5:]).hexdigest()
    completion = [h for method, url, h in sent if method == "POST" and "uploadId=" in url]
    assert len(completion) == 1 and re.fullmatch(r"[0-9a-f]{64}", completion[0]["x-amz-content-sha256"])


def test_over_a_network_part_bodies_stay_signed(endpoint: S3Endpoint, bucket_name: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_store(endpoint, bucket_name, sign_bodies=None).sign_bodies is False
    assert S3ObjectStore("s3.example.com:9000", "key", "secret", bucket="evidence").sign_bodies is True
    store = make_store(endpoint, bucket_name, sign_bodies=True)  # as a remote store is treated
    path, digests = write_file(tmp_path / "video.mp4", random_bytes(16 * MiB + 1))
    sent = _sent_parts(store, monkeypatch)
    store.put_file("video.mp4", path, content_type="video/mp4", digests=digests)
    parts = sorted((url, headers) for method, url, headers in sent if method == "PUT" and "partNumber=" in url)
    data = path.read_bytes()  # parts 1 and 2, in that order (two go in parallel)
    assert [h["x-amz-content-sha256"] for _url, h in parts] == [
        hashlib.sha256(data[: 16 * MiB]).hexdigest(), hashlib.sha256(data[16 * MiB:]).hexdigest()]


@pytest.mark.parametrize("wrong", ["access_key", "secret_key"])
def test_wrong_credentials(endpoint: S3Endpoint, bucket_name: str, wrong: str) -> None:
    bad = dataclasses.replace(endpoint, **{wrong: "WRONG" + getattr(endpoint, wrong)[5:]})
    with pytest.raises(StorageError, match="rejected the credentials") as rejected:
        make_store(bad, bucket_name).ensure_bucket()
    assert not isinstance(rejected.value, StoreUnavailable)
    assert "WZ_S3_ACCESS_KEY" in str(rejected.value)


def test_closed_port_is_unavailable_quickly(tmp_path: Path) -> None:
    port = closed_port()
    down = S3ObjectStore(f"127.0.0.1:{port}", "key", "secret", bucket="bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
        down.ensure_bucket()
    path, digests = write_file(tmp_path / "f", b"x")
    with pytest.raises(StoreUnavailable):
        down.put_file("f", path, content_type="text/plain", digests=digests)
    assert time.monotonic() - started < 15


def test_missing_local_file_is_a_storage_error(store: S3ObjectStore, tmp_path: Path) -> None:
    digests = Digests(sha256="0" * 64, sm3="0" * 64)
    with pytest.raises(StorageError, match="cannot read"):
        store.put_file("gone", tmp_path / "gone", content_type="text/plain", digests=digests)


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        S3ObjectStore("127.0.0.1:1", "", "", bucket="bucket")
    with pytest.raises(ConfigurationError, match="one day"):
        S3ObjectStore("127.0.0.1:1", "k", "s", bucket="bucket", retention_days=0)
    with pytest.raises(ConfigurationError, match="WZ_S3_BUCKET"):
        S3ObjectStore("127.0.0.1:1", "k", "s", bucket="No_Such..Bucket")


def test_store_from_settings_with_an_endpoint(endpoint: S3Endpoint, raw: Any, bucket_name: str,
                                               tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", s3_endpoint=endpoint.endpoint, s3_access_key=endpoint.access_key,
        s3_secret_key=endpoint.secret_key, s3_bucket=bucket_name, retention_days=2,
        unsafe_allow_bucket_without_object_lock=False,
    )
    configured = store_from_settings(settings)
    configured.ensure_bucket()
    assert raw.get_object_lock_config(bucket_name) is not None
    path, digests = write_file(tmp_path / "f", b"via settings")
    stored = configured.put_file("f", path, content_type="text/plain", digests=digests)
    assert timedelta(days=1) < stored.retain_until - stored.retain_until.now(stored.retain_until.tzinfo)
    assert configured.verify(stored).verified_at is not None
    assert digest_file(path)[1] == stored.digests
