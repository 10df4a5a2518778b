"""The local spool: uploads wait here until the store has them, so nothing is lost when it is down.

One JSON file per capture (`<capture_id>.json`), rewritten atomically after every step: an item is
uploaded, its version recorded at once (a crash after the upload never uploads it twice), verified by
version, handed to `on_stored` (custody), and the batch file is removed only when every item got that far.
The local files are never deleted by the spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from evidence import DigestMismatch, Digests, StorageError, StoredObject, StoreUnavailable
from evidence.files import fsync_directory, write_atomic
from storage.s3 import ObjectStore

log = logging.getLogger(__name__)

BATCH_SCHEMA = "wangzheng/spool-batch/v1"
_CAPTURE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LOCK = ".spool.lock"  # held briefly around every read-modify-write of a batch file
_SYNC_LOCK = ".sync.lock"  # held by the one sync that runs at a time


@dataclass(frozen=True)
class SpoolItem:
    """One file of a capture to store as `key`."""

    key: str
    relative_path: str
    content_type: str
    digests: Digests
    legal_hold: bool = False


@dataclass(frozen=True)
class SpoolBatch:
    """One capture's pending uploads, with the versions already stored (key -> StoredObject)."""

    capture_id: str
    capture_dir: Path
    enqueued_at: datetime
    items: tuple[SpoolItem, ...]
    stored: dict[str, StoredObject]


class ProblemKind(StrEnum):
    UNAVAILABLE = "unavailable"  # the store cannot be reached; the batch waits
    STORE_ERROR = "store-error"  # the store refused or failed; the batch waits
    LOCAL_CHANGED = "local-changed"  # the file on disk no longer matches its recorded digests: NOT uploaded
    LOCAL_MISSING = "local-missing"  # the file is gone: NOT uploaded
    STORED_MISMATCH = "stored-mismatch"  # the stored version does not read back as recorded; uploaded again
    CALLBACK = "callback"  # on_stored failed; it is called again at the next sync


@dataclass(frozen=True)
class SyncProblem:
    capture_id: str
    key: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class SyncedItem:
    capture_id: str
    item: SpoolItem
    stored: StoredObject


@dataclass(frozen=True)
class SyncReport:
    stored: tuple[SyncedItem, ...] = ()
    problems: tuple[SyncProblem, ...] = ()
    completed: tuple[str, ...] = ()  # batches fully stored, verified and recorded; their spool files removed
    remaining: tuple[str, ...] = ()  # batches still in the spool
    busy: bool = False  # another sync was running; nothing was done

    @property
    def ok(self) -> bool:
        return not self.problems and not self.remaining and not self.busy

    def of_kind(self, kind: ProblemKind) -> tuple[SyncProblem, ...]:
        return tuple(problem for problem in self.problems if problem.kind == kind)


# -- the batch file --
class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    relative_path: str
    content_type: str
    digests: Digests
    legal_hold: bool = False
    stored: StoredObject | None = None  # the version uploaded (verified when verified_at is set)
    notified: bool = False  # on_stored returned for this version
    rejected: list[StoredObject] = []  # versions that did not read back as recorded
    last_error: str | None = None

    def item(self) -> SpoolItem:
        return SpoolItem(self.key, self.relative_path, self.content_type, self.digests, self.legal_hold)

    @property
    def done(self) -> bool:
        return self.stored is not None and self.stored.verified_at is not None and self.notified


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_id: str = BATCH_SCHEMA
    capture_id: str
    capture_dir: str
    enqueued_at: datetime
    entries: list[_Entry]

    def entry(self, key: str) -> _Entry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def public(self) -> SpoolBatch:
        return SpoolBatch(
            capture_id=self.capture_id,
            capture_dir=Path(self.capture_dir),
            enqueued_at=self.enqueued_at,
            items=tuple(entry.item() for entry in self.entries),
            stored={entry.key: entry.stored for entry in self.entries if entry.stored is not None},
        )


def _check_relative(relative_path: str) -> None:
    parts = relative_path.split("/")
    if not relative_path or relative_path.startswith("/") or "\\" in relative_path or ".." in parts:
        raise ValueError(f"spool paths must be relative inside the capture directory: {relative_path!r}")


class Spool:
    """The queue of uploads not yet in the object store."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)

    # -- files and locks --
    def _path(self, capture_id: str) -> Path:
        if not _CAPTURE_ID.match(capture_id):
            raise ValueError(f"capture id {capture_id!r} cannot name a spool file")
        return self.spool_dir / f"{capture_id}.json"

    @contextlib.contextmanager
    def _flock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _load(self, path: Path) -> _Batch:
        try:
            return _Batch.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise StorageError(f"spool file {path} is unreadable ({exc}); keep it and repair it by hand") from exc

    def _save(self, batch: _Batch) -> None:
        """Write-to-temp, fsync, rename, fsync the directory: a crash leaves the old or the new file."""
        write_atomic(self._path(batch.capture_id), batch.model_dump_json(indent=2).encode(), mode=0o600)

    def _remove(self, capture_id: str) -> None:
        self._path(capture_id).unlink()
        fsync_directory(self.spool_dir)

    def _update(self, capture_id: str, key: str, change: Callable[[_Entry], None]) -> None:
        with self._flock(_LOCK):
            batch = self._load(self._path(capture_id))
            change(batch.entry(key))
            self._save(batch)

    # -- public API --
    def enqueue(self, capture_id: str, capture_dir: Path, items: list[SpoolItem]) -> None:
        """Add a capture's files; enqueuing the same items again changes nothing."""
        path = self._path(capture_id)
        if not items:
            raise ValueError(f"nothing to spool for capture {capture_id}")
        capture_dir = Path(capture_dir).absolute()
        keys = [item.key for item in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys in the items of capture {capture_id}")
        for item in items:
            _check_relative(item.relative_path)
            if not (capture_dir / item.relative_path).is_file():
                raise StorageError(f"cannot spool {capture_dir / item.relative_path} for {item.key}: no such file")
        with self._flock(_LOCK):
            if path.exists():
                batch = self._load(path)
                if Path(batch.capture_dir) != capture_dir:
                    raise StorageError(f"capture {capture_id} is already spooled from {batch.capture_dir}, "
                                       f"not {capture_dir}")
            else:
                batch = _Batch(capture_id=capture_id, capture_dir=str(capture_dir), enqueued_at=datetime.now(UTC),
                               entries=[])
            known = {entry.key: entry for entry in batch.entries}
            for item in items:
                if item.key in known:
                    if known[item.key].item() != item:
                        raise StorageError(
                            f"the spool already holds {item.key} of capture {capture_id} with other content; "
                            "evidence is never replaced"
                        )
                    continue
                batch.entries.append(_Entry(key=item.key, relative_path=item.relative_path,
                                            content_type=item.content_type, digests=item.digests,
                                            legal_hold=item.legal_hold))
            self._save(batch)
        log.info("spooled %d item(s) of capture %s", len(items), capture_id)

    def pending(self) -> list[SpoolBatch]:
        """Every batch still in the spool, oldest first."""
        if not self.spool_dir.is_dir():
            return []
        with self._flock(_LOCK):
            batches = [self._load(path) for path in self.spool_dir.glob("*.json") if not path.name.startswith(".")]
        return [batch.public() for batch in sorted(batches, key=lambda b: (b.enqueued_at, b.capture_id))]

    def sync(
        self,
        store: ObjectStore,
        on_stored: Callable[[str, SpoolItem, StoredObject], None] | None = None,
        *,
        wait: bool = True,
    ) -> SyncReport:
        """Upload, verify by version and record every pending item; see the module docstring.

        One sync runs at a time. With `wait` (what a caller that just enqueued must use) this one waits for a
        running sync to end and then uploads whatever is left, its own batches included: a running sync may
        have read the queue before they were added. Without it a busy spool returns at once (`busy`).
        """
        with self._flock(_SYNC_LOCK, blocking=wait) as acquired:
            if not acquired:
                log.info("another sync of %s is running", self.spool_dir)
                return SyncReport(remaining=tuple(b.capture_id for b in self.pending()), busy=True)
            return self._sync(store, on_stored)

    # -- the sync --
    def _sync(self, store: ObjectStore, on_stored: Callable[[str, SpoolItem, StoredObject], None] | None) -> SyncReport:
        batches = self.pending()
        if not batches:
            return SyncReport()
        stored: list[SyncedItem] = []
        problems: list[SyncProblem] = []
        completed: list[str] = []
        try:
            store.ensure_bucket()
        except StorageError as exc:
            kind = ProblemKind.UNAVAILABLE if isinstance(exc, StoreUnavailable) else ProblemKind.STORE_ERROR
            log.warning("spool sync: %s", exc)
            problems.append(SyncProblem("*", "*", kind, str(exc)))
            return SyncReport(problems=tuple(problems), remaining=tuple(b.capture_id for b in batches))
        for batch in batches:
            try:
                for item in batch.items:
                    result = self._sync_item(store, batch, item, on_stored)
                    if isinstance(result, SyncProblem):
                        problems.append(result)
                    elif result is not None:
                        stored.append(result)
            except StoreUnavailable as exc:
                # The store went away: stop here, the rest waits for the next sync.
                problems.append(SyncProblem(batch.capture_id, "*", ProblemKind.UNAVAILABLE, str(exc)))
                break
            with self._flock(_LOCK):
                current = self._load(self._path(batch.capture_id))
                if all(entry.done for entry in current.entries):
                    self._remove(batch.capture_id)
                    completed.append(batch.capture_id)
                    log.info("capture %s: every item stored, verified and recorded; spool file removed",
                             batch.capture_id)
        remaining = tuple(b.capture_id for b in self.pending())
        return SyncReport(tuple(stored), tuple(problems), tuple(completed), remaining)

    def _sync_item(
        self,
        store: ObjectStore,
        batch: SpoolBatch,
        item: SpoolItem,
        on_stored: Callable[[str, SpoolItem, StoredObject], None] | None,
    ) -> SyncedItem | SyncProblem | None:
        """One item through upload, verify, on_stored; None when it was already done before."""
        capture_id = batch.capture_id
        with self._flock(_LOCK):
            entry = self._load(self._path(capture_id)).entry(item.key)
        if entry.done:
            return None
        record = entry.stored
        try:
            if record is None:
                path = batch.capture_dir / item.relative_path
                if not path.is_file():
                    return self._problem(capture_id, item, ProblemKind.LOCAL_MISSING,
                                         f"{path} is gone; {item.key} was NOT uploaded")
                try:
                    record = store.put_file(item.key, path, content_type=item.content_type, digests=item.digests,
                                            legal_hold=item.legal_hold)
                except DigestMismatch as exc:
                    return self._problem(capture_id, item, ProblemKind.LOCAL_CHANGED,
                                         f"{exc}; {item.key} was NOT uploaded")
                uploaded = record

                def keep(e: _Entry) -> None:
                    e.stored, e.notified, e.last_error = uploaded, False, None

                self._update(capture_id, item.key, keep)  # before verifying: never upload it twice
            if record.verified_at is None:
                try:
                    record = store.verify(record)
                except DigestMismatch as exc:
                    bad = record

                    def reject(e: _Entry) -> None:
                        e.rejected.append(bad)
                        e.stored = None

                    self._update(capture_id, item.key, reject)
                    return self._problem(capture_id, item, ProblemKind.STORED_MISMATCH,
                                         f"{exc}; it will be uploaded again at the next sync")
                verified = record

                def keep_verified(e: _Entry) -> None:
                    e.stored = verified

                self._update(capture_id, item.key, keep_verified)
        except StoreUnavailable:
            raise
        except StorageError as exc:
            return self._problem(capture_id, item, ProblemKind.STORE_ERROR, str(exc))
        if on_stored is not None:
            try:
                on_stored(capture_id, item, record)
            except Exception as exc:  # custody failed: keep the batch, call again next time (at least once)
                return self._problem(capture_id, item, ProblemKind.CALLBACK,
                                     f"on_stored failed for {item.key} version {record.version_id}: "
                                     f"{type(exc).__name__}: {exc}")

        def notified(e: _Entry) -> None:
            e.notified = True

        self._update(capture_id, item.key, notified)
        return SyncedItem(capture_id, item, record)

    def _problem(self, capture_id: str, item: SpoolItem, kind: ProblemKind, message: str) -> SyncProblem:
        if kind in {ProblemKind.LOCAL_CHANGED, ProblemKind.LOCAL_MISSING, ProblemKind.STORED_MISMATCH}:
            log.error("EVIDENCE INTEGRITY: capture %s, %s: %s", capture_id, item.key, message)
        else:
            log.warning("spool sync: capture %s, %s: %s", capture_id, item.key, message)

        def remember(e: _Entry) -> None:
            e.last_error = f"{datetime.now(UTC).isoformat()} {kind}: {message}"

        self._update(capture_id, item.key, remember)
        return SyncProblem(capture_id, item.key, kind, message)
