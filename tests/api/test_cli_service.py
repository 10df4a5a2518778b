"""`wz users` and `wz serve` as an administrator uses them: passwords never as arguments, tokens shown once and
stored hashed, revocation, and a service that refuses to listen beyond loopback with a default secret."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.app import create_app
from storage import S3Endpoint
from tests.api.conftest import fresh_database, service_settings
from tests.conftest import offline_env, wz

pytestmark = pytest.mark.integration


@pytest.fixture
def database() -> Iterator[str]:
    url, drop = fresh_database()
    yield url
    drop()


def test_users_and_tokens_from_the_command_line(tmp_path: Path, database: str, s3_server: S3Endpoint) -> None:
    env = offline_env(tmp_path / "data") | {"WZ_DATABASE_URL": database, "WZ_ACTOR": "admin-on-console"}
    added = wz(["users", "add", "wang", "--role", "investigator", "--password-stdin"], env,
               stdin="a long enough password\n")
    assert added.returncode == 0, added.stderr
    assert "wang (investigator) created" in added.stderr
    again = wz(["users", "add", "wang", "--role", "court", "--password-stdin"], env, stdin="another password\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = wz(["users", "add", "li", "--role", "court", "--password-stdin"], env, stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    no_terminal = wz(["users", "add", "li", "--role", "court"], env, stdin="")
    assert no_terminal.returncode == 2 and "--password-stdin" in no_terminal.stderr
    bad_scope = wz(["users", "token", "wang", "--scope", "read,root"], env)
    assert bad_scope.returncode == 2 and "root" in bad_scope.stderr

    made = wz(["users", "token", "wang", "--scope", "read", "--label", "nightly report"], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("wzt_") and "shown only now" in made.stderr
    listed = wz(["users", "list"], env)
    assert "wang" in listed.stdout and "investigator" in listed.stdout

    engine = create_engine(database)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT secret_sha256, scopes FROM api_tokens")).one()
        hashes = conn.execute(text("SELECT password_hash FROM users")).scalars().all()
    engine.dispose()
    assert token.split("_", 2)[2] not in stored.secret_sha256 and stored.scopes == ["read"]
    assert all(h.startswith("$argon2id$") for h in hashes)

    settings = service_settings(tmp_path / "service", database, s3_server)
    with TestClient(create_app(settings, secret=secrets.token_urlsafe(48))) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/me", headers=headers).json()["name"] == "wang"
        read_only = client.post("/api/v1/cases", headers=headers, json={"title": "x"})
        assert read_only.status_code == 403 and "scope 'capture'" in read_only.json()["detail"]
        token_id = token.split("_")[1]
        revoked = wz(["users", "revoke", token_id], env)
        assert revoked.returncode == 0, revoked.stderr
        assert client.get("/api/v1/me", headers=headers).status_code == 401
        ledger = client.app.state.context.services.ledger  # type: ignore[attr-defined]
        made_entries = ledger.entries(subject="user:wang")
        assert [e.action.value for e in made_entries] == ["user-created", "token-created"]
        assert made_entries[0].actor == "admin-on-console"
        assert ledger.entries(subject=f"token:{token_id}")[0].action.value == "token-revoked"
    assert wz(["users", "revoke", token_id], env).returncode == 2


def test_serve_refuses_a_public_address_without_its_own_secret(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "data")
    env.pop("WZ_SECRET_KEY", None)
    refused = wz(["serve", "--host", "0.0.0.0", "--port", "18999"], env, timeout=60)  # noqa: S104 - refused
    assert refused.returncode == 2
    assert "WZ_SECRET_KEY" in refused.stderr
    weak = wz(["serve", "--host", "0.0.0.0", "--port", "18999"], env | {"WZ_SECRET_KEY": "short"},  # noqa: S104
              timeout=60)
    assert weak.returncode == 2 and "at least 32" in weak.stderr
