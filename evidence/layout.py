"""The capture directory: the names of its files, and reading and writing the records it holds.

    <capture dir>/
      manifest.json       canonical JSON of the Manifest: exactly the bytes that are signed and timestamped
      manifest.p7s        detached CMS signature of manifest.json
      preservation.json   the PreservationRecord: digests, signature, tokens, stored versions, custody entries
      chain.jsonl         the rolling hash chain of the recorders' segments
      capture.json        the journal of a capture in progress (recording only)
      certs/  timestamps/  segments/  tiles/N/  logs/  work/

Recording (capture/) and preservation (preservation/) both work on this layout and never import each other.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from evidence.canonical import canonical_json
from evidence.errors import EvidenceError
from evidence.files import write_atomic
from evidence.model import Manifest, PreservationRecord

MANIFEST = "manifest.json"
SIGNATURE = "manifest.p7s"
PRESERVATION = "preservation.json"
CHAIN_FILE = "chain.jsonl"
JOURNAL = "capture.json"
CERTS_DIR = "certs"
TIMESTAMPS_DIR = "timestamps"
SEGMENT_DIR = "segments"
TILES_DIR = "tiles"
LOGS_DIR = "logs"
WORK_DIR = "work"  # scratch files of the recorders and finalize; not evidence
COMPOSITE = "composite.mp4"
FRAME_TIMES = "frames.csv"


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest: exactly what is hashed, signed and timestamped."""
    return canonical_json(manifest.model_dump(mode="json", by_alias=True))


def write_manifest(capture_dir: Path, manifest: Manifest) -> Path:
    path = capture_dir / MANIFEST
    write_atomic(path, manifest_bytes(manifest))
    return path


def load_manifest(capture_dir: Path) -> Manifest:
    return Manifest.model_validate_json((capture_dir / MANIFEST).read_bytes())


def has_manifest(capture_dir: Path) -> bool:
    return (capture_dir / MANIFEST).is_file()


def preservation_bytes(record: PreservationRecord) -> bytes:
    return canonical_json(record.model_dump(mode="json", by_alias=True))


def save_preservation(capture_dir: Path, record: PreservationRecord) -> None:
    write_atomic(capture_dir / PRESERVATION, preservation_bytes(record))


def load_preservation(capture_dir: Path) -> PreservationRecord:
    """The preservation record; an unreadable one is an EvidenceError naming the file."""
    path = capture_dir / PRESERVATION
    try:
        return PreservationRecord.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError) as exc:
        raise EvidenceError(f"{path} is unreadable: {_first_line(exc)}") from exc


def has_preservation(capture_dir: Path) -> bool:
    return (capture_dir / PRESERVATION).is_file()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
