"""The rolling segment chain, the part that checks it: `h_n = SHA-256(h_(n-1) || SHA-256(segment_n))`, `h_0` = 32
zero bytes. `chain.jsonl` holds one JSON line per closed segment (n, file, size, sha256, sm3, chain, at).

Capture appends to the chain while it records (capture/chain.py); verification recomputes it from here
without loading any recording code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evidence import DigestMismatch
from evidence.layout import CHAIN_FILE

GENESIS = "0" * 64


def chain_step(previous_hex: str, segment_sha256_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(previous_hex) + bytes.fromhex(segment_sha256_hex)).hexdigest()


def read_chain(capture_dir: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The chain's entries. A torn last line (power loss mid-write) ends the chain; with `repair` it is cut
    off the file, so that entries appended later follow the last complete one."""
    path = capture_dir / CHAIN_FILE
    if not path.exists():
        return []
    data = path.read_bytes()
    entries = []
    good_length = 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            entries.append(json.loads(line))
        except ValueError:
            break
        good_length += len(line)
    if repair and good_length < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_length)
    return entries


def verify_chain(entries: list[dict[str, Any]], read_sha256: Callable[[str], str | None]) -> list[str]:
    """Recompute the chain; `read_sha256(file)` gives a segment's actual SHA-256 (None if absent).

    Returns the problems found (empty when the chain holds); the caller raises or reports them.
    """
    problems = []
    head = GENESIS
    for entry in entries:
        head = chain_step(head, str(entry["sha256"]))
        if head != entry["chain"]:
            problems.append(f"segment chain entry {entry['n']} ({entry['file']}): chain value does not recompute")
        actual = read_sha256(str(entry["file"]))
        if actual is None:
            problems.append(f"segment chain entry {entry['n']}: {entry['file']} is missing")
        elif actual != entry["sha256"]:
            problems.append(str(DigestMismatch(f"{entry['file']}: SHA-256 differs from the segment chain")))
    return problems
