"""Bad input: exit 2 with one line saying what is wrong, no traceback, nothing recorded."""

from pathlib import Path

import pytest

from tests.conftest import offline_env, wz


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["capture", "not-a-url", "--duration", "5"], "not an http(s) URL"),
        (["capture", *[f"http://127.0.0.1:9/{i}" for i in range(10)]], "at most 9"),
        (["capture", "http://127.0.0.1:9/", "--duration", "0"], "more than 0"),
        (["capture", "http://127.0.0.1:9/", "--duration", "abc"], "number of seconds"),
        (["capture", "http://127.0.0.1:9/", "--duration", "999999"], "over the maximum"),
        (["capture", "http://127.0.0.1:9/", "--layout", "5x5"], "layout"),
        (["capture", "http://127.0.0.1:9/", "--fps", "100"], "--fps"),
        (["capture"], "required"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    result = wz(args, offline_env(tmp_path / "data") | {"WZ_CAPTURE_ALLOW_PRIVATE": "1"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_private_target_refused_without_the_setting(tmp_path: Path) -> None:
    env = offline_env(tmp_path / "data")
    result = wz(["capture", "http://127.0.0.1:9/", "--duration", "5", "--out", str(tmp_path / "c")], env, timeout=60)
    assert result.returncode == 2
    assert "loopback" in result.stderr and "WZ_CAPTURE_ALLOW_PRIVATE" in result.stderr
    assert not (tmp_path / "c").exists()
