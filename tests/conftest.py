"""Shared fixtures. Integration tests use the real programs; when one is missing they fail, never skip.

Two tiers: `pytest -m "not integration"` runs every test that needs no browser, display, sound server, object
store or database server, and requires none of them at start; `pytest` (what ./scripts/test runs) runs all.
A fixture that starts a real server refuses to serve a test not marked `integration`, so a test cannot slip
a component into the fast tier unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture.fixtures import FixtureServer
from storage import EmbeddedSeaweed, S3Endpoint
from storage.postgres import EmbeddedPostgres

REQUIRED_PROGRAMS = ("ffmpeg", "ffprobe", "Xvfb", "pulseaudio", "pactl")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("integration") for item in items):
        return
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    if not Path("/usr/lib/chromium/chromium").exists() and shutil.which("chromium") is None:
        missing.append("chromium")
    if missing:
        # Fail loudly: a test suite that quietly skips the real components proves nothing.
        raise pytest.UsageError(f"integration tests selected but programs {missing} are missing: "
                                "run ./scripts/setup first (or select the fast tier with -m 'not integration')")


# Fixtures that start (or need) a real server; a test that uses one, directly or through another fixture,
# must be marked integration.
SERVER_FIXTURES = {"s3_server": "SeaweedFS", "demo_server": "the demo page server (ffmpeg media)",
                   "server": "the demo page server (ffmpeg media)",
                   "pg_url": "PostgreSQL", "seaweed": "SeaweedFS", "endpoint": "SeaweedFS"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        return
    used = sorted({SERVER_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in SERVER_FIXTURES})
    if used:
        raise pytest.UsageError(f"{item.nodeid} uses {', '.join(used)} but is not marked integration")


def stop_embedded_databases(root: Path) -> None:
    """Every `wz` run with a fresh data directory starts its own embedded PostgreSQL (it outlives the command, as it
    does for a user): stop those a test left under `root`."""
    if not root.is_dir():
        return
    for pid_file in root.glob("**/services/postgres/data/postmaster.pid"):
        EmbeddedPostgres(pid_file.parent.parent).stop()


@pytest.fixture(autouse=True)
def _embedded_databases_stopped(request: pytest.FixtureRequest) -> Iterator[None]:
    # Asked for here, at set-up, so tmp_path outlives this fixture's tear-down.
    wanted = "tmp_path" in request.fixturenames and request.node.get_closest_marker("integration") is not None
    root: Path | None = request.getfixturevalue("tmp_path") if wanted else None
    yield
    if root is not None:
        stop_embedded_databases(root)


@pytest.fixture(scope="session", autouse=True)
def _session_databases_stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    stop_embedded_databases(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def fixture_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared = os.environ.get("WZ_TEST_FIXTURE_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("fixture-cache")


@pytest.fixture(scope="session")
def demo_server(fixture_cache: Path) -> Iterator[FixtureServer]:
    with FixtureServer(fixture_cache) as server:
        yield server


# One SeaweedFS for the capture tests, on ports apart from the default instance and the storage tests'.
TEST_S3_PORT = 19333
TEST_S3_PORT_BASE = 19400


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    instance = EmbeddedSeaweed(tmp_path_factory.mktemp("seaweed-capture"), s3_port=TEST_S3_PORT,
                               port_base=TEST_S3_PORT_BASE)
    endpoint = instance.ensure_running(timeout=90)
    yield endpoint
    instance.stop()


def s3_env(endpoint: S3Endpoint, bucket: str) -> dict[str, str]:
    return {
        "WZ_S3_ENDPOINT": endpoint.endpoint,
        "WZ_S3_ACCESS_KEY": endpoint.access_key,
        "WZ_S3_SECRET_KEY": endpoint.secret_key,
        "WZ_S3_BUCKET": bucket,
        "WZ_RETENTION_DAYS": "1",
    }


def base_env(data_dir: Path, endpoint: S3Endpoint) -> dict[str, str]:
    """Environment for a `wz` subprocess: its own data directory and bucket, local targets allowed."""
    bucket = "wz-test-" + data_dir.parent.name.lower().replace("_", "-")[-40:].strip("-")
    return {
        **os.environ,
        "WZ_DATA_DIR": str(data_dir),
        "WZ_CAPTURE_ALLOW_PRIVATE": "1",
        "WZ_NTP_TIMEOUT_SECONDS": "1",
        **s3_env(endpoint, bucket),
    }


def offline_env(data_dir: Path) -> dict[str, str]:
    """Environment for a `wz` subprocess that must start no server: its store points at a port nothing serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WZ_")}
    return env | {
        "WZ_DATA_DIR": str(data_dir),
        "WZ_NTP_TIMEOUT_SECONDS": "1",
        "WZ_S3_ENDPOINT": "127.0.0.1:9",  # discard: nothing answers, so a command that needs the store says so
        "WZ_S3_ACCESS_KEY": "unused",
        "WZ_S3_SECRET_KEY": "unused-secret",
        # A ledger in one SQLite file: the fast tier starts no database server.
        "WZ_DATABASE_URL": f"sqlite:///{data_dir / 'custody.sqlite3'}",
    }


@pytest.fixture
def wz_env(tmp_path: Path, s3_server: S3Endpoint) -> dict[str, str]:
    return base_env(tmp_path / "data", s3_server)


def wz(args: list[str], env: dict[str, str], timeout: float = 300,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=REPO, check=False, input=stdin,
    )
