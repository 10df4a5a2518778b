"""The custody ledger against its checkpoints in WORM storage: what someone with only database access could rewrite
so that the database recomputes, and that `verify_custody` still names (a real SeaweedFS, COMPLIANCE retention)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from custody.checkpoints import CHECKPOINT_PREFIX, CheckpointDocument
from evidence import CustodyAction, LedgerCorrupt
from evidence.canonical import canonical_json
from hashing import digest_file
from preservation.preserve import Preserver
from preservation.services import CHECKPOINT_EVERY_ENTRIES, Services

pytestmark = pytest.mark.integration


def _fill(services: Services, count: int) -> None:
    for n in range(count):
        services.record(CustodyAction.STORED, f"wz-20261130T000000Z-{n % 7:06x}",
                        {"n": n, "operator": "inspector", "url": "https://shop.example/item"})
    services.checkpoint()
    Preserver(services).sync()  # the checkpoint documents go to the object-locked bucket


def _database(services: Services) -> sqlite3.Connection:
    return sqlite3.connect(services.settings.data_dir / "custody.sqlite3", isolation_level=None)


def _drop_triggers(db: sqlite3.Connection) -> None:
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')


def _rehash(row: dict[str, Any]) -> str:
    body = {k: row[k] for k in ("seq", "at", "actor", "action", "subject", "prev_hash")}
    body["details"] = json.loads(row["details"])
    return hashlib.sha256(canonical_json(body)).hexdigest()


def test_checkpoints_go_to_worm_storage_with_the_entries_they_cover(services: Services) -> None:
    _fill(services, 130)
    verified = services.verify_custody()
    sizes = [32, 64, 96, 128, 130]
    assert CHECKPOINT_EVERY_ENTRIES == 32
    assert (verified.size, verified.worm_checkpoints, verified.worm_latest) == (130, len(sizes), 130)
    store = services.store()
    keys = sorted({v.key for v in store.versions(CHECKPOINT_PREFIX)})
    assert keys == [f"custody/checkpoints/{n:012d}.json" for n in sizes]
    document = CheckpointDocument.from_bytes(b"".join(store.read(keys[1], store.versions(keys[1])[0].version_id)))
    assert (document.entries_from, document.tree_size, len(document.entries)) == (33, 64, 32)
    assert document.timestamp_token is not None  # checkpoints are timestamped, and the token travels with them


def test_truncating_the_ledger_and_its_checkpoints_is_found(services: Services) -> None:
    """Entries 89-130 and the checkpoints above 88 deleted: the database alone recomputes; WORM does not agree."""
    _fill(services, 130)
    db = _database(services)
    _drop_triggers(db)
    db.execute("DELETE FROM custody_entries WHERE seq > 88")
    db.execute("DELETE FROM custody_checkpoints WHERE tree_size > 88")
    db.execute("DELETE FROM custody_tree WHERE ((idx + 1) << level) > 88")  # the stored tree, cut to match
    db.close()
    with Services(services.settings) as reopened:
        reopened.ledger.restore_guards()  # as an attacker who cleans up after himself would
        assert reopened.ledger.verify(reopened.verify_checkpoint)[0] == 88  # consistent on its own
        with pytest.raises(LedgerCorrupt, match=r"^entry 89: missing; the ledger ends at 88"):
            reopened.verify_custody()
        # New work reuses the numbers 89 on. The node will not sign that (it contradicts the checkpoint of 130
        # it kept), and the check names the first entry that differs from what WORM storage holds.
        with pytest.raises(LedgerCorrupt, match="entries were removed; not signing it"):
            for n in range(10):
                reopened.record(CustodyAction.VERIFIED, "wz-20261130T000000Z-000000", {"n": n})
        with pytest.raises(LedgerCorrupt, match=r"^entry 89: differs from the copy in the WORM checkpoint of 96"):
            reopened.verify_custody()


def test_rewriting_an_entry_and_every_hash_after_it_is_found_and_named(services: Services) -> None:
    _fill(services, 130)
    db = _database(services)
    db.row_factory = sqlite3.Row
    _drop_triggers(db)
    stored = {r["seq"]: dict(r) for r in db.execute("SELECT * FROM custody_entries ORDER BY seq")}
    prev = stored[61]["entry_hash"]
    for seq in range(62, 131):
        row = stored[seq]
        if seq == 62:
            row["actor"] = "forger"
            row["details"] = canonical_json({"n": 61, "operator": "someone else",
                                             "url": "https://innocent.example/"}).decode()
        row["prev_hash"] = prev
        row["entry_hash"] = prev = _rehash(row)
        db.execute("UPDATE custody_entries SET actor = ?, details = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                   (row["actor"], row["details"], row["prev_hash"], row["entry_hash"], seq))
    db.execute("DELETE FROM custody_checkpoints WHERE tree_size > 61")
    db.execute("DELETE FROM custody_tree")  # the next open rebuilds the stored tree from the rewritten entries
    db.close()
    with Services(services.settings) as reopened:
        reopened.ledger.restore_guards()
        assert reopened.ledger.verify(reopened.verify_checkpoint)[0] == 130
        with pytest.raises(LedgerCorrupt, match=r"^entry 62: differs from the copy in the WORM checkpoint of 64 "
                                                r"entries: actor was 'inspector', is now 'forger'"):
            reopened.verify_custody()


def test_a_second_version_of_a_checkpoint_in_worm_storage_is_found(services: Services, tmp_path: Path) -> None:
    """Whoever holds the S3 credentials cannot delete a COMPLIANCE version, but can add another: it must agree."""
    _fill(services, 40)
    store = services.store()
    forged = tmp_path / "forged.json"
    forged.write_bytes(b'{"schema": "not the checkpoint that was signed"}')
    store.put_file("custody/checkpoints/000000000032.json", forged, content_type="application/json",
                   digests=digest_file(forged)[1])
    with pytest.raises(LedgerCorrupt, match="versions that differ in WORM storage"):
        services.verify_custody()


def test_a_checkpoint_row_forged_into_the_database_is_never_signed_over(services: Services) -> None:
    """The next checkpoint grows from the newest checkpoint row: one inserted by someone with database access (a
    root of their choosing, a signature they cannot make) must stop the signing, not become its base."""
    _fill(services, 5)
    services.record(CustodyAction.VIEWED, "wz-20261130T000000Z-000001", {"n": 99})
    size = services.ledger.size()
    db = _database(services)
    db.execute("INSERT INTO custody_checkpoints (tree_size, root_hash, at, signer, signature, timestamp) "
               "VALUES (?, ?, ?, ?, ?, NULL)", (size, "ab" * 32, "2026-11-30T00:00:00.000000Z", "forger", "AAAA"))
    db.close()
    services.record(CustodyAction.VIEWED, "wz-20261130T000000Z-000001", {"n": 100})
    with pytest.raises(LedgerCorrupt, match=f"checkpoint at size {size}: its signature does not verify"):
        services.checkpoint()
