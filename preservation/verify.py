"""`wz verify`: check an exported package offline, or a capture against the store and the ledger.

Every check is run and reported; any failure makes `verify_*` raise `IntegrityError` naming each
failing check and artifact (the report rides on the exception for the CLI's --json).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from custody.proofs import InclusionProof, checkpoint_body, verify_inclusion_proof
from evidence import (
    Artifact,
    Checkpoint,
    CustodyEntry,
    EvidenceError,
    IntegrityError,
    Manifest,
    PreservationRecord,
    TimestampRecord,
    TimestampStatus,
)
from evidence.layout import CHAIN_FILE, MANIFEST, PRESERVATION, SIGNATURE
from hashing import digest_stream
from hashing.chain import verify_chain
from hashing.rfc3161 import verify_response
from hashing.signing import issuing_root, verify_detached, verify_raw


@dataclass(frozen=True)
class Check:
    name: str
    subject: str
    ok: bool
    detail: str = ""


@dataclass
class VerificationReport:
    target: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def run(self, name: str, subject: str, check: Callable[[], str | None]) -> None:
        """Run one check; an EvidenceError (or any parse error) is recorded as that check's failure."""
        try:
            detail = check() or ""
        except (EvidenceError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            self.checks.append(Check(name, subject, False, str(exc) or type(exc).__name__))
            return
        self.checks.append(Check(name, subject, True, detail))

    origin_pinned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "origin_pinned": self.origin_pinned,
                "checks": [asdict(c) for c in self.checks]}

    def raise_for_failures(self) -> None:
        if not self.ok:
            failed = "; ".join(f"{c.name} [{c.subject}]: {c.detail}" for c in self.failures) or "nothing was checked"
            error = IntegrityError(f"{len(self.failures)} check(s) failed: {failed}")
            error.report = self  # type: ignore[attr-defined]
            raise error


class EvidenceSource:
    """Files of a capture, from an unpacked directory or inside a zip (streamed, never read whole)."""

    def __init__(self, directory: Path | None = None, archive: zipfile.ZipFile | None = None, root: str = "") -> None:
        self.directory = directory
        self.archive = archive
        self.root = root
        self._digests: dict[str, tuple[int, str, str]] = {}

    def exists(self, relative: str) -> bool:
        if self.archive is not None:
            try:
                self.archive.getinfo(f"{self.root}/{relative}")
            except KeyError:
                return False
            return True
        assert self.directory is not None
        return (self.directory / relative).is_file()

    def open(self, relative: str) -> IO[bytes]:
        if self.archive is not None:
            return self.archive.open(f"{self.root}/{relative}")
        assert self.directory is not None
        return (self.directory / relative).open("rb")

    def read(self, relative: str) -> bytes:
        with self.open(relative) as handle:
            return handle.read()

    def digests(self, relative: str) -> tuple[int, str, str]:
        """(size, SHA-256, SM3) in one streaming pass, once per file; reading a zip member also checks its CRC."""
        if relative not in self._digests:
            with self.open(relative) as handle:
                size, digests = digest_stream(handle)
            self._digests[relative] = (size, digests.sha256, digests.sm3)
        return self._digests[relative]

    def names(self) -> Iterator[str]:
        if self.archive is not None:
            prefix = self.root + "/"
            for name in self.archive.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    yield name.removeprefix(prefix)
        else:
            assert self.directory is not None
            for path in self.directory.rglob("*"):
                if path.is_file():
                    yield path.relative_to(self.directory).as_posix()


def _sums(source: EvidenceSource, name: str) -> dict[str, str]:
    listed: dict[str, str] = {}
    for line in source.read(name).decode("utf-8").splitlines():
        if line.strip():
            digest, path = line.split("  ", 1)
            listed[path] = digest
    covered = set(listed)
    everything = {n for n in source.names() if n not in ("SHA256SUMS", "SM3SUMS")}
    if everything - covered:
        raise IntegrityError(f"{name} does not list: {', '.join(sorted(everything - covered))}")
    if covered - everything:
        raise IntegrityError(f"{name} lists files that are missing: {', '.join(sorted(covered - everything))}")
    return listed


def _check_sums(report: VerificationReport, source: EvidenceSource) -> None:
    for listing, index, label in (("SHA256SUMS", 1, "SHA-256"), ("SM3SUMS", 2, "SM3")):
        try:
            listed = _sums(source, listing)
        except (EvidenceError, ValueError, KeyError) as exc:
            report.checks.append(Check(f"{label} list", listing, False, str(exc)))
            continue
        for path, expected in sorted(listed.items()):
            def check(path: str = path, expected: str = expected, index: int = index, label: str = label,
                      listing: str = listing) -> str:
                if not source.exists(path):
                    raise IntegrityError(f"{path} is missing")
                if source.digests(path)[index] != expected:
                    raise IntegrityError(f"{path}: {label} differs from {listing}")
                return ""
            report.run(f"{label} of file", path, check)


def _check_manifest(report: VerificationReport, source: EvidenceSource, manifest: Manifest) -> None:
    for artifact in manifest.artifacts:
        def check(artifact: Artifact = artifact) -> str:
            if not source.exists(artifact.path):
                raise IntegrityError(f"{artifact.path} ({artifact.role.value}) is missing")
            size, sha256, sm3 = source.digests(artifact.path)
            if sha256 != artifact.digests.sha256:
                raise IntegrityError(f"{artifact.path} ({artifact.role.value}): SHA-256 differs from the manifest")
            if sm3 != artifact.digests.sm3:
                raise IntegrityError(f"{artifact.path} ({artifact.role.value}): SM3 differs from the manifest")
            if size != artifact.size:
                raise IntegrityError(f"{artifact.path}: size {size} differs from the manifest's {artifact.size}")
            return artifact.role.value
        report.run("artifact matches manifest", artifact.path, check)


@dataclass(frozen=True)
class Trust:
    """The roots a verification trusts. Unpinned roots come from the evidence itself: they prove integrity,
    not origin, and the report says so with the fingerprint to compare against the published one."""

    node_roots: list[x509.Certificate]
    node_pinned: bool
    tsa_roots: list[x509.Certificate] = field(default_factory=list)


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _load_roots(source: EvidenceSource, *paths: str) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for path in paths:
        if source.exists(path):
            roots.extend(x509.load_pem_x509_certificates(source.read(path)))
    return roots


def _check_signature(report: VerificationReport, source: EvidenceSource, trusted: list[x509.Certificate]) -> None:
    def check() -> str:
        certificate = verify_detached(source.read(MANIFEST), source.read(SIGNATURE), trusted)
        return certificate.subject.rfc4514_string()

    report.run("manifest signature (CMS)", SIGNATURE, check)


def _verify_token(tsr: bytes, *, digest: bytes, nonce: int, trust: Trust, hash_algorithm: str = "sha256",
                  claimed_local: bool | None = None, fallback_roots: list[x509.Certificate] | None = None) -> str:
    """Verify one token; say whose it is by the root it actually chains to, never by what a record claims."""
    attempts: list[tuple[str, list[x509.Certificate]]] = [("local", trust.node_roots)]
    if trust.tsa_roots:
        attempts.append(("external, root pinned by the verifier", trust.tsa_roots))
    elif fallback_roots:
        attempts.append(("external, root taken from the evidence (pin it with --tsa-ca)", fallback_roots))
    failures = []
    for kind, roots in attempts:
        try:
            info = verify_response(tsr, digest=digest, nonce=nonce, roots=roots, hash_algorithm=hash_algorithm)
        except EvidenceError as exc:
            failures.append(f"against the {kind.split(',')[0]} roots: {exc}")
            continue
        local = kind == "local"
        if claimed_local is not None and claimed_local != local:
            raise IntegrityError(f"the record calls this TSA {'local' if claimed_local else 'external'}, "
                                 f"but its token chains to the {'local' if local else 'external'} roots")
        who = "local TSA (not a trusted third party)" if local else f"TSA ({kind})"
        return f"{who} {info.tsa_name or ''}: {info.gen_time.isoformat()} serial {info.serial_number}"
    raise IntegrityError("; ".join(failures))


def _check_token(report: VerificationReport, source: EvidenceSource, record: TimestampRecord, *, digest: bytes,
                 label: str, trust: Trust) -> bool:
    """Check one manifest token; True when it verified."""
    subject = record.response_path or record.tsa_url
    if record.status == TimestampStatus.PENDING:
        report.checks.append(Check(label, subject, False, f"token still pending from {record.tsa_url}: {record.error}"))
        return False

    def check() -> str:
        if not record.response_path or record.nonce is None:
            raise IntegrityError("the record names no token or no nonce")
        return _verify_token(source.read(record.response_path), digest=digest, nonce=record.nonce, trust=trust,
                             hash_algorithm=record.hash_algorithm, claimed_local=record.local_tsa,
                             fallback_roots=_load_roots(source, *(p for p in [record.chain_path] if p)))

    before = len(report.failures)
    report.run(label, subject, check)
    return len(report.failures) == before


def _check_chain(report: VerificationReport, source: EvidenceSource) -> None:
    if not source.exists(CHAIN_FILE):
        return

    def check() -> str:
        text = source.read(CHAIN_FILE).decode("utf-8")
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]

        def actual(path: str) -> str | None:
            return source.digests(path)[1] if source.exists(path) else None

        problems = verify_chain(entries, actual)
        if problems:
            raise IntegrityError("; ".join(problems))
        return f"{len(entries)} segments"

    report.run("segment chain", CHAIN_FILE, check)


def _check_chain_tokens(report: VerificationReport, source: EvidenceSource, trust: Trust) -> None:
    """Tokens taken while recording stamp the chain head after segment n (timestamps/chain-<n>.<i>.tsr)."""
    if not source.exists(CHAIN_FILE):
        return
    try:
        entries = [json.loads(line) for line in source.read(CHAIN_FILE).decode().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        report.checks.append(Check("segment chain timestamp", CHAIN_FILE, False, f"unreadable: {exc}"))
        return
    for name in sorted(n for n in source.names() if n.startswith("timestamps/chain-") and n.endswith(".tsr")):
        n = int(PurePosixPath(name).name.split(".")[0].removeprefix("chain-"))
        request = name.removesuffix(".tsr") + ".tsq"
        chain_pem = name.removesuffix(".tsr") + ".chain.pem"

        def check(name: str = name, n: int = n, request: str = request, chain_pem: str = chain_pem) -> str:
            if n < 1 or n > len(entries):
                raise IntegrityError(f"{name} stamps segment {n}, which the chain does not have")
            head = bytes.fromhex(str(entries[n - 1]["chain"]))
            nonce = _request_nonce(source.read(request))
            who = _verify_token(source.read(name), digest=head, nonce=nonce, trust=trust,
                                fallback_roots=_load_roots(source, chain_pem))
            return f"chain head after segment {n}: {who}"

        report.run("segment chain timestamp", name, check)


def _request_nonce(tsq: bytes) -> int:
    from asn1crypto import tsp

    nonce = tsp.TimeStampReq.load(tsq)["nonce"].native
    if nonce is None:
        raise IntegrityError("the timestamp request has no nonce")
    return int(nonce)


def _check_custody(report: VerificationReport, source: EvidenceSource, capture_id: str, trust: Trust) -> None:
    try:
        _check_custody_files(report, source, capture_id, trust)
    except (EvidenceError, ValueError, KeyError, OSError) as exc:
        report.checks.append(Check("custody records readable", "custody/", False, str(exc)))


def _check_custody_files(report: VerificationReport, source: EvidenceSource, capture_id: str, trust: Trust) -> None:
    if not source.exists("custody/entries.jsonl"):
        report.checks.append(Check("custody entries", "custody/entries.jsonl", False, "missing"))
        return
    lines = [line for line in source.read("custody/entries.jsonl").splitlines() if line.strip()]
    entries = [CustodyEntry.model_validate_json(line) for line in lines]
    proofs = [InclusionProof.from_json(p) for p in json.loads(source.read("custody/proofs.json"))]
    checkpoint = Checkpoint.model_validate_json(source.read("custody/checkpoint.json"))

    def check_checkpoint() -> str:
        body = source.read("custody/checkpoint.body")
        if body != checkpoint_body(checkpoint):
            raise IntegrityError("checkpoint.body does not match checkpoint.json")
        signer = x509.load_pem_x509_certificate(source.read("custody/checkpoint-signer.pem"))
        if issuing_root(signer, trust.node_roots) is None:
            raise IntegrityError("the checkpoint signer is not issued by the trusted CA")
        verify_raw(body, source.read("custody/checkpoint.sig"), signer)
        return f"tree size {checkpoint.tree_size}, root {checkpoint.root_hash}"

    report.run("custody checkpoint signature", "custody/checkpoint.sig", check_checkpoint)
    stamp = checkpoint.timestamp
    if stamp is not None:
        def check_checkpoint_time() -> str:
            if not stamp.response_path or stamp.nonce is None:
                raise IntegrityError("the checkpoint's timestamp record names no token or nonce")
            token = f"custody/{PurePosixPath(stamp.response_path).name}"
            chain = [f"custody/{PurePosixPath(stamp.chain_path).name}"] if stamp.chain_path else []
            digest = hashlib.sha256(checkpoint_body(checkpoint)).digest()
            return _verify_token(source.read(token), digest=digest, nonce=stamp.nonce, trust=trust,
                                 claimed_local=stamp.local_tsa, fallback_roots=_load_roots(source, *chain))
        report.run("custody checkpoint timestamp", "custody/checkpoint", check_checkpoint_time)
    manifest_sha256 = hashlib.sha256(source.read(MANIFEST)).hexdigest()
    signature_sha256 = hashlib.sha256(source.read(SIGNATURE)).hexdigest() if source.exists(SIGNATURE) else None

    def check_ties() -> str:
        hashed = [e for e in entries if e.action == "hashed"]
        signed = [e for e in entries if e.action == "signed"]
        if not hashed or any(e.details.get("manifest_sha256") != manifest_sha256 for e in hashed):
            raise IntegrityError("the custody record's 'hashed' entry does not name this manifest's SHA-256")
        if not signed or any(e.details.get("signature_sha256") != signature_sha256 for e in signed):
            raise IntegrityError("the custody record's 'signed' entry does not name this signature's SHA-256")
        return f"entries {hashed[0].seq} and {signed[0].seq} name this manifest and signature"

    report.run("custody record names this manifest", "custody/entries.jsonl", check_ties)
    by_seq = {p.seq: p for p in proofs}
    for entry in entries:
        def check(entry: CustodyEntry = entry) -> str:
            if entry.subject != capture_id:
                raise IntegrityError(f"entry {entry.seq} is about {entry.subject}, not this capture")
            proof = by_seq.get(entry.seq)
            if proof is None:
                raise IntegrityError(f"entry {entry.seq} has no inclusion proof")
            if proof.tree_size != checkpoint.tree_size or proof.root != checkpoint.root_hash:
                raise IntegrityError(f"entry {entry.seq}: proof is not against the signed checkpoint")
            verify_inclusion_proof(entry, proof)
            return entry.action
        report.run("custody entry in signed tree", f"entry {entry.seq}", check)


def verify_source(report: VerificationReport, source: EvidenceSource, trust: Trust) -> Manifest | None:
    try:
        manifest = Manifest.model_validate_json(source.read(MANIFEST))
    except (OSError, KeyError, ValueError) as exc:
        report.checks.append(Check("manifest readable", MANIFEST, False, str(exc)))
        return None
    preservation = None
    if source.exists(PRESERVATION):
        preservation = PreservationRecord.model_validate(json.loads(source.read(PRESERVATION)))
    _check_manifest(report, source, manifest)
    for root in trust.node_roots:
        origin = "pinned by the verifier" if trust.node_pinned else (
            "taken from the evidence: compare this fingerprint with the one the capturing node published, "
            "or pin it with --ca")
        report.checks.append(Check("trust anchor", root.subject.rfc4514_string(), True,
                                   f"SHA-256 fingerprint {fingerprint(root)}, {origin}"))
    _check_signature(report, source, trust.node_roots)
    manifest_digest = hashlib.sha256(source.read(MANIFEST)).digest()
    if preservation is not None:
        if preservation.manifest.sha256 != manifest_digest.hex():
            report.checks.append(Check("preservation record", PRESERVATION, False,
                                       "its manifest digest differs from manifest.json"))
        granted = [_check_token(report, source, record, digest=manifest_digest, label=f"manifest timestamp {index}",
                                trust=trust) for index, record in enumerate(preservation.timestamps)]
        if not any(granted):
            report.checks.append(Check("manifest timestamp", MANIFEST, False,
                                       "no timestamp token verifies: the time of the capture is not proven"))
    else:
        report.checks.append(Check("preservation record", PRESERVATION, False, "missing"))
    _check_chain(report, source)
    _check_chain_tokens(report, source, trust)
    return manifest


def verify_package(package: Path, *, trusted_ca: Path | None = None,
                   tsa_ca: Path | None = None) -> VerificationReport:
    """Offline: no network, no database. Raises IntegrityError naming every failing check.

    `trusted_ca` pins the capturing node's CA; without it the package's own CA is used and its
    fingerprint is reported for comparison. `tsa_ca` pins the roots of external TSAs.
    """
    report = VerificationReport(target=str(package))
    pinned = x509.load_pem_x509_certificates(trusted_ca.read_bytes()) if trusted_ca else None
    tsa_roots = x509.load_pem_x509_certificates(tsa_ca.read_bytes()) if tsa_ca else []
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as exc:
        report.checks.append(Check("package readable", str(package), False, f"not a readable zip: {exc}"))
        report.raise_for_failures()
        return report
    with archive:
        roots = {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}
        if len(roots) != 1:
            report.checks.append(Check("package layout", str(package), False, "expected one top-level folder"))
            report.raise_for_failures()
        root = roots.pop()
        source = EvidenceSource(archive=archive, root=root)
        _check_sums(report, source)
        trust = Trust(node_roots=pinned if pinned is not None else _load_roots(source, "certs/local-ca.pem"),
                      node_pinned=pinned is not None, tsa_roots=tsa_roots)
        report.origin_pinned = trust.node_pinned
        manifest = verify_source(report, source, trust)
        if manifest is not None:
            _check_custody(report, source, manifest.capture_id, trust)
    report.raise_for_failures()
    return report
