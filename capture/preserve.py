"""After a capture: hash -> sign -> timestamp -> store -> custody, each step in the custody ledger.

`preservation.json` in the capture directory records what was done: the manifest's digests, the
signature, every TSA's token (or its pending request), every object version stored. It is a record
of facts that are each verifiable on their own (tokens, signature, version ids); it is not itself signed.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.assemble import MANIFEST, load_manifest
from capture.services import Services
from evidence import (
    ConfigurationError,
    DigestMismatch,
    Digests,
    EvidenceError,
    Manifest,
    StorageError,
    StoredObject,
    TimestampRecord,
    TimestampStatus,
)
from hashing import digest_file
from hashing.canonical import canonical_json
from storage.spool import SpoolItem

PRESERVATION = "preservation.json"
SIGNATURE = "manifest.p7s"
CERTS_DIR = "certs"

Report = Callable[[str], None]


@dataclass
class Preservation:
    """The preservation record of one capture (`preservation.json`)."""

    capture_id: str
    manifest: dict[str, Any]
    signature: dict[str, Any] = field(default_factory=dict)
    timestamps: list[TimestampRecord] = field(default_factory=list)
    stored: dict[str, StoredObject] = field(default_factory=dict)
    custody_seqs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # custody steps already recorded, so a resumed run skips them
    complete: bool = False

    @property
    def pending_timestamps(self) -> list[TimestampRecord]:
        return [t for t in self.timestamps if t.status == TimestampStatus.PENDING]

    def to_json(self) -> dict[str, Any]:
        return {
            "capture_id": self.capture_id,
            "manifest": self.manifest,
            "signature": self.signature,
            "timestamps": [t.model_dump(mode="json") for t in self.timestamps],
            "stored": {key: obj.model_dump(mode="json") for key, obj in sorted(self.stored.items())},
            "custody_seqs": self.custody_seqs,
            "problems": self.problems,
            "done": self.done,
            "complete": self.complete,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preservation:
        return cls(
            capture_id=str(data["capture_id"]),
            manifest=dict(data["manifest"]),
            signature=dict(data.get("signature", {})),
            timestamps=[TimestampRecord.model_validate(t) for t in data.get("timestamps", [])],
            stored={k: StoredObject.model_validate(v) for k, v in data.get("stored", {}).items()},
            custody_seqs=[int(s) for s in data.get("custody_seqs", [])],
            problems=[str(p) for p in data.get("problems", [])],
            done=[str(d) for d in data.get("done", [])],
            complete=bool(data.get("complete", False)),
        )

    def save(self, capture_dir: Path) -> None:
        temp = capture_dir / (PRESERVATION + ".tmp")
        temp.write_bytes(canonical_json(self.to_json()))
        temp.replace(capture_dir / PRESERVATION)

    @classmethod
    def load(cls, capture_dir: Path) -> Preservation:
        import json

        return cls.from_json(json.loads((capture_dir / PRESERVATION).read_text(encoding="utf-8")))


def object_key(capture_id: str, relative: str) -> str:
    return f"captures/{capture_id}/{relative}"


def preserved_files(capture_dir: Path, manifest: Manifest, preservation: Preservation) -> list[tuple[str, str]]:
    """(relative path, media type) of every file that goes to the store: artifacts, manifest, signature, tokens."""
    files = [(a.path, a.media_type) for a in manifest.artifacts]
    files.append((MANIFEST, "application/json"))
    if preservation.signature:
        files.append((SIGNATURE, "application/pkcs7-signature"))
        files.extend((str(p), "application/x-pem-file") for p in preservation.signature.get("certificates", []))
    for record in preservation.timestamps:
        for path, media in ((record.request_path, "application/timestamp-query"),
                            (record.response_path, "application/timestamp-reply"),
                            (record.chain_path, "application/x-pem-file")):
            if path and (capture_dir / path).exists():
                files.append((path, media))
    seen: set[str] = set()
    unique = []
    for path, media in files:
        if path not in seen:
            seen.add(path)
            unique.append((path, media))
    return unique


class Preserver:
    """Runs the integrity chain over a finished capture directory."""

    def __init__(self, services: Services, report: Report | None = None) -> None:
        self.services = services
        self.report = report or (lambda _message: None)

    def _custody(self, preservation: Preservation, action: str, details: dict[str, Any]) -> None:
        entry = self.services.ledger.append(self.services.actor, action, preservation.capture_id, details)
        preservation.custody_seqs.append(entry.seq)

    def preserve(self, capture_dir: Path) -> Preservation:
        """Run (or resume, after a crash) every step not done yet; each is saved as soon as it is done."""
        manifest = load_manifest(capture_dir)
        size, digests = digest_file(capture_dir / MANIFEST)
        if (capture_dir / PRESERVATION).exists():
            preservation = Preservation.load(capture_dir)
            if preservation.manifest.get("sha256") != digests.sha256:
                raise DigestMismatch(f"{capture_dir / MANIFEST} changed after it was preserved; "
                                     "not preserving it again")
        else:
            preservation = Preservation(
                capture_id=manifest.capture_id,
                manifest={"path": MANIFEST, "size": size, "sha256": digests.sha256, "sm3": digests.sm3},
            )
            preservation.save(capture_dir)
        if "captured" not in preservation.done:
            self._custody(preservation, "captured", {
                "status": manifest.status.value, "started_at": manifest.started_at.isoformat(),
                "ended_at": manifest.ended_at.isoformat(), "operator": manifest.provenance.operator,
                "case_id": manifest.provenance.case_id, "urls": [t.url for t in manifest.tiles],
                "host": manifest.provenance.hostname,
            })
            self._done(capture_dir, preservation, "captured")
        if "hashed" not in preservation.done:
            self._custody(preservation, "hashed", {
                "manifest_sha256": digests.sha256, "manifest_sm3": digests.sm3, "artifacts": len(manifest.artifacts),
            })
            self._done(capture_dir, preservation, "hashed")
        if "signed" not in preservation.done:
            self._sign(capture_dir, preservation)
            self._done(capture_dir, preservation, "signed")
        if "timestamped" not in preservation.done:
            self._timestamp(capture_dir, preservation)
            self._done(capture_dir, preservation, "timestamped")
        self.store(capture_dir, preservation, manifest)
        self.checkpoint(preservation)
        preservation.complete = True
        preservation.save(capture_dir)
        return preservation

    @staticmethod
    def _done(capture_dir: Path, preservation: Preservation, step: str) -> None:
        preservation.done.append(step)
        preservation.save(capture_dir)

    def _sign(self, capture_dir: Path, preservation: Preservation) -> None:
        signer = self.services.signer
        signature = signer.sign_detached((capture_dir / MANIFEST).read_bytes())
        (capture_dir / SIGNATURE).write_bytes(signature)
        certs = capture_dir / CERTS_DIR
        certs.mkdir(exist_ok=True)
        chain_path = certs / "signer-chain.pem"
        chain_path.write_bytes(b"".join(self.services.pem(c) for c in signer.chain()))
        shutil.copyfile(self.services.pki.ca_cert_path, certs / "local-ca.pem")
        preservation.signature = {
            "path": SIGNATURE,
            "format": "CMS SignedData, detached, DER (RFC 5652)",
            "signer": signer.name,
            "sha256": hashlib.sha256(signature).hexdigest(),
            "certificates": [f"{CERTS_DIR}/signer-chain.pem", f"{CERTS_DIR}/local-ca.pem"],
        }
        self._custody(preservation, "signed", {"signature_sha256": preservation.signature["sha256"],
                                               "signer": signer.name})
        self.report(f"signed the manifest as {signer.name}")

    def _timestamp(self, capture_dir: Path, preservation: Preservation) -> None:
        digest = bytes.fromhex(str(preservation.manifest["sha256"]))
        # Token files are never overwritten: a run resumed after a crash asks again under a new name.
        name = "manifest" if not (capture_dir / "timestamps" / "manifest.0.tsq").exists() else \
            f"manifest-{secrets.token_hex(3)}"
        records = self.services.timestamper.stamp(digest, capture_dir, name)
        preservation.timestamps = records
        for record in records:
            if record.status == TimestampStatus.GRANTED:
                self._custody(preservation, "timestamped", {
                    "tsa": record.tsa_url, "local_tsa": record.local_tsa, "gen_time": _iso(record.gen_time),
                    "serial": record.serial_number, "token": record.response_path,
                })
                kind = "local TSA (not a trusted third party)" if record.local_tsa else "TSA"
                self.report(f"timestamped by {kind} {record.tsa_url} at {_iso(record.gen_time)}")
            else:
                self._custody(preservation, "timestamp-pending", {"tsa": record.tsa_url, "error": record.error})
                self.report(f"timestamp pending from {record.tsa_url}: {record.error}")

    def retry_timestamps(self, capture_dir: Path) -> Preservation:
        preservation = Preservation.load(capture_dir)
        updated = []
        for pending in preservation.timestamps:
            record = pending
            if pending.status == TimestampStatus.PENDING:
                record = self.services.retry_timestamp(pending, capture_dir)
                if record.status == TimestampStatus.GRANTED:
                    self._custody(preservation, "timestamped", {
                        "tsa": record.tsa_url, "local_tsa": record.local_tsa, "gen_time": _iso(record.gen_time),
                        "serial": record.serial_number, "token": record.response_path, "after_pending": True,
                    })
            updated.append(record)
        preservation.timestamps = updated
        preservation.save(capture_dir)
        self.store(capture_dir, preservation, load_manifest(capture_dir))
        preservation.save(capture_dir)
        return preservation

    def store(self, capture_dir: Path, preservation: Preservation, manifest: Manifest) -> None:
        """Queue every file not yet stored, then try to upload the queue; a store outage leaves it queued."""
        # Artifacts are uploaded against the digests in the manifest, so a file changed on disk after the
        # capture is refused by the spool instead of being locked away as if it were the evidence.
        recorded = {a.path: a.digests for a in manifest.artifacts}
        recorded[MANIFEST] = Digests(sha256=str(preservation.manifest["sha256"]), sm3=str(preservation.manifest["sm3"]))
        queued = {item.key for batch in self.services.spool.pending() for item in batch.items}
        items = []
        for relative, media in preserved_files(capture_dir, manifest, preservation):
            key = object_key(preservation.capture_id, relative)
            if key in preservation.stored or key in queued:
                continue
            digests = recorded.get(relative) or digest_file(capture_dir / relative)[1]
            items.append(SpoolItem(key=key, relative_path=relative, content_type=media, digests=digests,
                                   legal_hold=False))
        if items:
            self.services.spool.enqueue(preservation.capture_id, capture_dir, items)
        self.sync(only=preservation)

    def sync(self, only: Preservation | None = None) -> int:
        """Upload whatever the spool holds; record each verified object. Returns how many are still pending."""

        def stored(capture_id: str, item: SpoolItem, obj: StoredObject) -> None:
            directory = self.services.capture_dir(capture_id)
            record = only if only is not None and only.capture_id == capture_id else Preservation.load(directory)
            record.stored[item.key] = obj
            entry = self.services.ledger.append(self.services.actor, "stored", capture_id, {
                "key": obj.key, "version_id": obj.version_id, "bucket": obj.bucket, "size": obj.size,
                "sha256": obj.digests.sha256, "sm3": obj.digests.sm3, "retention": obj.retention_mode,
                "retain_until": obj.retain_until.isoformat(), "verified_at": _iso(obj.verified_at),
            })
            record.custody_seqs.append(entry.seq)
            record.save(directory)

        try:
            store = self.services.store()
        except (StorageError, ConfigurationError) as exc:
            # A store that is down or set up wrong must not cost a finished capture its summary: files wait.
            # `wz sync` itself, asked only to upload, reports a setting that is wrong as the error it is.
            if isinstance(exc, ConfigurationError) and only is None:
                raise
            pending = sum(max(1, len(b.items) - len(b.stored)) for b in self.services.spool.pending())
            message = f"object store unavailable, {pending} file(s) kept in the spool for `wz sync`: {exc}"
            self.report(message)
            if only is not None:
                only.problems.append(message)
            return pending
        result = self.services.spool.sync(store, on_stored=stored)
        if result.busy:
            self.report("another wz process is uploading the spool; it will finish the upload")
        for problem in result.problems:
            message = f"{problem.kind.value}: {problem.message}"
            self.report(message)
            if only is not None and problem.capture_id == only.capture_id:
                only.problems.append(message)
        # A batch leaves the spool only when every item is stored, verified and recorded: any batch left
        # counts, even one whose items are all uploaded but not yet recorded.
        pending = sum(max(1, len(b.items) - len(b.stored)) for b in self.services.spool.pending())
        if result.stored:
            self.report(f"stored {len(result.stored)} object version(s) with COMPLIANCE retention, each read back "
                        "by version and re-hashed")
        return pending

    def legal_hold(self, capture_dir: Path, on: bool, reason: str) -> int:
        """Set (or release) legal hold on every stored version of a capture; returns how many were changed."""
        preservation = Preservation.load(capture_dir)
        if not preservation.stored:
            raise StorageError(f"{preservation.capture_id} has nothing stored yet; run `wz sync` first")
        store = self.services.store()
        changed = 0
        for key, stored in sorted(preservation.stored.items()):
            store.set_legal_hold(key, stored.version_id, on)
            preservation.stored[key] = stored.model_copy(update={"legal_hold": on})
            changed += 1
        preservation.save(capture_dir)
        self._custody(preservation, "legal-hold" if on else "legal-hold-released",
                      {"objects": changed, "reason": reason})
        preservation.save(capture_dir)
        return changed

    def checkpoint(self, preservation: Preservation) -> None:
        try:
            checkpoint = self.services.checkpoint()
        except EvidenceError as exc:
            preservation.problems.append(f"custody checkpoint failed: {exc}")
            self.report(preservation.problems[-1])
            return
        self.report(f"custody ledger checkpoint: {checkpoint.tree_size} entries, root {checkpoint.root_hash[:16]}…")


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None
