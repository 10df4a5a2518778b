"""The embedded PostgreSQL: a private cluster under the data directory, on a Unix socket only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy

from custody.ledger import Ledger
from evidence import CustodyAction, Settings
from preservation.database import database_url, embedded_postgres
from storage.postgres import EmbeddedPostgres

pytestmark = pytest.mark.integration  # a real PostgreSQL server


def _query(url: str, sql: str) -> object:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()


def test_a_private_cluster_starts_once_listens_on_no_port_and_stops(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "services" / "postgres")
    url = cluster.ensure_running()
    try:
        assert cluster.running() and cluster.ensure_running() == url
        assert _query(url, "SHOW listen_addresses") == ""  # no TCP: only the socket its owner can enter
        assert _query(url, "SELECT current_database()") == "wangzheng"
        assert oct(cluster.socket_dir.stat().st_mode & 0o777) == "0o700"
        if os.geteuid() == 0:
            owner = cluster.data.stat().st_uid
            assert owner != 0 and owner == int(subprocess.run(["id", "-u", "wangzheng"], capture_output=True,
                                                               text=True, check=True).stdout)
    finally:
        assert cluster.stop()
    assert not cluster.running() and not cluster.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="run by another user, the cluster is that user's own: nothing to pass")
def test_as_root_the_database_user_may_pass_through_a_private_directory_but_not_read_it(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    evidence = private / "evidence.txt"
    evidence.write_text("not for the database's user")
    evidence.chmod(0o600)  # as wz writes everything (umask 077)
    cluster = EmbeddedPostgres(private / "wz" / "services" / "postgres")
    try:
        url = cluster.ensure_running()
        as_db_user = ["runuser", "-u", "wangzheng", "--"]
        assert subprocess.run([*as_db_user, "test", "-x", str(private)], check=False).returncode == 0
        assert subprocess.run([*as_db_user, "ls", str(private)], capture_output=True, check=False).returncode != 0
        assert subprocess.run([*as_db_user, "cat", str(evidence)], capture_output=True, check=False).returncode != 0
        # Nor can SQL read a file: Wangzheng's role is no superuser.
        assert _query(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        with pytest.raises(sqlalchemy.exc.DBAPIError, match=r"permission denied|must be superuser|privileges"):
            _query(url, "SELECT pg_read_file('/etc/passwd')")
    finally:
        cluster.stop()


def test_a_ledger_kept_in_sqlite_moves_into_the_embedded_database_unchanged(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    legacy = settings.legacy_ledger_path
    with Ledger(f"sqlite:///{legacy}") as old:
        for n in range(40):
            old.append("inspector", CustodyAction.STORED, "wz-20261130T000000Z-abcdef", {"n": n})
        old.checkpoint("node", lambda body: b"signature over " + body[:8])
        before = old.verify()
        checkpoints = old.checkpoints()
    url = database_url(settings)
    try:
        with Ledger(url) as moved:
            assert moved.verify() == before
            assert moved.checkpoints() == checkpoints
        assert not legacy.exists() and legacy.with_name("custody.sqlite3.moved-to-postgresql").exists()
        assert database_url(settings) == url  # once
    finally:
        embedded_postgres(settings).stop()
