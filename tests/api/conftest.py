"""The custody service under test: a real PostgreSQL database (a fresh one per module, dropped afterwards), the
session's SeaweedFS, the local TSA, and the FastAPI application driven over HTTP (Starlette's TestClient).

PostgreSQL is reached at WZ_TEST_POSTGRES_URL (default: database `test` on 127.0.0.1:5432 as `postgres`); when it is
unreachable these tests fail, they never skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
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
from tests.conftest import REPO, base_env, wz

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
        "tsa_urls": "", "secret_key": "", "public_url": "http://127.0.0.1:8000/",
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """`wz serve` (and any extra `wz worker`) as separate processes, reached over real HTTP."""

    base: str
    env: dict[str, str]
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_user(self, name: str, role: str) -> dict[str, str]:
        made = wz(["users", "add", name, "--role", role, "--password-stdin"], self.env, stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        answer = self.client.post("/auth/token", data={"username": name, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        self.headers[name] = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        return self.headers[name]

    def start_worker(self, tiles: int = 4) -> subprocess.Popen[bytes]:
        log = self.log.with_name(f"worker-{len(self.workers)}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--tiles", str(tiles)],
                                   env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.workers.append(process)
        return process

    def wait_state(self, capture_id: str, who: str, states: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.client.get(f"/captures/{capture_id}", headers=self.headers[who]).json()
            if seen.get("state") in states:
                return seen
            time.sleep(0.5)
        raise AssertionError(f"{capture_id} did not reach {states} in {timeout:.0f} s: {seen}\n"
                             f"{self.log.read_text(errors='replace')[-4000:]}")


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Started in a session of its own: whatever it left behind (a local worker still finishing a recording whose
    # database is about to be dropped) goes with it, rather than load the machine under the next tests.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def serve_process(data_dir: Path, endpoint: S3Endpoint, *args: str) -> Iterator[Served]:
    url, drop = fresh_database()
    env = base_env(data_dir, endpoint) | {"WZ_DATABASE_URL": url, "WZ_ACTOR": "wz-test-admin"}
    env.pop("WZ_SECRET_KEY", None)
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / "serve.log"
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), *args], env=env,
                                   cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=120)
    served = Served(f"http://127.0.0.1:{port}", env, url, process, log, client)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/log/checkpoint").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"wz serve did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        yield served
    finally:
        client.close()
        for worker in served.workers:
            _stop(worker, 180)
        _stop(process, 240)
        drop()
