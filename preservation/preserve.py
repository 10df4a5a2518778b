"""After a capture: hash -> sign -> timestamp -> store -> custody, each step in the custody ledger.

`preservation.json` in the capture directory is the `PreservationRecord`: the manifest's digests, the
signature, every TSA's token (or its pending request), every object version stored. Each stage returns a new
record, which replaces the file on disk atomically before the next stage runs, so a run that dies is resumed
where it stopped. The record holds facts that are each verifiable on their own (tokens, signature, version ids).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from evidence import (
    ConfigurationError,
    CustodyAction,
    DigestMismatch,
    Digests,
    EvidenceError,
    FileDigest,
    Manifest,
    PreservationRecord,
    PreservationStep,
    SignatureRecord,
    StorageError,
    StoredObject,
    TimestampRecord,
    TimestampStatus,
)
from evidence.files import write_atomic
from evidence.layout import (
    CERTS_DIR,
    MANIFEST,
    SIGNATURE,
    has_preservation,
    load_manifest,
    load_preservation,
    save_preservation,
)
from hashing import digest_file
from hashing.rfc3161 import parse_request
from preservation.record import object_key, pending_chain_requests, preserved_files
from preservation.services import CUSTODY_LOG_BATCH, Services
from storage.spool import SpoolItem

Report = Callable[[str], None]


class Preserver:
    """Runs the integrity chain over a finished capture directory."""

    def __init__(self, services: Services, report: Report | None = None) -> None:
        self.services = services
        self.report = report or (lambda _message: None)
        self._store_reached: bool | None = None  # None: not tried yet by this preserver

    def _custody(self, record: PreservationRecord, action: CustodyAction,
                 details: dict[str, Any]) -> PreservationRecord:
        entry = self.services.record(action, record.capture_id, details)
        return record.with_custody(entry.seq)

    @staticmethod
    def _save(capture_dir: Path, record: PreservationRecord) -> PreservationRecord:
        save_preservation(capture_dir, record)
        return record

    def preserve(self, capture_dir: Path) -> PreservationRecord:
        """Run (or resume, after a crash) every step not done yet; each is saved as soon as it is done."""
        manifest = load_manifest(capture_dir)
        size, digests = digest_file(capture_dir / MANIFEST)
        if has_preservation(capture_dir):
            record = load_preservation(capture_dir)
            if record.manifest.sha256 != digests.sha256:
                raise DigestMismatch(f"{capture_dir / MANIFEST} changed after it was preserved; "
                                     "not preserving it again")
        else:
            record = self._save(capture_dir, PreservationRecord(
                capture_id=manifest.capture_id,
                manifest=FileDigest(path=MANIFEST, size=size, sha256=digests.sha256, sm3=digests.sm3),
            ))
        if PreservationStep.CAPTURED not in record.done:
            record = self._custody(record, CustodyAction.CAPTURED, {
                "status": manifest.status.value, "started_at": manifest.started_at.isoformat(),
                "ended_at": manifest.ended_at.isoformat(), "operator": manifest.provenance.operator,
                "case_id": manifest.provenance.case_id, "urls": [t.url for t in manifest.tiles],
                "host": manifest.provenance.hostname,
            })
            record = self._save(capture_dir, record.with_done(PreservationStep.CAPTURED))
        if PreservationStep.HASHED not in record.done:
            record = self._custody(record, CustodyAction.HASHED, {
                "manifest_sha256": digests.sha256, "manifest_sm3": digests.sm3, "artifacts": len(manifest.artifacts),
            })
            record = self._save(capture_dir, record.with_done(PreservationStep.HASHED))
        if PreservationStep.SIGNED not in record.done:
            record = self._sign(capture_dir, record)
            record = self._save(capture_dir, record.with_done(PreservationStep.SIGNED))
        if PreservationStep.TIMESTAMPED not in record.done:
            record = self._timestamp(capture_dir, record)
            record = self._save(capture_dir, record.with_done(PreservationStep.TIMESTAMPED))
        record = self.store(capture_dir, record, manifest)
        record = self.checkpoint(record, capture_dir)
        return self._save(capture_dir, record.model_copy(update={"complete": True}))

    def _sign(self, capture_dir: Path, record: PreservationRecord) -> PreservationRecord:
        signer = self.services.signer
        signature = signer.sign_detached((capture_dir / MANIFEST).read_bytes())
        write_atomic(capture_dir / SIGNATURE, signature)
        certs = capture_dir / CERTS_DIR
        certs.mkdir(exist_ok=True)
        write_atomic(certs / "signer-chain.pem", b"".join(self.services.pem(c) for c in signer.chain()))
        shutil.copyfile(self.services.pki.ca_cert_path, certs / "local-ca.pem")
        signed = SignatureRecord(
            path=SIGNATURE,
            format="CMS SignedData, detached, DER (RFC 5652)",
            signer=signer.name,
            sha256=hashlib.sha256(signature).hexdigest(),
            certificates=(f"{CERTS_DIR}/signer-chain.pem", f"{CERTS_DIR}/local-ca.pem"),
        )
        record = self._custody(record.model_copy(update={"signature": signed}), CustodyAction.SIGNED,
                               {"signature_sha256": signed.sha256, "signer": signer.name})
        self.report(f"signed the manifest as {signer.name}")
        return record

    def _timestamp(self, capture_dir: Path, record: PreservationRecord) -> PreservationRecord:
        digest = bytes.fromhex(record.manifest.sha256)
        # Token files are never overwritten: a run resumed after a crash asks again under a new name.
        name = "manifest" if not (capture_dir / "timestamps" / "manifest.0.tsq").exists() else \
            f"manifest-{secrets.token_hex(3)}"
        stamps = self.services.timestamper.stamp(digest, capture_dir, name)
        record = record.model_copy(update={"timestamps": tuple(stamps)})
        for stamp in stamps:
            record = self._record_stamp(record, stamp, capture_dir)
        return record

    def _record_stamp(self, record: PreservationRecord, stamp: TimestampRecord, capture_dir: Path,
                      *, after_pending: bool = False) -> PreservationRecord:
        if stamp.status == TimestampStatus.GRANTED:
            details: dict[str, Any] = {
                "tsa": stamp.tsa_url, "local_tsa": stamp.local_tsa, "gen_time": _iso(stamp.gen_time),
                "serial": stamp.serial_number, "token": stamp.response_path,
                "token_sha256": _file_sha256(capture_dir, stamp.response_path),
            }
            if after_pending:
                details["after_pending"] = True
            kind = "local TSA (not a trusted third party)" if stamp.local_tsa else "TSA"
            self.report(f"timestamped by {kind} {stamp.tsa_url} at {_iso(stamp.gen_time)}")
            return self._custody(record, CustodyAction.TIMESTAMPED, details)
        self.report(f"timestamp pending from {stamp.tsa_url}: {stamp.error}")
        return self._custody(record, CustodyAction.TIMESTAMP_PENDING, {"tsa": stamp.tsa_url, "error": stamp.error})

    def retry_timestamps(self, capture_dir: Path) -> PreservationRecord:
        """Every pending request, over the manifest and over the segment chain, sent to the TSAs configured now."""
        record = load_preservation(capture_dir)
        updated = []
        for pending in record.timestamps:
            stamp = pending
            if pending.status == TimestampStatus.PENDING:
                stamp, said = self.services.retry_timestamp(pending, capture_dir)
                if said:
                    self.report(f"{record.capture_id}: {said}")
                if stamp.status == TimestampStatus.GRANTED:
                    record = self._record_stamp(record, stamp, capture_dir, after_pending=True)
                else:
                    self.report(f"{record.capture_id}: manifest timestamp still pending: {stamp.error}")
            updated.append(stamp)
        record = self._save(capture_dir, record.model_copy(update={"timestamps": tuple(updated)}))
        for request_path in pending_chain_requests(capture_dir):
            record = self._retry_chain_stamp(capture_dir, record, request_path)
        return self._save(capture_dir, self.store(capture_dir, record, load_manifest(capture_dir)))

    def _retry_chain_stamp(self, capture_dir: Path, record: PreservationRecord,
                           request_path: str) -> PreservationRecord:
        """A request over the segment chain head that got no token while recording (the TSA was down then)."""
        request = parse_request((capture_dir / request_path).read_bytes())
        pending = TimestampRecord(tsa_url="(the TSA configured then)", local_tsa=False,
                                  status=TimestampStatus.PENDING, hash_algorithm=request.hash_algorithm,
                                  message_imprint=request.digest.hex(), nonce=request.nonce, request_path=request_path)
        stamp, said = self.services.retry_timestamp(pending, capture_dir)
        what = request_path.removeprefix("timestamps/").removesuffix(".tsq")
        if stamp.status != TimestampStatus.GRANTED:
            self.report(f"{record.capture_id}: segment chain timestamp {what} still pending: {stamp.error}")
            return record
        self.report(f"{record.capture_id}: segment chain timestamp {what} granted by {stamp.tsa_url}"
                    + (f" ({said})" if said else ""))
        record = record.model_copy(update={"chain_timestamps": (*record.chain_timestamps, stamp)})
        return self._custody(record, CustodyAction.TIMESTAMPED, {
            "of": "segment chain head", "request": request_path, "tsa": stamp.tsa_url, "local_tsa": stamp.local_tsa,
            "gen_time": _iso(stamp.gen_time), "serial": stamp.serial_number, "token": stamp.response_path,
            "token_sha256": _file_sha256(capture_dir, stamp.response_path), "after_pending": True,
        })

    def store(self, capture_dir: Path, record: PreservationRecord, manifest: Manifest) -> PreservationRecord:
        """Queue every file not yet stored, then upload the queue; a store outage leaves it queued."""
        # Artifacts are uploaded against the digests in the manifest, so a file changed on disk after the
        # capture is refused by the spool instead of being locked away as if it were the evidence.
        recorded = recorded_digests(manifest, record)
        queued = {item.key for batch in self.services.spool.pending() for item in batch.items}
        stored = record.stored_by_key()
        items = []
        for relative, media in preserved_files(capture_dir, manifest, record):
            key = object_key(record.capture_id, relative)
            if key in stored or key in queued:
                continue
            digests = recorded.get(relative) or digest_file(capture_dir / relative)[1]
            items.append(SpoolItem(key=key, relative_path=relative, content_type=media, digests=digests,
                                   legal_hold=False))
        if items:
            self.services.spool.enqueue(record.capture_id, capture_dir, items)
        _left, updated = self._sync(own=(capture_dir, record), wait=True)
        assert updated is not None
        return updated

    def sync(self, *, wait: bool = True) -> int:
        """Upload whatever the spool holds; record each verified object. Returns how many files still wait."""
        left, _record = self._sync(own=None, wait=wait)
        if left and self._store_reached and self._only_checkpoints_wait():
            # Recording the stored objects appended entries, and enough of them make a checkpoint whose document
            # was queued after this sync read the spool: one more pass (it appends nothing) takes it up.
            left, _record = self._sync(own=None, wait=wait)
        return left

    def _only_checkpoints_wait(self) -> bool:
        return all(batch.capture_id == CUSTODY_LOG_BATCH for batch in self.services.spool.pending())

    def _sync(self, *, own: tuple[Path, PreservationRecord] | None,
              wait: bool) -> tuple[int, PreservationRecord | None]:
        """The spool's sync; `own` is the capture this process is preserving, whose record it holds in hand."""
        holder: dict[str, PreservationRecord] = {}
        stored_entries: dict[str, dict[tuple[str, str], int]] = {}  # capture -> (key, version) -> STORED entry
        if own is not None:
            holder[own[1].capture_id] = own[1]

        def stored(capture_id: str, verified: list[tuple[SpoolItem, StoredObject]]) -> None:
            if capture_id == CUSTODY_LOG_BATCH:
                return  # a checkpoint document: the checkpoint is the record of itself
            directory = own[0] if own is not None and own[1].capture_id == capture_id else \
                self.services.capture_dir(capture_id)
            current = holder.get(capture_id) or load_preservation(directory)
            # Versions are told again when an earlier call failed part-way (at least once): one whose entry was
            # appended then is not appended twice; its entry goes into the record as it is. The capture's STORED
            # entries are read once per sync (it holds the spool's sync lock) and kept up as this appends.
            if capture_id not in stored_entries:
                stored_entries[capture_id] = {
                    (str(e.details.get("key")), str(e.details.get("version_id"))): e.seq
                    for e in self.services.ledger.entries(subject=capture_id) if e.action == CustodyAction.STORED}
            recorded = stored_entries[capture_id]
            for _item, obj in verified:
                seq = recorded.get((obj.key, obj.version_id))
                if seq is not None:
                    current = current.with_stored(obj)
                    if seq not in current.custody_seqs:
                        current = current.with_custody(seq)
                    continue
                current = self._custody(current.with_stored(obj), CustodyAction.STORED, {
                    "key": obj.key, "version_id": obj.version_id, "bucket": obj.bucket, "size": obj.size,
                    "sha256": obj.digests.sha256, "sm3": obj.digests.sm3, "retention": obj.retention_mode,
                    "retain_until": obj.retain_until.isoformat(), "verified_at": _iso(obj.verified_at),
                })
                recorded[(obj.key, obj.version_id)] = current.custody_seqs[-1]
            # Once for the versions told together: the spool forgets them only after this returns.
            holder[capture_id] = self._save(directory, current)

        def note(message: str, capture_id: str | None = None) -> None:
            self.report(message)
            if own is not None and capture_id in (None, "*", own[1].capture_id):
                holder[own[1].capture_id] = holder[own[1].capture_id].with_problem(message)

        try:
            store = self.services.store()
        except (StorageError, ConfigurationError) as exc:
            # A store that is down or set up wrong must not cost a finished capture its summary: files wait.
            # `wz sync` itself, asked only to upload, reports a setting that is wrong as the error it is.
            if isinstance(exc, ConfigurationError) and own is None:
                raise
            self._store_reached = False
            note(f"object store unavailable, {self._waiting()} file(s) kept in the spool for `wz sync`: {exc}")
            return self._waiting(), holder.get(own[1].capture_id) if own is not None else None
        self._store_reached = True
        with self.services.one_checkpoint():
            result = self.services.spool.sync(store, on_stored=stored, wait=wait)
        if result.busy:
            self.report("another wz process is uploading the spool; what it leaves is uploaded by the next command")
        for problem in result.problems:
            note(f"{problem.kind.value}: {problem.message}", problem.capture_id)
        objects = [item for item in result.stored if item.capture_id != CUSTODY_LOG_BATCH]
        if objects:
            self.report(f"stored {len(objects)} object version(s) with COMPLIANCE retention, each read back "
                        "by version and re-hashed")
        if len(objects) < len(result.stored):
            self.report("kept the custody checkpoint in WORM storage (custody/checkpoints/)")
        return self._waiting(), holder.get(own[1].capture_id) if own is not None else None

    def _waiting(self) -> int:
        # A batch leaves the spool only when every item is stored, verified and recorded: any batch left
        # counts, even one whose items are all uploaded but not yet recorded.
        return sum(max(1, len(b.items) - len(b.stored)) for b in self.services.spool.pending())

    def legal_hold(self, capture_dir: Path, on: bool, reason: str) -> int:
        """Set (or release) legal hold on every stored version of a capture; returns how many were changed."""
        record = load_preservation(capture_dir)
        if not record.stored:
            raise StorageError(f"{record.capture_id} has nothing stored yet; run `wz sync` first")
        store = self.services.store()
        for stored in record.stored:
            store.set_legal_hold(stored.key, stored.version_id, on)
            record = self._save(capture_dir, record.with_stored(stored.model_copy(update={"legal_hold": on})))
        action = CustodyAction.LEGAL_HOLD if on else CustodyAction.LEGAL_HOLD_RELEASED
        record = self._custody(record, action, {"objects": len(record.stored), "reason": reason})
        self._save(capture_dir, self.checkpoint(record, capture_dir))
        return len(record.stored)

    def checkpoint(self, record: PreservationRecord, capture_dir: Path) -> PreservationRecord:
        """Sign and timestamp the ledger as it is now, and put the checkpoint's document in WORM storage.

        Returns the record as the upload left it: that sync may also store what the capture's own sync could not
        (a store back up), and records it, so the caller must carry on from this record, not its own."""
        try:
            checkpoint = self.services.checkpoint()
        except EvidenceError as exc:
            message = f"custody checkpoint failed: {exc}"
            self.report(message)
            return record.with_problem(message)
        self.report(f"custody ledger checkpoint: {checkpoint.tree_size} entries, root {checkpoint.root_hash[:16]}…")
        if self._store_reached is not False:  # a store found down moments ago is not asked (and reported) again
            _left, synced = self._sync(own=(capture_dir, record), wait=True)
            if synced is not None:
                return synced
        return record


def recorded_digests(manifest: Manifest, record: PreservationRecord) -> dict[str, Digests]:
    """The digests every preserved file must have: the manifest's for artifacts, the record's for the manifest."""
    recorded = {a.path: a.digests for a in manifest.artifacts}
    recorded[MANIFEST] = record.manifest.digests
    return recorded


def _file_sha256(directory: Path, relative: str | None) -> str | None:
    if not relative or not (directory / relative).is_file():
        return None
    return hashlib.sha256((directory / relative).read_bytes()).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
