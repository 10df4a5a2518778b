"""The custody ledger on SQLite and PostgreSQL: chain, concurrency, database guards, tamper detection,
signed checkpoints and offline proofs."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import DBAPIError

from custody import merkle
from custody.ledger import Ledger
from custody.proofs import (
    GENESIS_PREV_HASH,
    ConsistencyProof,
    InclusionProof,
    checkpoint_body,
    compute_entry_hash,
    entry_bytes,
    format_time,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from evidence import (
    Checkpoint,
    ConfigurationError,
    CustodyAction,
    CustodyEntry,
    EvidenceError,
    LedgerCorrupt,
    TimestampInvalid,
    TimestampRecord,
    TimestampStatus,
    UsageError,
)
from evidence.canonical import canonical_json
from tests.custody._workers import append_many
from tests.custody.conftest import Database

# -- helpers ---------------------------------------------------------------------------------------------------


class Signer:
    """A real ECDSA P-256 key, as the node's evidence key signs checkpoints."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.calls = 0

    def sign(self, body: bytes) -> bytes:
        self.calls += 1
        return self.key.sign(body, ec.ECDSA(hashes.SHA256()))

    def verify(self, body: bytes, signature_b64: str) -> None:
        self.key.public_key().verify(base64.b64decode(signature_b64, validate=True), body, ec.ECDSA(hashes.SHA256()))


@pytest.fixture
def ledger(db: Database) -> Iterator[Ledger]:
    with Ledger(db.url) as opened:
        yield opened


ACTIONS = list(CustodyAction)


def fill(ledger: Ledger, count: int, subject: str = "capture-1") -> list[CustodyEntry]:
    return [ledger.append("alice", ACTIONS[i % len(ACTIONS)], subject, {"n": i, "note": "证据"})
            for i in range(1, count + 1)]


def leaves_of(entries: list[CustodyEntry]) -> list[bytes]:
    return [merkle.leaf_hash(entry_bytes(e)) for e in entries]


def rows(db: Database) -> dict[int, dict[str, Any]]:
    return {r.seq: dict(r._mapping) for r in db.execute("SELECT * FROM custody_entries ORDER BY seq")}


def rehash(row: dict[str, Any]) -> str:
    """What an attacker computes: the hash chain has no secret."""
    body = {k: row[k] for k in ("seq", "at", "actor", "action", "subject", "prev_hash")}
    body["details"] = json.loads(row["details"])
    return hashlib.sha256(canonical_json(body)).hexdigest()


# -- append, read, verify ---------------------------------------------------------------------------------------


def test_append_read_verify_round_trip(db: Database, ledger: Ledger) -> None:
    assert ledger.size() == 0
    assert ledger.verify() == (0, hashlib.sha256(b"").digest())
    appended = [
        ledger.append("alice", "captured", "cap-1", {"urls": ["https://例子.cn/"], "tiles": 4}),
        ledger.append("bob", "hashed", "cap-1", {"sha256": "ab" * 32, "nested": {"z": 1, "a": [True, None]}}),
        ledger.append("alice", "captured", "cap-2", {}),
        ledger.append("carol", "stored", "cap-1", {"version_id": "v1", "size": 2**40}),
    ]
    assert [e.seq for e in appended] == [1, 2, 3, 4]
    assert appended[0].prev_hash == GENESIS_PREV_HASH
    for earlier, later in pairwise(appended):
        assert later.prev_hash == earlier.entry_hash
        assert later.at >= earlier.at
    for entry in appended:
        assert entry.entry_hash == compute_entry_hash(entry)
        assert entry.at.tzinfo is not None and entry.at.utcoffset() == timedelta(0)

    assert ledger.entries() == appended
    assert ledger.entries("cap-1") == [appended[0], appended[1], appended[3]]
    assert ledger.entries(start=2, end=3) == appended[1:3]
    assert ledger.entries("cap-1", start=2) == [appended[1], appended[3]]
    assert ledger.entries("nobody") == []
    assert ledger.size() == 4
    assert ledger.verify() == (4, merkle.root(leaves_of(appended)))

    # The database holds exactly the hashed text.
    stored = rows(db)
    assert stored[2]["details"] == canonical_json(appended[1].details).decode()
    assert stored[2]["at"] == format_time(appended[1].at)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stored[2]["at"])

    # Another process (here: another Ledger) sees the same ledger.
    with Ledger(db.url) as reopened:
        assert reopened.entries() == appended
        assert reopened.verify() == ledger.verify()
        assert reopened.append("dave", "verified", "cap-2", {}).prev_hash == appended[-1].entry_hash


def test_details_are_stored_in_canonical_form(ledger: Ledger) -> None:
    details: dict[str, Any] = {"b": (1, 2), "a": 1.0, "c": 0.5, "d": "文\n\"", "e": -(2**63), "f": [{"y": 1, "x": 2}]}
    entry = ledger.append("alice", "exported", "cap", details)
    # Tuples become lists and 1.0 becomes 1, exactly as canonical JSON writes them, so what append
    # returns equals what is read back and hashes the same.
    assert entry.details == {"b": [1, 2], "a": 1, "c": 0.5, "d": "文\n\"", "e": -(2**63), "f": [{"y": 1, "x": 2}]}
    (read,) = ledger.entries()
    assert read == entry
    assert compute_entry_hash(read) == entry.entry_hash
    ledger.verify()


def test_bad_input_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    cases: list[tuple[str, str, str, Any]] = [
        ("", "captured", "cap", {}),
        ("alice", " ", "cap", {}),
        ("alice", "deleted", "cap", {}),  # not a custody action: the ledger records only what Wangzheng does
        ("alice", "captured", "", {}),
        ("al\x00ice", "captured", "cap", {}),
        ("alice", "captured", "cap", {"x": float("nan")}),
        ("alice", "captured", "cap", {"x": {1, 2}}),
        ("alice", "captured", "cap", {"x": datetime.now(UTC)}),
        ("alice", "captured", "cap", {1: "non-string key"}),
        ("alice", "captured", "cap", {"x": "\ud800"}),
        ("alice", "captured", "cap", ["not", "a", "dict"]),
    ]
    for actor, action, subject, details in cases:
        with pytest.raises(UsageError):
            ledger.append(actor, action, subject, details)
    assert ledger.size() == 0


def test_entry_encoding_is_fixed_and_deterministic() -> None:
    """A worked example, written out byte for byte: another implementation must produce these exact bytes."""
    entry = CustodyEntry(
        seq=1, at=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC), actor="alice", action="captured", subject="cap-1",
        details={"url": "https://例子.cn/", "n": 1}, prev_hash=GENESIS_PREV_HASH, entry_hash="f" * 64,
    )
    body = (
        '{"action":"captured","actor":"alice","at":"2025-01-02T03:04:05.000006Z",'
        '"details":{"n":1,"url":"https://例子.cn/"},'
        '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
        '"seq":1,"subject":"cap-1"}'
    ).encode()
    expected_hash = hashlib.sha256(body).hexdigest()
    assert compute_entry_hash(entry) == expected_hash
    sealed = entry.model_copy(update={"entry_hash": expected_hash})
    assert entry_bytes(sealed) == (
        '{"action":"captured","actor":"alice","at":"2025-01-02T03:04:05.000006Z",'
        '"details":{"n":1,"url":"https://例子.cn/"},'
        f'"entry_hash":"{expected_hash}",'
        '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
        '"seq":1,"subject":"cap-1"}'
    ).encode()
    # Same inputs, same hash; key order and time zone of the input do not matter, the instant does.
    again = CustodyEntry(
        seq=1, at=datetime(2025, 1, 2, 11, 4, 5, 6, tzinfo=timezone(timedelta(hours=8))), actor="alice",
        action="captured", subject="cap-1", details={"n": 1, "url": "https://例子.cn/"},
        prev_hash=GENESIS_PREV_HASH, entry_hash="0" * 64,
    )
    assert compute_entry_hash(again) == expected_hash
    # The exported line parses back to the same entry (what an evidence package carries).
    assert CustodyEntry.model_validate_json(entry_bytes(sealed)) == sealed
    assert entry_bytes(CustodyEntry.model_validate_json(entry_bytes(sealed))) == entry_bytes(sealed)
    for changed in ({"seq": 2}, {"actor": "bob"}, {"details": {"n": 2, "url": "https://例子.cn/"}},
                    {"at": datetime(2025, 1, 2, 3, 4, 5, 7, tzinfo=UTC)}, {"prev_hash": "1" * 64}):
        assert compute_entry_hash(entry.model_copy(update=changed)) != expected_hash
    with pytest.raises(UsageError, match="time zone"):
        compute_entry_hash(entry.model_copy(update={"at": datetime(2025, 1, 2, 3, 4, 5)}))


def test_stored_hashes_recompute_on_both_backends(ledger: Ledger) -> None:
    appended = fill(ledger, 5)
    for entry in ledger.entries():
        assert compute_entry_hash(entry) == entry.entry_hash
    assert [e.entry_hash for e in ledger.entries()] == [e.entry_hash for e in appended]


def test_unsupported_urls_are_configuration_errors() -> None:
    for url in ("mysql://u@h/db", "postgresql+psycopg2://u@h/db", "not a url"):
        with pytest.raises(ConfigurationError):
            Ledger(url)


# -- concurrency -------------------------------------------------------------------------------------------------


def test_four_processes_append_concurrently(db: Database) -> None:
    context = multiprocessing.get_context("spawn")
    workers, each = 4, 25
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=append_many, args=(db.url, w, each, barrier, results)) for w in range(workers)]
    for process in processes:
        process.start()
    spans: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + 300
    while len(spans) < workers and time.monotonic() < deadline:
        try:
            worker, started, ended = results.get(timeout=1)
            spans[worker] = (started, ended)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                break  # a worker failed: stop waiting, its exit code is reported below
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * workers
    assert len(spans) == workers
    # The four really contended: every worker was still appending when the last one began.
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())

    with Ledger(db.url) as ledger:
        entries = ledger.entries()
        assert [e.seq for e in entries] == list(range(1, workers * each + 1))
        assert ledger.verify()[0] == workers * each
        for worker in range(workers):
            mine = [e.details["index"] for e in entries if e.actor == f"worker-{worker}"]
            assert mine == list(range(each)), f"worker {worker}'s appends are missing or out of order"


# -- database guards ----------------------------------------------------------------------------------------------


def refused(db: Database, sql: str, params: dict[str, Any] | None = None) -> None:
    with pytest.raises(DBAPIError, match=r"append-only|must take the next seq|never replaced"):
        db.execute(sql, params)


def test_database_refuses_update_and_delete(db: Database, ledger: Ledger) -> None:
    signer = Signer()
    fill(ledger, 3)
    ledger.checkpoint("node", signer.sign)
    before_entries, before_checkpoints = rows(db), db.execute("SELECT * FROM custody_checkpoints")
    refused(db, "UPDATE custody_entries SET actor = 'mallory' WHERE seq = 2")
    refused(db, "UPDATE custody_entries SET details = '{}'")
    refused(db, "DELETE FROM custody_entries WHERE seq = 3")
    refused(db, "DELETE FROM custody_entries")
    refused(db, "UPDATE custody_checkpoints SET root_hash = 'x'")
    refused(db, "DELETE FROM custody_checkpoints")
    if db.kind == "postgresql":
        refused(db, "TRUNCATE custody_entries")
        refused(db, "TRUNCATE custody_checkpoints")
    assert rows(db) == before_entries
    assert db.execute("SELECT * FROM custody_checkpoints") == before_checkpoints
    ledger.verify(signer.verify)


def test_missing_guards_are_tampering_not_quietly_recreated(db: Database, ledger: Ledger) -> None:
    """Someone with database access dropped the triggers and edited an entry. The next process to open the ledger
    must say so and append nothing; the guards come back only when someone restores them on purpose."""
    fill(ledger, 2)
    dropped = db.drop_guards()
    assert len(dropped) == (6 if db.kind == "sqlite" else 5)
    db.execute("UPDATE custody_entries SET actor = 'mallory' WHERE seq = 2")  # unguarded now
    with Ledger(db.url) as reopened:
        assert reopened.size() == 2  # reading still works, so the damage can be looked at
        assert set(reopened.missing_guards) == set(dropped)
        with pytest.raises(LedgerCorrupt, match="append-only guards are gone"):
            reopened.append("alice", "captured", "cap", {})
        with pytest.raises(LedgerCorrupt, match=r"^entry 2: hash does not match its contents; and the append-only "
                                                r"guards are gone"):
            reopened.verify()
        assert reopened.size() == 2
        assert set(reopened.restore_guards()) == set(dropped)
        refused(db, "UPDATE custody_entries SET actor = 'alice' WHERE seq = 2")
        with pytest.raises(LedgerCorrupt, match=r"^entry 2: hash does not match its contents$"):
            reopened.verify()


def test_a_disabled_trigger_counts_as_missing(db: Database, ledger: Ledger) -> None:
    if db.kind == "sqlite":
        return  # SQLite triggers cannot be disabled, only dropped
    fill(ledger, 1)
    db.execute("ALTER TABLE custody_entries DISABLE TRIGGER custody_entries_append_only")
    with Ledger(db.url) as reopened:
        assert reopened.missing_guards == ("custody_entries_append_only",)
        with pytest.raises(LedgerCorrupt, match="guards are gone"):
            reopened.append("alice", "captured", "cap", {})


def test_guards_that_are_there_in_name_only_count_as_gone(db: Database, ledger: Ledger) -> None:
    """A trigger of the right name that does nothing, a guard function replaced, a trigger set to fire only for
    replicas, or the guards' version record removed (which once made the next process reinstall the guards in
    silence): each is reported when the ledger is opened."""
    fill(ledger, 2)
    if db.kind == "sqlite":
        db.execute("DROP TRIGGER custody_entries_no_update")
        db.execute("CREATE TRIGGER custody_entries_no_update BEFORE UPDATE ON custody_entries WHEN 0 BEGIN "
                   "SELECT 1; END")
        expected = {"custody_entries_no_update"}
    else:
        db.execute("CREATE OR REPLACE FUNCTION custody_check_append() RETURNS trigger LANGUAGE plpgsql AS "
                   "$fn$ BEGIN RETURN NEW; END $fn$")
        db.execute("ALTER TABLE custody_checkpoints ENABLE REPLICA TRIGGER custody_checkpoints_append_only")
        expected = {"custody_entries_in_order", "custody_checkpoints_append_only"}
    with Ledger(db.url) as reopened:
        assert set(reopened.missing_guards) == expected
        with pytest.raises(LedgerCorrupt, match="guards are gone"):
            reopened.append("alice", "captured", "cap", {})
        assert set(reopened.restore_guards()) == expected
        reopened.append("alice", "captured", "cap", {})
    db.execute("DELETE FROM custody_meta")
    with Ledger(db.url) as reopened:
        assert any("version record" in name for name in reopened.missing_guards)
        with pytest.raises(LedgerCorrupt, match="guards are gone"):
            reopened.append("alice", "captured", "cap", {})
        assert reopened.restore_guards() == ["the guards' version record"]
        assert reopened.append("alice", "captured", "cap", {}).seq == 4


def test_insert_or_replace_and_out_of_order_inserts_are_refused(db: Database, ledger: Ledger) -> None:
    """INSERT OR REPLACE deleted entry 2 on SQLite without firing the DELETE trigger; an insert that skips a seq,
    reuses one or does not link to the last entry is refused by the database itself."""
    entries = fill(ledger, 3)
    ledger.checkpoint("node", Signer().sign)
    row = rows(db)[2]
    if db.kind == "sqlite":
        refused(db, "INSERT OR REPLACE INTO custody_entries (seq, at, actor, action, subject, details, prev_hash, "
                    "entry_hash) VALUES (2, :at, 'mallory', 'captured', 'x', '{}', :prev, :hash)",
                {"at": row["at"], "prev": row["prev_hash"], "hash": row["entry_hash"]})
        refused(db, "INSERT OR REPLACE INTO custody_checkpoints (tree_size, root_hash, at, signer, signature) "
                    "VALUES (3, :root, :at, 'x', 'x')", {"root": "0" * 64, "at": row["at"]})
    else:
        refused(db, "INSERT INTO custody_entries (seq, at, actor, action, subject, details, prev_hash, entry_hash) "
                    "VALUES (2, :at, 'mallory', 'captured', 'x', '{}', :prev, :hash) ON CONFLICT (seq) DO UPDATE "
                    "SET actor = 'mallory'", {"at": row["at"], "prev": row["prev_hash"], "hash": row["entry_hash"]})
    for seq, prev in ((5, entries[-1].entry_hash), (4, "ab" * 32)):
        refused(db, "INSERT INTO custody_entries (seq, at, actor, action, subject, details, prev_hash, entry_hash) "
                    "VALUES (:seq, :at, 'mallory', 'captured', 'x', '{}', :prev, :hash)",
                {"seq": seq, "at": row["at"], "prev": prev, "hash": "cd" * 32})
    assert [e.actor for e in ledger.entries()] == ["alice"] * 3
    ledger.verify()


# -- tamper detection -----------------------------------------------------------------------------------------------


def tamper_details(db: Database) -> None:
    db.execute("UPDATE custody_entries SET details = :d WHERE seq = 5", {"d": '{"n":500,"note":"证据"}'})


def tamper_time(db: Database) -> None:
    at = rows(db)[7]["at"]
    later = format_time(datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) + timedelta(seconds=1))
    db.execute("UPDATE custody_entries SET at = :at WHERE seq = 7", {"at": later})


def tamper_time_spelling(db: Database) -> None:
    # The same instant spelled differently: not the bytes that were hashed.
    at = rows(db)[7]["at"]
    db.execute("UPDATE custody_entries SET at = :at WHERE seq = 7", {"at": at[:-1] + "+00:00"})


def tamper_details_spelling(db: Database) -> None:
    # The same JSON value written differently (key order, spaces): not the bytes that were hashed.
    db.execute("UPDATE custody_entries SET details = :d WHERE seq = 3", {"d": '{"note": "证据", "n": 3}'})


def tamper_delete_last(db: Database) -> None:
    db.execute("DELETE FROM custody_entries WHERE seq = 12")


def tamper_delete_middle(db: Database) -> None:
    db.execute("DELETE FROM custody_entries WHERE seq = 5")


def tamper_reorder(db: Database) -> None:
    db.execute("UPDATE custody_entries SET seq = -4 WHERE seq = 4")
    db.execute("UPDATE custody_entries SET seq = 4 WHERE seq = 5")
    db.execute("UPDATE custody_entries SET seq = 5 WHERE seq = -4")


def tamper_relink(db: Database) -> None:
    # Skip entry 5: entry 6 now claims entry 4 as its predecessor, with its own hash recomputed to match.
    row = rows(db)[6]
    row["prev_hash"] = rows(db)[4]["entry_hash"]
    db.execute("UPDATE custody_entries SET prev_hash = :p, entry_hash = :h WHERE seq = 6",
               {"p": row["prev_hash"], "h": rehash(row)})


def tamper_rewrite_tail(db: Database) -> None:
    # Rewrite entries 8..12 and recompute the whole chain: every hash and link holds; only the checkpoint knows.
    stored = rows(db)
    prev = stored[7]["entry_hash"]
    for seq in range(8, 13):
        row = stored[seq]
        row["details"] = canonical_json({"n": seq, "note": "rewritten"}).decode()
        row["prev_hash"] = prev
        row["entry_hash"] = prev = rehash(row)
        db.execute("UPDATE custody_entries SET details = :details, prev_hash = :prev_hash, entry_hash = :entry_hash "
                   "WHERE seq = :seq", row)


def tamper_checkpoint_root(db: Database) -> None:
    db.execute("UPDATE custody_checkpoints SET root_hash = :r WHERE tree_size = 12", {"r": "ab" * 32})


TAMPERING: list[tuple[Callable[[Database], None], str]] = [
    (tamper_details, "entry 5: hash does not match its contents"),
    (tamper_details_spelling, "entry 3: details are not the canonical JSON object that was hashed"),
    (tamper_time, "entry 7: hash does not match its contents"),
    (tamper_time_spelling, "entry 7: its time is not in the ledger's form"),
    (tamper_delete_last, "checkpoint at size 12: the ledger holds only 11 entries"),
    (tamper_delete_middle, "entry 5: missing"),
    (tamper_reorder, "entry 4: hash does not match its contents"),
    (tamper_relink, "entry 6: prev_hash does not link to entry 5"),
    (tamper_rewrite_tail, "checkpoint at size 12: root differs from the recomputed tree"),
    (tamper_checkpoint_root, "checkpoint at size 12: root differs from the recomputed tree"),
]


@pytest.mark.parametrize(("tamper", "message"), TAMPERING, ids=[t.__name__ for t, _ in TAMPERING])
def test_tampering_is_caught(db: Database, ledger: Ledger, tamper: Callable[[Database], None], message: str) -> None:
    signer = Signer()
    fill(ledger, 12)
    ledger.checkpoint("node", signer.sign)
    assert ledger.verify(signer.verify)[0] == 12
    db.drop_guards()
    tamper(db)
    with pytest.raises(LedgerCorrupt, match="^" + re.escape(message)):
        ledger.verify(signer.verify)
    # Nor will the ledger sign while its guards are gone (a checkpoint checks what was added since the last one
    # and the stored tree against the last signed root; `verify` names what was changed).
    with pytest.raises(LedgerCorrupt):
        ledger.checkpoint("node", signer.sign)
    assert signer.calls == 1


@pytest.mark.parametrize(("tamper", "message"), TAMPERING[:8], ids=[t.__name__ for t, _ in TAMPERING[:8]])
def test_a_tampered_entry_is_never_proved_nor_signed_over(db: Database, ledger: Ledger,
                                                         tamper: Callable[[Database], None], message: str) -> None:
    signer = Signer()
    fill(ledger, 12)
    first = ledger.checkpoint("node", signer.sign)
    db.drop_guards()
    tamper(db)
    ledger.restore_guards()  # the guards put back on purpose: what was changed is still caught
    with pytest.raises((LedgerCorrupt, UsageError)):  # UsageError: fewer entries than the proof's tree
        for seq in range(1, 13):
            ledger.inclusion_proof(seq, 12)
    try:
        ledger.append("after", CustodyAction.VIEWED, "x", {})
        later = ledger.checkpoint("node", signer.sign)
    except LedgerCorrupt:
        return
    # If it signs, it signs the tree that was first signed, grown by the new entry, never the changed entries.
    proof = ledger.consistency_proof(first.tree_size, later.tree_size)
    assert proof.old_root == first.root_hash
    with pytest.raises(LedgerCorrupt):
        ledger.verify(signer.verify)


def test_a_changed_stored_tree_is_refused(db: Database, ledger: Ledger) -> None:
    signer = Signer()
    fill(ledger, 12)
    first = ledger.checkpoint("node", signer.sign)
    # An inner node (leaves 4-7): proofs through it are refused, and verify names it.
    db.execute("UPDATE custody_tree SET hash = :h WHERE level = 2 AND idx = 1", {"h": "ab" * 32})
    with pytest.raises(LedgerCorrupt, match="stored Merkle tree"):
        ledger.verify(signer.verify)
    with pytest.raises(LedgerCorrupt, match="no valid proof"):
        ledger.inclusion_proof(1, 12)
    with pytest.raises(LedgerCorrupt, match="no valid consistency proof"):
        ledger.consistency_proof(4, 12)
    ledger.inclusion_proof(10, 12)  # a path that does not pass through it still holds
    # A node of the signed frontier (leaves 0-7): nothing more is signed.
    db.execute("UPDATE custody_tree SET hash = :h WHERE level = 3 AND idx = 0", {"h": "cd" * 32})
    ledger.append("after", CustodyAction.VIEWED, "x", {})
    with pytest.raises(LedgerCorrupt, match="no longer gives the root"):
        ledger.checkpoint("node", signer.sign)
    assert signer.calls == 1 and ledger.latest_checkpoint() == first


# -- checkpoints -------------------------------------------------------------------------------------------------------


def test_checkpoint_is_signed_stored_and_verified(db: Database, ledger: Ledger) -> None:
    signer = Signer()
    assert ledger.latest_checkpoint() is None
    entries = fill(ledger, 5)
    first = ledger.checkpoint("node-1 evidence key", signer.sign)
    assert (first.tree_size, first.root_hash) == (5, merkle.root(leaves_of(entries)).hex())
    assert first.signer == "node-1 evidence key" and first.timestamp is None
    # The signature is over exactly checkpoint_body, verifiable with the public key alone.
    assert checkpoint_body(first) == canonical_json(
        {"tree_size": 5, "root_hash": first.root_hash, "at": format_time(first.at), "signer": first.signer}
    )
    signer.key.public_key().verify(base64.b64decode(first.signature), checkpoint_body(first),
                                   ec.ECDSA(hashes.SHA256()))
    # Nothing appended: the same checkpoint comes back, nothing is signed again.
    assert ledger.checkpoint("node-1 evidence key", signer.sign) == first
    assert signer.calls == 1
    fill(ledger, 3)
    second = ledger.checkpoint("node-1 evidence key", signer.sign)
    assert second.tree_size == 8 and signer.calls == 2
    assert ledger.checkpoints() == [first, second]
    assert ledger.latest_checkpoint() == second
    assert ledger.verify(signer.verify) == (8, bytes.fromhex(second.root_hash))

    with Ledger(db.url) as reopened:
        assert reopened.checkpoints() == [first, second]

    # Another key's verifier refuses them.
    with pytest.raises(LedgerCorrupt, match=r"^checkpoint at size 5: signature does not verify"):
        ledger.verify(Signer().verify)


def test_forged_checkpoint_signature_is_caught(db: Database, ledger: Ledger) -> None:
    signer, mallory = Signer(), Signer()
    fill(ledger, 4)
    cp = ledger.checkpoint("node", signer.sign)
    fill(ledger, 2)
    ledger.checkpoint("node", signer.sign)
    db.drop_guards()
    forged = base64.b64encode(mallory.sign(checkpoint_body(cp))).decode()
    db.execute("UPDATE custody_checkpoints SET signature = :s WHERE tree_size = 4", {"s": forged})
    with pytest.raises(LedgerCorrupt, match=r"^checkpoint at size 4: signature does not verify"):
        ledger.verify(signer.verify)
    # A flipped byte in an otherwise genuine signature.
    raw = bytearray(base64.b64decode(cp.signature))
    raw[-1] ^= 0x01
    db.execute("UPDATE custody_checkpoints SET signature = :s WHERE tree_size = 4",
               {"s": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(LedgerCorrupt, match=r"^checkpoint at size 4: signature does not verify"):
        ledger.verify(signer.verify)
    # The signer's name is part of what was signed.
    db.execute("UPDATE custody_checkpoints SET signature = :s, signer = 'someone else' WHERE tree_size = 4",
               {"s": cp.signature})
    with pytest.raises(LedgerCorrupt, match=r"^checkpoint at size 4: signature does not verify"):
        ledger.verify(signer.verify)


def test_checkpoint_timestamp_is_over_the_body_digest(ledger: Ledger) -> None:
    signer = Signer()
    fill(ledger, 3)
    seen: list[bytes] = []

    def stamp(digest: bytes) -> TimestampRecord:
        seen.append(digest)
        return TimestampRecord(tsa_url="http://tsa.invalid/", local_tsa=True, status=TimestampStatus.GRANTED,
                               hash_algorithm="sha256", message_imprint=digest.hex(), nonce=2**70,
                               response_path="checkpoint-3.tsr", gen_time=datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC),
                               serial_number=42)

    cp = ledger.checkpoint("node", signer.sign, stamp)
    assert seen == [hashlib.sha256(checkpoint_body(cp)).digest()]
    assert cp.timestamp is not None and cp.timestamp.message_imprint == seen[0].hex()
    assert ledger.latest_checkpoint() == cp
    ledger.verify(signer.verify)

    # A stamp over anything else is refused, and nothing is stored.
    fill(ledger, 1)

    def wrong_stamp(digest: bytes) -> TimestampRecord:
        return stamp(hashlib.sha256(digest).digest())

    with pytest.raises(TimestampInvalid, match="not SHA-256 of the checkpoint body"):
        ledger.checkpoint("node", signer.sign, wrong_stamp)
    assert ledger.checkpoints() == [cp]
    # A stamp that yields no record (TSA unreachable, recorded elsewhere as pending) leaves it empty.
    assert ledger.checkpoint("node", signer.sign, lambda _digest: None).timestamp is None


def test_checkpoint_of_the_empty_ledger(ledger: Ledger) -> None:
    signer = Signer()
    cp = ledger.checkpoint("node", signer.sign)
    assert (cp.tree_size, cp.root_hash) == (0, hashlib.sha256(b"").hexdigest())
    assert ledger.verify(signer.verify) == (0, hashlib.sha256(b"").digest())


# -- proofs ---------------------------------------------------------------------------------------------------------


def test_inclusion_and_consistency_proofs_verify_offline(db: Database) -> None:
    signer = Signer()
    with Ledger(db.url) as ledger:
        entries = [ledger.append(f"actor-{i % 3}", "stored", f"cap-{i % 5}", {"i": i}) for i in range(1, 21)]
        cp20 = ledger.checkpoint("node", signer.sign)
        entries += [ledger.append(f"actor-{i % 3}", "stored", f"cap-{i % 5}", {"i": i}) for i in range(21, 38)]
        cp37 = ledger.checkpoint("node", signer.sign)
        proofs37 = [ledger.inclusion_proof(seq, cp37.tree_size) for seq in range(1, 38)]
        proofs20 = [ledger.inclusion_proof(seq, cp20.tree_size) for seq in range(1, 21)]
        consistency = ledger.consistency_proof(20, 37)
        assert ledger.inclusion_proof(37) == proofs37[-1]  # default: the whole ledger
        with pytest.raises(UsageError):
            ledger.inclusion_proof(38)
        with pytest.raises(UsageError):
            ledger.inclusion_proof(0, 37)
        with pytest.raises(UsageError):
            ledger.inclusion_proof(5, 38)
        with pytest.raises(UsageError):
            ledger.consistency_proof(21, 20)

    # Offline: what an exported package carries, as bytes, parsed back with no database at all.
    package = {
        "entries": b"".join(entry_bytes(e) + b"\n" for e in entries),
        "proofs": canonical_json([p.to_json() for p in proofs37]),
        "checkpoint": canonical_json(cp37.model_dump(mode="json")),
        "consistency": canonical_json(consistency.to_json()),
        "old_checkpoint": canonical_json(cp20.model_dump(mode="json")),
    }
    read_entries = [CustodyEntry.model_validate_json(line) for line in package["entries"].splitlines()]
    read_proofs = [InclusionProof.from_json(p) for p in json.loads(package["proofs"])]
    checkpoint = Checkpoint.model_validate_json(package["checkpoint"])
    old_checkpoint = Checkpoint.model_validate_json(package["old_checkpoint"])
    assert read_entries == entries and read_proofs == proofs37 and checkpoint == cp37
    signer.verify(checkpoint_body(checkpoint), checkpoint.signature)
    for entry, proof in zip(read_entries, read_proofs, strict=True):
        verify_inclusion_proof(entry, proof, checkpoint)
    for entry, proof in zip(read_entries, proofs20, strict=False):
        verify_inclusion_proof(entry, proof, old_checkpoint)
    verify_consistency_proof(ConsistencyProof.from_json(json.loads(package["consistency"])), old_checkpoint, checkpoint)

    # Failures, each named.
    entry5, proof5 = read_entries[4], read_proofs[4]
    edited = entry5.model_copy(update={"details": {"i": 500}})
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: hash does not match its contents"):
        verify_inclusion_proof(edited, proof5, checkpoint)
    resealed = edited.model_copy(update={"entry_hash": compute_entry_hash(edited)})
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: its leaf hash differs"):
        verify_inclusion_proof(resealed, proof5, checkpoint)
    forged = InclusionProof(seq=5, leaf_index=4, tree_size=37, leaf_hash=merkle.leaf_hash(entry_bytes(resealed)).hex(),
                            root=proof5.root, path=proof5.path)
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: inclusion proof for leaf 4 in a tree of size 37"):
        verify_inclusion_proof(resealed, forged, checkpoint)
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: the proof is for entry 6"):
        verify_inclusion_proof(entry5, read_proofs[5], checkpoint)
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: the proof is for tree size 20"):
        verify_inclusion_proof(entry5, proofs20[4], checkpoint)
    bent = replace(proof5, path=(proof5.path[1], proof5.path[0], *proof5.path[2:]))
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: inclusion proof"):
        verify_inclusion_proof(entry5, bent, checkpoint)
    with pytest.raises(LedgerCorrupt, match="consistency proof's old tree"):
        verify_consistency_proof(consistency, checkpoint, checkpoint)
    crooked = replace(consistency, path=consistency.path[:-1])
    with pytest.raises(LedgerCorrupt, match="consistency proof from size 20 to 37"):
        verify_consistency_proof(crooked, old_checkpoint, checkpoint)
    for bad in ({**proof5.to_json(), "root": "zz"}, {**proof5.to_json(), "path": "ab"}, {"seq": 5},
                {**proof5.to_json(), "seq": True}):
        with pytest.raises(LedgerCorrupt):
            InclusionProof.from_json(bad)


def test_proofs_from_a_tampered_database_do_not_match_the_checkpoint(db: Database) -> None:
    signer = Signer()
    with Ledger(db.url) as ledger:
        fill(ledger, 37)
        checkpoint = ledger.checkpoint("node", signer.sign)
        genuine = ledger.inclusion_proof(5, 37)
        db.drop_guards()
        # Rewrite entry 5 and re-chain everything after it, so the hash chain itself holds.
        stored = rows(db)
        prev = stored[4]["entry_hash"]
        for seq in range(5, 38):
            row = stored[seq]
            if seq == 5:
                row["details"] = canonical_json({"n": 5, "note": "rewritten"}).decode()
            row["prev_hash"] = prev
            row["entry_hash"] = prev = rehash(row)
            db.execute("UPDATE custody_entries SET details = :details, prev_hash = :prev_hash, "
                       "entry_hash = :entry_hash WHERE seq = :seq", row)
        (rewritten,) = ledger.entries(start=5, end=5)
        # The stored tree still holds the signed leaves: no proof is served for the rewritten entry.
        with pytest.raises(LedgerCorrupt, match=r"^entry 5: its contents differ from what the tree holds"):
            ledger.inclusion_proof(5, 37)
    # Whoever also rewrites the stored tree (dropped, rebuilt from the entries when next opened)...
    db.execute("DELETE FROM custody_tree")
    with Ledger(db.url) as reopened:
        fresh = reopened.inclusion_proof(5, 37)
    # A proof served from the rewritten database is for another tree than the signed one.
    assert fresh.root != checkpoint.root_hash
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: the proof is for tree size 37 root"):
        verify_inclusion_proof(rewritten, fresh, checkpoint)
    # The rewritten entry with the genuine proof: not the leaf that proof was made for.
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: its leaf hash differs"):
        verify_inclusion_proof(rewritten, genuine, checkpoint)
    # The fresh path relabelled with the signed root: the path does not lead there.
    with pytest.raises(LedgerCorrupt, match=r"^entry 5: inclusion proof for leaf 4 in a tree of size 37: the path"):
        verify_inclusion_proof(rewritten, replace(fresh, root=checkpoint.root_hash), checkpoint)


def test_threads_sharing_a_ledger_commit_together_and_lose_nothing(ledger: Ledger) -> None:
    """The service appends from many request threads through one ledger: batched commits keep every entry, in
    one chain, each caller told its own entry."""
    returned: list[CustodyEntry] = []
    lock = threading.Lock()
    written_by_others: list[str] = []
    write = ledger._group._write

    def write_own_batch(items: list[tuple[str, CustodyAction, str, str]]) -> list[CustodyEntry]:
        # Fair under load: the thread that writes a batch has its own entry in it (it never serves a queue
        # that keeps filling while its own request waits).
        writer = threading.current_thread().name
        if not any(actor == writer for actor, *_ in items):
            written_by_others.append(writer)
        return write(items)

    ledger._group._write = write_own_batch

    def writer(number: int) -> None:
        for k in range(40):
            entry = ledger.append(threading.current_thread().name, CustodyAction.VIEWED, f"case-{number}", {"k": k})
            with lock:
                returned.append(entry)

    threads = [threading.Thread(target=writer, args=(n,), name=f"writer {n}") for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(e.seq for e in returned) == list(range(1, 241))
    assert not written_by_others, f"batches written by a thread with no entry in them: {written_by_others[:5]}"
    stored = {e.seq: e for e in ledger.entries()}
    assert all(stored[e.seq] == e for e in returned)
    for number in range(6):
        mine = [e.details["k"] for e in ledger.entries(subject=f"case-{number}")]
        assert mine == list(range(40)), "a writer's entries keep their order"
    size, _root = ledger.verify()
    assert size == 240


def test_a_failed_batch_fails_each_of_its_callers(db: Database, ledger: Ledger) -> None:
    ledger.append("a", CustodyAction.VIEWED, "x", {})
    if db.kind == "postgresql":
        db.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ "
                   "LANGUAGE plpgsql")
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON custody_entries FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON custody_entries BEGIN SELECT RAISE(ABORT, 'refused'); "
                   "END")
    with pytest.raises((DBAPIError, EvidenceError)):
        ledger.append("b", CustodyAction.VIEWED, "x", {})
    assert ledger.size() == 1


def test_an_append_whose_connection_died_in_the_pool_is_written_once(db: Database, ledger: Ledger) -> None:
    """A database restart (here: every other connection killed) leaves dead connections in the pool. The batch
    finds out on its first round trip, before anything is written, and goes again on a new connection."""
    ledger.append("a", CustodyAction.VIEWED, "x", {"n": 1})
    if db.kind == "postgresql":
        assert ledger._appender is not None
        with ledger._appender.connect() as pooled:  # the connection the next batch will take from the pool
            pid = pooled.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert db.execute("SELECT pg_terminate_backend(:pid)", {"pid": pid})[0][0]
    entry = ledger.append("a", CustodyAction.VIEWED, "x", {"n": 2})
    assert entry.seq == 2
    assert [e.details["n"] for e in ledger.entries()] == [1, 2]
    assert ledger.verify()[0] == 2
