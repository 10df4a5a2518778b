"""Code run in child processes (spawned, so it must be importable by name)."""

from __future__ import annotations

import time
from typing import Any

from custody.ledger import Ledger
from evidence import CustodyAction


def append_many(url: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    """Append `count` entries; report when this worker's appending began and ended (system-wide monotonic clock)."""
    ledger = Ledger(url)
    try:
        barrier.wait(timeout=120)  # all workers start appending (and creating the schema) at once
        started = time.monotonic_ns()
        for index in range(count):
            ledger.append(f"worker-{worker}", CustodyAction.STORED, f"subject-{worker}",
                          {"worker": worker, "index": index})
        results.put((worker, started, time.monotonic_ns()))
    finally:
        ledger.close()
