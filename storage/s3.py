"""The WORM object store: S3 with Object Lock (COMPLIANCE retention, versioning, legal hold).

Every object is written as a new version under COMPLIANCE retention, with its SHA-256 and SM3 in its
metadata; the version id the server returns is what custody records, and every read is by version.
Uploads are streamed in parts (memory stays flat for multi-GB files) and the bytes sent are digested on
the way: if they do not match the digests the caller recorded, the upload is aborted before it completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol

import urllib3
from minio import Minio
from minio.commonconfig import COMPLIANCE, ENABLED
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import check_bucket_name
from minio.retention import Retention
from minio.versioningconfig import VersioningConfig

from evidence import (
    ConfigurationError,
    DigestMismatch,
    Digests,
    EvidenceError,
    ObjectLockMissing,
    Settings,
    StorageError,
    StoredObject,
    StoreUnavailable,
)
from hashing import digest_stream
from storage.seaweed import EmbeddedSeaweed

log = logging.getLogger(__name__)

MiB = 1 << 20
PART_SIZE = 16 * MiB
MAX_PARTS = 10_000
READ_CHUNK = 4 * MiB  # large reads: a download streams at about the store's own speed
UNSIGNED_BODY_MIN = 1 * MiB  # bodies this large are object data, checked end to end instead of signed
META_SHA256 = "x-amz-meta-sha256"
META_SM3 = "x-amz-meta-sm3"
RETENTION_NONE = "NONE"  # recorded for objects stored in an unsafe bucket without Object Lock
_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"})


class UnsafeStorageWarning(UserWarning):
    """Evidence is being stored where it could be deleted."""


class ObjectStore(Protocol):
    """Where evidence is preserved. Every method raises `StorageError` (or a subclass) on failure."""

    bucket: str

    def ensure_bucket(self) -> None:
        """Create the bucket with Object Lock, or check the existing one has it (`ObjectLockMissing`)."""
        ...

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        digests: Digests,
        legal_hold: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        """Store a new locked version of `key`. If the file's bytes do not match `digests`, raise
        `DigestMismatch` and store nothing."""
        ...

    def verify(self, stored: StoredObject) -> StoredObject:
        """Read the version back, re-check size, both digests and retention; a copy with `verified_at`."""
        ...

    def read(self, key: str, version_id: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of one version (or `length` bytes of it from `offset`), streamed."""
        ...

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None: ...

    def versions(self, prefix: str) -> list[ObjectVersion]:
        """Every version of every object under `prefix` (delete markers excluded), oldest first per key."""
        ...


@dataclass(frozen=True)
class ObjectVersion:
    key: str
    version_id: str
    size: int
    last_modified: datetime | None


def _part_size(length: int) -> int:
    """16 MiB parts; larger (whole MiB) only when a file would need more than S3's 10,000 parts."""
    return max(PART_SIZE, math.ceil(length / MAX_PARTS / MiB) * MiB)


def _compare(label: str, expected: Digests, actual: Digests) -> None:
    for algorithm in ("sha256", "sm3"):
        want, got = getattr(expected, algorithm), getattr(actual, algorithm)
        if want != got:
            raise DigestMismatch(f"{label}: {algorithm.upper()} is {got}, recorded {want}")


class _UnsignedBodyMinio(Minio):
    """Minio that signs every request's headers but not large bodies (`x-amz-content-sha256: UNSIGNED-PAYLOAD`).

    Used only for a store on loopback (the embedded SeaweedFS): there is no wire to corrupt a part, and over
    plain HTTP minio hashes each part with SHA-256 to sign it and the server hashes it again to check, two
    more passes over every byte on CPU the store itself needs (on two cores the upload ran at 0.82 x a curl
    PUT). The bytes are still SHA-256 checked as they leave the file (`_VerifyingReader`), and every version is
    read back and both digests re-checked. Over a network the payload stays signed, so the server refuses a
    part damaged on the way instead of locking it away. Small bodies (bucket and retention XML) stay signed.
    """

    def _build_headers(
        self, host: str, headers: dict[str, Any] | None = None, body: bytes | None = None, creds: Any = None
    ) -> tuple[dict[str, Any], datetime]:
        if creds is None or body is None or len(body) < UNSIGNED_BODY_MIN or self._base_url.is_https:
            built, date = super()._build_headers(host, headers, body, creds)
            return built, date
        built, date = super()._build_headers(host, headers, None, creds)
        built["Content-Length"] = str(len(body))
        built["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        return built, date


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a connection failure ("[Errno 111] Connection refused"), not urllib3's whole story."""
    seen = exc
    for _ in range(8):
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException):
            break
        seen = inner
    text = str(seen)
    if "Failed to establish a new connection:" in text:
        text = text.split("Failed to establish a new connection:", 1)[1].strip().rstrip(")\"'")
    return text[:200] or type(seen).__name__


def _is_loopback(endpoint: str) -> bool:
    host = urllib3.util.parse_url(f"//{endpoint}").host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _VerifyingReader:
    """The file as minio reads it, SHA-256 digested on the way; raises at the last byte if it differs.

    minio reads exactly `length` bytes and reads the last part before sending it, so raising here
    means the object is never completed (a multipart upload is aborted). Only SHA-256 runs here: it
    proves the bytes sent are the bytes recorded, and SM3, four times slower, would halve the upload
    speed on two cores; both digests are checked again when the version is read back (`verify`).
    """

    def __init__(self, handle: IO[bytes], length: int, expected: Digests, label: str) -> None:
        self._handle = handle
        self._length = length
        self._expected = expected
        self._label = label
        self._sha256 = hashlib.sha256()
        self.position = 0
        if length == 0:
            self._check()

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self.position
        if size < 0 or size > remaining:
            size = remaining
        data = self._handle.read(size)
        if size and not data:
            raise DigestMismatch(
                f"{self._label}: the file shrank to {self.position} bytes of {self._length} during upload"
            )
        self._sha256.update(data)
        self.position += len(data)
        if data and self.position == self._length:
            self._check()
        return data

    def _check(self) -> None:
        actual = self._sha256.hexdigest()
        if actual != self._expected.sha256:
            raise DigestMismatch(f"{self._label} (the local file changed since its digests were recorded): "
                                 f"SHA256 is {actual}, recorded {self._expected.sha256}")


class S3ObjectStore(ObjectStore):
    """An `ObjectStore` over any S3 server with Object Lock (SeaweedFS, MinIO, AWS, ...)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        retention_days: int = 3650,
        allow_without_object_lock: bool = False,
        connect_timeout: float = 3.0,
        read_timeout: float = 60.0,
        sign_bodies: bool | None = None,
    ) -> None:
        """`sign_bodies`: sign upload parts' SHA-256 (SigV4); None signs them unless the endpoint is loopback."""
        if retention_days < 1:
            raise ConfigurationError(f"retention must be at least one day, not {retention_days}")
        if not access_key or not secret_key:
            raise ConfigurationError(f"no credentials for the S3 server {endpoint}: set WZ_S3_ACCESS_KEY and "
                                     "WZ_S3_SECRET_KEY")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise ConfigurationError(f"{exc}; set WZ_S3_BUCKET to a valid S3 bucket name") from exc
        self.bucket = bucket
        self.endpoint = endpoint
        self.retention_days = retention_days
        self.allow_without_object_lock = allow_without_object_lock
        # Short connect timeout and few retries: an unreachable store fails in seconds, not minutes.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=10,
            retries=urllib3.Retry(
                total=3, connect=2, read=0, status=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
            ),
        )
        try:
            if sign_bodies is None:
                sign_bodies = not _is_loopback(endpoint)
            self.sign_bodies = sign_bodies
            client_class = Minio if sign_bodies else _UnsignedBodyMinio
            self._client: Any = client_class(
                endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
                http_client=self._http,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid S3 endpoint {endpoint!r}: {exc}; set WZ_S3_ENDPOINT to host:port"
            ) from exc
        self._object_lock: bool | None = None  # known after ensure_bucket

    @property
    def client(self) -> Any:
        """The underlying minio client (for tools and tests that talk S3 directly)."""
        return self._client

    # -- errors --
    @contextlib.contextmanager
    def _errors(self, operation: str, subject: str) -> Iterator[None]:
        """Wrap client errors where they enter our code; each message says what to do."""
        try:
            yield
        except EvidenceError:
            raise
        except S3Error as exc:
            self._raise_s3(exc, operation, subject)
        except ServerError as exc:
            raise StoreUnavailable(
                f"the S3 store at {self.endpoint} failed {operation} of {subject} with HTTP {exc.status_code}; "
                "files stay in the local spool, try again later"
            ) from exc
        except InvalidResponseError as exc:
            raise StorageError(
                f"{self.endpoint} did not answer {operation} of {subject} as an S3 server ({exc}); check WZ_S3_ENDPOINT"
            ) from exc
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"the S3 store at {self.endpoint} cannot be reached for {operation} of {subject} "
                f"({_root_cause(exc)}); files stay in the local spool; start the store or check WZ_S3_ENDPOINT"
            ) from exc
        except MinioException as exc:
            raise StorageError(f"S3 {operation} of {subject} at {self.endpoint} failed: {exc}") from exc

    def _raise_s3(self, exc: S3Error, operation: str, subject: str) -> NoReturn:
        code = exc.code or "unknown"
        if code in _CREDENTIAL_CODES:
            raise StorageError(
                f"the S3 server at {self.endpoint} rejected the credentials ({code}) during {operation} of {subject}; "
                "check WZ_S3_ACCESS_KEY and WZ_S3_SECRET_KEY"
            ) from exc
        if code == "AccessDenied":
            raise StorageError(
                f"the S3 server at {self.endpoint} denied {operation} of {subject} (AccessDenied); the credentials "
                "lack that permission, or Object Lock forbids it"
            ) from exc
        if code in {"SlowDown", "ServiceUnavailable", "RequestTimeout"}:
            raise StoreUnavailable(
                f"the S3 store at {self.endpoint} is unavailable for {operation} of {subject} ({code}); try again later"
            ) from exc
        raise StorageError(f"S3 {operation} of {subject} at {self.endpoint} failed: {code}: {exc.message}") from exc

    # -- bucket --
    def ensure_bucket(self) -> None:
        client = self._client
        with self._errors("check", f"bucket {self.bucket}"):
            # GetBucketVersioning rather than HEAD: a HEAD's error has no body, so no error code to report.
            try:
                versioning = client.get_bucket_versioning(self.bucket).status
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                self._create_bucket()
                versioning = client.get_bucket_versioning(self.bucket).status
            lock = self._has_object_lock()
        if lock:
            if versioning != ENABLED:
                raise StorageError(f"bucket {self.bucket} has Object Lock but versioning is {versioning}; "
                                   "fix the bucket (versioning must stay enabled)")
            self._object_lock = True
            return
        message = (
            f"bucket {self.bucket} has no Object Lock: evidence could be deleted; create a new bucket with Object "
            "Lock or set WZ_UNSAFE_ALLOW_BUCKET_WITHOUT_OBJECT_LOCK=1"
        )
        if not self.allow_without_object_lock:
            raise ObjectLockMissing(message)
        unsafe = (f"UNSAFE: storing evidence in bucket {self.bucket} WITHOUT Object Lock "
                  "(WZ_UNSAFE_ALLOW_BUCKET_WITHOUT_OBJECT_LOCK is set): anyone with write access can delete it")
        log.warning(unsafe)
        warnings.warn(unsafe, UnsafeStorageWarning, stacklevel=2)
        if versioning != ENABLED:
            # Reads are by version id, so versioning is needed even here; enabling it only keeps more data.
            log.warning("enabling versioning on bucket %s (it was %s)", self.bucket, versioning)
            with self._errors("enable versioning", f"bucket {self.bucket}"):
                client.set_bucket_versioning(self.bucket, VersioningConfig(ENABLED))
        self._object_lock = False

    def _create_bucket(self) -> None:
        try:
            self._client.make_bucket(self.bucket, object_lock=True)
            log.info("created bucket %s with Object Lock", self.bucket)
        except S3Error as exc:
            if exc.code != "BucketAlreadyOwnedByYou":  # another process created it just now
                raise

    def _has_object_lock(self) -> bool:
        try:
            self._client.get_object_lock_config(self.bucket)
        except S3Error as exc:
            if exc.code == "ObjectLockConfigurationNotFoundError":
                return False
            raise
        return True

    def _lock_enabled(self) -> bool:
        if self._object_lock is None:
            self.ensure_bucket()  # never write into a bucket that was not checked
        assert self._object_lock is not None
        return self._object_lock

    # -- objects --
    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        digests: Digests,
        legal_hold: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        locked = self._lock_enabled()
        if legal_hold and not locked:
            raise StorageError(f"legal hold on {key} needs Object Lock, which bucket {self.bucket} does not have")
        headers = self._metadata(digests, metadata)
        subject = f"{self.bucket}/{key}"
        now = datetime.now(UTC)
        # Whole seconds: the server keeps seconds, and verify compares its date with this one.
        retain_until = (now + timedelta(days=self.retention_days)).replace(microsecond=0)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise StorageError(f"cannot read {path} to store it as {subject}: {exc}") from exc
        with handle:
            length = os.fstat(handle.fileno()).st_size
            reader = _VerifyingReader(handle, length, digests, f"{path} for {subject}")
            with self._errors("upload", subject):
                result = self._client.put_object(
                    self.bucket,
                    key,
                    reader,
                    length,
                    content_type=content_type,
                    metadata=headers,
                    part_size=_part_size(length),
                    num_parallel_uploads=2,  # two parts in flight (32 MiB): hashing overlaps sending
                    retention=Retention(COMPLIANCE, retain_until) if locked else None,
                    legal_hold=legal_hold,
                )
        if not result.version_id:
            raise StorageError(
                f"the S3 server stored {subject} without a version id; versioning is required so that custody "
                "can name the exact version"
            )
        log.info("stored %s version %s (%d bytes)", subject, result.version_id, length)
        return StoredObject(
            bucket=self.bucket,
            key=key,
            version_id=result.version_id,
            size=length,
            digests=digests,
            retention_mode="COMPLIANCE" if locked else RETENTION_NONE,
            retain_until=retain_until if locked else now.replace(microsecond=0),
            legal_hold=legal_hold,
        )

    @staticmethod
    def _metadata(digests: Digests, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {META_SHA256: digests.sha256, META_SM3: digests.sm3}
        for name, value in (extra or {}).items():
            header = name.lower()
            if not header.startswith("x-amz-meta-"):
                header = "x-amz-meta-" + header
            if header in headers:
                raise ValueError(f"metadata {name!r} would overwrite the recorded digests")
            if not (header.isascii() and value.isascii()):
                raise ValueError(f"S3 metadata must be ASCII: {name!r}={value!r}")
            headers[header] = value
        return headers

    def verify(self, stored: StoredObject) -> StoredObject:
        subject = f"{stored.bucket}/{stored.key} version {stored.version_id}"
        client = self._client
        with self._errors("read back", subject):
            response = client.get_object(stored.bucket, stored.key, version_id=stored.version_id)
        try:
            with self._errors("read back", subject):
                served = response.headers.get("x-amz-version-id")
                size, digests = digest_stream(response)  # streamed in chunks, never whole
        finally:
            response.close()
            response.release_conn()
        if served and served != stored.version_id:
            raise StorageError(f"asked for {subject}, the server returned version {served}")
        if size != stored.size:
            raise DigestMismatch(f"{subject} is {size} bytes, recorded {stored.size}")
        _compare(subject, stored.digests, digests)
        with self._errors("read metadata", subject):
            stat = client.stat_object(stored.bucket, stored.key, version_id=stored.version_id)
        meta = Digests(sha256=stat.metadata.get(META_SHA256, "0" * 64), sm3=stat.metadata.get(META_SM3, "0" * 64))
        _compare(f"{subject} metadata", stored.digests, meta)
        legal_hold = stored.legal_hold
        if stored.retention_mode == RETENTION_NONE:
            log.warning("%s has no retention (stored without Object Lock): it could be deleted", subject)
        else:
            self._check_retention(stored, subject)
            legal_hold = self._legal_hold(stored, subject)
        return stored.model_copy(update={"verified_at": datetime.now(UTC), "legal_hold": legal_hold})

    def _check_retention(self, stored: StoredObject, subject: str) -> None:
        with self._errors("read retention", subject):
            try:
                retention = self._client.get_object_retention(stored.bucket, stored.key, version_id=stored.version_id)
            except S3Error as exc:
                if exc.code not in {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError"}:
                    raise
                retention = None
        if retention is None or retention.mode != COMPLIANCE:
            mode = None if retention is None else retention.mode
            raise StorageError(f"{subject} has retention {mode}, recorded {stored.retention_mode}: it is not locked "
                               "as recorded")
        until = retention.retain_until_date
        if until is None or until < stored.retain_until:
            raise StorageError(f"{subject} is retained until {until}, earlier than the recorded {stored.retain_until}")

    def _legal_hold(self, stored: StoredObject, subject: str) -> bool:
        with self._errors("read legal hold", subject):
            try:
                return bool(self._client.is_object_legal_hold_enabled(
                    stored.bucket, stored.key, version_id=stored.version_id))
            except S3Error as exc:
                if exc.code == "NoSuchObjectLegalHold":  # SeaweedFS: never had a hold
                    return False
                raise

    def read(self, key: str, version_id: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        subject = f"{self.bucket}/{key} version {version_id}"
        with self._errors("read", subject):
            response = self._client.get_object(self.bucket, key, version_id=version_id, offset=offset,
                                               length=length or 0)
        try:
            with self._errors("read", subject):
                yield from response.stream(READ_CHUNK)
        finally:
            response.close()
            response.release_conn()

    def versions(self, prefix: str) -> list[ObjectVersion]:
        found: list[ObjectVersion] = []
        with self._errors("list versions", f"{self.bucket}/{prefix}*"):
            for item in self._client.list_objects(self.bucket, prefix=prefix, recursive=True, include_version=True):
                if getattr(item, "is_delete_marker", False) or not item.version_id:
                    continue
                found.append(ObjectVersion(key=str(item.object_name), version_id=str(item.version_id),
                                           size=int(item.size or 0), last_modified=item.last_modified))
        return sorted(found, key=lambda v: (v.key, v.last_modified or datetime.min.replace(tzinfo=UTC)))

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None:
        subject = f"{self.bucket}/{key} version {version_id}"
        with self._errors("set legal hold" if on else "release legal hold", subject):
            if on:
                self._client.enable_object_legal_hold(self.bucket, key, version_id=version_id)
            else:
                self._client.disable_object_legal_hold(self.bucket, key, version_id=version_id)

    def close(self) -> None:
        self._http.clear()


def store_from_settings(settings: Settings) -> S3ObjectStore:
    """The configured store: WZ_S3_* when WZ_S3_ENDPOINT is set, else the embedded SeaweedFS (started if needed)."""
    if settings.s3_endpoint:
        endpoint, access_key, secret_key, secure = (
            settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_secure,
        )
    else:
        embedded = EmbeddedSeaweed(settings.services_dir / "seaweedfs", s3_port=settings.embedded_s3_port)
        running = embedded.ensure_running()
        endpoint, access_key, secret_key, secure = (
            running.endpoint, running.access_key, running.secret_key, running.secure,
        )
    return S3ObjectStore(
        endpoint,
        access_key,
        secret_key,
        bucket=settings.s3_bucket,
        secure=secure,
        region=settings.s3_region,
        retention_days=settings.retention_days,
        allow_without_object_lock=settings.unsafe_allow_bucket_without_object_lock,
    )
