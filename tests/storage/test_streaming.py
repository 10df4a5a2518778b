"""Multi-GB evidence must not be read into memory: a 300 MB round trip grows RSS by less than 64 MiB."""

from __future__ import annotations

import hashlib
import os
import resource
import threading
import time
from pathlib import Path

import psutil
import pytest

from hashing import digest_file
from storage import S3ObjectStore

pytestmark = pytest.mark.integration  # a real SeaweedFS

MiB = 1 << 20
SIZE = 300 * MiB
LIMIT = 64 * MiB


class PeakRss:
    """Samples this process's resident set size every 5 ms while the block runs."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.baseline = self.peak = 0

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def generate(path: Path, size: int) -> None:
    """Non-repeating bytes without holding them: SHA-256 in counter mode, 1 MiB at a time."""
    seed = os.urandom(16)
    with path.open("wb") as handle:
        for block in range(size // MiB):
            block_seed = hashlib.sha256(seed + block.to_bytes(8, "big")).digest()
            handle.write(block_seed * (MiB // 32))


def test_300_mb_round_trip_keeps_memory_flat(store: S3ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "long-capture.mp4"
    generate(path, SIZE)
    try:
        _, digests = digest_file(path)
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.monotonic()
        with PeakRss() as upload:
            stored = store.put_file("captures/long/composite.mp4", path, content_type="video/mp4", digests=digests)
        uploaded = time.monotonic()
        with PeakRss() as verify:
            verified = store.verify(stored)
        done = time.monotonic()
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(
            f"\n300 MB: upload {uploaded - started:.1f} s, RSS {upload.baseline / MiB:.0f} MiB -> peak "
            f"{upload.peak / MiB:.0f} MiB (+{upload.growth / MiB:.1f}); verify {done - uploaded:.1f} s, "
            f"+{verify.growth / MiB:.1f} MiB; ru_maxrss {maxrss_before / MiB:.0f} -> {maxrss_after / MiB:.0f} MiB"
        )
        assert stored.size == SIZE and verified.verified_at is not None
        assert upload.growth < LIMIT, f"upload grew RSS by {upload.growth / MiB:.1f} MiB"
        assert verify.growth < LIMIT, f"verify grew RSS by {verify.growth / MiB:.1f} MiB"
    finally:
        path.unlink()
