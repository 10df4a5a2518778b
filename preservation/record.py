"""Which files of a capture are preserved, and under which object keys. Light: the offline verifier uses it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evidence import Manifest, PreservationRecord, TimestampRecord
from evidence.layout import MANIFEST, SIGNATURE, TIMESTAMPS_DIR


def pending_chain_requests(capture_dir: Path) -> list[str]:
    """Requests over the segment chain head (kept while recording) that no token answers yet."""
    folder = capture_dir / TIMESTAMPS_DIR
    if not folder.is_dir():
        return []
    return [f"{TIMESTAMPS_DIR}/{tsq.name}" for tsq in sorted(folder.glob("chain-*.tsq"))
            if not tsq.with_suffix(".tsr").exists()]


def object_key(capture_id: str, relative: str) -> str:
    return f"captures/{capture_id}/{relative}"


def preserved_files(capture_dir: Path, manifest: Manifest, record: PreservationRecord) -> list[tuple[str, str]]:
    """(relative path, media type) of every file that goes to the store: artifacts, manifest, signature, tokens."""
    files = [(a.path, a.media_type) for a in manifest.artifacts]
    files.append((MANIFEST, "application/json"))
    if record.signature is not None:
        files.append((SIGNATURE, "application/pkcs7-signature"))
        files.extend((path, "application/x-pem-file") for path in record.signature.certificates)
    for stamp in (*record.timestamps, *record.chain_timestamps):
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


@dataclass(frozen=True)
class PreservationState:
    """What of a capture is preserved and what is not yet, in words a person can act on."""

    expected: int
    stored: int
    missing: tuple[str, ...]
    granted: tuple[TimestampRecord, ...]
    pending: tuple[TimestampRecord, ...]
    signed: bool
    problems: tuple[str, ...]
    pending_chain: tuple[str, ...] = ()

    @property
    def preserved(self) -> bool:
        return self.signed and bool(self.granted) and not self.pending and not self.missing and \
            not self.pending_chain

    def lines(self) -> list[str]:
        said = []  # what was granted and stored was said as it happened; this is the state it ends in
        for stamp in self.pending:
            said.append(f"NOT YET TIMESTAMPED by {stamp.tsa_url}: {stamp.error}")
        if not self.granted and not self.pending:
            said.append("NOT TIMESTAMPED: no TSA granted a token over the manifest")
        if self.pending_chain:
            said.append(f"{len(self.pending_chain)} timestamp request(s) over the segment chain taken while "
                        "recording still wait for a token")
        if self.missing:
            said.append(f"NOT YET IN WORM STORAGE: {len(self.missing)} of {self.expected} files wait in the local "
                        f"spool")
        else:
            said.append(f"in WORM storage: all {self.expected} files (COMPLIANCE retention, read back by version)")
        if self.preserved:
            said.append("preserved: signed, timestamped, stored and on the custody record")
        else:
            todo = []
            if self.missing:
                todo.append("`wz sync` once the object store is reachable")
            if self.pending or not self.granted or self.pending_chain:
                todo.append("`wz timestamp --pending` once the TSA answers")
            said.append("next: run " + " and ".join(todo) + " (every later wz command also retries)")
        return said


def preservation_state(capture_dir: Path, manifest: Manifest, record: PreservationRecord) -> PreservationState:
    keys = [object_key(record.capture_id, path) for path, _media in preserved_files(capture_dir, manifest, record)]
    stored = record.stored_by_key()
    return PreservationState(
        expected=len(keys), stored=sum(1 for k in keys if k in stored),
        missing=tuple(k for k in keys if k not in stored), granted=record.granted_timestamps,
        pending=record.pending_timestamps, signed=record.signature is not None, problems=record.problems,
        pending_chain=tuple(pending_chain_requests(capture_dir)),
    )
