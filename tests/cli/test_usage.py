"""Bad input: exit 2 with one line saying what is wrong, no traceback, nothing recorded."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, offline_env, wz


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
        (["capture", "http://127.0.0.1:9/", "--tile-size", "4096x2160"], "--tile-size"),
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


def _usage_error(args: list[str | bytes], tmp_path: Path, expected: str) -> None:
    env = offline_env(tmp_path / "data") | {"WZ_CAPTURE_ALLOW_PRIVATE": "1"}
    result = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                            timeout=60, cwd=REPO, check=False)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "unexpected error" not in result.stderr


@pytest.mark.parametrize(("out", "expected"), [("/etc/passwd", "is a file"), ("/proc/self/c", "inside /proc"),
                                               ("/sys/kernel/c", "inside /sys"), ("/dev/shm/c", "inside /dev")])
def test_out_must_be_a_directory_of_the_capture_own(out: str, expected: str, tmp_path: Path) -> None:
    _usage_error(["capture", "http://127.0.0.1:9/", "--duration", "5", "--out", out], tmp_path, expected)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--case", "A\nB", "one line"), ("--operator", "\x1b[31mred", "printable"), ("--case", "x" * 100_000, "at most"),
    ("--case", b"\xff\xfe", "UTF-8"), ("--operator", "   ", "empty"),
])
def test_case_and_operator_are_one_printable_bounded_line(option: str, value: str | bytes, expected: str,
                                                          tmp_path: Path) -> None:
    _usage_error(["capture", "http://127.0.0.1:9/", "--duration", "5", option, value], tmp_path, expected)


def test_arguments_are_checked_before_anything_waits_for_the_store(tmp_path: Path) -> None:
    """With uploads waiting in the spool and the store down, a bad --fps still answers at once, in one line."""
    from tests.preservation.conftest import make_capture

    spool = tmp_path / "data" / "spool"
    manifest = make_capture(tmp_path / "c")
    from evidence import Digests
    from storage import Spool, SpoolItem

    Spool(spool).enqueue(manifest.capture_id, tmp_path / "c", [SpoolItem(
        "captures/x/composite.mp4", "composite.mp4", "video/mp4", Digests(sha256="0" * 64, sm3="0" * 64))])
    _usage_error(["capture", "http://127.0.0.1:9/", "--fps", "100"], tmp_path, "--fps")
    _usage_error(["capture", "http://127.0.0.1:9/", "--layout", "4x4"], tmp_path, "layout")


@pytest.mark.parametrize("name", ["evidence.ZIP", "nonsense"])
def test_verify_takes_a_package_or_a_capture_id(name: str, tmp_path: Path) -> None:
    result = wz(["verify", str(tmp_path / name) if name.endswith("ZIP") else name], offline_env(tmp_path / "d"))
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr
    if name.endswith("ZIP"):
        assert result.returncode == 1 and "package readable" in result.stdout  # a package, even in capitals
    else:
        assert result.returncode == 2 and "neither a package file" in result.stderr


def test_services_stop_when_the_store_never_ran(tmp_path: Path) -> None:
    result = wz(["services", "stop"], offline_env(tmp_path / "never"))
    assert result.returncode == 0 and "was not running" in result.stderr


def test_a_reader_that_stops_reading_is_no_error(tmp_path: Path) -> None:
    """`wz custody show ID | head` ended in "unexpected error (BrokenPipeError)"."""
    from custody.ledger import Ledger
    from evidence import CustodyAction
    from preservation.registry import register
    from tests.preservation.conftest import make_capture

    env = offline_env(tmp_path / "data")
    manifest = make_capture(tmp_path / "c")
    register(tmp_path / "data" / "registry", manifest.capture_id, tmp_path / "c")
    with Ledger(f"sqlite:///{tmp_path / 'data' / 'custody.sqlite3'}") as ledger:
        for n in range(2000):
            ledger.append("inspector", CustodyAction.VERIFIED, manifest.capture_id, {"n": n, "pad": "x" * 100})
    reader = subprocess.Popen([sys.executable, "-m", "cli.main", "custody", "show", manifest.capture_id], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.readline()
    reader.stdout.close()  # as `head -1` does
    code = reader.wait(timeout=60)
    stderr = reader.stderr.read().decode()
    assert "unexpected error" not in stderr and "Traceback" not in stderr, stderr
    assert code in (0, 1)


def test_sync_reports_a_store_that_is_down_once(tmp_path: Path) -> None:
    """`wz sync` used to say it twice: once from the start-up catch-up, once from the sync it was asked for."""
    from evidence import Digests
    from storage import Spool, SpoolItem
    from tests.preservation.conftest import make_capture

    manifest = make_capture(tmp_path / "c")
    Spool(tmp_path / "data" / "spool").enqueue(manifest.capture_id, tmp_path / "c", [SpoolItem(
        "captures/x/composite.mp4", "composite.mp4", "video/mp4", Digests(sha256="0" * 64, sm3="0" * 64))])
    result = wz(["sync"], offline_env(tmp_path / "data"))
    assert result.returncode == 1
    assert result.stderr.count("object store unavailable") == 1, result.stderr
    assert "Connection refused" in result.stderr and "MaxRetryError" not in result.stderr
