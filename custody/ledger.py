"""The append-only custody ledger: a hash chain of entries, an RFC 9162 Merkle tree over them, signed checkpoints.

Each entry names who (`actor`) did what (`action`) to which item (`subject`), with `details`, at a UTC
time. Its `entry_hash` is SHA-256 of the canonical JSON of

    {"action", "actor", "at", "details", "prev_hash", "seq", "subject"}

and `prev_hash` is the entry_hash of the entry before it (64 zeros for entry 1), so editing, removing
or reordering any entry breaks every later link. The Merkle tree's leaf for an entry is the canonical
JSON of all eight fields (`entry_bytes`), so one signed checkpoint (tree size + root) commits to every
entry up to that size, and inclusion and consistency proofs can be checked offline against it.

Times are stored as text `YYYY-MM-DDTHH:MM:SS.ffffffZ` (always UTC, always microseconds) and details as
canonical JSON text, so the database holds exactly the bytes that were hashed.

One code path serves SQLite (the default, one file) and PostgreSQL (psycopg 3). Triggers in the
database refuse UPDATE, DELETE (and TRUNCATE) on both tables; `verify()` still recomputes everything,
so edits by someone who drops the triggers are caught too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from pydantic import ValidationError
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    tuple_,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from custody import merkle
from custody.proofs import (
    GENESIS_PREV_HASH,
    ConsistencyProof,
    InclusionProof,
    canonical_details,
    checkpoint_body,
    compute_entry_hash,
    entry_leaf_hash,
    format_time,
    parse_time,
    timestamp_problem,
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
    UsageError,
)
from evidence.canonical import canonical_json

SQLITE_BUSY_TIMEOUT_SECONDS = 60.0
# Serialises schema creation across processes on PostgreSQL ("ZCUSTODY" in ASCII; any fixed bigint works).
_PG_SCHEMA_LOCK = 0x5A43555354_4F4459
# Execution option that makes the SQLite "begin" hook take the write lock up front (BEGIN IMMEDIATE).
_WRITE = "wz_custody_write"

_metadata = MetaData()

ENTRIES = Table(
    "custody_entries",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Index("custody_entries_subject", "subject"),
)

CHECKPOINTS = Table(
    "custody_checkpoints",
    _metadata,
    Column("tree_size", Integer, primary_key=True, autoincrement=False),
    Column("root_hash", String(64), nullable=False),
    Column("at", Text, nullable=False),
    Column("signer", Text, nullable=False),
    Column("signature", Text, nullable=False),
    Column("timestamp", Text, nullable=True),
)

# The Merkle tree kept as its perfect subtrees (custody/merkle.py): written with each append, in the same
# transaction, so roots and proofs of any size take O(log n) reads. It is derived from the entries: every
# checkpoint checks the part it adds against them and against the last signed root, and `verify` checks all of it.
TREE = Table(
    "custody_tree",
    _metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
)

_NODES_BY_ARRAYS = text(
    "SELECT t.level, t.idx, t.hash FROM custody_tree t "
    "JOIN unnest(CAST(:levels AS integer[]), CAST(:indexes AS bigint[])) AS w(level, idx) "
    "ON t.level = w.level AND t.idx = w.idx"
)

META = Table(
    "custody_meta",
    _metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# The database's own refusal of anything but appending in order. Version 2 added the insert rules: an entry must
# take the next seq and link to the last entry (SQLite's INSERT OR REPLACE deleted a row without firing the
# DELETE trigger), and a checkpoint's size cannot be taken twice.
GUARDS_VERSION = "2"
_REFUSE = "SELECT RAISE(ABORT, 'custody ledger table {table} is append-only: {op} refused')"
_SQLITE_GUARDS: dict[str, str] = {
    **{f"{table}_no_{op.lower()}": f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
                                   f"BEGIN {_REFUSE.format(table=table, op=op)}; END"
       for table in ("custody_entries", "custody_checkpoints") for op in ("UPDATE", "DELETE")},
    "custody_entries_in_order": (
        "CREATE TRIGGER custody_entries_in_order BEFORE INSERT ON custody_entries "
        "WHEN NEW.seq != (SELECT COALESCE(MAX(seq), 0) + 1 FROM custody_entries) "
        "OR NEW.prev_hash != COALESCE((SELECT entry_hash FROM custody_entries ORDER BY seq DESC LIMIT 1), "
        "'0000000000000000000000000000000000000000000000000000000000000000') "
        "BEGIN SELECT RAISE(ABORT, 'custody ledger: an entry must take the next seq and link to the last entry'); "
        "END"),
    "custody_checkpoints_no_replace": (
        "CREATE TRIGGER custody_checkpoints_no_replace BEFORE INSERT ON custody_checkpoints "
        "WHEN EXISTS (SELECT 1 FROM custody_checkpoints WHERE tree_size = NEW.tree_size) "
        "BEGIN SELECT RAISE(ABORT, 'custody ledger: a checkpoint of this size exists and is never replaced'); END"),
}

# No '%' anywhere: psycopg must never mistake part of this DDL for a parameter placeholder.
_PG_FUNCTION_BODIES: dict[str, str] = {
    "custody_refuse_change": """
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'custody ledger table ' || TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused';
END
""",
    "custody_check_append": """
DECLARE
    last_seq integer;
    last_hash text;
BEGIN
    SELECT seq, entry_hash INTO last_seq, last_hash FROM custody_entries ORDER BY seq DESC LIMIT 1;
    IF NEW.seq <> COALESCE(last_seq, 0) + 1 OR NEW.prev_hash <> COALESCE(last_hash, repeat('0', 64)) THEN
        RAISE EXCEPTION USING MESSAGE = 'custody ledger: an entry must take the next seq and link to the last entry';
    END IF;
    RETURN NEW;
END
""",
}
_PG_FUNCTIONS = [f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn${body}$fn$"
                 for name, body in _PG_FUNCTION_BODIES.items()]
# pg_trigger.tgtype bits: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
_PG_GUARD_SHAPES: dict[str, tuple[str, int, str]] = {
    **{f"{table}_append_only": (table, 1 | 2 | 8 | 16, "custody_refuse_change")
       for table in ("custody_entries", "custody_checkpoints")},
    **{f"{table}_no_truncate": (table, 2 | 32, "custody_refuse_change")
       for table in ("custody_entries", "custody_checkpoints")},
    "custody_entries_in_order": ("custody_entries", 1 | 2 | 4, "custody_check_append"),
}
_PG_GUARDS: dict[str, str] = {
    **{f"{table}_append_only": f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                               "FOR EACH ROW EXECUTE FUNCTION custody_refuse_change()"
       for table in ("custody_entries", "custody_checkpoints")},
    # Row triggers do not fire on TRUNCATE: a statement trigger refuses it.
    **{f"{table}_no_truncate": f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                               "FOR EACH STATEMENT EXECUTE FUNCTION custody_refuse_change()"
       for table in ("custody_entries", "custody_checkpoints")},
    "custody_entries_in_order": "CREATE TRIGGER custody_entries_in_order BEFORE INSERT ON custody_entries "
                                "FOR EACH ROW EXECUTE FUNCTION custody_check_append()",
}
_PG_PRESENT = """
SELECT t.tgname, c.relname, t.tgtype, t.tgenabled, p.proname, p.prosrc
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal AND t.tgrelid IN (to_regclass('custody_entries'), to_regclass('custody_checkpoints'))
"""


# -- the database --------------------------------------------------------------------------------------


def _engine_for(url: str) -> Engine:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed: URL = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"custody database URL {url!r} is not a SQLAlchemy URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise ConfigurationError(
                f"custody ledger on SQLite uses the standard sqlite3 driver, not {parsed.drivername}"
            )
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        _prepare_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ConfigurationError(f"custody ledger on PostgreSQL uses psycopg 3 (postgresql+psycopg://), "
                                     f"not {parsed.drivername}")
        # READ COMMITTED: after the table lock each statement sees every append committed before it.
        # Connections are opened on demand and kept up to pool_size: a service reads proofs and checkpoints from
        # many request threads, and reopening PostgreSQL connections under load costs more than the reads.
        return create_engine(parsed.set(drivername="postgresql+psycopg"), isolation_level="READ COMMITTED",
                             pool_pre_ping=True, pool_size=20, max_overflow=30)
    raise ConfigurationError(f"custody ledger supports sqlite:/// and postgresql+psycopg:// URLs, not {backend}: "
                             f"set WZ_DATABASE_URL")


def _use_wal(cursor: Any) -> None:
    """WAL, so readers never block the writer nor it them. Switching a new file to WAL needs an exclusive
    lock for which SQLite does not call the busy handler: several processes opening a new ledger at once
    get "database is locked" at once, so retry within the busy timeout. WAL persists in the file, so
    later connections only read the mode."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); the sqlite3 module's implicit transactions would defeat BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")  # a committed custody entry survives a power cut
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the single write lock before reading the last entry, so two processes can
        # never both read seq N and both write N+1; waiting for it is bounded by busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _entry_from_row(row: Row[Any]) -> CustodyEntry:
    """Rebuild an entry from its stored text, refusing any text that is not in the canonical form that was hashed."""
    where = f"entry {row.seq}"
    try:
        at = parse_time(row.at)
    except ValueError as exc:
        raise LedgerCorrupt(f"{where}: its time is not in the ledger's form: {exc}") from exc
    try:
        details = json.loads(row.details)
        canonical = canonical_json(details).decode("utf-8") if isinstance(details, dict) else None
    except (ValueError, EvidenceError) as exc:
        raise LedgerCorrupt(f"{where}: details are not JSON: {exc}") from exc
    if canonical != row.details:
        raise LedgerCorrupt(f"{where}: details are not the canonical JSON object that was hashed")
    try:
        return CustodyEntry(seq=row.seq, at=at, actor=row.actor, action=row.action, subject=row.subject,
                            details=details, prev_hash=row.prev_hash, entry_hash=row.entry_hash)
    except ValidationError as exc:
        raise LedgerCorrupt(f"{where}: cannot be read: {exc}") from exc


def _checkpoint_from_row(row: Row[Any]) -> Checkpoint:
    where = f"checkpoint at size {row.tree_size}"
    try:
        at = parse_time(row.at)
        stamp = TimestampRecord.model_validate_json(row.timestamp) if row.timestamp is not None else None
        return Checkpoint(tree_size=row.tree_size, root_hash=row.root_hash, at=at, signer=row.signer,
                          signature=row.signature, timestamp=stamp)
    except (ValueError, ValidationError) as exc:
        raise LedgerCorrupt(f"{where}: cannot be read: {exc}") from exc


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"custody {what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise UsageError(f"custody {what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"custody {what} is not valid Unicode text: {exc}") from exc
    return value


_Item = tuple[str, CustodyAction, str, str]  # actor, action, subject, canonical details
_Tail = tuple[int, str, tuple[tuple[tuple[int, int], bytes], ...]]  # size, last entry hash, the tree's frontier


class _NothingWritten(Exception):
    """A batch's connection failed before any of its rows was sent."""


class _Waiting:
    def __init__(self, item: _Item) -> None:
        self.item = item
        self.wake = threading.Event()  # set when this entry is written, or when this thread is to write next
        self.lead = False
        self.finished = False
        self.entry: CustodyEntry | None = None
        self.error: BaseException | None = None


class _GroupCommit:
    """Appends from many threads of one process, committed together: one thread at a time writes every entry
    waiting (up to MAX_BATCH) in one transaction, and each caller returns once its own entry is committed. The
    writer then hands the pen to the oldest waiting caller and returns: no caller writes for others for longer
    than one batch, so under steady load no request waits on a queue that never empties."""

    def __init__(self, write: Callable[[list[_Item]], list[CustodyEntry]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._writing = False

    def submit(self, item: _Item) -> CustodyEntry:
        mine = _Waiting(item)
        with self._lock:
            self._waiting.append(mine)
            if not self._writing:  # no writer: the queue was empty, so this entry heads it
                self._writing = mine.lead = True
        if not mine.lead:
            mine.wake.wait()
        if not mine.finished:  # handed the pen: this entry heads the queue, so it is in the next batch
            self._write_next()
        if mine.error is not None:
            raise mine.error
        assert mine.entry is not None
        return mine.entry

    def _write_next(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        failure: BaseException | None = None
        try:
            entries = self._write([w.item for w in batch])
            for waiting, entry in zip(batch, entries, strict=True):
                waiting.entry = entry
        except BaseException as exc:  # every caller of the batch learns it was not written
            failure = exc
            for waiting in batch:
                waiting.entry = None
                waiting.error = exc
        for waiting in batch:
            waiting.finished = True
            waiting.wake.set()
        with self._lock:
            if self._waiting:
                following = self._waiting[0]
                following.lead = True
                following.wake.set()
            else:
                self._writing = False
        if failure is not None and not isinstance(failure, Exception):
            raise failure


MAX_BATCH = 256


class Ledger:
    """The custody ledger in one SQLite file or PostgreSQL database (tables created on first use).

    Safe for several processes at once: appends serialise on SQLite's write lock (BEGIN IMMEDIATE,
    WAL, a busy timeout) or on PostgreSQL's `LOCK TABLE ... IN EXCLUSIVE MODE`.
    """

    def __init__(self, url: str, *, check_guards: bool = True) -> None:
        """`check_guards=False` reads a ledger without touching or checking its guards (one being moved)."""
        self._check_guards = check_guards
        self._engine = _engine_for(url)
        self._postgres = self._engine.dialect.name == "postgresql"
        self._where = self._engine.url.render_as_string(hide_password=True)
        # Batched appends on PostgreSQL get their own small pool, without a ping before each batch: a dead
        # connection shows on the batch's first round trip, before anything is written, and the batch is retried.
        self._appender = create_engine(self._engine.url, isolation_level="READ COMMITTED", pool_size=1,
                                       max_overflow=4) if self._postgres else None
        self._ready = False
        self._missing_guards: tuple[str, ...] = ()
        self._group = _GroupCommit(self._write_batch)
        self._tail: _Tail | None = None

    @property
    def where(self) -> str:
        """The ledger's database URL, without its password."""
        return self._where

    @property
    def missing_guards(self) -> tuple[str, ...]:
        """The append-only guards (database triggers) that are gone, as found when the ledger was opened."""
        if not self._ready:
            self._create_schema()
        return self._missing_guards

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()
        if self._appender is not None:
            self._appender.dispose()

    # -- connections --

    @contextmanager
    def _transaction(self, *, write: bool, lock: Table | None = None) -> Iterator[Connection]:
        """One transaction; `write` takes the write lock first (and `lock` names the table on PostgreSQL)."""
        if not self._ready:
            self._create_schema()
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    if self._postgres and lock is not None:
                        conn.exec_driver_sql(f"LOCK TABLE {lock.name} IN EXCLUSIVE MODE")
                    yield conn
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise EvidenceError(f"the custody database {self._where} cannot be used: {exc.orig}; check "
                                f"WZ_DATABASE_URL and that the database is running") from exc

    def _create_schema(self) -> None:
        """Create the tables and guards of a new ledger; on an existing one, check the guards are all there.

        A guard that is gone (a dropped or disabled trigger) is tampering: it is reported, never recreated in
        silence, and nothing more is appended until `restore_guards()` is run on purpose. A ledger from before
        the guards were versioned gets the guards it lacks once.
        """
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    if self._postgres:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
                    fresh = not self._has_table(conn, ENTRIES.name)
                    if fresh and not self._check_guards:
                        raise UsageError(f"{self._where} holds no custody ledger to read")
                    _metadata.create_all(conn)
                    if fresh:
                        self._install_guards(conn, set())
                    elif self._check_guards:
                        self._missing_guards = self._missing(conn)
                        if self._postgres:
                            conn.exec_driver_sql(f"LOCK TABLE {ENTRIES.name} IN EXCLUSIVE MODE")
                        self._build_tree(conn)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise EvidenceError(f"the custody database {self._where} cannot be used: {exc.orig}; check "
                                f"WZ_DATABASE_URL and that the database is running") from exc
        self._ready = True

    def _has_table(self, conn: Connection, name: str) -> bool:
        if self._postgres:
            return conn.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar_one() is True
        row = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).first()
        return row is not None

    def _expected_guards(self) -> dict[str, str]:
        return _PG_GUARDS if self._postgres else _SQLITE_GUARDS

    def _guard_names(self, conn: Connection) -> set[str]:
        """The guards that are in place and intact: present, enabled, and doing what they were made to do.

        A trigger of the right name that does something else (a no-op body, a replaced function, a trigger set
        to fire only for replicas) does not count: only the name was checked before, and that was easy to fake.
        """
        intact: set[str] = set()
        if self._postgres:
            for name, table, kind, enabled, function, source in conn.exec_driver_sql(_PG_PRESENT):
                shape = _PG_GUARD_SHAPES.get(str(name))
                if shape is None or enabled not in ("O", "A"):
                    continue
                if (str(table), int(kind), str(function)) == shape and source == _PG_FUNCTION_BODIES[shape[2]]:
                    intact.add(str(name))
            return intact
        for name, sql in conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"):
            if _SQLITE_GUARDS.get(str(name)) == sql:
                intact.add(str(name))
        return intact

    def _guards_recorded(self, conn: Connection) -> bool:
        return conn.execute(select(META.c.value).where(META.c.key == "guards")).scalar() == GUARDS_VERSION

    def _install_guards(self, conn: Connection, present: set[str]) -> list[str]:
        if self._postgres:
            for function in _PG_FUNCTIONS:
                conn.exec_driver_sql(function)
        installed = []
        for name, ddl in self._expected_guards().items():
            if name in present:
                continue
            # A trigger of this name that is not intact (disabled, or made to do something else) goes first.
            if self._postgres:
                table = "custody_entries" if name.startswith("custody_entries") else "custody_checkpoints"
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            else:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            conn.exec_driver_sql(ddl)
            installed.append(name)
        conn.execute(META.delete().where(META.c.key == "guards"))
        conn.execute(insert(META).values(key="guards", value=GUARDS_VERSION))
        return installed

    def _refuse_if_unguarded(self) -> None:
        if self._missing_guards:
            raise LedgerCorrupt(
                f"the custody ledger's append-only guards are gone ({', '.join(self._missing_guards)} dropped or "
                f"disabled in {self._where}): someone changed the database directly. Nothing more is appended. "
                "Run `wz custody verify` to see what was changed, then `wz custody restore-guards` on purpose")

    def _missing(self, conn: Connection) -> tuple[str, ...]:
        missing = sorted(set(self._expected_guards()) - self._guard_names(conn))
        if not self._guards_recorded(conn):
            missing.append(f"the guards' version record (custody_meta 'guards' = {GUARDS_VERSION})")
        return tuple(missing)

    def _refresh_guards(self) -> None:
        if not self._check_guards:
            return
        with self._transaction(write=False) as conn:
            self._missing_guards = self._missing(conn)

    def restore_guards(self) -> list[str]:
        """Recreate missing guards, on purpose, after tampering was investigated; returns the ones recreated."""
        if not self._ready:
            self._create_schema()
        with self._transaction(write=True) as conn:
            if self._postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
            recorded = self._guards_recorded(conn)
            installed = self._install_guards(conn, self._guard_names(conn))
        self._missing_guards = ()
        return installed if installed or recorded else ["the guards' version record"]

    # -- entries --

    def append(self, actor: str, action: CustodyAction, subject: str, details: dict[str, Any], *,
               connection: Connection | None = None) -> CustodyEntry:
        """Add one entry at the end of the chain, atomically with respect to every other process.

        With `connection` (a transaction open on this same database), the entry is written in that transaction:
        it commits, or is rolled back, with whatever else the caller writes there. The ledger's lock is then
        held until that transaction ends."""
        _check_text(actor, "actor")
        try:
            action = CustodyAction(action)
        except ValueError as exc:
            raise UsageError(f"unknown custody action {action!r}") from exc
        _check_text(subject, "subject")
        details_text = canonical_details(details)
        if not self._ready:
            self._create_schema()
        self._refuse_if_unguarded()
        if connection is not None:
            if connection.engine.url.render_as_string(hide_password=True) != self._where:
                raise UsageError("a custody entry can join only a transaction on the ledger's own database")
            if self._postgres:
                connection.exec_driver_sql(f"LOCK TABLE {ENTRIES.name} IN EXCLUSIVE MODE")
            return self._append(connection, [(actor, action, subject, details_text)])[0][0]
        return self._group.submit((actor, action, subject, details_text))

    def _write_batch(self, items: list[_Item]) -> list[CustodyEntry]:
        known, self._tail = self._tail, None
        if self._appender is not None:
            if not self._ready:
                self._create_schema()
            try:
                written, tail = self._append_batch_pg(self._appender, items, known)
            except _NothingWritten:  # a connection that had died in the pool: once more, on a new one
                try:
                    written, tail = self._append_batch_pg(self._appender, items, known)
                except _NothingWritten as exc:
                    raise EvidenceError(f"the custody database {self._where} dropped two connections in a row before "
                                        "anything was written; check that the database is running") from exc
        else:
            with self._transaction(write=True, lock=ENTRIES) as conn:
                written, tail = self._append(conn, items, known)
        self._tail = tail  # committed: the next batch of this process starts from it unless another wrote since
        return written

    @staticmethod
    def _chain(items: list[_Item], seq: int, prev_hash: str) -> tuple[list[CustodyEntry], list[dict[str, Any]]]:
        """The entries for `items` after entry `seq` (whose hash is `prev_hash`), and their rows."""
        written: list[CustodyEntry] = []
        rows: list[dict[str, Any]] = []
        for actor, action, subject, details_text in items:
            seq += 1
            # Taken under the lock, so times follow seq order (unless the clock itself steps back).
            at = format_time(datetime.now(UTC))
            entry = CustodyEntry(seq=seq, at=parse_time(at), actor=actor, action=action, subject=subject,
                                 details=json.loads(details_text), prev_hash=prev_hash, entry_hash="0" * 64)
            entry = entry.model_copy(update={"entry_hash": compute_entry_hash(entry)})
            rows.append({"seq": seq, "at": at, "actor": actor, "action": action.value, "subject": subject,
                         "details": details_text, "prev_hash": prev_hash, "entry_hash": entry.entry_hash})
            written.append(entry)
            prev_hash = entry.entry_hash
        return written, rows

    @staticmethod
    def _grow(conn: Connection, written: list[CustodyEntry], known: _Tail | None
              ) -> tuple[list[tuple[merkle.Node, bytes]], list[tuple[merkle.Node, bytes]]]:
        """The tree's frontier before `written` (from `known` when no one appended since) and the nodes they add."""
        first = written[0].seq - 1
        if known is not None and known[0] == first and known[1] == written[0].prev_hash:
            frontier = list(known[2])
        else:
            frontier = Ledger._frontier(conn, first)
        made = merkle.extend(frontier, first, [entry_leaf_hash(e) for e in written])
        return frontier, made

    @staticmethod
    def _tree_conflict(written: list[CustodyEntry]) -> LedgerCorrupt:
        return LedgerCorrupt(f"entry {written[0].seq}: the stored Merkle tree already holds a leaf there, so "
                             "entries were removed from the ledger; nothing was appended. Run `wz custody verify`")

    @staticmethod
    def _append(conn: Connection, items: list[_Item], known: _Tail | None = None
                ) -> tuple[list[CustodyEntry], _Tail]:
        """Write entries after the last one, under the caller's write lock; returns them and the new tail.

        `known` is the tail this process committed last (size, last entry hash, the tree's frontier): when no
        one appended since, the frontier is not read again."""
        last = conn.execute(
            select(ENTRIES.c.seq, ENTRIES.c.entry_hash).order_by(ENTRIES.c.seq.desc()).limit(1)
        ).first()
        written, rows = Ledger._chain(items, 0 if last is None else last.seq,
                                      GENESIS_PREV_HASH if last is None else last.entry_hash)
        # The guards check each row takes the next number and links to the last one (row triggers see the rows
        # this statement inserted before them).
        conn.execute(insert(ENTRIES), rows)
        frontier, made = Ledger._grow(conn, written, known)
        try:
            conn.execute(insert(TREE), [{"level": level, "idx": index, "hash": digest.hex()}
                                        for (level, index), digest in made])
        except sa_exc.IntegrityError as exc:
            raise Ledger._tree_conflict(written) from exc
        return written, (written[-1].seq, written[-1].entry_hash, tuple(frontier))

    def _append_batch_pg(self, engine: Engine, items: list[_Item], known: _Tail | None
                         ) -> tuple[list[CustodyEntry], _Tail]:
        try:
            with engine.connect() as conn, conn.begin():
                return self._append_pipelined(conn, items, known)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise EvidenceError(f"the custody database {self._where} cannot be used: {exc.orig}; check "
                                f"WZ_DATABASE_URL and that the database is running") from exc

    @staticmethod
    def _append_pipelined(conn: Connection, items: list[_Item], known: _Tail | None
                          ) -> tuple[list[CustodyEntry], _Tail]:
        """`_append` on PostgreSQL in two round trips, the commit included, instead of seven: the lock and the
        read of the last entry go out together, then both inserts and the COMMIT (psycopg's pipeline mode). Same
        statements, same guards; the lock is taken first, so the read sees every append committed before it.
        Raises _NothingWritten when the connection fails on the first round trip (nothing was sent to write)."""
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as locking, raw.cursor() as reading:
                try:
                    with raw.pipeline():
                        locking.execute("LOCK TABLE custody_entries IN EXCLUSIVE MODE")
                        reading.execute("SELECT seq, entry_hash FROM custody_entries ORDER BY seq DESC LIMIT 1")
                except psycopg.OperationalError as exc:
                    if not raw.closed and not raw.broken:
                        raise
                    conn.invalidate()
                    raise _NothingWritten from exc
                last = reading.fetchone()
            written, rows = Ledger._chain(items, 0 if last is None else int(last[0]),
                                          GENESIS_PREV_HASH if last is None else str(last[1]))
            frontier, made = Ledger._grow(conn, written, known)
            with raw.cursor() as cursor, raw.pipeline():
                cursor.executemany(
                    "INSERT INTO custody_entries (seq, at, actor, action, subject, details, prev_hash, entry_hash) "
                    "VALUES (%(seq)s, %(at)s, %(actor)s, %(action)s, %(subject)s, %(details)s, %(prev_hash)s, "
                    "%(entry_hash)s)", rows)
                cursor.executemany("INSERT INTO custody_tree (level, idx, hash) VALUES (%s, %s, %s)",
                                   [(level, index, digest.hex()) for (level, index), digest in made])
                cursor.execute("COMMIT")  # answered in the same round trip; the caller's commit is then a no-op
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.table_name == TREE.name:
                raise Ledger._tree_conflict(written) from exc
            raise sa_exc.DBAPIError.instance(None, None, exc, psycopg.Error) from exc
        except psycopg.Error as exc:  # as SQLAlchemy reports it on every other path
            raise sa_exc.DBAPIError.instance(None, None, exc, psycopg.Error) from exc
        return written, (written[-1].seq, written[-1].entry_hash, tuple(frontier))

    # -- the stored tree --

    @staticmethod
    def _nodes(conn: Connection, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
        """The stored nodes asked for; raises LedgerCorrupt when one is missing."""
        wanted = sorted(set(wanted))
        found: dict[merkle.Node, bytes] = {}
        if conn.dialect.name == "postgresql":
            # Two array parameters, not hundreds of bound pairs: a proof at a million entries wants ~200 nodes,
            # and rendering and parsing that many parameters took longer than reading the rows.
            rows = conn.execute(_NODES_BY_ARRAYS, {"levels": [level for level, _ in wanted],
                                                   "indexes": [index for _, index in wanted]})
            found = {(int(row.level), int(row.idx)): bytes.fromhex(row.hash) for row in rows}
        else:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for row in conn.execute(select(TREE).where(tuple_(TREE.c.level, TREE.c.idx).in_(chunk))):
                    found[(int(row.level), int(row.idx))] = bytes.fromhex(row.hash)
        missing = [node for node in wanted if node not in found]
        if missing:
            level, index = missing[0]
            raise LedgerCorrupt(f"the ledger's stored Merkle tree lacks node {index} of level {level} (and "
                                f"{len(missing) - 1} more); run `wz custody verify`")
        return found

    @staticmethod
    def _frontier(conn: Connection, size: int) -> list[tuple[merkle.Node, bytes]]:
        nodes = merkle.subtree_nodes(0, size) if size else []
        stored = Ledger._nodes(conn, nodes)
        return [(node, stored[node]) for node in nodes]

    def _build_tree(self, conn: Connection) -> int:
        """Store the tree nodes of entries that have none (a ledger from before the tree was kept, an import);
        returns how many entries were added to the tree. The caller holds the write lock."""
        have = int(conn.execute(select(func.count()).select_from(TREE).where(TREE.c.level == 0)).scalar_one())
        size = int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one())
        if have >= size:
            return 0
        frontier = self._frontier(conn, have)
        added = have
        while added < size:
            rows = list(conn.execute(select(ENTRIES).where(ENTRIES.c.seq > added).order_by(ENTRIES.c.seq)
                                     .limit(10_000)))
            leaves = [entry_leaf_hash(_entry_from_row(row)) for row in rows]
            made = merkle.extend(frontier, added, leaves)
            conn.execute(insert(TREE), [{"level": level, "idx": index, "hash": digest.hex()}
                                        for (level, index), digest in made])
            added += len(leaves)
        return size - have

    def entries(self, subject: str | None = None, *, start: int = 1, end: int | None = None) -> list[CustodyEntry]:
        """Entries with start <= seq <= end (end inclusive), optionally only those about `subject`, in seq order."""
        query = select(ENTRIES).where(ENTRIES.c.seq >= start).order_by(ENTRIES.c.seq)
        if end is not None:
            query = query.where(ENTRIES.c.seq <= end)
        if subject is not None:
            query = query.where(ENTRIES.c.subject == subject)
        with self._transaction(write=False) as conn:
            return [_entry_from_row(row) for row in conn.execute(query)]

    def size(self) -> int:
        """The number of entries (the seq of the last one)."""
        with self._transaction(write=False) as conn:
            return int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one())

    def _leaves(self, conn: Connection, upto: int | None = None) -> list[bytes]:
        """Every entry's leaf hash, in order, after checking each entry's hash, link and place in the sequence."""
        query = select(ENTRIES).order_by(ENTRIES.c.seq)
        if upto is not None:
            query = query.where(ENTRIES.c.seq <= upto)
        leaves = self._checked_leaves(conn.execute(query), 0, GENESIS_PREV_HASH)
        if upto is not None and len(leaves) < upto:
            raise LedgerCorrupt(f"entry {len(leaves) + 1}: missing (the ledger ends at {len(leaves)})")
        return leaves

    @staticmethod
    def _checked_leaves(rows: Iterable[Row[Any]], start: int, prev_hash: str) -> list[bytes]:
        """The leaf hashes of the entries after entry `start` (whose hash is `prev_hash`), in order, after checking
        each one's place in the sequence, its own hash and its link to the one before."""
        leaves: list[bytes] = []
        for row in rows:
            expected = start + len(leaves) + 1
            if row.seq != expected:
                raise LedgerCorrupt(f"entry {expected}: missing (the next stored entry is {row.seq})")
            entry = _entry_from_row(row)
            if compute_entry_hash(entry) != entry.entry_hash:
                raise LedgerCorrupt(f"entry {expected}: hash does not match its contents")
            if entry.prev_hash != prev_hash:
                if expected == 1:
                    raise LedgerCorrupt("entry 1: prev_hash is not the genesis value (64 zeros)")
                raise LedgerCorrupt(f"entry {expected}: prev_hash does not link to entry {expected - 1}")
            leaves.append(entry_leaf_hash(entry))
            prev_hash = entry.entry_hash
        return leaves

    # -- verification --

    def verify(self, checkpoint_verifier: Callable[[bytes, str], None] | None = None) -> tuple[int, bytes]:
        """Recompute every entry hash, the prev_hash chain, the Merkle tree and every checkpoint.

        `checkpoint_verifier(body, signature_b64)` must raise when a checkpoint's signature does not
        verify; without it signatures are not checked. Returns (size, root); raises LedgerCorrupt
        naming the first entry or checkpoint that does not hold.
        """
        try:
            with self._transaction(write=False) as conn:
                # Checkpoints first: on PostgreSQL each statement has its own snapshot, and entries only grow,
                # so every checkpoint read here is covered by the entries read after it.
                checkpoints = self._read_checkpoints(conn)
                leaves = self._leaves(conn)
                tree_problem: LedgerCorrupt | None = None
                if self._check_guards:
                    try:
                        self._check_tree(conn, leaves)
                    except LedgerCorrupt as exc:  # said after the entries and checkpoints: those name the change
                        tree_problem = exc
            self._check_checkpoints(leaves, checkpoints, checkpoint_verifier)
            if tree_problem is not None:
                raise tree_problem
        except LedgerCorrupt as exc:
            # What was changed comes first; that the guards are gone too is said after it.
            self._refresh_guards()
            if self._missing_guards:
                raise LedgerCorrupt(f"{exc}; and the append-only guards are gone: "
                                    f"{', '.join(self._missing_guards)}") from exc
            raise
        self._refresh_guards()
        self._refuse_if_unguarded()
        return len(leaves), merkle.root(leaves)

    def _check_tree(self, conn: Connection, leaves: list[bytes]) -> None:
        """The stored tree is exactly the tree of the entries: every node, and nothing more."""
        stored_count = int(conn.execute(select(func.count()).select_from(TREE)).scalar_one())
        frontier: list[tuple[merkle.Node, bytes]] = []
        made_count = 0
        for start in range(0, len(leaves), 10_000):
            made = merkle.extend(frontier, start, leaves[start:start + 10_000])
            made_count += len(made)
            try:
                stored = self._nodes(conn, [node for node, _ in made])
            except LedgerCorrupt as exc:
                raise LedgerCorrupt(f"the stored Merkle tree does not match the entries: {exc}") from exc
            for node, digest in made:
                if stored[node] != digest:
                    raise LedgerCorrupt(f"the stored Merkle tree differs from the entries at node {node[1]} of "
                                        f"level {node[0]} (leaves {node[1] << node[0]} to "
                                        f"{((node[1] + 1) << node[0]) - 1})")
        if stored_count != made_count:
            raise LedgerCorrupt(f"the stored Merkle tree holds {stored_count} nodes, the entries make {made_count}")

    @staticmethod
    def _read_checkpoints(conn: Connection) -> list[Checkpoint]:
        rows = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size))
        return [_checkpoint_from_row(row) for row in rows]

    @staticmethod
    def _check_checkpoints(leaves: list[bytes], checkpoints: list[Checkpoint],
                           verifier: Callable[[bytes, str], None] | None) -> None:
        size = len(leaves)
        roots = merkle.prefix_roots(leaves, [cp.tree_size for cp in checkpoints if cp.tree_size <= size])
        for cp in checkpoints:
            where = f"checkpoint at size {cp.tree_size}"
            if cp.tree_size > size:
                raise LedgerCorrupt(f"{where}: the ledger holds only {size} entries (entries after {size} "
                                    f"were removed)")
            if roots[cp.tree_size].hex() != cp.root_hash:
                raise LedgerCorrupt(f"{where}: root differs from the recomputed tree")
            body = checkpoint_body(cp)
            problem = timestamp_problem(cp.timestamp, body)
            if problem is not None:
                raise LedgerCorrupt(f"{where}: {problem}")
            if verifier is not None:
                try:
                    verifier(body, cp.signature)
                # The verifier is pluggable (cryptography raises InvalidSignature, ours SignatureInvalid,
                # bad base64 a ValueError): whatever it raises, the checkpoint is not trusted.
                except Exception as exc:
                    raise LedgerCorrupt(f"{where}: signature does not verify: {exc or type(exc).__name__}") from exc

    def import_ledger(self, source: Ledger) -> int:
        """Copy another ledger into this empty one, byte for byte, and check both trees are one.

        For moving a ledger between databases (the SQLite file of earlier versions into PostgreSQL): entries and
        checkpoints keep their exact text, so every hash, proof and signature made over them still holds.
        Returns how many entries were copied; raises LedgerCorrupt when the source does not verify.
        """
        size, root = source.verify()
        if self.size() != 0:
            raise UsageError("the ledger to import into is not empty")
        with source._transaction(write=False) as conn:
            entries = [dict(row._mapping) for row in conn.execute(select(ENTRIES).order_by(ENTRIES.c.seq))]
            checkpoints = [dict(row._mapping) for row in conn.execute(
                select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size))]
        with self._transaction(write=True, lock=ENTRIES) as conn:
            for start in range(0, len(entries), 1000):
                conn.execute(insert(ENTRIES), entries[start:start + 1000])
            if checkpoints:
                conn.execute(insert(CHECKPOINTS), checkpoints)
            self._build_tree(conn)
        copied, copied_root = self.verify()
        if (copied, copied_root) != (size, root):
            raise LedgerCorrupt(f"the imported ledger has {copied} entries and root {copied_root.hex()[:16]}…, not "
                                f"{size} and {root.hex()[:16]}…")
        return size

    def claim(self, key: str, value: str) -> str:
        """Record `value` under `key` in the ledger's own settings unless one is there; returns the recorded one."""
        try:
            with self._transaction(write=True) as conn:
                recorded = conn.execute(select(META.c.value).where(META.c.key == key)).scalar()
                if recorded is None:
                    conn.execute(insert(META).values(key=key, value=value))
                    return value
                return str(recorded)
        except sa_exc.IntegrityError:  # another process (the service and its worker start together) was first
            with self._transaction(write=False) as conn:
                return str(conn.execute(select(META.c.value).where(META.c.key == key)).scalar_one())

    def stored_root(self, size: int) -> bytes | None:
        """The Merkle root of the first `size` entries from the stored tree, in O(log n); None when the ledger has
        fewer entries. Only as trustworthy as the stored tree: compare it with a root signed elsewhere (a kept
        checkpoint document), and sign only roots that `checkpoint` recomputes from the entries."""
        if size < 0:
            raise UsageError(f"no tree of {size} entries")
        if size == 0:
            return merkle.EMPTY_ROOT
        with self._transaction(write=False) as conn:
            if int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one()) < size:
                return None
            return merkle.compose(0, size, self._nodes(conn, merkle.subtree_nodes(0, size)))

    def checkpoint_before(self, size: int) -> int:
        """The tree size of the newest checkpoint below `size` (0 when there is none)."""
        with self._transaction(write=False) as conn:
            found = conn.execute(select(func.max(CHECKPOINTS.c.tree_size)).where(CHECKPOINTS.c.tree_size < size))
            return int(found.scalar() or 0)

    def roots_at(self, sizes: Iterable[int]) -> dict[int, bytes]:
        """The Merkle root of the first n entries, for each n the ledger holds (every entry checked on the way)."""
        with self._transaction(write=False) as conn:
            leaves = self._leaves(conn)
        return merkle.prefix_roots(leaves, sorted({n for n in sizes if 0 <= n <= len(leaves)}))

    # -- proofs --

    def _proof_leaves(self, conn: Connection, tree_size: int) -> list[bytes]:
        size = int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one())
        if tree_size > size:
            raise UsageError(f"the ledger has {size} entries, fewer than tree size {tree_size}")
        return self._leaves(conn, tree_size)

    def inclusion_proof(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        """Proof that entry `seq` is in the tree of `tree_size` entries (default: all of them now).

        Made of O(log^2 n) stored nodes, never the whole log; the entry itself is read and checked against its
        leaf in the tree."""
        with self._transaction(write=False) as conn:
            size = int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one())
            if tree_size is None:
                tree_size = size
            if tree_size > size:
                raise UsageError(f"the ledger has {size} entries, fewer than tree size {tree_size}")
            if not 1 <= seq <= tree_size:
                raise UsageError(f"no entry {seq} in a tree of {tree_size} entries")
            ranges = merkle.inclusion_ranges(seq - 1, tree_size)
            wanted = {(0, seq - 1), *merkle.subtree_nodes(0, tree_size)}
            for lo, hi in ranges:
                wanted.update(merkle.subtree_nodes(lo, hi))
            stored = self._nodes(conn, wanted)
            row = conn.execute(select(ENTRIES).where(ENTRIES.c.seq == seq)).first()
        if row is None:
            raise LedgerCorrupt(f"entry {seq}: missing (the tree holds its leaf; the entry was removed)")
        leaf = stored[(0, seq - 1)]
        entry = _entry_from_row(row)
        if compute_entry_hash(entry) != entry.entry_hash or entry_leaf_hash(entry) != leaf:
            raise LedgerCorrupt(f"entry {seq}: its contents differ from what the tree holds for it")
        path = [merkle.compose(lo, hi, stored) for lo, hi in ranges]
        root = merkle.compose(0, tree_size, stored)
        # Never hand out a proof that does not hold: a changed inner node of the stored tree shows here.
        try:
            merkle.verify_inclusion(leaf, seq - 1, tree_size, path, root)
        except LedgerCorrupt as exc:
            raise LedgerCorrupt(f"the stored Merkle tree gives no valid proof for entry {seq}: {exc}; run "
                                "`wz custody verify`") from exc
        return InclusionProof(seq=seq, leaf_index=seq - 1, tree_size=tree_size, leaf_hash=leaf.hex(),
                              root=root.hex(), path=tuple(p.hex() for p in path))

    def inclusion_proofs(self, seqs: Iterable[int], tree_size: int) -> list[InclusionProof]:
        """Proofs of many entries in the tree of `tree_size` entries, reading the ledger once."""
        wanted = list(seqs)
        with self._transaction(write=False) as conn:
            leaves = self._proof_leaves(conn, tree_size)
        root = merkle.root(leaves).hex()
        paths = merkle.inclusion_proofs([seq - 1 for seq in wanted], leaves)
        return [InclusionProof(seq=seq, leaf_index=seq - 1, tree_size=tree_size, leaf_hash=leaves[seq - 1].hex(),
                               root=root, path=tuple(p.hex() for p in paths[seq - 1])) for seq in wanted]

    def consistency_proof(self, old_size: int, new_size: int) -> ConsistencyProof:
        """Proof that the tree of `old_size` entries is a prefix of the tree of `new_size` entries (stored nodes,
        O(log^2 n) of them)."""
        if not 0 <= old_size <= new_size:
            raise UsageError(f"no consistency proof from size {old_size} to {new_size}")
        with self._transaction(write=False) as conn:
            size = int(conn.execute(select(func.coalesce(func.max(ENTRIES.c.seq), 0))).scalar_one())
            if new_size > size:
                raise UsageError(f"the ledger has {size} entries, fewer than tree size {new_size}")
            ranges = merkle.consistency_ranges(old_size, new_size)
            wanted: set[merkle.Node] = set()
            for lo, hi in [*ranges, (0, old_size), (0, new_size)]:
                if hi > lo:
                    wanted.update(merkle.subtree_nodes(lo, hi))
            stored = self._nodes(conn, wanted)

        def root(n: int) -> bytes:
            return merkle.compose(0, n, stored) if n else merkle.EMPTY_ROOT

        path = [merkle.compose(lo, hi, stored) for lo, hi in ranges]
        try:
            merkle.verify_consistency(old_size, new_size, root(old_size), root(new_size), path)
        except LedgerCorrupt as exc:
            raise LedgerCorrupt(f"the stored Merkle tree gives no valid consistency proof from {old_size} to "
                                f"{new_size}: {exc}; run `wz custody verify`") from exc
        return ConsistencyProof(old_size=old_size, new_size=new_size, old_root=root(old_size).hex(),
                                new_root=root(new_size).hex(), path=tuple(p.hex() for p in path))

    # -- checkpoints --

    def checkpoint(self, signer_name: str, sign: Callable[[bytes], bytes],
                   stamp: Callable[[bytes], TimestampRecord | None] | None = None,
                   verify_signature: Callable[[bytes, str], None] | None = None) -> Checkpoint:
        """Sign (and optionally timestamp) the current tree size and root, store it and return it.

        `sign(body)` returns the raw signature over `checkpoint_body`; `stamp(sha256(body))` gets the
        32-byte digest and returns a timestamp record over it, or None. Refuses to sign a ledger that
        does not verify. One checkpoint per tree size: if one already exists at this size (nothing was
        appended since), that one is returned and nothing is signed.
        """
        _check_text(signer_name, "signer name")
        with self._transaction(write=False) as conn:
            row = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size.desc()).limit(1)).first()
            latest = _checkpoint_from_row(row) if row is not None else None
            if latest is not None and verify_signature is not None:
                # The growth is checked from the newest checkpoint row: a row forged into the database (a rewritten
                # root with any signature) must not become the base of the next signature.
                try:
                    verify_signature(checkpoint_body(latest), latest.signature)
                except (EvidenceError, ValueError) as exc:
                    raise LedgerCorrupt(f"checkpoint at size {latest.tree_size}: its signature does not verify "
                                        f"({exc}); the checkpoint rows were changed; not signing. Run "
                                        "`wz custody verify`") from exc
            size, root = self._checked_growth(conn, latest)
        self._refresh_guards()
        self._refuse_if_unguarded()
        if latest is not None and latest.tree_size == size:
            return latest
        at = parse_time(format_time(datetime.now(UTC)))
        unsigned = Checkpoint(tree_size=size, root_hash=root.hex(), at=at, signer=signer_name, signature="")
        body = checkpoint_body(unsigned)
        signature = base64.b64encode(sign(body)).decode("ascii")
        record = stamp(hashlib.sha256(body).digest()) if stamp is not None else None
        problem = timestamp_problem(record, body)
        if problem is not None:
            raise TimestampInvalid(f"checkpoint at size {unsigned.tree_size}: {problem}")
        cp = unsigned.model_copy(update={"signature": signature, "timestamp": record})
        stamp_json = canonical_json(record.model_dump(mode="json")).decode("utf-8") if record is not None else None
        with self._transaction(write=True, lock=CHECKPOINTS) as conn:
            row = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.tree_size == cp.tree_size)).first()
            if row is not None:  # another process checkpointed the same tree meanwhile: keep the first
                return _checkpoint_from_row(row)
            conn.execute(insert(CHECKPOINTS).values(tree_size=cp.tree_size, root_hash=cp.root_hash,
                                                    at=format_time(cp.at), signer=cp.signer,
                                                    signature=cp.signature, timestamp=stamp_json))
        return cp

    def _checked_growth(self, conn: Connection, latest: Checkpoint | None) -> tuple[int, bytes]:
        """The size and root to sign, checked since the last checkpoint: the stored tree still gives the last
        signed root; every entry after it has its own hash, links to the one before and is the leaf the tree
        holds; the root is recomputed from the last signed frontier and those leaves. Reads O(new + log n)."""
        start = latest.tree_size if latest is not None else 0
        frontier = self._frontier(conn, start)
        if latest is not None:
            kept = merkle.compose(0, start, dict(frontier)) if start else merkle.EMPTY_ROOT
            if kept.hex() != latest.root_hash:
                raise LedgerCorrupt(f"the stored Merkle tree no longer gives the root of the checkpoint at size "
                                    f"{start}: it was changed; run `wz custody verify`")
        prev_hash = GENESIS_PREV_HASH
        if start:
            last_signed = conn.execute(select(ENTRIES.c.entry_hash).where(ENTRIES.c.seq == start)).scalar()
            if last_signed is None:
                raise LedgerCorrupt(f"checkpoint at size {start}: entry {start} is gone (entries were removed)")
            prev_hash = str(last_signed)
        leaves = self._checked_leaves(
            conn.execute(select(ENTRIES).where(ENTRIES.c.seq > start).order_by(ENTRIES.c.seq)), start, prev_hash)
        size = start + len(leaves)
        made = merkle.extend(frontier, start, leaves)
        stored = self._nodes(conn, [node for node, _ in made])
        for node, digest in made:
            if stored[node] != digest:
                raise LedgerCorrupt(f"the stored Merkle tree differs from the entries at node {node[1]} of level "
                                    f"{node[0]}; run `wz custody verify`")
        root = merkle.EMPTY_ROOT
        if frontier:
            root = frontier[-1][1]
            for _node, left in reversed(frontier[:-1]):
                root = merkle.node_hash(left, root)
        return size, root

    def checkpoints(self) -> list[Checkpoint]:
        with self._transaction(write=False) as conn:
            return self._read_checkpoints(conn)

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size.desc()).limit(1)).first()
        return _checkpoint_from_row(row) if row is not None else None

