"""The local spool: uploads wait here until the store has them, so nothing is lost when it is down.

One JSON file per capture (`<capture_id>.json`, written atomically when files are queued) and beside it a change
log (`<capture_id>.g<generation>.log`): each step of an item appends that item's new state as one line. An item
is uploaded, its version recorded at once and synced to disk (a crash after the upload never uploads it twice),
verified by version, handed to `on_stored` (custody), and the batch's files are removed only when every item got
that far. Rewriting the whole batch file at every step made a capture of n files cost n^2 (a 15-minute capture,
about 1,300 files, spent a minute on it); a line per step costs the same at any size. The log is folded into the
batch file when it grows long (a new generation, written atomically, then the old log removed). The local
files are never deleted by the spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, ValidationError

from evidence import DigestMismatch, Digests, StorageError, StoredObject, StoreUnavailable
from evidence.files import fsync_directory, write_atomic
from storage.s3 import ObjectStore

log = logging.getLogger(__name__)

BATCH_SCHEMA = "wangzheng/spool-batch/v1"
_CAPTURE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LOCK = ".spool.lock"  # held briefly around every read-modify-write of a batch file
_SYNC_LOCK = ".sync.lock"  # held by the one sync that runs at a time
COMPACT_LOG_BYTES = 8 << 20  # a change log this long is folded into its batch file
NOTIFY_EVERY = 64  # verified versions handed to on_stored together


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


OnStored = Callable[[str, list[tuple[SpoolItem, StoredObject]]], None]


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
    generation: int = 0  # which change log belongs to this file: <capture_id>.g<generation>.log
    entries: list[_Entry]

    def entry(self, key: str) -> _Entry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def replace_entry(self, changed: _Entry) -> None:
        for index, entry in enumerate(self.entries):
            if entry.key == changed.key:
                self.entries[index] = changed
                return
        raise KeyError(changed.key)

    def public(self) -> SpoolBatch:
        return SpoolBatch(
            capture_id=self.capture_id,
            capture_dir=Path(self.capture_dir),
            enqueued_at=self.enqueued_at,
            items=tuple(entry.item() for entry in self.entries),
            stored={entry.key: entry.stored for entry in self.entries if entry.stored is not None},
        )


def _open_log(path: Path, flags: int) -> BinaryIO:
    """A change log, never through a link and only a regular file: the spool runs as the capture's user (root on
    a capture machine), and a link planted in its place must not make it append to, or cut short, the file the
    link points at; a named pipe must not make it wait forever with the spool's lock held (O_NONBLOCK keeps the
    open from waiting; it changes nothing for a regular file)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise StorageError(f"spool change log {path} cannot be opened ({exc}); a link is never followed: keep it "
                           "and repair it by hand") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StorageError(f"spool change log {path} is not a regular file; keep it and repair it by hand")
    return os.fdopen(fd, "r+b" if flags & os.O_RDWR else "ab", buffering=0)


def _check_relative(relative_path: str) -> None:
    parts = relative_path.split("/")
    if not relative_path or relative_path.startswith("/") or "\\" in relative_path or ".." in parts:
        raise ValueError(f"spool paths must be relative inside the capture directory: {relative_path!r}")


class Spool:
    """The queue of uploads not yet in the object store."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)
        self._cache: dict[Path, tuple[tuple[int, int, int, int], _Batch]] = {}

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

    def _log_path(self, path: Path, generation: int) -> Path:
        return path.with_name(f"{path.name.removesuffix('.json')}.g{generation}.log")

    @staticmethod
    def _signature(path: Path, log_path: Path) -> tuple[int, int, int, int]:
        """What identifies a batch's state on disk: its file's identity and the length of its change log."""
        stat = path.stat()
        try:
            logged = log_path.stat().st_size
        except FileNotFoundError:
            logged = -1
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, logged

    def _load(self, path: Path) -> _Batch:
        """The batch as on disk: its file with its change log replayed. Kept in memory while the files do not
        change, so a sync does not parse the whole batch again for each of its items."""
        try:
            cached = self._cache.get(path)
            if cached is not None and self._signature(path, self._log_path(path, cached[1].generation)) == cached[0]:
                return cached[1]
            batch = _Batch.model_validate_json(path.read_bytes())
            log_path = self._log_path(path, batch.generation)
            if log_path.exists() or log_path.is_symlink():
                with _open_log(log_path, os.O_RDWR) as handle:
                    lines = handle.read().split(b"\n")
                    # Every whole line must be a valid entry. A last piece without its newline is a line cut off by
                    # a crash while it was written, never acknowledged to anyone, so it never happened: it is cut
                    # away (every caller holds the spool's lock), or the next line would be written onto it.
                    where = {entry.key: index for index, entry in enumerate(batch.entries)}
                    for line in lines[:-1]:
                        changed = _Entry.model_validate_json(line)
                        batch.entries[where[changed.key]] = changed
                    if lines[-1]:
                        handle.truncate(handle.tell() - len(lines[-1]))
                        os.fsync(handle.fileno())
            self._cache[path] = (self._signature(path, log_path), batch)
            return batch
        except (OSError, ValidationError, KeyError) as exc:
            self._cache.pop(path, None)
            raise StorageError(f"spool file {path} or its change log is unreadable ({exc}); keep them and repair "
                               "them by hand") from exc

    def _save(self, batch: _Batch) -> None:
        """The whole batch as a new generation (write-to-temp, fsync, rename, fsync the directory: a crash leaves
        the old or the new file), then the older change logs removed: their lines are in the new file."""
        path = self._path(batch.capture_id)
        batch.generation += 1
        try:
            write_atomic(path, batch.model_dump_json(indent=2).encode(), mode=0o600)
        except BaseException:
            self._cache.pop(path, None)
            raise
        self._remove_logs(path, keep=batch.generation)  # the one just folded in, and any a crash left
        self._cache[path] = (self._signature(path, self._log_path(path, batch.generation)), batch)

    def _remove_logs(self, path: Path, keep: int | None = None) -> None:
        """The change logs of the batch at `path` other than generation `keep`."""
        own = re.compile(re.escape(path.name.removesuffix(".json")) + r"\.g(\d+)\.log")
        for candidate in path.parent.iterdir():
            found = own.fullmatch(candidate.name)
            if found and int(found.group(1)) != keep:
                candidate.unlink(missing_ok=True)

    def _remove(self, capture_id: str) -> None:
        path = self._path(capture_id)
        self._remove_logs(path)  # first: a log outliving its batch would be replayed onto a new one of that id
        path.unlink()
        self._cache.pop(path, None)
        fsync_directory(self.spool_dir)

    def _update(self, capture_id: str, key: str, change: Callable[[_Entry], None], *, durable: bool = False) -> None:
        """Change one item and append its new state to the change log; `durable` syncs the line to disk before
        returning (the record of an upload). A step that is lost in a crash without it is done again."""
        with self._flock(_LOCK):
            path = self._path(capture_id)
            batch = self._load(path)
            entry = batch.entry(key).model_copy(deep=True)
            change(entry)
            log_path = self._log_path(path, batch.generation)
            created = not log_path.exists()
            try:
                with _open_log(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as handle:
                    line = memoryview(entry.model_dump_json().encode() + b"\n")
                    while line:
                        line = line[handle.write(line) or 0:]
                    if durable:
                        os.fsync(handle.fileno())
            except BaseException:
                self._cache.pop(path, None)  # what is on disk is what the next load says
                raise
            if created:  # the log itself must survive a crash, or the lines synced into it would not
                fsync_directory(self.spool_dir)
            batch.replace_entry(entry)
            self._cache[path] = (self._signature(path, log_path), batch)
            if log_path.stat().st_size > COMPACT_LOG_BYTES:
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
                batch = self._load(path).model_copy(deep=True)  # changed here, kept only once saved
                if Path(batch.capture_dir) != capture_dir:
                    raise StorageError(f"capture {capture_id} is already spooled from {batch.capture_dir}, "
                                       f"not {capture_dir}")
            else:
                self._remove_logs(path)  # any left by a crash while an earlier batch of this id was removed
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
        on_stored: OnStored | None = None,
        *,
        wait: bool = True,
    ) -> SyncReport:
        """Upload, verify by version and record every pending item; see the module docstring.

        `on_stored(capture_id, [(item, version), ...])` is told of verified versions a few at a time (at most
        NOTIFY_EVERY, and what is verified when the store goes away): a caller that writes a whole record per
        call then writes it n / NOTIFY_EVERY times, not n. A call that raises is made again at the next sync
        with the same versions (at least once).

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
    def _sync(self, store: ObjectStore, on_stored: OnStored | None) -> SyncReport:
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
            verified: list[tuple[SpoolItem, StoredObject]] = []
            try:
                for item in batch.items:
                    result = self._sync_item(store, batch, item)
                    if isinstance(result, SyncProblem):
                        problems.append(result)
                    elif result is not None:
                        verified.append(result)
                        if len(verified) >= NOTIFY_EVERY:
                            stored.extend(self._notify(batch.capture_id, verified, on_stored, problems))
                            verified = []
            except StoreUnavailable as exc:
                # The store went away: stop here, the rest waits for the next sync.
                problems.append(SyncProblem(batch.capture_id, "*", ProblemKind.UNAVAILABLE, str(exc)))
                stored.extend(self._notify(batch.capture_id, verified, on_stored, problems))
                break
            stored.extend(self._notify(batch.capture_id, verified, on_stored, problems))
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
    ) -> tuple[SpoolItem, StoredObject] | SyncProblem | None:
        """One item through upload and verify; None when it was already done before."""
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

                self._update(capture_id, item.key, keep, durable=True)  # before verifying: never upload twice
            if record.verified_at is None:
                try:
                    record = store.verify(record)
                except DigestMismatch as exc:
                    bad = record

                    def reject(e: _Entry) -> None:
                        e.rejected.append(bad)
                        e.stored = None

                    self._update(capture_id, item.key, reject, durable=True)
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
        return item, record

    def _notify(self, capture_id: str, verified: list[tuple[SpoolItem, StoredObject]], on_stored: OnStored | None,
                problems: list[SyncProblem]) -> list[SyncedItem]:
        """Tell `on_stored` of verified versions; those it took are done (the batch forgets them)."""
        if not verified:
            return []
        if on_stored is not None:
            try:
                on_stored(capture_id, verified)
            except Exception as exc:  # custody failed: keep the batch, call again next time (at least once)
                problems.extend(self._problem(capture_id, item, ProblemKind.CALLBACK,
                                              f"on_stored failed for {item.key} version {record.version_id}: "
                                              f"{type(exc).__name__}: {exc}") for item, record in verified)
                return []

        def notified(e: _Entry) -> None:
            e.notified = True

        for item, _record in verified:
            self._update(capture_id, item.key, notified)
        return [SyncedItem(capture_id, item, record) for item, record in verified]

    def _problem(self, capture_id: str, item: SpoolItem, kind: ProblemKind, message: str) -> SyncProblem:
        if kind in {ProblemKind.LOCAL_CHANGED, ProblemKind.LOCAL_MISSING, ProblemKind.STORED_MISMATCH}:
            log.error("EVIDENCE INTEGRITY: capture %s, %s: %s", capture_id, item.key, message)
        else:
            log.warning("spool sync: capture %s, %s: %s", capture_id, item.key, message)

        def remember(e: _Entry) -> None:
            e.last_error = f"{datetime.now(UTC).isoformat()} {kind}: {message}"

        self._update(capture_id, item.key, remember)
        return SyncProblem(capture_id, item.key, kind, message)
