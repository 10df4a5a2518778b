"""Durable file writes: every file the pipeline rewrites goes through here.

A rename alone is atomic but not durable: after a power cut the directory entry may point at a file
whose data never reached the disk. So: write a temporary file beside the target, fsync it, rename it
over the target, then fsync the directory that holds the new name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`: a crash at any point leaves either the old file or the new one, whole."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def remove_durably(path: Path) -> None:
    """Remove a file and make the removal durable (a marker must not come back after a crash)."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)
