"""Streaming SHA-256 + SM3: files are read in chunks, never whole."""

from __future__ import annotations

import hashlib
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from evidence import ComponentMissing, DigestMismatch, Digests

CHUNK = 1 << 20
PARALLEL_CHUNK = 4 << 20
WINDOW = 32 << 20  # mmap.ALLOCATIONGRANULARITY divides it, as window offsets require


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
    chunk is read into the other of two fixed buffers, so the pass costs about as long as SM3 alone,
    the slower of the two, and no memory is allocated per chunk.
    """
    sha256 = hashlib.sha256()
    sm3 = _new_sm3()
    # Most evidence files are small (pages, logs, tokens, short segments): one read, no threads, no buffers.
    # A package of 30,000 of them took 145 s to verify when each paid for two 4 MiB buffers and a thread pool.
    head = b""
    while len(head) < CHUNK:  # a raw stream may return less than asked before its end
        part = handle.read(CHUNK - len(head))
        if not part:
            break
        head += part
    sha256.update(head)
    sm3.update(head)
    if len(head) < CHUNK:
        return len(head), Digests(sha256=sha256.hexdigest(), sm3=sm3.hexdigest())
    size = len(head)
    buffers = (bytearray(PARALLEL_CHUNK), bytearray(PARALLEL_CHUNK))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as pool:
        pending: tuple[Future[None], Future[None]] | None = None
        turn = 0
        while True:
            view = memoryview(buffers[turn % 2])
            # The buffer read into now was last hashed two turns ago, and that hashing has finished.
            count = handle.readinto(view)  # type: ignore[attr-defined]
            if not count:
                break
            if pending is not None:
                pending[0].result()
                pending[1].result()
            chunk = view[:count]
            pending = (pool.submit(sha256.update, chunk), pool.submit(sm3.update, chunk))
            size += count
            turn += 1
        if pending is not None:
            pending[0].result()
            pending[1].result()
    return size, Digests(sha256=sha256.hexdigest(), sm3=sm3.hexdigest())


def _update_all(digest: Any, window: memoryview) -> None:
    for start in range(0, len(window), CHUNK):
        digest.update(window[start:start + CHUNK])


def digest_file(path: Path) -> tuple[int, Digests]:
    """Size and digests of a file, in one pass.

    The file is mapped a window at a time and each digest walks the window on its own thread, with no
    copy and no per-chunk hand-off (measured: 0.23 GB/s for both together vs 0.18 with read()+barrier
    on this 2-core machine). Only one window is mapped at once, so memory stays bounded by WINDOW.
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= CHUNK:
            data = handle.read()
            return len(data), Digests(sha256=hashlib.sha256(data).hexdigest(), sm3=_new_sm3_of(data))
        sha256 = hashlib.sha256()
        sm3 = _new_sm3()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as pool:
            for offset in range(0, size, WINDOW):
                length = min(WINDOW, size - offset)
                with mmap.mmap(handle.fileno(), length, offset=offset, access=mmap.ACCESS_READ) as mapped:
                    window = memoryview(mapped)
                    try:
                        jobs = (pool.submit(_update_all, sha256, window), pool.submit(_update_all, sm3, window))
                        for job in jobs:
                            job.result()
                    finally:
                        window.release()
        if os.fstat(handle.fileno()).st_size != size:
            raise DigestMismatch(f"{path} changed size while it was being hashed")
        return size, Digests(sha256=sha256.hexdigest(), sm3=sm3.hexdigest())


def _new_sm3_of(data: bytes) -> str:
    sm3 = _new_sm3()
    sm3.update(data)
    return sm3.hexdigest()
