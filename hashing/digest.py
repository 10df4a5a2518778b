"""Streaming SHA-256 + SM3: files are read in chunks, never whole."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from evidence import ComponentMissing, Digests

CHUNK = 1 << 20
PARALLEL_CHUNK = 4 << 20


def sm3_available() -> bool:
    try:
        hashlib.new("sm3")
    except ValueError:
        return False
    return True


def _new_sm3() -> hashlib._Hash:
    try:
        return hashlib.new("sm3")
    except ValueError as exc:  # OpenSSL built without SM3
        raise ComponentMissing(
            "this Python's OpenSSL has no SM3; install an OpenSSL 1.1.1+ build with SM3 enabled"
        ) from exc


class DigestWriter:
    """Wraps a binary file being written and digests the bytes as they pass."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._sha256 = hashlib.sha256()
        self._sm3 = _new_sm3()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self._sm3.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def digests(self) -> Digests:
        return Digests(sha256=self._sha256.hexdigest(), sm3=self._sm3.hexdigest())


def digest_stream(handle: IO[bytes]) -> tuple[int, Digests]:
    """Size and digests of everything a binary stream yields, in one pass with bounded memory.

    SHA-256 and SM3 run on two threads (hashlib releases the GIL on large updates) while the next
    chunk is read, so the pass costs about as long as SM3 alone, the slower of the two.
    """
    sha256 = hashlib.sha256()
    sm3 = _new_sm3()
    size = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as pool:
        pending: tuple[Future[None], Future[None]] | None = None
        while chunk := handle.read(PARALLEL_CHUNK):
            if pending is not None:
                pending[0].result()
                pending[1].result()
            pending = (pool.submit(sha256.update, chunk), pool.submit(sm3.update, chunk))
            size += len(chunk)
        if pending is not None:
            pending[0].result()
            pending[1].result()
    return size, Digests(sha256=sha256.hexdigest(), sm3=sm3.hexdigest())


def digest_file(path: Path) -> tuple[int, Digests]:
    """Size and digests of a file, in one streaming pass."""
    with path.open("rb") as handle:
        if path.stat().st_size <= CHUNK:
            data = handle.read()
            return len(data), Digests(sha256=hashlib.sha256(data).hexdigest(), sm3=_new_sm3_of(data))
        return digest_stream(handle)


def _new_sm3_of(data: bytes) -> str:
    sm3 = _new_sm3()
    sm3.update(data)
    return sm3.hexdigest()
