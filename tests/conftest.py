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


@pytest.fixture
def wz_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `wz` subprocess: its own data directory, local targets allowed."""
    return {
        **os.environ,
        "WZ_DATA_DIR": str(tmp_path / "data"),
        "WZ_CAPTURE_ALLOW_PRIVATE": "1",
        "WZ_NTP_TIMEOUT_SECONDS": "1",
    }


def wz(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=REPO, check=False,
    )
