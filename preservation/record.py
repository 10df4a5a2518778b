"""Which files of a capture are preserved, and under which object keys. Light: the offline verifier uses it."""

from __future__ import annotations

from pathlib import Path

from evidence import Manifest, PreservationRecord
from evidence.layout import MANIFEST, SIGNATURE


def object_key(capture_id: str, relative: str) -> str:
    return f"captures/{capture_id}/{relative}"


def preserved_files(capture_dir: Path, manifest: Manifest, record: PreservationRecord) -> list[tuple[str, str]]:
    """(relative path, media type) of every file that goes to the store: artifacts, manifest, signature, tokens."""
    files = [(a.path, a.media_type) for a in manifest.artifacts]
    files.append((MANIFEST, "application/json"))
    if record.signature is not None:
        files.append((SIGNATURE, "application/pkcs7-signature"))
        files.extend((path, "application/x-pem-file") for path in record.signature.certificates)
    for stamp in record.timestamps:
        for path, media in ((stamp.request_path, "application/timestamp-query"),
                            (stamp.response_path, "application/timestamp-reply"),
                            (stamp.chain_path, "application/x-pem-file")):
            if path and (capture_dir / path).exists():
                files.append((path, media))
    seen: set[str] = set()
    unique = []
    for path, media in files:
        if path not in seen:
            seen.add(path)
            unique.append((path, media))
    return unique
