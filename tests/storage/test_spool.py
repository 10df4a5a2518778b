"""The spool against the real store: nothing is lost while the store is down, nothing changed is uploaded."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evidence import DigestMismatch, Digests, StorageError, StoredObject, StoreUnavailable
from storage import ObjectStore, ProblemKind, S3ObjectStore, Spool, SpoolItem
from tests.storage.conftest import closed_port, versions, write_file


def capture(tmp_path: Path, name: str = "cap-1") -> tuple[Path, list[SpoolItem]]:
    capture_dir = tmp_path / name
    items = []
    for relative, data in (("composite.mp4", os.urandom(300_000)), ("page/dom.html", b"<html>1</html>")):
        _, digests = write_file(capture_dir / relative, data)
        items.append(SpoolItem(key=f"captures/{name}/{relative}", relative_path=relative,
                               content_type="application/octet-stream", digests=digests, legal_hold=False))
    return capture_dir, items


class Recorder:
    """on_stored that remembers what it was told (custody stands in here)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, SpoolItem, StoredObject]] = []
        self.fail = fail

    def __call__(self, capture_id: str, verified: list[tuple[SpoolItem, StoredObject]]) -> None:
        self.calls.extend((capture_id, item, stored) for item, stored in verified)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("custody database is down")


@pytest.mark.integration
def test_store_down_keeps_the_batch_then_sync_stores_everything(
    store: S3ObjectStore, raw: Any, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)

    down = S3ObjectStore(f"127.0.0.1:{closed_port()}", "k", "s", bucket=store.bucket)
    report = spool.sync(down)
    assert not report.ok and report.remaining == ("cap-1",) and report.stored == ()
    assert [p.kind for p in report.problems] == [ProblemKind.UNAVAILABLE]
    assert [b.capture_id for b in spool.pending()] == ["cap-1"]

    custody = Recorder()
    report = spool.sync(store, custody)
    assert report.ok, report.problems
    assert report.completed == ("cap-1",) and report.remaining == ()
    assert spool.pending() == [] and not (tmp_path / "spool" / "cap-1.json").exists()
    assert [(c, i) for c, i, _ in custody.calls] == [("cap-1", item) for item in items]
    for (_, item, stored), synced in zip(custody.calls, report.stored, strict=True):
        assert synced.stored == stored and stored.verified_at is not None
        assert stored.key == item.key and stored.digests == item.digests
        assert [v.version_id for v in versions(raw, store.bucket, item.key)] == [stored.version_id]
        local = (capture_dir / item.relative_path).read_bytes()  # the spool never deletes local files
        assert b"".join(store.read(item.key, stored.version_id)) == local
    assert spool.sync(store).ok  # nothing left to do


@pytest.mark.integration
def test_a_file_changed_after_capture_is_reported_and_not_uploaded(
    store: S3ObjectStore, raw: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    changed = capture_dir / items[1].relative_path
    changed.write_bytes(changed.read_bytes() + b"<!-- edited -->")

    report = spool.sync(store)
    assert [(p.key, p.kind) for p in report.problems] == [(items[1].key, ProblemKind.LOCAL_CHANGED)]
    assert "NOT uploaded" in report.problems[0].message
    assert any(r.levelname == "ERROR" and "EVIDENCE INTEGRITY" in r.getMessage() for r in caplog.records)
    assert [s.item for s in report.stored] == [items[0]]
    assert versions(raw, store.bucket, items[1].key) == []
    assert report.remaining == ("cap-1",) and changed.exists()
    (batch,) = spool.pending()
    assert set(batch.stored) == {items[0].key}

    again = spool.sync(store)  # reported again, the good item is not uploaded twice
    assert [p.kind for p in again.problems] == [ProblemKind.LOCAL_CHANGED] and again.stored == ()
    assert len(versions(raw, store.bucket, items[0].key)) == 1


@pytest.mark.integration
def test_a_missing_local_file_is_reported(store: S3ObjectStore, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    (capture_dir / items[0].relative_path).unlink()
    report = spool.sync(store)
    assert [(p.key, p.kind) for p in report.problems] == [(items[0].key, ProblemKind.LOCAL_MISSING)]
    assert report.remaining == ("cap-1",)


class VerifyFailsOnce:
    """The real store, except that the first verify finds the store gone (as after an upload, a crash)."""

    def __init__(self, store: S3ObjectStore) -> None:
        self.store = store
        self.bucket = store.bucket
        self.failed = False

    def ensure_bucket(self) -> None:
        self.store.ensure_bucket()

    def put_file(self, key: str, path: Path, *, content_type: str, digests: Digests, legal_hold: bool = False,
                 metadata: dict[str, str] | None = None) -> StoredObject:
        return self.store.put_file(key, path, content_type=content_type, digests=digests, legal_hold=legal_hold,
                                   metadata=metadata)

    def verify(self, stored: StoredObject) -> StoredObject:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("the store went away after the upload")
        return self.store.verify(stored)

    def read(self, key: str, version_id: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.store.read(key, version_id, offset, length)

    def set_legal_hold(self, key: str, version_id: str, on: bool) -> None:
        self.store.set_legal_hold(key, version_id, on)


@pytest.mark.integration
def test_an_uploaded_version_is_recorded_before_verify_and_never_uploaded_twice(
    store: S3ObjectStore, raw: Any, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items[:1])
    flaky: ObjectStore = VerifyFailsOnce(store)
    first = spool.sync(flaky)
    assert [p.kind for p in first.problems] == [ProblemKind.UNAVAILABLE]
    (batch,) = spool.pending()
    recorded = batch.stored[items[0].key]
    assert recorded.verified_at is None

    second = spool.sync(flaky)
    assert second.ok and second.stored[0].stored.version_id == recorded.version_id
    assert [v.version_id for v in versions(raw, store.bucket, items[0].key)] == [recorded.version_id]


@pytest.mark.integration
def test_on_stored_failure_keeps_the_batch_and_is_called_again(
    store: S3ObjectStore, raw: Any, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    custody = Recorder(fail=1)
    first = spool.sync(store, custody)
    # Told together, refused together: every version of the call waits for the next sync.
    assert [(p.key, p.kind) for p in first.problems] == [(item.key, ProblemKind.CALLBACK) for item in items]
    assert first.remaining == ("cap-1",)
    second = spool.sync(store, custody)
    assert second.ok and second.completed == ("cap-1",)
    calls = [(item.key, stored.version_id) for _, item, stored in custody.calls]
    assert calls[0] == calls[2] and calls[0][0] == items[0].key  # the same version, told again
    for item in items:
        assert len(versions(raw, store.bucket, item.key)) == 1


@pytest.mark.integration
def test_a_stored_copy_that_does_not_read_back_is_uploaded_again(
    store: S3ObjectStore, raw: Any, tmp_path: Path
) -> None:
    """Simulated by a verify that fails on the digests once: the version is set aside, a new one stored."""
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items[:1])

    class MismatchOnce(VerifyFailsOnce):
        def verify(self, stored: StoredObject) -> StoredObject:
            if not self.failed:
                self.failed = True
                raise DigestMismatch(f"{stored.key} version {stored.version_id}: SHA256 differs")
            return self.store.verify(stored)

    first = spool.sync(MismatchOnce(store))
    assert [p.kind for p in first.problems] == [ProblemKind.STORED_MISMATCH]
    rejected = [json.loads(line)["rejected"] for line in
                (tmp_path / "spool" / "cap-1.g1.log").read_text().splitlines()][-1]
    assert len(rejected) == 1
    second = spool.sync(store)
    assert second.ok
    assert len(versions(raw, store.bucket, items[0].key)) == 2
    assert second.stored[0].stored.version_id != rejected[0]["version_id"]


def test_enqueue_is_idempotent_atomic_and_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items[:1])
    spool.enqueue("cap-1", capture_dir, items)  # adds the second, keeps the first once
    spool.enqueue("cap-1", capture_dir, items)
    (batch,) = spool.pending()
    assert batch.items == tuple(items) and batch.capture_dir == capture_dir.absolute()
    path = tmp_path / "spool" / "cap-1.json"
    assert json.loads(path.read_text())["schema_id"] == "wangzheng/spool-batch/v1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == [".spool.lock", "cap-1.json"]


def test_enqueue_refuses_what_it_cannot_keep_safely(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    other = SpoolItem(items[0].key, items[1].relative_path, "text/html", items[1].digests)
    with pytest.raises(StorageError, match="evidence is never replaced"):
        spool.enqueue("cap-1", capture_dir, [other])
    with pytest.raises(ValueError, match="cannot name"):
        spool.enqueue("../evil", capture_dir, items)
    with pytest.raises(ValueError, match="relative"):
        spool.enqueue("cap-2", capture_dir, [SpoolItem("k", "../outside", "x/y", items[0].digests)])
    with pytest.raises(StorageError, match="no such file"):
        spool.enqueue("cap-2", capture_dir, [SpoolItem("k", "missing.bin", "x/y", items[0].digests)])
    copy = shutil.copytree(capture_dir, tmp_path / "copy")
    with pytest.raises(StorageError, match="already spooled from"):
        spool.enqueue("cap-1", copy, items)
    assert [b.capture_id for b in spool.pending()] == ["cap-1"]


@pytest.mark.integration
def test_only_one_sync_runs_at_a_time(store: S3ObjectStore, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    fd = os.open(tmp_path / "spool" / ".sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's sync would
        busy = spool.sync(store, wait=False)
        assert busy.busy and not busy.ok and busy.remaining == ("cap-1",)
    finally:
        os.close(fd)
    assert spool.sync(store).ok


@pytest.mark.integration
def test_a_sync_that_waits_uploads_what_the_running_sync_left(store: S3ObjectStore, tmp_path: Path) -> None:
    """A capture that finds another sync running waits for it, then uploads its own batch itself: the running
    sync read the queue before the batch was added and would never upload it."""
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    (tmp_path / "spool").mkdir()
    fd = os.open(tmp_path / "spool" / ".sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process's sync, which began before this batch existed
    spool.enqueue("cap-1", capture_dir, items)
    released = threading.Timer(1.0, os.close, (fd,))
    released.start()
    started = time.monotonic()
    report = spool.sync(store)
    released.join()
    assert time.monotonic() - started >= 0.9  # it waited for the other sync instead of giving up
    assert report.ok and not report.busy and report.completed == ("cap-1",)
    assert spool.pending() == []


# -- the change log: one line per step, never the whole batch rewritten --

def _mark(stored: bool) -> Any:
    def change(entry: Any) -> None:
        entry.last_error = "marked" if stored else None
    return change


def many_items(tmp_path: Path, count: int) -> tuple[Path, list[SpoolItem]]:
    capture_dir = tmp_path / "many"
    items = []
    for number in range(count):
        _, digests = write_file(capture_dir / f"f{number}", b"x")
        items.append(SpoolItem(f"captures/many/f{number}", f"f{number}", "application/octet-stream", digests))
    return capture_dir, items


def test_a_step_appends_one_line_and_leaves_the_batch_file_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = many_items(tmp_path, 300)
    spool.enqueue("cap-1", capture_dir, items)
    batch_file = tmp_path / "spool" / "cap-1.json"
    before = batch_file.stat()
    for item in items:
        spool._update("cap-1", item.key, _mark(True))
    after = batch_file.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    log_lines = (tmp_path / "spool" / "cap-1.g1.log").read_text().splitlines()
    assert len(log_lines) == 300
    fresh = Spool(tmp_path / "spool")  # another process reads the same state from the files
    assert all(fresh._load(batch_file).entry(item.key).last_error == "marked" for item in items)


def test_another_process_sees_each_step(tmp_path: Path) -> None:
    mine, theirs = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    mine.enqueue("cap-1", capture_dir, items)
    path = tmp_path / "spool" / "cap-1.json"
    assert theirs._load(path).entry(items[0].key).last_error is None  # now cached there
    mine._update("cap-1", items[0].key, _mark(True))
    assert theirs._load(path).entry(items[0].key).last_error == "marked"
    theirs._update("cap-1", items[1].key, _mark(True))
    mine.enqueue("cap-1", capture_dir, items)  # a new generation written by the one, read by the other
    assert theirs._load(path).entry(items[1].key).last_error == "marked"
    assert mine._load(path).entry(items[0].key).last_error == "marked"


def one_step_logged(tmp_path: Path) -> tuple[list[SpoolItem], Path]:
    """A batch of two items, the first marked: its items and its change log."""
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    spool._update("cap-1", items[0].key, _mark(True))
    return items, tmp_path / "spool" / "cap-1.g1.log"


def test_a_line_cut_off_by_a_crash_never_happened_and_the_log_goes_on(tmp_path: Path) -> None:
    items, log = one_step_logged(tmp_path)
    whole = log.read_bytes()
    with log.open("ab") as handle:  # the crash: half of the next line reached the disk
        handle.write(whole[: len(whole) // 2].replace(b'"marked"', b'"torn"'))
    after_crash = Spool(tmp_path / "spool")
    assert after_crash._load(tmp_path / "spool" / "cap-1.json").entry(items[0].key).last_error == "marked"
    after_crash._update("cap-1", items[1].key, _mark(True))  # written after the cut, not onto the torn piece
    again = Spool(tmp_path / "spool")._load(tmp_path / "spool" / "cap-1.json")
    assert [again.entry(item.key).last_error for item in items] == ["marked", "marked"]


def test_a_damaged_whole_line_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    _items, log = one_step_logged(tmp_path)
    log.write_bytes(b'{"key": "captures/cap-1/elsewhere"}\n' + log.read_bytes())
    with pytest.raises(StorageError, match="unreadable"):
        Spool(tmp_path / "spool").pending()


def test_a_long_log_is_folded_into_a_new_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storage.spool.COMPACT_LOG_BYTES", 2_000)
    spool = Spool(tmp_path / "spool")
    capture_dir, items = many_items(tmp_path, 20)
    spool.enqueue("cap-1", capture_dir, items)
    for item in items:
        spool._update("cap-1", item.key, _mark(True))
    names = sorted(p.name for p in (tmp_path / "spool").iterdir() if not p.name.startswith("."))
    generation = json.loads((tmp_path / "spool" / "cap-1.json").read_text())["generation"]
    assert generation > 1
    assert [n for n in names if n.endswith(".log")] in ([], [f"cap-1.g{generation}.log"])  # older logs removed
    (tmp_path / "spool" / "cap-1.g1.log").write_text("left by a crash before it was removed\n")
    (tmp_path / "spool" / "cap-1.g1.log.g2.log").write_text("not a log of this batch\n")
    again = Spool(tmp_path / "spool")
    assert all(again._load(tmp_path / "spool" / "cap-1.json").entry(item.key).last_error == "marked"
               for item in items)
    again.enqueue("cap-1", capture_dir, items)  # a new generation: the stale log goes, the stranger stays
    assert not (tmp_path / "spool" / "cap-1.g1.log").exists()
    assert (tmp_path / "spool" / "cap-1.g1.log.g2.log").exists()


def test_a_failed_enqueue_changes_nothing_even_in_memory(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    capture_dir, items = many_items(tmp_path, 3)
    spool.enqueue("cap-1", capture_dir, items[:1])
    clash = SpoolItem(items[0].key, items[0].relative_path, "text/html", items[0].digests)
    with pytest.raises(StorageError, match="never replaced"):
        spool.enqueue("cap-1", capture_dir, [items[1], clash])
    assert [len(b.items) for b in spool.pending()] == [1]


@pytest.mark.integration
def test_verified_versions_are_told_in_groups_and_those_before_an_outage_are_kept(
    store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storage.spool.NOTIFY_EVERY", 4)
    spool = Spool(tmp_path / "spool")
    capture_dir, items = many_items(tmp_path, 11)
    spool.enqueue("cap-1", capture_dir, items)
    told: list[list[str]] = []

    def custody(capture_id: str, verified: list[tuple[SpoolItem, StoredObject]]) -> None:
        told.append([item.key for item, _stored in verified])

    class GoneAtTheSeventh(VerifyFailsOnce):
        def put_file(self, key: str, path: Path, **kwargs: Any) -> StoredObject:
            if key == items[6].key and not self.failed:
                self.failed = True
                raise StoreUnavailable("the store went away")
            return self.store.put_file(key, path, **kwargs)

        def verify(self, stored: StoredObject) -> StoredObject:
            return self.store.verify(stored)

    first = spool.sync(GoneAtTheSeventh(store), custody)
    assert [p.kind for p in first.problems] == [ProblemKind.UNAVAILABLE]
    # Four told as a group, then the two verified before the outage: kept, not uploaded or told again.
    assert told == [[i.key for i in items[:4]], [i.key for i in items[4:6]]]
    assert len(first.stored) == 6
    second = spool.sync(store, custody)
    assert second.ok and second.completed == ("cap-1",)
    assert told[2:] == [[i.key for i in items[6:10]], [items[10].key]]


def test_a_log_left_by_a_removed_batch_never_joins_a_new_batch_of_that_id(tmp_path: Path) -> None:
    """The custody log's batch id comes back with every checkpoint: a crash while one was removed must not
    leave lines that a later batch of the same id would replay."""
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items[:1])
    spool._update("cap-1", items[0].key, _mark(True))
    left = (tmp_path / "spool" / "cap-1.g1.log").read_bytes()
    with spool._flock(".spool.lock"):
        spool._remove("cap-1")
    (tmp_path / "spool" / "cap-1.g1.log").write_bytes(left)  # as if the crash came before the log went
    spool.enqueue("cap-1", capture_dir, items[1:])
    fresh = Spool(tmp_path / "spool")
    (batch,) = fresh.pending()
    assert batch.items == tuple(items[1:])
    assert fresh._load(tmp_path / "spool" / "cap-1.json").entry(items[1].key).last_error is None


@pytest.mark.parametrize("content", [b"", b"one line without its newline"])
def test_a_change_log_planted_as_a_link_is_neither_written_nor_cut_through(tmp_path: Path, content: bytes) -> None:
    """The spool runs as the capture's user (root on a capture machine): a link put where a change log goes must
    not make it append to, or cut short, the file the link points at."""
    outside = tmp_path / "outside.conf"
    outside.write_bytes(content)
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    (tmp_path / "spool" / "cap-1.g1.log").symlink_to(outside)
    with pytest.raises(StorageError, match="change log"):
        Spool(tmp_path / "spool")._update("cap-1", items[0].key, _mark(True))
    with pytest.raises(StorageError, match="change log"):
        Spool(tmp_path / "spool").pending()
    assert outside.read_bytes() == content


@pytest.mark.parametrize("step", ["append", "load"])
def test_a_change_log_planted_as_a_fifo_is_refused_not_waited_on(tmp_path: Path, step: str) -> None:
    """A named pipe put where a change log goes: opening it for appending would wait for a reader, and reading it
    would wait for a writer, forever, with the spool's lock held. It is refused as not a regular file."""
    spool = Spool(tmp_path / "spool")
    capture_dir, items = capture(tmp_path)
    spool.enqueue("cap-1", capture_dir, items)
    os.mkfifo(tmp_path / "spool" / "cap-1.g1.log")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            if step == "append":
                Spool(tmp_path / "spool")._update("cap-1", items[0].key, _mark(True))
            else:
                Spool(tmp_path / "spool").pending()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert outcome, "the spool waited on the pipe"
    assert isinstance(outcome[0], StorageError) and "not a regular file" in str(outcome[0]), outcome
