"""Durable rewrites: the file and its directory are fsynced, and a failure leaves the old file whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from evidence import files
from evidence.files import write_atomic


def test_write_atomic_fsyncs_the_file_then_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("directory" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    target = tmp_path / "preservation.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert synced == ["file", "directory"]  # data before the rename is made durable, the rename after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preservation.json"]  # no temporary file left


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"the old, whole file")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"x" * 100_000)
    assert target.read_bytes() == b"the old, whole file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
