"""The rolling segment chain: each closed segment is hashed as soon as it closes and chained,
`h_n = SHA-256(h_{n-1} || SHA-256(segment_n))`, and the head is timestamped every few minutes while
recording, so that what was captured before a crash stays provable.

`chain.jsonl` holds one line per segment; `timestamps/chain-<n>.*` the tokens over the head after
segment n. Both are evidence files of the capture.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from capture.finalize import closed_segment_names
from evidence import EvidenceError, TimestampRecord, TimestampStatus
from evidence.layout import CHAIN_FILE, SEGMENT_DIR
from hashing import digest_file
from hashing.chain import GENESIS, chain_step, read_chain

Stamp = Callable[[bytes, Path, str], list[TimestampRecord]]


@dataclass
class SegmentChain:
    """Appends closed segments to `chain.jsonl`; stamps the head every `stamp_seconds`."""

    capture_dir: Path
    stamp: Stamp | None = None
    stamp_seconds: float = 60.0

    def __post_init__(self) -> None:
        self.path = self.capture_dir / CHAIN_FILE
        # The recording loop's poll and the final poll run on different threads: one at a time.
        self._lock = threading.Lock()
        self.entries = read_chain(self.capture_dir, repair=True) if self.path.exists() else []
        # Entries name "segments/<file>", the segment lists "<file>": compare by file name.
        self._known = {PurePosixPath(str(e["file"])).name for e in self.entries}
        self._last_stamp = time.monotonic()
        self._stamped_at = len(self.entries)
        self.problems: list[str] = []

    @property
    def head(self) -> str:
        return str(self.entries[-1]["chain"]) if self.entries else GENESIS

    def poll(self, *, final: bool = False) -> int:
        """Hash newly closed segments; stamp the head when due (or when `final`). Returns how many were added."""
        with self._lock:
            return self._poll(final)

    def _poll(self, final: bool) -> int:
        added = 0
        for name in closed_segment_names(self.capture_dir):
            if name in self._known:
                continue
            path = self.capture_dir / SEGMENT_DIR / name
            if not path.exists():
                continue
            size, digests = digest_file(path)
            entry: dict[str, Any] = {
                "n": len(self.entries) + 1,
                "file": f"{SEGMENT_DIR}/{name}",
                "size": size,
                "sha256": digests.sha256,
                "sm3": digests.sm3,
                "chain": chain_step(self.head, digests.sha256),
                "at": time.time(),
            }
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
            self.entries.append(entry)
            self._known.add(name)
            added += 1
        due = time.monotonic() - self._last_stamp >= self.stamp_seconds
        if self.stamp is not None and self.entries and len(self.entries) > self._stamped_at and (due or final):
            self._stamp_head()
        return added

    def _stamp_head(self) -> None:
        assert self.stamp is not None
        n = len(self.entries)
        self._last_stamp = time.monotonic()
        self._stamped_at = n
        try:
            records = self.stamp(bytes.fromhex(self.head), self.capture_dir, f"chain-{n:06d}")
        except EvidenceError as exc:
            # A TSA that answers wrongly is reported, never silently trusted; recording goes on.
            self.problems.append(f"timestamp of the segment chain at {n}: {exc}")
            return
        for record in records:
            if record.status == TimestampStatus.PENDING:
                self.problems.append(f"timestamp of the segment chain at {n} pending from {record.tsa_url}: "
                                     f"{record.error}")
