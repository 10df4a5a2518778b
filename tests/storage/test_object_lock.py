"""Object Lock as the SERVER enforces it: every refusal here comes from SeaweedFS, not from our code."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from minio.commonconfig import COMPLIANCE, GOVERNANCE
from minio.error import S3Error
from minio.retention import Retention

from evidence import StoredObject
from storage import S3ObjectStore
from tests.storage.conftest import versions, write_file

pytestmark = pytest.mark.integration  # a real SeaweedFS

BYPASS = {"x-amz-bypass-governance-retention": "true"}


@pytest.fixture
def locked(store: S3ObjectStore, tmp_path: Path) -> StoredObject:
    path, digests = write_file(tmp_path / "evidence.bin", b"evidence that must survive\n" * 100)
    return store.put_file("case/evidence.bin", path, content_type="application/octet-stream", digests=digests)


def bypass_delete(raw: Any, bucket: str, key: str, version_id: str) -> None:
    """DeleteObject with x-amz-bypass-governance-retention: minio's remove_object cannot send that header,
    so the request goes through its signed low-level `_execute`."""
    raw._execute("DELETE", bucket, key, headers=dict(BYPASS), query_params={"versionId": version_id})


def test_locked_version_cannot_be_deleted(store: S3ObjectStore, raw: Any, locked: StoredObject) -> None:
    with pytest.raises(S3Error) as refused:
        raw.remove_object(store.bucket, locked.key, version_id=locked.version_id)
    assert refused.value.code == "AccessDenied"
    assert store.verify(locked).verified_at is not None  # still there, bytes intact


def test_retention_cannot_be_shortened_or_weakened(store: S3ObjectStore, raw: Any, locked: StoredObject) -> None:
    earlier = locked.retain_until - timedelta(hours=12)
    with pytest.raises(S3Error) as shorter:
        raw.set_object_retention(store.bucket, locked.key, Retention(COMPLIANCE, earlier), version_id=locked.version_id)
    assert shorter.value.code == "AccessDenied"
    with pytest.raises(S3Error) as governance:
        raw.set_object_retention(store.bucket, locked.key, Retention(GOVERNANCE, locked.retain_until),
                                 version_id=locked.version_id)
    assert governance.value.code == "AccessDenied"
    kept = raw.get_object_retention(store.bucket, locked.key, version_id=locked.version_id)
    assert kept.mode == COMPLIANCE
    assert kept.retain_until_date == locked.retain_until
    # Extending is what COMPLIANCE allows: shows the refusals above are about shortening, not any change.
    later = locked.retain_until + timedelta(days=1)
    raw.set_object_retention(store.bucket, locked.key, Retention(COMPLIANCE, later), version_id=locked.version_id)
    assert raw.get_object_retention(store.bucket, locked.key, version_id=locked.version_id).retain_until_date == later
    assert store.verify(locked).verified_at is not None  # verify accepts a retention extended beyond the record


def test_bypass_governance_does_not_unlock_compliance(store: S3ObjectStore, raw: Any, locked: StoredObject) -> None:
    # Control: the same bypass request does delete a GOVERNANCE version, so the header reaches the server.
    governed = raw.put_object(store.bucket, "control/governed.bin", io.BytesIO(b"governed"), 8,
                              retention=Retention(GOVERNANCE, datetime.now(UTC) + timedelta(days=1)))
    with pytest.raises(S3Error) as without_bypass:
        raw.remove_object(store.bucket, "control/governed.bin", version_id=governed.version_id)
    assert without_bypass.value.code == "AccessDenied"
    bypass_delete(raw, store.bucket, "control/governed.bin", governed.version_id)
    assert versions(raw, store.bucket, "control/governed.bin") == []

    with pytest.raises(S3Error) as refused:
        bypass_delete(raw, store.bucket, locked.key, locked.version_id)
    assert refused.value.code == "AccessDenied"
    assert store.verify(locked).verified_at is not None


def test_delete_without_version_only_adds_a_marker(store: S3ObjectStore, raw: Any, locked: StoredObject) -> None:
    raw.remove_object(store.bucket, locked.key)  # allowed: it hides the key, it deletes nothing
    with pytest.raises(S3Error) as hidden:
        raw.stat_object(store.bucket, locked.key)
    assert hidden.value.code == "NoSuchKey"
    listed = versions(raw, store.bucket, locked.key)
    assert sorted(v.is_delete_marker for v in listed) == [False, True]
    assert b"".join(store.read(locked.key, locked.version_id)) == b"evidence that must survive\n" * 100
    assert store.verify(locked).verified_at is not None


def test_legal_hold_on_and_off(store: S3ObjectStore, raw: Any, tmp_path: Path) -> None:
    path, digests = write_file(tmp_path / "held.bin", b"held")
    held = store.put_file("held.bin", path, content_type="application/octet-stream", digests=digests,
                          legal_hold=True)
    assert held.legal_hold
    assert raw.is_object_legal_hold_enabled(store.bucket, "held.bin", version_id=held.version_id)
    store.set_legal_hold("held.bin", held.version_id, on=False)
    assert not raw.is_object_legal_hold_enabled(store.bucket, "held.bin", version_id=held.version_id)
    assert store.verify(held).legal_hold is False  # verify reports the server's current hold
    store.set_legal_hold("held.bin", held.version_id, on=True)
    assert store.verify(held).legal_hold is True


def test_legal_hold_blocks_even_a_governance_bypass(store: S3ObjectStore, raw: Any) -> None:
    """What a hold does, shown on a GOVERNANCE version (a COMPLIANCE one is undeletable either way)."""
    result = raw.put_object(store.bucket, "hold/governed.bin", io.BytesIO(b"x"), 1, legal_hold=True,
                            retention=Retention(GOVERNANCE, datetime.now(UTC) + timedelta(days=1)))
    with pytest.raises(S3Error) as refused:
        bypass_delete(raw, store.bucket, "hold/governed.bin", result.version_id)
    assert refused.value.code == "AccessDenied"
    store.set_legal_hold("hold/governed.bin", result.version_id, on=False)
    bypass_delete(raw, store.bucket, "hold/governed.bin", result.version_id)
    assert versions(raw, store.bucket, "hold/governed.bin") == []
