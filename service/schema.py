"""Bring the service's database to the newest schema (Alembic), once per process, under an advisory lock."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

_MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK = 0x575A_5345_5256  # "WZSERV": one migrating process at a time


def upgrade(engine: Engine) -> None:
    """Apply every migration not applied yet (PostgreSQL only: the service needs its job queue)."""
    if engine.dialect.name != "postgresql":
        raise ValueError("the custody service runs on PostgreSQL (WZ_DATABASE_URL, or the embedded one)")
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
