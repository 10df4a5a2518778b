"""The custody ledger's byte encoding and its RFC 9162 proofs, usable without a database.

An entry's `entry_hash` is SHA-256 of the canonical JSON of
{"action", "actor", "at", "details", "prev_hash", "seq", "subject"}; its Merkle leaf is the canonical JSON of
all eight fields (`entry_bytes`). A checkpoint's signature covers `checkpoint_body`. Everything an offline
verifier needs (a court's, or `wz verify PACKAGE.zip`) is here, and nothing here imports a database driver.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from custody import merkle
from evidence import Checkpoint, CustodyEntry, LedgerCorrupt, TimestampRecord, UsageError
from evidence.canonical import canonical_json

GENESIS_PREV_HASH = "0" * 64
_TIME_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- the byte encoding ---------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """The ledger's one text form of a time: UTC, microseconds, `Z`."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(f"custody times must carry a time zone, got naive {moment.isoformat()}")
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_time(value: str) -> datetime:
    if not _TIME_FORMAT.match(value):
        raise ValueError(f"{value!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _body(entry: CustodyEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": format_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
    }


def compute_entry_hash(entry: CustodyEntry) -> str:
    """SHA-256 (hex) of the canonical JSON of the entry without its entry_hash: what entry_hash must be."""
    return hashlib.sha256(canonical_json(_body(entry))).hexdigest()


def entry_bytes(entry: CustodyEntry) -> bytes:
    """The entry as the Merkle tree sees it: canonical JSON of all eight fields, entry_hash included."""
    return canonical_json({**_body(entry), "entry_hash": entry.entry_hash})


def entry_leaf_hash(entry: CustodyEntry) -> bytes:
    return merkle.leaf_hash(entry_bytes(entry))


def checkpoint_body(cp: Checkpoint) -> bytes:
    """The bytes a checkpoint's signature covers (and whose SHA-256 its timestamp covers)."""
    return canonical_json({"tree_size": cp.tree_size, "root_hash": cp.root_hash, "at": format_time(cp.at),
                           "signer": cp.signer})


def canonical_details(details: Mapping[str, Any]) -> str:
    if not isinstance(details, Mapping):
        raise UsageError(f"custody details must be a JSON object, not {type(details).__name__}")
    try:
        return canonical_json(dict(details)).decode("utf-8")
    except (TypeError, ValueError) as exc:  # json cannot encode it, or a lone surrogate cannot become UTF-8
        raise UsageError(f"custody details cannot be stored as canonical JSON: {exc}") from exc


def timestamp_problem(record: TimestampRecord | None, body: bytes) -> str | None:
    """Why a checkpoint's timestamp record is not over this body, or None when it is (or there is none)."""
    if record is None:
        return None
    digest = hashlib.sha256(body).hexdigest()
    if record.message_imprint.lower() != digest:
        return f"its timestamp imprint {record.message_imprint[:16]}… is not SHA-256 of the checkpoint body"
    return None


# -- proofs, usable without a database ----------------------------------------------------------------


def _hex_hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise LedgerCorrupt(f"{what} is not a 64-digit lowercase hex SHA-256: {value!r}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerCorrupt(f"{what} is not an integer: {value!r}")
    return value


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of entry `seq` (leaf `seq - 1`) in the tree of `tree_size` entries."""

    seq: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    path: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "leaf_hash": self.leaf_hash, "root": self.root, "path": list(self.path)}

    @classmethod
    def from_json(cls, data: Any) -> InclusionProof:
        """Read `to_json()` output; raises LedgerCorrupt when it is malformed."""
        if not isinstance(data, dict) or set(data) != {"seq", "leaf_index", "tree_size", "leaf_hash", "root", "path"}:
            raise LedgerCorrupt(f"an inclusion proof must hold exactly seq, leaf_index, tree_size, leaf_hash, "
                                f"root and path: {data!r:.200}")
        path = data["path"]
        if not isinstance(path, list):
            raise LedgerCorrupt(f"inclusion proof path is not a list: {path!r:.200}")
        return cls(
            seq=_int(data["seq"], "inclusion proof seq"),
            leaf_index=_int(data["leaf_index"], "inclusion proof leaf_index"),
            tree_size=_int(data["tree_size"], "inclusion proof tree_size"),
            leaf_hash=_hex_hash(data["leaf_hash"], "inclusion proof leaf_hash"),
            root=_hex_hash(data["root"], "inclusion proof root"),
            path=tuple(_hex_hash(p, f"inclusion proof path[{i}]") for i, p in enumerate(path)),
        )


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof: the tree of `old_size` entries is a prefix of the tree of `new_size`."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    path: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"old_size": self.old_size, "new_size": self.new_size, "old_root": self.old_root,
                "new_root": self.new_root, "path": list(self.path)}

    @classmethod
    def from_json(cls, data: Any) -> ConsistencyProof:
        """Read `to_json()` output; raises LedgerCorrupt when it is malformed."""
        if not isinstance(data, dict) or set(data) != {"old_size", "new_size", "old_root", "new_root", "path"}:
            raise LedgerCorrupt(f"a consistency proof must hold exactly old_size, new_size, old_root, new_root "
                                f"and path: {data!r:.200}")
        path = data["path"]
        if not isinstance(path, list):
            raise LedgerCorrupt(f"consistency proof path is not a list: {path!r:.200}")
        return cls(
            old_size=_int(data["old_size"], "consistency proof old_size"),
            new_size=_int(data["new_size"], "consistency proof new_size"),
            old_root=_hex_hash(data["old_root"], "consistency proof old_root"),
            new_root=_hex_hash(data["new_root"], "consistency proof new_root"),
            path=tuple(_hex_hash(p, f"consistency proof path[{i}]") for i, p in enumerate(path)),
        )


def verify_inclusion_proof(entry: CustodyEntry, proof: InclusionProof, checkpoint: Checkpoint | None = None) -> None:
    """Offline: the entry is intact, and it is leaf `seq - 1` of the tree the proof (and the checkpoint) names.

    Checks the entry's own hash, the proof's leaf hash, the RFC 9162 path to the root and, when a
    checkpoint is given, that the proof is against that checkpoint's tree size and root. The
    checkpoint's signature is the caller's to verify (`checkpoint_body` gives the signed bytes).
    Raises LedgerCorrupt.
    """
    where = f"entry {entry.seq}"
    if proof.seq != entry.seq or proof.leaf_index != entry.seq - 1:
        raise LedgerCorrupt(f"{where}: the proof is for entry {proof.seq} (leaf {proof.leaf_index})")
    if compute_entry_hash(entry) != entry.entry_hash:
        raise LedgerCorrupt(f"{where}: hash does not match its contents")
    leaf = entry_leaf_hash(entry)
    if leaf.hex() != proof.leaf_hash:
        raise LedgerCorrupt(f"{where}: its leaf hash differs from the one the proof was made for")
    if checkpoint is not None and (proof.tree_size != checkpoint.tree_size or proof.root != checkpoint.root_hash):
        raise LedgerCorrupt(f"{where}: the proof is for tree size {proof.tree_size} root {proof.root[:16]}…, "
                            f"not the checkpoint's size {checkpoint.tree_size} root {checkpoint.root_hash[:16]}…")
    try:
        merkle.verify_inclusion(leaf, proof.leaf_index, proof.tree_size, [bytes.fromhex(p) for p in proof.path],
                                bytes.fromhex(proof.root))
    except LedgerCorrupt as exc:
        raise LedgerCorrupt(f"{where}: {exc}") from exc
    except ValueError as exc:
        raise LedgerCorrupt(f"{where}: the proof holds a hash that is not hex: {exc}") from exc


def verify_consistency_proof(proof: ConsistencyProof, old: Checkpoint | None = None,
                             new: Checkpoint | None = None) -> None:
    """Offline: the older tree is a prefix of the newer one; with checkpoints, that the proof is between them.

    Raises LedgerCorrupt.
    """
    for cp, size, root, name in ((old, proof.old_size, proof.old_root, "old"),
                                 (new, proof.new_size, proof.new_root, "new")):
        if cp is not None and (cp.tree_size != size or cp.root_hash != root):
            raise LedgerCorrupt(f"the consistency proof's {name} tree (size {size}, root {root[:16]}…) is not the "
                                f"checkpoint's (size {cp.tree_size}, root {cp.root_hash[:16]}…)")
    try:
        merkle.verify_consistency(proof.old_size, proof.new_size, bytes.fromhex(proof.old_root),
                                  bytes.fromhex(proof.new_root), [bytes.fromhex(p) for p in proof.path])
    except ValueError as exc:
        raise LedgerCorrupt(f"the consistency proof holds a hash that is not hex: {exc}") from exc
