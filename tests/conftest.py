"""Shared fixtures. Integration tests use the real programs; when one is missing they fail, never skip."""

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

REQUIRED_PROGRAMS = ("ffmpeg", "ffprobe", "Xvfb", "pulseaudio", "pactl")
REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    if not Path("/usr/lib/chromium/chromium").exists() and shutil.which("chromium") is None:
        missing.append("chromium")
    if missing:
        # Fail loudly: a test suite that quietly skips the real components proves nothing.
        raise pytest.UsageError(f"missing programs {missing}: run ./scripts/setup first")


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


@pytest.fixture
def wz_env(tmp_path: Path, s3_server: S3Endpoint) -> dict[str, str]:
    return base_env(tmp_path / "data", s3_server)


def wz(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=REPO, check=False,
    )
