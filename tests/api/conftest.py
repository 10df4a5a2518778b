"""The custody service under test: a real PostgreSQL database (a fresh one per module, dropped afterwards), the
session's SeaweedFS, the local TSA, and the FastAPI application driven over HTTP (Starlette's TestClient).

PostgreSQL is reached at WZ_TEST_POSTGRES_URL (default: database `test` on 127.0.0.1:5432 as `postgres`); when it is
unreachable these tests fail, they never skip.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url

from api.app import create_app
from api.context import Context
from api.routers.auth import add_user
from evidence import Settings
from storage import S3Endpoint

POSTGRES_URL = os.environ.get("WZ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSWORD = "correct horse battery"  # noqa: S105 - the test users' password


def fresh_database() -> tuple[str, Any]:
    """A new, empty database on the test server: (its URL, a function that drops it)."""
    name = f"wz_api_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # raises (the test errors, never skips) when PostgreSQL is unreachable
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False), drop


def service_settings(data_dir: Path, database_url: str, endpoint: S3Endpoint, **overrides: Any) -> Settings:
    bucket = f"wz-api-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {
        "data_dir": data_dir, "database_url": database_url, "s3_endpoint": endpoint.endpoint,
        "s3_access_key": endpoint.access_key, "s3_secret_key": endpoint.secret_key, "s3_bucket": bucket,
        "retention_days": 1, "capture_allow_private": True, "ntp_timeout_seconds": 1, "actor": "wz-test",
        "tsa_urls": "", "secret_key": "",
    }
    return Settings(**(values | overrides))


@dataclass
class Service:
    """The running application and the people who use it."""

    client: TestClient
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> Context:
        ctx: Context = self.client.app.state.context  # type: ignore[attr-defined]
        return ctx

    def add_user(self, name: str, role: str) -> str:
        """Create a user (as an admin would with `wz users add`) and sign them in; returns their bearer token."""
        add_user(self.ctx, name, role, PASSWORD, actor="wz-test")
        self.tokens[name] = self.sign_in(name)
        return self.tokens[name]

    def sign_in(self, name: str, password: str = PASSWORD) -> str:
        answer = self.client.post("/api/v1/auth/token", data={"username": name, "password": password})
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token

    def request(self, method: str, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return self.client.request(method, "/api/v1" + path, headers=headers, **kwargs)

    def get(self, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who, **kwargs)

    def post(self, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, who, **kwargs)


def open_service(data_dir: Path, endpoint: S3Endpoint, **overrides: Any) -> Iterator[Service]:
    url, drop = fresh_database()
    settings = service_settings(data_dir, url, endpoint, **overrides)
    try:
        with TestClient(create_app(settings, secret=secrets.token_urlsafe(48))) as client:
            yield Service(client, settings)
    finally:
        drop()


@pytest.fixture
def service(tmp_path: Path, s3_server: S3Endpoint) -> Iterator[Service]:
    yield from open_service(tmp_path / "data", s3_server)
