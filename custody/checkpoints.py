"""Checkpoint documents: a signed checkpoint as it is kept outside the database (in WORM storage, in packages).

One document per checkpoint, canonical JSON:

    {"schema": "wangzheng/custody-checkpoint/v1",
     "checkpoint": {tree_size, root_hash, at, signer, signature, timestamp},   the signed statement
     "signer_certificate": PEM,                                                 who signed it
     "timestamp_request": base64 .tsq, "timestamp_token": base64 .tsr,          RFC 3161 over its body (or null)
     "timestamp_chain": PEM,                                                    the TSA's chain as it was verified
     "entries_from": a, "entries": [entry line, ...]}                           entries a..tree_size, as hashed

The entries since the previous checkpoint travel with it, so once it is in WORM storage a later change to any of
them in the database is found and named entry by entry, not only as a root that no longer recomputes. Nothing
here touches a database: the offline verifier reads these documents from packages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from pydantic import ValidationError

from custody.proofs import checkpoint_body, compute_entry_hash, entry_bytes
from evidence import Checkpoint, CustodyEntry, IntegrityError, LedgerCorrupt, SignatureInvalid
from evidence.canonical import canonical_json
from hashing.signing import issuing_root, refuse_timestamping_signer, verify_raw

DOCUMENT_SCHEMA = "wangzheng/custody-checkpoint/v1"
CHECKPOINT_PREFIX = "custody/checkpoints/"
MAX_DOCUMENT_BYTES = 64 << 20

# check_token(tsr, sha256 of the checkpoint body, nonce) verifies a token under the caller's trust rule and says
# whose it is; it raises when the token does not verify.
TokenCheck = Callable[[bytes, bytes, int], str]


def checkpoint_key(tree_size: int) -> str:
    """The object key of the checkpoint of `tree_size` entries."""
    return f"{CHECKPOINT_PREFIX}{tree_size:012d}.json"


@dataclass(frozen=True)
class CheckpointDocument:
    checkpoint: Checkpoint
    signer_certificate: str
    timestamp_request: bytes | None
    timestamp_token: bytes | None
    entries_from: int
    entries: tuple[str, ...]
    timestamp_chain: str | None = None

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schema": DOCUMENT_SCHEMA,
            "checkpoint": self.checkpoint.model_dump(mode="json"),
            "signer_certificate": self.signer_certificate,
            "timestamp_request": _b64(self.timestamp_request),
            "timestamp_token": _b64(self.timestamp_token),
            "timestamp_chain": self.timestamp_chain,
            "entries_from": self.entries_from,
            "entries": list(self.entries),
        })

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "checkpoint document") -> CheckpointDocument:
        if len(data) > MAX_DOCUMENT_BYTES:
            raise LedgerCorrupt(f"{where} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("schema") != DOCUMENT_SCHEMA:
                raise ValueError(f"not a {DOCUMENT_SCHEMA} document")
            entries = raw["entries"]
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise ValueError("entries must be a list of entry lines")
            start = raw["entries_from"]
            if isinstance(start, bool) or not isinstance(start, int) or start < 1:
                raise ValueError("entries_from must be a positive integer")
            return cls(
                checkpoint=Checkpoint.model_validate(raw["checkpoint"]),
                signer_certificate=str(raw["signer_certificate"]),
                timestamp_request=_unb64(raw.get("timestamp_request")),
                timestamp_token=_unb64(raw.get("timestamp_token")),
                entries_from=start,
                entries=tuple(entries),
                timestamp_chain=str(raw["timestamp_chain"]) if raw.get("timestamp_chain") is not None else None,
            )
        except (ValueError, KeyError, TypeError, ValidationError, binascii.Error) as exc:
            raise LedgerCorrupt(f"{where} cannot be read: {str(exc)[:300]}") from exc

    @property
    def tree_size(self) -> int:
        return self.checkpoint.tree_size

    def parsed_entries(self) -> list[CustodyEntry]:
        """The entries it carries, each checked: its hash, its place, its link to the one before."""
        where = f"checkpoint document at size {self.tree_size}"
        parsed: list[CustodyEntry] = []
        for offset, line in enumerate(self.entries):
            seq = self.entries_from + offset
            try:
                entry = CustodyEntry.model_validate_json(line)
            except ValidationError as exc:
                raise LedgerCorrupt(f"{where}: entry {seq} cannot be read: {str(exc)[:200]}") from exc
            if entry.seq != seq or entry_bytes(entry).decode("utf-8") != line:
                raise LedgerCorrupt(f"{where}: entry {seq} is not in its place or not in canonical form")
            if compute_entry_hash(entry) != entry.entry_hash:
                raise LedgerCorrupt(f"{where}: entry {seq}'s hash does not match its contents")
            if parsed and entry.prev_hash != parsed[-1].entry_hash:
                raise LedgerCorrupt(f"{where}: entry {seq} does not link to entry {seq - 1}")
            parsed.append(entry)
        if parsed and parsed[-1].seq != self.tree_size:
            raise LedgerCorrupt(f"{where}: its entries end at {parsed[-1].seq}, not at the checkpoint's size")
        return parsed


def document_for(checkpoint: Checkpoint, signer_certificate: str, entries: Sequence[CustodyEntry], *,
                 timestamp_request: bytes | None = None, timestamp_token: bytes | None = None,
                 timestamp_chain: str | None = None) -> CheckpointDocument:
    start = entries[0].seq if entries else checkpoint.tree_size + 1
    return CheckpointDocument(
        checkpoint=checkpoint, signer_certificate=signer_certificate, timestamp_request=timestamp_request,
        timestamp_token=timestamp_token, entries_from=start,
        entries=tuple(entry_bytes(e).decode("utf-8") for e in entries), timestamp_chain=timestamp_chain,
    )


def verify_document(document: CheckpointDocument, *, node_roots: list[x509.Certificate],
                    check_token: TokenCheck) -> str:
    """The checkpoint is signed by a key the node's CA issued, its token verifies, its entries hold together.

    Returns what the token says (whose, when); raises an IntegrityError naming what does not hold.
    """
    cp = document.checkpoint
    where = f"checkpoint at size {cp.tree_size}"
    try:
        signer = x509.load_pem_x509_certificate(document.signer_certificate.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureInvalid(f"{where}: its signer certificate cannot be read: {exc}") from exc
    if issuing_root(signer, node_roots) is None:
        raise SignatureInvalid(f"{where}: signed by {signer.subject.rfc4514_string()}, not issued by the trusted CA")
    refuse_timestamping_signer(signer)
    body = checkpoint_body(cp)
    try:
        signature = base64.b64decode(cp.signature, validate=True)
    except binascii.Error as exc:
        raise SignatureInvalid(f"{where}: its signature is not base64") from exc
    verify_raw(body, signature, signer)
    said = "no timestamp"
    if cp.timestamp is not None:
        if document.timestamp_token is None or cp.timestamp.nonce is None:
            raise IntegrityError(f"{where}: names a timestamp but carries no token")
        if cp.timestamp.message_imprint != hashlib.sha256(body).hexdigest():
            raise IntegrityError(f"{where}: its timestamp is not over its body")
        said = check_token(document.timestamp_token, hashlib.sha256(body).digest(), cp.timestamp.nonce)
    document.parsed_entries()
    return said


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def _unb64(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a token must be base64 text")
    return base64.b64decode(value, validate=True)
