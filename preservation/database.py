"""Which database the node uses: WZ_DATABASE_URL, or the embedded PostgreSQL under the data directory.

On the first start of the embedded PostgreSQL, a custody ledger that earlier versions kept in SQLite
(`<data dir>/custody.sqlite3`) is copied into it byte for byte, checked, and the file renamed, so one database
serves the CLI and the service alike.
"""

from __future__ import annotations

import logging

from custody.ledger import Ledger
from evidence import Settings, UsageError
from storage.postgres import EmbeddedPostgres

log = logging.getLogger(__name__)


def embedded_postgres(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.services_dir / "postgres", port=settings.embedded_db_port)


def database_url(settings: Settings) -> str:
    """The database URL, starting the embedded PostgreSQL (and moving a legacy SQLite ledger into it) if needed."""
    if settings.database_url:
        return settings.database_url
    url = embedded_postgres(settings).ensure_running()
    legacy = settings.legacy_ledger_path
    if legacy.is_file():
        _move_legacy_ledger(settings, url)
    return url


def _move_legacy_ledger(settings: Settings, url: str) -> None:
    legacy = settings.legacy_ledger_path
    with Ledger(f"sqlite:///{legacy}", check_guards=False) as old, Ledger(url) as new:
        if new.size() != 0:
            raise UsageError(f"{legacy} holds a custody ledger, and the embedded PostgreSQL holds another; keep one "
                             "(move the file away to keep the database's) and run again")
        copied = new.import_ledger(old)
    moved = legacy.with_name(legacy.name + ".moved-to-postgresql")
    legacy.rename(moved)
    for suffix in ("-wal", "-shm"):
        legacy.with_name(legacy.name + suffix).unlink(missing_ok=True)
    log.warning("moved the custody ledger (%d entries) from %s into the embedded PostgreSQL; the file is kept as %s",
                copied, legacy, moved)
