"""The node's integrity services, built once per command from Settings: PKI and signer, time-stamping
(configured TSAs or the local one), the custody ledger, the object store and its spool.
"""

from __future__ import annotations

import base64
import getpass
import secrets
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from custody.ledger import Ledger
from evidence import Checkpoint, Settings, TimestampRecord, TimestampStatus
from hashing.pki import LocalPki
from hashing.rfc3161 import HttpTimestamper, TsaEntry, external_tsa_entries, retry_pending
from hashing.signing import LocalSigner, Signer, verify_raw
from hashing.tsa import LocalTsa
from preservation.registry import locate
from storage.s3 import ObjectStore, store_from_settings
from storage.spool import Spool


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.actor = settings.actor or _login()
        self.pki = LocalPki(settings.keys_dir).ensure()
        self.signer: Signer = LocalSigner(self.pki)
        self.local_tsa: LocalTsa | None = None
        self._store: ObjectStore | None = None
        self.spool = Spool(settings.spool_dir)
        self.ledger = Ledger(settings.ledger_url)
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

    def retry_timestamp(self, record: TimestampRecord, directory: Path) -> TimestampRecord:
        """Send a pending request again, to the TSA now configured under the same URL (the local TSA's
        port changes between runs, so its pending requests go to today's local TSA)."""
        entry = next((e for e in self.timestamper.entries if e.url == record.tsa_url), None)
        if entry is None and record.local_tsa:
            entry = next((e for e in self.timestamper.entries if e.local), None)
        if entry is None:
            return record
        if entry.url != record.tsa_url:
            record = record.model_copy(update={"tsa_url": entry.url})
        return retry_pending(record, directory, roots=entry.roots, timeout=self.settings.tsa_timeout_seconds)

    def capture_dir(self, capture_id: str) -> Path:
        return locate(self.settings.registry_dir, capture_id)

    def checkpoint(self) -> Checkpoint:
        def stamp(body_sha256: bytes) -> TimestampRecord | None:
            directory = self.checkpoint_dir
            directory.mkdir(parents=True, exist_ok=True)
            # Unique names: a retried checkpoint at the same size must not collide with an earlier attempt.
            name = f"checkpoint-{self.ledger.size():08d}-{secrets.token_hex(4)}"
            records = self.timestamper.stamp(body_sha256, directory, name)
            granted = [r for r in records if r.status == TimestampStatus.GRANTED]
            return granted[0] if granted else None

        return self.ledger.checkpoint(self.signer.name, self.signer.sign_raw, stamp)

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
