"""The capture journal: what a running capture has done so far, kept on disk.

Written atomically after every step, so that a later `wz` command can finish a capture whose process
died (power cut, kill -9) and mark it partial. A marker under the data directory's `active/` folder
points at every capture in progress, wherever its files are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evidence.files import remove_durably, write_text_atomic
from evidence.layout import JOURNAL


class Journal:
    def __init__(self, capture_dir: Path, active_dir: Path, capture_id: str) -> None:
        self.capture_dir = capture_dir
        self.path = capture_dir / JOURNAL
        self.marker = active_dir / capture_id
        self.data: dict[str, Any] = {}

    @classmethod
    def load(cls, capture_dir: Path, active_dir: Path) -> Journal:
        data = json.loads((capture_dir / JOURNAL).read_text(encoding="utf-8"))
        journal = cls(capture_dir, active_dir, str(data["capture_id"]))
        journal.data = data
        return journal

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        write_text_atomic(self.path, json.dumps(self.data, ensure_ascii=False, indent=1, default=str))

    def open(self) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.marker, str(self.capture_dir.resolve()))

    def close(self) -> None:
        remove_durably(self.marker)


def active_captures(active_dir: Path) -> list[tuple[str, Path]]:
    """(capture id, directory) of every capture marked in progress."""
    if not active_dir.is_dir():
        return []
    found = []
    for marker in sorted(active_dir.iterdir()):
        if marker.name.endswith(".tmp") or marker.name.startswith("."):
            continue
        found.append((marker.name, Path(marker.read_text(encoding="utf-8").strip())))
    return found
