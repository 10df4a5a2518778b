"""The service's pooled connections: checked before use only after lying idle, so a database restart costs no
request an error, and a busy service pays no round trip per request for the check."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc

from api.context import ping_when_idle
from tests.api.conftest import POSTGRES_URL

pytestmark = pytest.mark.integration


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def terminate(pid: int) -> None:
    """What a database restart does to every connection a pool holds."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar_one()
    finally:
        admin.dispose()


def test_a_connection_killed_while_idle_is_replaced_before_a_request_uses_it() -> None:
    engine = create_engine(POSTGRES_URL, pool_size=1, max_overflow=0)
    ping_when_idle(engine, 0.2)
    try:
        first = backend_pid(engine)
        terminate(first)
        time.sleep(0.4)
        assert backend_pid(engine) != first  # no error: the dead connection was found and replaced
    finally:
        engine.dispose()


def test_a_connection_handed_back_moments_ago_is_used_without_a_check() -> None:
    engine = create_engine(POSTGRES_URL, pool_size=1, max_overflow=0)
    ping_when_idle(engine, 60)
    try:
        first = backend_pid(engine)
        terminate(first)
        # Not idle long enough to be checked, so the dead connection is handed out (and then replaced).
        with pytest.raises(sa_exc.OperationalError):
            backend_pid(engine)
        assert backend_pid(engine) != first
    finally:
        engine.dispose()
