"""Where each capture lives, wherever `--out` put it: one small file per capture under the data directory."""

from __future__ import annotations

import re
from pathlib import Path

from evidence import UsageError
from evidence.files import write_text_atomic

_ID = re.compile(r"^wz-\d{8}T\d{6}Z-[0-9a-f]{6}$")


def is_capture_id(text: str) -> bool:
    return bool(_ID.match(text))


def register(registry_dir: Path, capture_id: str, capture_dir: Path) -> None:
    if not _ID.match(capture_id):
        raise UsageError(f"not a capture id: {capture_id!r}")
    registry_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(registry_dir / capture_id, str(capture_dir.resolve()))


def locate(registry_dir: Path, capture_id: str) -> Path:
    if not _ID.match(capture_id):
        raise UsageError(f"not a capture id: {capture_id!r} (they look like wz-20261127T134512Z-ab12cd)")
    entry = registry_dir / capture_id
    if not entry.exists():
        raise UsageError(f"no capture {capture_id} on this machine (see {registry_dir})")
    directory = Path(entry.read_text(encoding="utf-8").strip())
    if not directory.is_dir():
        raise UsageError(f"capture {capture_id} was at {directory}, which no longer exists")
    return directory


def known(registry_dir: Path) -> list[tuple[str, Path]]:
    if not registry_dir.is_dir():
        return []
    return [(p.name, Path(p.read_text(encoding="utf-8").strip())) for p in sorted(registry_dir.iterdir())
            if _ID.match(p.name)]
