"""Ledger tests run on SQLite (a temporary file) and on PostgreSQL (a fresh schema per test, dropped afterwards).

PostgreSQL is reached at WZ_TEST_POSTGRES_URL (default: database `test` on 127.0.0.1:5432 as `postgres`).
When it is unreachable the PostgreSQL tests fail; they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

POSTGRES_URL = os.environ.get("WZ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Database:
    """One ledger database and a raw connection to it, as someone with direct database access has."""

    kind: str
    url: str
    raw: Engine

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        with self.raw.begin() as conn:
            result = conn.execute(text(sql), params or {})
            return list(result) if result.returns_rows else []

    def drop_guards(self) -> list[str]:
        """Drop every trigger on the ledger's tables, as an attacker with owner rights could."""
        if self.kind == "sqlite":
            names = [row[0] for row in self.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
            for name in names:
                self.execute(f'DROP TRIGGER "{name}"')
            return names
        rows = self.execute(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
        )
        for name, table in rows:
            self.execute(f'DROP TRIGGER "{name}" ON "{table}"')
        return [row[0] for row in rows]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'custody.sqlite3'}"
        # The raw engine must not create the file's directory: the ledger has to do that itself.
        database = Database("sqlite", url, create_engine(url))
        yield database
        database.raw.dispose()
        return
    schema = f"wz_custody_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # raises (the test errors, never skips) when PostgreSQL is unreachable
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url_text = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    database = Database("postgresql", url_text, create_engine(url_text))
    try:
        yield database
    finally:
        database.raw.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            left = conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
            ).scalar_one()
            functions = conn.execute(
                text("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                     "WHERE n.nspname = :schema"), {"schema": schema}
            ).scalar_one()
        admin.dispose()
        assert (left, functions) == (0, 0), f"schema {schema} was not cleaned up"
