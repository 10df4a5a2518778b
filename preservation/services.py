"""The node's integrity services, built once per command from Settings: PKI and signer, time-stamping
(configured TSAs or the local one), the custody ledger, the object store and its spool.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection

from custody.checkpoints import (
    CHECKPOINT_PREFIX,
    CheckpointDocument,
    checkpoint_key,
    document_for,
    verify_document,
)
from custody.ledger import Ledger
from custody.proofs import entry_bytes
from evidence import (
    Checkpoint,
    ConfigurationError,
    CustodyAction,
    CustodyEntry,
    EvidenceError,
    LedgerCorrupt,
    Settings,
    TimestampInvalid,
    TimestampRecord,
    TimestampStatus,
)
from evidence.files import write_atomic
from hashing import digest_file
from hashing.pki import LocalPki
from hashing.rfc3161 import HttpTimestamper, TsaEntry, external_tsa_entries, retry_pending, verify_response
from hashing.signing import LocalSigner, Signer, verify_raw
from hashing.tsa import LocalTsa
from preservation.database import database_url
from preservation.registry import locate
from storage.s3 import ObjectStore, store_from_settings
from storage.spool import Spool, SpoolItem

CUSTODY_LOG_BATCH = "custody-log"  # the spool batch of checkpoint documents (not a capture)
log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENTRIES = 32
CHECKPOINT_EVERY_SECONDS = 600.0
NODE_CA_KEY = "node-ca-sha256"  # the custody ledger's record of the CA whose keys sign it
CHECKPOINT_MIN_SECONDS = 2.0  # between background checkpoints of a long-running service


@dataclass(frozen=True)
class CustodyVerification:
    size: int
    root: bytes
    worm_checkpoints: int
    worm_latest: int
    not_in_worm: tuple[int, ...]  # checkpoints whose documents wait in the spool

    def describe(self) -> str:
        said = (f"{self.size} entries, root {self.root.hex()}; checked against {self.worm_checkpoints} checkpoint(s) "
                f"in WORM storage")
        if self.worm_checkpoints:
            said += f" (the latest covers {self.worm_latest} entries)"
        if self.not_in_worm:
            said += f"; {len(self.not_in_worm)} newer checkpoint(s) wait in the spool for `wz sync`"
        return said


def _compare_entry(current: CustodyEntry | None, kept: CustodyEntry, tree_size: int) -> None:
    """An entry in the database against its copy in a WORM checkpoint document; names what differs."""
    if current is None:
        raise LedgerCorrupt(f"entry {kept.seq}: missing from the database, though the WORM checkpoint of "
                            f"{tree_size} entries holds it")
    if entry_bytes(current) == entry_bytes(kept):
        return
    now, then = current.model_dump(mode="json"), kept.model_dump(mode="json")
    fields = [f"{name} was {then[name]!r:.80}, is now {now[name]!r:.80}" for name in then if then[name] != now[name]]
    raise LedgerCorrupt(f"entry {kept.seq}: differs from the copy in the WORM checkpoint of {tree_size} entries: "
                        + "; ".join(fields))


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actor = settings.actor or _login()
        self.pki = LocalPki(settings.keys_dir).ensure()
        self.signer: Signer = LocalSigner(self.pki)
        self.local_tsa: LocalTsa | None = None
        self._store: ObjectStore | None = None
        self.spool = Spool(settings.spool_dir)
        self.database_url = database_url(settings)
        self.ledger = Ledger(self.database_url)
        self._latest: Checkpoint | None = None
        self._deferred = 0
        self._checkpointing = threading.RLock()
        # A long-running service (API, worker) sets this: due checkpoints are then made on a background thread.
        self.background_checkpoints = False
        self._background: threading.Thread | None = None
        self._background_again = False
        self._background_lock = threading.Lock()
        self._hurry = threading.Event()
        self._last_background = -CHECKPOINT_MIN_SECONDS
        self._node_checked = False
        self._kept_cache: tuple[int, tuple[Path, CheckpointDocument] | None] | None = None
        self.timestamper = HttpTimestamper(self._tsa_endpoints(), timeout=settings.tsa_timeout_seconds)

    def _tsa_endpoints(self) -> list[TsaEntry]:
        urls = self.settings.tsa_url_list
        if urls:
            ca_file = Path(self.settings.tsa_ca_file) if self.settings.tsa_ca_file else None
            return external_tsa_entries(urls, ca_file)
        # No TSA configured: our own, on loopback, clearly labelled as local everywhere it appears.
        self.local_tsa = LocalTsa(self.pki, self.settings.data_dir / "tsa")
        url = self.local_tsa.start()
        return [TsaEntry(url=url, roots=(self.pki.ca_certificate(),), local=True)]

    def store(self) -> ObjectStore:
        """The object store, connected (and the embedded SeaweedFS started) on first use."""
        if self._store is None:
            store = store_from_settings(self.settings)
            store.ensure_bucket()
            self._store = store
        return self._store

    def retry_timestamp(self, record: TimestampRecord, directory: Path) -> tuple[TimestampRecord, str]:
        """Send a pending request again, to the TSAs configured now; returns the record and what was done.

        The TSA it was first sent to, if still configured, goes first (the local TSA's port changes between runs,
        so a pending local request goes to today's local TSA). A TSA no longer configured is not skipped in
        silence: the kept request (same digest, same nonce) goes to the configured ones instead, and that is said.
        """
        entries = list(self.timestamper.entries)
        first = next((e for e in entries if e.url == record.tsa_url), None)
        if first is None and record.local_tsa:
            first = next((e for e in entries if e.local), None)
        order = [first] if first is not None else []
        order += [e for e in entries if e is not first]
        said = "" if first is not None else (f"{record.tsa_url} is no longer configured; the kept request went to "
                                             f"{', '.join(e.url for e in order)}")
        current = record
        for entry in order:
            attempt = current.model_copy(update={"tsa_url": entry.url, "local_tsa": entry.local})
            current = retry_pending(attempt, directory, roots=entry.roots, timeout=self.settings.tsa_timeout_seconds)
            if current.status == TimestampStatus.GRANTED:
                return current, said
        return current, said

    def capture_dir(self, capture_id: str) -> Path:
        return locate(self.settings.registry_dir, capture_id)

    # -- the custody record --

    def record(self, action: CustodyAction, subject: str, details: dict[str, Any]) -> CustodyEntry:
        return self.record_as(self.actor, action, subject, details)

    def record_as(self, actor: str, action: CustodyAction, subject: str, details: dict[str, Any]) -> CustodyEntry:
        """Append one custody entry; checkpoint when enough has accrued since the last one.

        Checkpoints come after every capture, export and legal-hold change (their callers ask), and besides
        whenever CHECKPOINT_EVERY_ENTRIES entries or CHECKPOINT_EVERY_SECONDS have passed since the last one,
        so what a checkpoint in WORM storage does not yet cover stays small."""
        entry = self.ledger.append(actor, action, subject, details)
        # A batch in progress checkpoints once, at its end; otherwise one thread decides and signs at a time.
        self.after_commit(entry)
        return entry

    def record_in(self, connection: Connection, actor: str, action: CustodyAction, subject: str,
                  details: dict[str, Any]) -> CustodyEntry:
        """Append an entry inside the caller's transaction (on the ledger's database): it commits with what the
        caller writes there, or not at all. Call `after_commit(entry)` once the transaction has committed."""
        return self.ledger.append(actor, action, subject, details, connection=connection)

    def after_commit(self, entry: CustodyEntry) -> None:
        """Checkpoint if an entry made one due: here, or (a long-running service) on a background thread, so a
        request never waits for a signature, a timestamp and a WORM upload."""
        if self._deferred:
            return
        latest = self._latest_checkpoint()
        covered = latest.tree_size if latest is not None else 0
        age = (entry.at - latest.at).total_seconds() if latest is not None else 0.0
        if entry.seq - covered < CHECKPOINT_EVERY_ENTRIES and age < CHECKPOINT_EVERY_SECONDS:
            return
        if self.background_checkpoints:
            self._checkpoint_soon()
            return
        with self._checkpointing:
            if self._latest_checkpoint() is latest:  # another thread may have just made it
                self.checkpoint()

    def _checkpoint_soon(self) -> None:
        with self._background_lock:
            if self._background is not None:
                self._background_again = True
                return
            self._background = threading.Thread(target=self._checkpoint_in_background, name="custody-checkpoint",
                                                daemon=True)
            self._background.start()

    def _checkpoint_in_background(self) -> None:
        while True:
            # Under steady load (a hash lookup is an entry) checkpoints would follow each other without pause, each
            # a signature, a timestamp and a document for WORM storage: space them, unless the process is ending.
            pause = self._last_background + CHECKPOINT_MIN_SECONDS - time.monotonic()
            if pause > 0:
                self._hurry.wait(pause)
            try:
                with self._checkpointing:
                    self.checkpoint()
            except Exception:  # the next due entry tries again; the ledger itself is already committed
                log.exception("background custody checkpoint failed")
            self._last_background = time.monotonic()
            with self._background_lock:
                if not self._background_again:
                    self._background = None
                    return
                self._background_again = False

    def wait_for_checkpoints(self) -> None:
        """Let a background checkpoint finish (before the process ends), without its pause."""
        with self._background_lock:
            running = self._background
        if running is not None:
            self._hurry.set()
            running.join()
            self._hurry.clear()

    @contextlib.contextmanager
    def one_checkpoint(self) -> Iterator[None]:
        """Record a batch (every object of a sync) under one checkpoint at its end, not one per 32 entries: each
        checkpoint reads the whole ledger, and a 30,000-object capture would otherwise make some 900 of them."""
        before = self.ledger.size()
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        if not self._deferred and self.ledger.size() > before:
            self.checkpoint()

    def _latest_checkpoint(self) -> Checkpoint | None:
        if self._latest is None:
            self._latest = self.ledger.latest_checkpoint()
        return self._latest

    def check_node_identity(self) -> None:
        """Refuse to sign a ledger that another node's keys sign: every host sharing a custody ledger (the service,
        workers on other hosts) must hold the node's keys, or its checkpoints would carry a signature that the
        node's certificate (the one the public log gives courts) does not verify. The first host to sign claims
        the ledger for its CA."""
        if self._node_checked:
            return
        mine = self.pki.ca_certificate().fingerprint(hashes.SHA256()).hex()
        recorded = self.ledger.claim(NODE_CA_KEY, mine)
        if recorded != mine:
            raise ConfigurationError(
                f"this host's keys ({self.settings.keys_dir}, CA SHA-256 {mine[:16]}…) are not those of the node whose "
                f"custody ledger is at {self.ledger.where} (CA SHA-256 {recorded[:16]}…): every host of a node signs "
                f"with the node's keys. Stop here and copy the node's keys directory (WZ_DATA_DIR/keys on the host "
                f"that first ran it) to {self.settings.keys_dir}, then start again")
        self._node_checked = True

    def checkpoint(self) -> Checkpoint:
        """Sign and timestamp the ledger's current tree, and queue its document for WORM storage."""
        self.check_node_identity()
        def stamp(body_sha256: bytes) -> TimestampRecord | None:
            directory = self.checkpoint_dir
            directory.mkdir(parents=True, exist_ok=True)
            # Unique names: a retried checkpoint at the same size must not collide with an earlier attempt.
            name = f"checkpoint-{self.ledger.size():08d}-{secrets.token_hex(4)}"
            records = self.timestamper.stamp(body_sha256, directory, name)
            granted = [r for r in records if r.status == TimestampStatus.GRANTED]
            return granted[0] if granted else None

        self._check_against_kept()
        checkpoint = self.ledger.checkpoint(self.signer.name, self.signer.sign_raw, stamp,
                                            verify_signature=self.verify_checkpoint)
        self._latest = checkpoint
        self._keep_in_worm(checkpoint)
        return checkpoint

    def checkpoint_document(self, checkpoint: Checkpoint) -> CheckpointDocument:
        """The checkpoint with its signer, its token and the entries since the checkpoint before it."""
        start = self.ledger.checkpoint_before(checkpoint.tree_size) + 1
        entries = self.ledger.entries(start=start, end=checkpoint.tree_size) if start <= checkpoint.tree_size else []
        request = token = None
        chain: str | None = None
        stamp = checkpoint.timestamp
        if stamp is not None and stamp.response_path:
            token = (self.checkpoint_dir / stamp.response_path).read_bytes()
            if stamp.request_path:
                request = (self.checkpoint_dir / stamp.request_path).read_bytes()
            if stamp.chain_path:
                chain = (self.checkpoint_dir / stamp.chain_path).read_text(encoding="ascii")
        return document_for(checkpoint, self.pem(self.signer.certificate()).decode("ascii"), entries,
                            timestamp_request=request, timestamp_token=token, timestamp_chain=chain)

    def _keep_in_worm(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint's document beside the ledger and queue it for the object-locked bucket."""
        folder = self.worm_checkpoint_dir
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{checkpoint.tree_size:012d}.json"
        if not (folder / relative).exists():
            write_atomic(folder / relative, self.checkpoint_document(checkpoint).to_bytes())
        digests = digest_file(folder / relative)[1]
        self.spool.enqueue(CUSTODY_LOG_BATCH, folder, [SpoolItem(
            key=checkpoint_key(checkpoint.tree_size), relative_path=relative, content_type="application/json",
            digests=digests)])

    def _check_against_kept(self) -> None:
        """Never sign a history that contradicts the last checkpoint this node kept.

        Someone with database access alone can rewrite entries, re-chain every hash and delete the checkpoint rows;
        the ledger then recomputes, and signing it would give the rewrite the node's signature. The checkpoint
        documents kept beside the ledger (and in WORM storage) are out of that person's reach: the ledger must
        still hash to the newest one's root at its size."""
        newest = self._newest_kept()
        if newest is None:
            return
        path, document = newest
        # The stored tree answers in O(log n) instead of rehashing the whole ledger before every signature. A tree
        # rewritten below the kept size gives another root here. Entries rewritten there with the tree left alone
        # are not looked at before signing (the root signed is still the genuine one); `wz custody verify` and
        # every inclusion proof of such an entry find them. Entries after the last checkpoint are checked against
        # the tree by `Ledger.checkpoint` itself.
        root = self.ledger.stored_root(document.tree_size)
        if root is None:
            raise LedgerCorrupt(f"the ledger holds fewer entries than the {document.tree_size} its last kept "
                                f"checkpoint covers ({path}): entries were removed; not signing it")
        if root.hex() != document.checkpoint.root_hash:
            raise LedgerCorrupt(f"the ledger's first {document.tree_size} entries no longer hash to the root of its "
                                f"last kept checkpoint ({path}): its history was rewritten; not signing it. "
                                "Run `wz custody verify`")

    def _newest_kept(self) -> tuple[Path, CheckpointDocument] | None:
        """The newest checkpoint document kept beside the ledger, verified; listed and verified again only when
        the folder changes (every checkpoint adds one, and a busy service signs several a minute)."""
        folder = self.worm_checkpoint_dir
        try:
            changed = folder.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if self._kept_cache is not None and self._kept_cache[0] == changed:
            return self._kept_cache[1]
        kept = max(folder.glob("*.json"), default=None)
        newest = None
        if kept is not None:
            document = CheckpointDocument.from_bytes(kept.read_bytes(), str(kept))
            verify_document(document, node_roots=[self.pki.ca_certificate()], check_token=self.check_token)
            newest = (kept, document)
        self._kept_cache = (changed, newest)
        return newest

    @property
    def worm_checkpoint_dir(self) -> Path:
        """Checkpoint documents as they go to WORM storage."""
        return self.checkpoint_dir / "worm"

    def check_token(self, tsr: bytes, digest: bytes, nonce: int) -> str:
        """A token over a checkpoint, against the roots this node trusts: its own CA (the local TSA) or the
        configured TSAs' roots. Says which."""
        failures = []
        for kind, roots in (("local TSA", [self.pki.ca_certificate()]),
                            ("TSA", [r for e in self.timestamper.entries if not e.local for r in e.roots])):
            if not roots:
                continue
            try:
                info = verify_response(tsr, digest=digest, nonce=nonce, roots=roots)
            except EvidenceError as exc:
                failures.append(f"{kind}: {exc}")
                continue
            return f"{kind} {info.tsa_name or ''} at {info.gen_time.isoformat()}"
        raise TimestampInvalid("; ".join(failures) or "no trusted TSA root")

    def verify_custody(self) -> CustodyVerification:
        """The ledger in the database, then the ledger against every checkpoint document in WORM storage.

        The database alone cannot prove it was not rewritten by someone who also re-signed nothing: deleting
        entries and the checkpoints above them, or rewriting an entry and every hash after it, leaves a ledger
        that recomputes. The documents in the object-locked bucket (COMPLIANCE: nobody can delete or replace
        them) still hold what each checkpoint covered; any difference is named, entry by entry."""
        # WORM first: a checkpoint another process makes meanwhile covers entries the ledger read after it holds.
        store = self.store()
        versions = store.versions(CHECKPOINT_PREFIX)
        size, root = self.ledger.verify(self.verify_checkpoint)
        documents: list[CheckpointDocument] = []
        by_key: dict[str, list[str]] = {}
        for version in versions:
            by_key.setdefault(version.key, []).append(version.version_id)
        for key, version_ids in sorted(by_key.items()):
            contents = {b"".join(store.read(key, version_id)) for version_id in version_ids}
            if len(contents) > 1:
                raise LedgerCorrupt(f"{key} has {len(version_ids)} versions that differ in WORM storage: someone wrote "
                                    "a second checkpoint of the same size")
            document = CheckpointDocument.from_bytes(contents.pop(), key)
            if checkpoint_key(document.tree_size) != key:
                raise LedgerCorrupt(f"{key} holds the checkpoint of size {document.tree_size}")
            verify_document(document, node_roots=[self.pki.ca_certificate()], check_token=self.check_token)
            documents.append(document)
        documents.sort(key=lambda d: d.tree_size)
        roots = self.ledger.roots_at(d.tree_size for d in documents)
        for document in documents:
            held = [e for e in document.parsed_entries() if e.seq <= size]
            if held:
                in_database = {e.seq: e for e in self.ledger.entries(start=held[0].seq, end=held[-1].seq)}
                for kept in held:
                    _compare_entry(in_database.get(kept.seq), kept, document.tree_size)
            if document.tree_size > size:
                raise LedgerCorrupt(f"entry {size + 1}: missing; the ledger ends at {size}, but the checkpoint of "
                                    f"{document.tree_size} entries in WORM storage covers more (entries after "
                                    f"{size} were removed)")
            if roots[document.tree_size].hex() != document.checkpoint.root_hash:
                raise LedgerCorrupt(f"the first {document.tree_size} entries no longer hash to the root signed in "
                                    f"the WORM checkpoint of that size: an entry before {document.entries_from} was "
                                    "changed after it was checkpointed")
        latest = documents[-1].tree_size if documents else 0
        signed = [cp.tree_size for cp in self.ledger.checkpoints()]
        return CustodyVerification(size=size, root=root, worm_checkpoints=len(documents), worm_latest=latest,
                                   not_in_worm=tuple(n for n in signed if n not in roots))

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoint timestamp requests and tokens are kept."""
        return self.settings.data_dir / "custody-checkpoints"

    def verify_checkpoint(self, body: bytes, signature_b64: str) -> None:
        """Checkpoints are signed by this node's evidence key; raises SignatureInvalid."""
        verify_raw(body, base64.b64decode(signature_b64), self.signer.certificate())

    @staticmethod
    def pem(certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(Encoding.PEM)

    def close(self) -> None:
        self.wait_for_checkpoints()
        if self.local_tsa is not None:
            self.local_tsa.stop()
        self.ledger.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
