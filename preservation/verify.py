"""`wz verify PACKAGE.zip`: check an exported package offline, trusting nothing in it that it could have forged.

Every check is run and reported; any failure makes `verify_package` raise `IntegrityError` naming each failing
check (the report rides on the exception for the CLI's --json). Nothing here opens a network connection, a
database or an object store, and no recording code is loaded.

What a package must satisfy, and what a forger who controls everything else in it could not fake:
  * its structure: one top-level folder; no duplicate, absolute, `..`, backslash, link or encrypted members; at
    most MAX_MEMBERS members (counted from the zip's end record before the central directory is parsed);
  * its index: SHA256SUMS.p7s is the node's signature over SHA256SUMS, which lists every other file (SM3SUMS
    included) with its digest; a file it does not list is not evidence and fails the verification;
  * the manifest: every artifact's size, SHA-256 and SM3; its CMS signature by a key the node's CA issued;
  * time: every RFC 3161 token under one rule: the node's CA (its local TSA), else roots the verifier pinned
    with --tsa-ca, else the roots shipped in the package, which prove integrity but not origin and are
    reported as not pinned; each token must be the one the custody record says was granted;
  * custody: every entry in the newest signed checkpoint's tree; the earlier checkpoints that covered them
    consistent with the newest, and with a checkpoint the verifier kept from before (--checkpoint).

Memory is bounded whatever the package holds: files read whole are capped (MAX_RECORD_BYTES, MAX_SMALL_BYTES),
line files are read a line at a time (MAX_LINE_BYTES), everything else is streamed through the digests.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError

from custody.checkpoints import CheckpointDocument, verify_document
from custody.proofs import (
    ConsistencyProof,
    InclusionProof,
    checkpoint_body,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from evidence import (
    Artifact,
    Checkpoint,
    CustodyAction,
    CustodyEntry,
    EvidenceError,
    IntegrityError,
    Manifest,
    PreservationRecord,
    SyncQuality,
    TimestampRecord,
    TimestampStatus,
)
from evidence.layout import CHAIN_FILE, MANIFEST, PRESERVATION, SIGNATURE
from hashing import digest_stream
from hashing.chain import GENESIS, chain_step
from hashing.rfc3161 import verify_response
from hashing.signing import issuing_root, refuse_timestamping_signer, verify_detached, verify_raw

INDEX = "SHA256SUMS"
INDEX_SIGNATURE = "SHA256SUMS.p7s"
SM3_INDEX = "SM3SUMS"
MAX_MEMBERS = 100_000
MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20
MAX_NAME_LENGTH = 1024
MAX_RECORD_BYTES = 16 << 20  # manifest.json, preservation.json
MAX_SMALL_BYTES = 1 << 20  # signatures, certificates, tokens, checkpoint files
MAX_LINE_BYTES = 1 << 20
MAX_MESSAGE = 400
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_READ_ERRORS = (EvidenceError, ValueError, KeyError, OSError, zipfile.BadZipFile, ValidationError, UnicodeError,
                binascii.Error, RecursionError, EOFError, zlib.error, TypeError, AttributeError, IndexError)
MAX_EXPANSION = 64  # deflated members together may grow at most this many times, beyond a first GiB
MAX_LINES = 4 * MAX_MEMBERS


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _some(items: list[str], shown: int = 5) -> str:
    listed = ", ".join(items[:shown])
    return listed + (f" and {len(items) - shown} more" if len(items) > shown else "")


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
    origin_pinned: bool = False
    unpinned_tsas: set[str] = field(default_factory=set)  # external TSAs trusted only by roots from the evidence
    third_party_time: bool = False  # a manifest token verified that chains to a root other than the node's
    sync: SyncQuality | None = None  # the capture's own sync verdict, as its (checked) manifest states it

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def tsa_pinned(self) -> bool:
        return not self.unpinned_tsas

    @property
    def pinned(self) -> bool:
        """Origin and time proven against roots the verifier brought, not only roots the package shipped."""
        return self.origin_pinned and self.tsa_pinned

    def add(self, name: str, subject: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, _short(subject, 300), ok, _short(detail)))

    def run(self, name: str, subject: str, check: Callable[[], str | None]) -> bool:
        """Run one check; what it raises is recorded as that check's failure. True when it passed."""
        try:
            detail = check() or ""
        except _READ_ERRORS as exc:
            self.add(name, subject, False, str(exc) or type(exc).__name__)
            return False
        self.add(name, subject, True, detail)
        return True

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "origin_pinned": self.origin_pinned,
                "tsa_pinned": self.tsa_pinned, "unpinned_tsas": sorted(self.unpinned_tsas),
                "third_party_time": self.third_party_time, "pinned": self.pinned,
                "checks": [asdict(c) for c in self.checks],
                "sync": self.sync.model_dump(mode="json") if self.sync is not None else None}

    def raise_for_failures(self) -> None:
        if not self.ok:
            failed = "; ".join(f"{c.name} [{c.subject}]: {c.detail}" for c in self.failures[:20]) or \
                "nothing was checked"
            more = f" (and {len(self.failures) - 20} more)" if len(self.failures) > 20 else ""
            error = IntegrityError(f"{len(self.failures)} check(s) failed: {failed}{more}")
            error.report = self  # type: ignore[attr-defined]
            raise error


# -- the package as a zip ---------------------------------------------------------------------------------------


def _central_directory(path: Path) -> tuple[int, int]:
    """(members, central directory bytes) from the zip's end record, before anything parses the directory."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        tail_length = min(size, 22 + 65535)
        handle.seek(size - tail_length)
        tail = handle.read(tail_length)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise zipfile.BadZipFile("no zip end record")
        _sig, _disk, _start, _here, total, cd_size, _offset, _comment = struct.unpack("<4s4H2LH", tail[at:at + 22])
        if total != 0xFFFF and cd_size != 0xFFFFFFFF:
            return int(total), int(cd_size)
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if locator < 0:
            raise zipfile.BadZipFile("zip64 end record missing")
        (eocd64_offset,) = struct.unpack("<Q", tail[locator + 8:locator + 16])
        handle.seek(eocd64_offset)
        record = handle.read(56)
        if record[:4] != b"PK\x06\x06" or len(record) < 56:
            raise zipfile.BadZipFile("zip64 end record unreadable")
        total64, cd_size64 = struct.unpack("<QQ", record[32:48])
        return int(total64), int(cd_size64)


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if len(name) > MAX_NAME_LENGTH:
        return f"a member name of {len(name)} characters"
    if "\x00" in name or "\\" in name:
        return f"member {name[:200]!r} holds a NUL or a backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"member {name[:200]!r} has an absolute path"
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"member {name[:200]!r} has an empty, '.' or '..' path segment"
    kind = (info.external_attr >> 16) & 0o170000
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"member {name[:200]!r} is a link or a special file"
    if info.flag_bits & 0x1:
        return f"member {name[:200]!r} is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"member {name[:200]!r} uses compression method {info.compress_type}"
    return None


def open_package(path: Path) -> tuple[zipfile.ZipFile, str]:
    """The zip and its one top-level folder; raises IntegrityError when the package is not one Wangzheng wrote."""
    members, directory = _central_directory(path)
    if members > MAX_MEMBERS:
        raise IntegrityError(f"{members} members, more than the {MAX_MEMBERS} a package may hold")
    if directory > MAX_CENTRAL_DIRECTORY_BYTES:
        raise IntegrityError(f"a central directory of {directory} bytes")
    archive = zipfile.ZipFile(path)
    try:
        seen: dict[str, str] = {}
        roots: set[str] = set()
        for info in archive.infolist():
            problem = _member_problem(info)
            if problem:
                raise IntegrityError(f"refused: {problem}")
            # Case-insensitive file systems would unpack "A" and "a" into one file.
            folded = info.filename.rstrip("/").casefold()
            if folded in seen:
                raise IntegrityError(f"refused: member {info.filename[:200]!r} appears twice (tools that unpack "
                                     f"the zip keep one of them, the verifier would check another)")
            seen[folded] = info.filename
            roots.add(info.filename.split("/", 1)[0])
        if len(roots) != 1 or all("/" not in name for name in seen.values()):
            raise IntegrityError("expected every file inside one top-level folder named by the capture id")
        deflated = [i for i in archive.infolist() if i.compress_type == zipfile.ZIP_DEFLATED]
        packed, unpacked = sum(i.compress_size for i in deflated), sum(i.file_size for i in deflated)
        if unpacked > MAX_EXPANSION * packed + (1 << 30):
            raise IntegrityError(f"refused: its compressed members would expand to {unpacked} bytes from {packed} "
                                 f"(more than {MAX_EXPANSION} times): a decompression bomb, not a package")
        _check_tiling(path, archive)
        return archive, roots.pop()
    except BaseException:
        archive.close()
        raise


def _check_tiling(path: Path, archive: zipfile.ZipFile) -> None:
    """The members, read in file order, must cover the file from its first byte to the central directory:
    bytes no directory entry points at (a second `manifest.json` that a streaming unzip would read) are refused."""
    infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
    directory_offset = archive.start_dir
    with path.open("rb") as handle:
        position = 0
        for info in infos:
            if info.header_offset != position:
                raise IntegrityError(f"refused: {info.header_offset - position} byte(s) at offset {position} belong "
                                     "to no member listed in the zip's directory")
            handle.seek(info.header_offset)
            header = handle.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise IntegrityError(f"refused: no local header where member {info.filename[:100]!r} begins")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            end = info.header_offset + 30 + name_length + extra_length + info.compress_size
            if info.flag_bits & 0x08:  # a data descriptor follows: 12 to 24 bytes, with or without its signature
                handle.seek(end)
                descriptor = handle.read(4)
                signed = 4 if descriptor == b"PK\x07\x08" else 0
                zip64 = info.file_size >= 0xFFFFFFFF or info.compress_size >= 0xFFFFFFFF
                end += signed + (20 if zip64 else 12)
            position = end
        if position != directory_offset:
            raise IntegrityError(f"refused: {directory_offset - position} byte(s) before the zip's directory belong "
                                 "to no member")


class EvidenceSource:
    """Files of a capture, from an unpacked directory or inside a zip; bounded reads, streamed digests."""

    def __init__(self, directory: Path | None = None, archive: zipfile.ZipFile | None = None, root: str = "") -> None:
        self.directory = directory
        self.archive = archive
        self.root = root
        self._digests: dict[str, tuple[int, str, str]] = {}

    def exists(self, relative: str) -> bool:
        if self.archive is not None:
            try:
                return not self.archive.getinfo(f"{self.root}/{relative}").is_dir()
            except KeyError:
                return False
        assert self.directory is not None
        return (self.directory / relative).is_file()

    def size(self, relative: str) -> int:
        if self.archive is not None:
            return int(self.archive.getinfo(f"{self.root}/{relative}").file_size)
        assert self.directory is not None
        return (self.directory / relative).stat().st_size

    def open(self, relative: str) -> IO[bytes]:
        if self.archive is not None:
            return self.archive.open(f"{self.root}/{relative}")
        assert self.directory is not None
        return (self.directory / relative).open("rb")

    def read(self, relative: str, limit: int = MAX_SMALL_BYTES) -> bytes:
        """The whole file, refused if larger than `limit` (whatever the zip header claims)."""
        if not self.exists(relative):
            raise IntegrityError(f"{relative} is missing")
        if self.size(relative) > limit:
            raise IntegrityError(f"{relative} is {self.size(relative)} bytes, more than the {limit} it may be")
        with self.open(relative) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise IntegrityError(f"{relative} holds more than {limit} bytes")
        return data

    def lines(self, relative: str, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
        """Non-empty lines, one at a time; a line longer than `limit` is refused."""
        if not self.exists(relative):
            raise IntegrityError(f"{relative} is missing")
        with self.open(relative) as handle:
            number = 0
            while line := handle.readline(limit + 1):
                number += 1
                if len(line) > limit:
                    raise IntegrityError(f"{relative}: line {number} is longer than {limit} bytes")
                if line.strip():
                    yield line.rstrip(b"\r\n")

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


# -- trust ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """The roots a verification trusts. Unpinned roots come from the evidence itself: they prove integrity,
    not origin, and the report says so, with the fingerprint to compare against the published one."""

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


@dataclass(frozen=True)
class TokenVerdict:
    said: str
    local: bool
    pinned: bool


def _verify_token(tsr: bytes, *, digest: bytes, nonce: int, trust: Trust, report: VerificationReport,
                  hash_algorithm: str = "sha256", claimed_local: bool | None = None,
                  evidence_roots: list[x509.Certificate] | None = None) -> TokenVerdict:
    """One rule for every token: whose it is comes from the root it actually chains to, never from a record."""
    attempts: list[tuple[str, list[x509.Certificate]]] = [("local", trust.node_roots)]
    if trust.tsa_roots:
        attempts.append(("pinned", trust.tsa_roots))
    elif evidence_roots:
        attempts.append(("evidence", evidence_roots))
    failures = []
    for kind, roots in attempts:
        try:
            info = verify_response(tsr, digest=digest, nonce=nonce, roots=roots, hash_algorithm=hash_algorithm)
        except EvidenceError as exc:
            failures.append(f"against the {'node' if kind == 'local' else kind} roots: {exc}")
            continue
        local = kind == "local"
        if claimed_local is not None and claimed_local != local:
            raise IntegrityError(f"the record calls this TSA {'local' if claimed_local else 'external'}, "
                                 f"but its token chains to the {'local' if local else 'external'} roots")
        name = info.tsa_name or info.tsa_certificate.subject.rfc4514_string()
        when = f"{info.gen_time.isoformat()} serial {info.serial_number}"
        if local:
            return TokenVerdict(f"local TSA (not a trusted third party) {name}: {when}", True, trust.node_pinned)
        if kind == "pinned":
            return TokenVerdict(f"TSA {name}, root pinned by the verifier: {when}", False, True)
        report.unpinned_tsas.add(name)
        root = info.chain[-1]
        return TokenVerdict(f"TSA {name}, root taken from the evidence (SHA-256 {fingerprint(root)}; NOT PINNED: "
                            f"pin the TSA's published root with --tsa-ca): {when}", False, False)
    raise IntegrityError("; ".join(failures))


def _request_nonce(tsq: bytes) -> int:
    from asn1crypto import tsp

    nonce = tsp.TimeStampReq.load(tsq)["nonce"].native
    if nonce is None:
        raise IntegrityError("the timestamp request has no nonce")
    return int(nonce)


# -- the signed index -------------------------------------------------------------------------------------------


def _read_sums(source: EvidenceSource, name: str) -> dict[str, str]:
    listed: dict[str, str] = {}
    for number, line in enumerate(source.lines(name, 2 * MAX_NAME_LENGTH), start=1):
        text = line.decode("utf-8")
        digest, separator, path = text.partition("  ")
        if not separator or not _HEX64.match(digest) or not path:
            raise IntegrityError(f"{name}: line {number} is not 'DIGEST  PATH'")
        if path in listed:
            raise IntegrityError(f"{name}: {path[:200]} is listed twice")
        listed[path] = digest
        if len(listed) > MAX_MEMBERS:
            raise IntegrityError(f"{name} lists more than {MAX_MEMBERS} files")
    return listed


def _check_index(report: VerificationReport, source: EvidenceSource, trust: Trust) -> None:
    """SHA256SUMS is signed by the node and lists every other file; SM3SUMS (listed in it) gives each one's SM3."""
    def signature() -> str:
        certificate = verify_detached(source.read(INDEX, MAX_RECORD_BYTES * 2), source.read(INDEX_SIGNATURE),
                                      trust.node_roots)
        return f"SHA256SUMS is signed by {certificate.subject.rfc4514_string()}: it covers every file it lists"

    report.run("package index signature", INDEX_SIGNATURE, signature)
    present = {n for n in source.names() if n not in (INDEX, INDEX_SIGNATURE)}
    for listing, position, label, cover in ((INDEX, 1, "SHA-256", present),
                                            (SM3_INDEX, 2, "SM3", present - {SM3_INDEX})):
        try:
            listed = _read_sums(source, listing)
        except _READ_ERRORS as exc:
            report.add(f"{label} list", listing, False, str(exc))
            continue
        unlisted = sorted(cover - set(listed))
        if unlisted:
            report.add("files covered by the signed index", listing, False,
                       f"not evidence: not listed, so not covered by any signature: {_some(unlisted)}")
        missing = sorted(set(listed) - present)
        if missing:
            report.add(f"{label} list", listing, False, f"lists files the package does not hold: {_some(missing)}")
        for path in sorted(set(listed) & present):
            def check(path: str = path, expected: str = listed[path], position: int = position, label: str = label,
                      listing: str = listing) -> str:
                if source.digests(path)[position] != expected:
                    raise IntegrityError(f"{path}: {label} differs from {listing}")
                return ""
            report.run(f"{label} of file", path, check)


# -- the manifest, its signature and its tokens -----------------------------------------------------------------


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


def _check_signature(report: VerificationReport, source: EvidenceSource, trusted: list[x509.Certificate]) -> None:
    def check() -> str:
        certificate = verify_detached(source.read(MANIFEST, MAX_RECORD_BYTES), source.read(SIGNATURE), trusted)
        return certificate.subject.rfc4514_string()

    report.run("manifest signature (CMS)", SIGNATURE, check)


@dataclass
class _Ties:
    """What the custody record says was granted: token file -> what the entry recorded about it."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self, record: TimestampRecord, token: bytes) -> str:
        entry = self.tokens.get(record.response_path or "")
        if entry is None:
            raise IntegrityError(f"no custody entry records the grant of {record.response_path}: it is not the "
                                 "token the capturing node received")
        if "token_sha256" in entry:
            if entry["token_sha256"] != hashlib.sha256(token).hexdigest():
                raise IntegrityError(f"{record.response_path} is not the token the custody entry recorded (SHA-256 "
                                     "differs)")
        elif entry.get("serial") != record.serial_number:
            raise IntegrityError(f"{record.response_path}: its serial differs from the custody entry's")
        return f"custody entry {entry['seq']} recorded it"


def _check_tokens(report: VerificationReport, source: EvidenceSource, record: PreservationRecord, *,
                  digest: bytes, trust: Trust, ties: _Ties | None) -> None:
    granted = 0
    for index, stamp in enumerate(record.timestamps):
        label = f"manifest timestamp {index}"
        subject = stamp.response_path or stamp.tsa_url
        if stamp.status == TimestampStatus.PENDING:
            report.add(label, subject, False, f"token still pending from {stamp.tsa_url}: {stamp.error}")
            continue

        def check(stamp: TimestampRecord = stamp) -> str:
            if not stamp.response_path or stamp.nonce is None:
                raise IntegrityError("the record names no token or no nonce")
            token = source.read(stamp.response_path)
            verdict = _verify_token(token, digest=digest, nonce=stamp.nonce, trust=trust, report=report,
                                    hash_algorithm=stamp.hash_algorithm, claimed_local=stamp.local_tsa,
                                    evidence_roots=_load_roots(source, *(p for p in [stamp.chain_path] if p)))
            tied = ties.check(stamp, token) if ties is not None else ""
            if not verdict.local:
                report.third_party_time = True
            return verdict.said + (f"; {tied}" if tied else "")

        if report.run(label, subject, check):
            granted += 1
    if not granted:
        report.add("manifest timestamp", MANIFEST, False,
                   "no timestamp token verifies: the time of the capture is not proven")


def _check_chain(report: VerificationReport, source: EvidenceSource) -> list[str]:
    """Recompute the segment chain a line at a time; returns the chain heads (for the tokens taken over them)."""
    heads: list[str] = []
    if not source.exists(CHAIN_FILE):
        return heads

    def check() -> str:
        head = GENESIS
        problems: list[str] = []
        for line in source.lines(CHAIN_FILE):
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise IntegrityError(f"line {len(heads) + 1} is not a JSON object")
            head = chain_step(head, str(entry["sha256"]))
            heads.append(head)
            if head != entry["chain"]:
                problems.append(f"entry {entry['n']} ({str(entry['file'])[:100]}): chain value does not recompute")
            path = str(entry["file"])
            if not source.exists(path):
                problems.append(f"entry {entry['n']}: {path[:100]} is missing")
            elif source.digests(path)[1] != entry["sha256"]:
                problems.append(f"{path[:100]}: SHA-256 differs from the segment chain")
            if len(heads) > MAX_MEMBERS:
                raise IntegrityError(f"more than {MAX_MEMBERS} segments")
        if problems:
            raise IntegrityError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)"
                                                               if len(problems) > 5 else ""))
        return f"{len(heads)} segments"

    report.run("segment chain", CHAIN_FILE, check)
    return heads


def _check_chain_tokens(report: VerificationReport, source: EvidenceSource, trust: Trust, *, heads: list[str],
                        manifest: Manifest, record: PreservationRecord | None) -> None:
    """Tokens over the chain head after segment n (timestamps/chain-<n>.<i>.tsr). One taken while recording is a
    manifest artifact; one granted later (the TSA was down) must be in the preservation record."""
    in_manifest = {a.path for a in manifest.artifacts}
    later = {s.response_path for s in record.chain_timestamps} if record is not None else set()
    for name in sorted(n for n in source.names() if n.startswith("timestamps/chain-") and n.endswith(".tsr")):
        def check(name: str = name) -> str:
            if name not in in_manifest and name not in later:
                raise IntegrityError(f"{name} is neither in the signed manifest nor in the preservation record")
            n = int(PurePosixPath(name).name.split(".")[0].removeprefix("chain-"))
            if n < 1 or n > len(heads):
                raise IntegrityError(f"{name} stamps segment {n}, which the chain does not have")
            request = name.removesuffix(".tsr") + ".tsq"
            verdict = _verify_token(source.read(name), digest=bytes.fromhex(heads[n - 1]),
                                    nonce=_request_nonce(source.read(request)), trust=trust, report=report,
                                    evidence_roots=_load_roots(source, name.removesuffix(".tsr") + ".chain.pem"))
            return f"chain head after segment {n}: {verdict.said}"

        report.run("segment chain timestamp", name, check)


def verify_source(report: VerificationReport, source: EvidenceSource, trust: Trust,
                  ties: _Ties | None = None) -> tuple[Manifest | None, PreservationRecord | None]:
    """The capture's own files: manifest, artifacts, signature, tokens, segment chain."""
    try:
        manifest_bytes = source.read(MANIFEST, MAX_RECORD_BYTES)
        manifest = Manifest.model_validate_json(manifest_bytes)
    except _READ_ERRORS as exc:
        report.add("manifest readable", MANIFEST, False, str(exc))
        return None, None
    report.sync = manifest.sync
    record = None
    try:
        if source.exists(PRESERVATION):
            record = PreservationRecord.model_validate(json.loads(source.read(PRESERVATION, MAX_RECORD_BYTES)))
        else:
            report.add("preservation record", PRESERVATION, False, "missing")
    except _READ_ERRORS as exc:
        report.add("preservation record", PRESERVATION, False, f"unreadable: {exc}")
    _check_manifest(report, source, manifest)
    for root in trust.node_roots:
        origin = "pinned by the verifier" if trust.node_pinned else (
            "taken from the evidence: compare this fingerprint with the one the capturing node published, "
            "or pin it with --ca")
        report.add("trust anchor", root.subject.rfc4514_string(), True,
                   f"SHA-256 fingerprint {fingerprint(root)}, {origin}")
    _check_signature(report, source, trust.node_roots)
    digest = hashlib.sha256(manifest_bytes).digest()
    if record is not None:
        if record.manifest.sha256 != digest.hex():
            report.add("preservation record", PRESERVATION, False, "its manifest digest differs from manifest.json")
        _check_tokens(report, source, record, digest=digest, trust=trust, ties=ties)
    heads = _check_chain(report, source)
    _check_chain_tokens(report, source, trust, heads=heads, manifest=manifest, record=record)
    return manifest, record


# -- custody ----------------------------------------------------------------------------------------------------


def _custody_ties(source: EvidenceSource) -> _Ties:
    """The 'timestamped' entries of the package's custody record (checked for inclusion separately)."""
    ties = _Ties()
    for count, line in enumerate(source.lines("custody/entries.jsonl"), start=1):
        if count > MAX_LINES:
            raise IntegrityError(f"custody/entries.jsonl holds more than {MAX_LINES} entries")
        entry = CustodyEntry.model_validate_json(line)
        token = entry.details.get("token")
        if entry.action == CustodyAction.TIMESTAMPED and isinstance(token, str) and len(token) <= MAX_NAME_LENGTH:
            kept: dict[str, Any] = {k: entry.details[k] for k in ("token_sha256", "serial") if k in entry.details}
            ties.tokens[token] = {**kept, "seq": entry.seq}
            if len(ties.tokens) > MAX_MEMBERS:
                raise IntegrityError("more timestamp entries than a package may hold")
    return ties


def _proof_lines(source: EvidenceSource) -> Iterator[InclusionProof]:
    if source.exists("custody/proofs.jsonl"):
        for line in source.lines("custody/proofs.jsonl"):
            yield InclusionProof.from_json(json.loads(line))
    else:  # packages written before proofs went one per line
        for item in json.loads(source.read("custody/proofs.json", MAX_RECORD_BYTES)):
            yield InclusionProof.from_json(item)


def _check_checkpoint(report: VerificationReport, source: EvidenceSource, trust: Trust) -> Checkpoint | None:
    try:
        checkpoint = Checkpoint.model_validate_json(source.read("custody/checkpoint.json"))
    except _READ_ERRORS as exc:
        report.add("custody checkpoint", "custody/checkpoint.json", False, f"unreadable: {exc}")
        return None

    def signature() -> str:
        body = source.read("custody/checkpoint.body")
        if body != checkpoint_body(checkpoint):
            raise IntegrityError("checkpoint.body does not match checkpoint.json")
        signer = x509.load_pem_x509_certificate(source.read("custody/checkpoint-signer.pem"))
        if issuing_root(signer, trust.node_roots) is None:
            raise IntegrityError("the checkpoint signer is not issued by the trusted CA")
        refuse_timestamping_signer(signer)
        verify_raw(body, source.read("custody/checkpoint.sig"), signer)
        return f"tree size {checkpoint.tree_size}, root {checkpoint.root_hash}"

    report.run("custody checkpoint signature", "custody/checkpoint.sig", signature)
    stamp = checkpoint.timestamp
    if stamp is not None:
        def timestamp() -> str:
            if not stamp.response_path or stamp.nonce is None:
                raise IntegrityError("the checkpoint's timestamp record names no token or nonce")
            token = f"custody/{PurePosixPath(stamp.response_path).name}"
            chain = [f"custody/{PurePosixPath(stamp.chain_path).name}"] if stamp.chain_path else []
            digest = hashlib.sha256(checkpoint_body(checkpoint)).digest()
            return _verify_token(source.read(token), digest=digest, nonce=stamp.nonce, trust=trust, report=report,
                                 claimed_local=stamp.local_tsa, evidence_roots=_load_roots(source, *chain)).said

        report.run("custody checkpoint timestamp", "custody/checkpoint", timestamp)
    return checkpoint


def _check_entries(report: VerificationReport, source: EvidenceSource, capture_id: str, *,
                   checkpoint: Checkpoint, manifest_sha256: str, signature_sha256: str | None) -> None:
    """Each entry (a line at a time, beside its proof) is about this capture and in the checkpoint's tree."""
    hashed = signed = 0
    proofs = _proof_lines(source)
    for count, line in enumerate(source.lines("custody/entries.jsonl"), start=1):
        if count > MAX_LINES:
            raise IntegrityError(f"more than {MAX_LINES} custody entries")
        entry = CustodyEntry.model_validate_json(line)
        if entry.action == CustodyAction.HASHED and entry.details.get("manifest_sha256") == manifest_sha256:
            hashed = entry.seq
        if entry.action == CustodyAction.SIGNED and entry.details.get("signature_sha256") == signature_sha256:
            signed = entry.seq
        proof = next(proofs, None)

        def check(entry: CustodyEntry = entry, proof: InclusionProof | None = proof) -> str:
            if entry.subject != capture_id:
                raise IntegrityError(f"entry {entry.seq} is about {entry.subject[:100]}, not this capture")
            if proof is None or proof.seq != entry.seq:
                raise IntegrityError(f"entry {entry.seq} has no inclusion proof beside it")
            verify_inclusion_proof(entry, proof, checkpoint)
            return entry.action.value

        report.run("custody entry in signed tree", f"entry {entry.seq}", check)
    if not hashed:
        report.add("custody record names this manifest", "custody/entries.jsonl", False,
                   "no 'hashed' entry names this manifest's SHA-256")
    if not signed:
        report.add("custody record names this manifest", "custody/entries.jsonl", False,
                   "no 'signed' entry names this signature's SHA-256")
    if hashed and signed:
        report.add("custody record names this manifest", "custody/entries.jsonl", True,
                   f"entries {hashed} and {signed} name this manifest and signature")


def _check_history(report: VerificationReport, source: EvidenceSource, trust: Trust, newest: Checkpoint,
                   known: Checkpoint | None) -> None:
    """Earlier checkpoints that covered the capture's entries, each consistent with the newest; and the one the
    verifier kept from before, if given."""
    sizes: dict[int, str] = {newest.tree_size: newest.root_hash}
    if source.exists("custody/checkpoints.jsonl"):
        signer_pem = source.read("custody/checkpoint-signer.pem").decode("ascii")
        for count, line in enumerate(source.lines("custody/checkpoints.jsonl"), start=1):
            if count > MAX_MEMBERS:
                raise IntegrityError(f"custody/checkpoints.jsonl holds more than {MAX_MEMBERS} checkpoints")
            item = json.loads(line)
            if not isinstance(item, dict):
                raise IntegrityError(f"custody/checkpoints.jsonl: line {count} is not a JSON object")
            document = CheckpointDocument.from_bytes(json.dumps(item["document"]).encode(), "custody/checkpoints.jsonl")
            older = document.checkpoint

            def check(document: CheckpointDocument = document, item: dict[str, Any] = item) -> str:
                if document.signer_certificate != signer_pem:
                    raise IntegrityError("signed by another key than the newest checkpoint")

                shipped = x509.load_pem_x509_certificates(document.timestamp_chain.encode("ascii")) \
                    if document.timestamp_chain else []

                def token(tsr: bytes, digest: bytes, nonce: int) -> str:
                    return _verify_token(tsr, digest=digest, nonce=nonce, trust=trust, report=report,
                                         evidence_roots=shipped).said

                said = verify_document(document, node_roots=trust.node_roots, check_token=token)
                proof = ConsistencyProof.from_json(item["consistency"])
                verify_consistency_proof(proof, document.checkpoint, newest)
                return f"size {document.tree_size} is a prefix of size {newest.tree_size}; {said}"

            if report.run("earlier checkpoint consistent", f"size {older.tree_size}", check):
                sizes[older.tree_size] = older.root_hash
    if known is not None:
        def compare() -> str:
            if known.tree_size not in sizes:
                raise IntegrityError(f"the package holds no checkpoint of size {known.tree_size} to compare with; ask "
                                     f"the custody service for a consistency proof from {known.tree_size} to "
                                     f"{newest.tree_size}")
            if sizes[known.tree_size] != known.root_hash:
                raise IntegrityError(f"your checkpoint of {known.tree_size} entries has root {known.root_hash[:16]}…,"
                                     f" the package's {sizes[known.tree_size][:16]}…: the history was rewritten")
            return f"your checkpoint of {known.tree_size} entries is part of the history this package proves"

        report.run("your checkpoint", f"size {known.tree_size}", compare)


def _check_custody(report: VerificationReport, source: EvidenceSource, manifest: Manifest, trust: Trust,
                   known: Checkpoint | None) -> None:
    try:
        checkpoint = _check_checkpoint(report, source, trust)
        if checkpoint is None:
            return
        manifest_sha256 = hashlib.sha256(source.read(MANIFEST, MAX_RECORD_BYTES)).hexdigest()
        signature_sha256 = hashlib.sha256(source.read(SIGNATURE)).hexdigest() if source.exists(SIGNATURE) else None
        _check_entries(report, source, manifest.capture_id, checkpoint=checkpoint, manifest_sha256=manifest_sha256,
                       signature_sha256=signature_sha256)
        _check_history(report, source, trust, checkpoint, known)
    except _READ_ERRORS as exc:
        report.add("custody records readable", "custody/", False, str(exc))


# -- the whole package ------------------------------------------------------------------------------------------


def _pem_file(report: VerificationReport, path: Path | None, option: str) -> list[x509.Certificate] | None:
    if path is None:
        return None
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes()[:MAX_RECORD_BYTES])
    except (OSError, ValueError) as exc:
        report.add(f"{option} roots readable", str(path), False,
                   f"{option} {path} is not a readable PEM certificate bundle: {exc}")
        return []
    return certificates


def _known_checkpoint(report: VerificationReport, path: Path | None) -> Checkpoint | None:
    if path is None:
        return None
    try:
        return Checkpoint.model_validate_json(path.read_bytes()[:MAX_SMALL_BYTES])
    except (OSError, ValueError) as exc:
        report.add("your checkpoint readable", str(path), False, f"not a checkpoint (custody/checkpoint.json "
                                                                 f"of an earlier package): {exc}")
        return None


def verify_package(package: Path, *, trusted_ca: Path | None = None, tsa_ca: Path | None = None,
                   known_checkpoint: Path | None = None) -> VerificationReport:
    """Offline: no network, no database. Raises IntegrityError naming every failing check.

    `trusted_ca` pins the capturing node's CA; without it the package's own CA is used and its fingerprint is
    reported for comparison. `tsa_ca` pins the roots of external TSAs. `known_checkpoint` is a checkpoint the
    verifier kept (from an earlier package, or the service's public one) that the package's history must contain.
    """
    report = VerificationReport(target=str(package))
    pinned = _pem_file(report, trusted_ca, "--ca")
    tsa_roots = _pem_file(report, tsa_ca, "--tsa-ca") or []
    known = _known_checkpoint(report, known_checkpoint)
    try:
        archive, root = open_package(package)
    except (zipfile.BadZipFile, OSError, IntegrityError, ValueError, struct.error) as exc:
        report.add("package readable", str(package), False, f"not a package Wangzheng can check: {exc}")
        report.raise_for_failures()
        return report
    with archive:
        source = EvidenceSource(archive=archive, root=root)
        try:
            node_roots = pinned if pinned is not None else _load_roots(source, "certs/local-ca.pem")
        except _READ_ERRORS as exc:
            report.add("trust anchor", "certs/local-ca.pem", False, f"unreadable: {exc}")
            node_roots = []
        trust = Trust(node_roots=node_roots, node_pinned=pinned is not None, tsa_roots=tsa_roots)
        report.origin_pinned = trust.node_pinned
        _check_index(report, source, trust)
        ties = None
        try:
            ties = _custody_ties(source)
        except _READ_ERRORS as exc:
            report.add("custody records readable", "custody/entries.jsonl", False, str(exc))
        manifest, _record = verify_source(report, source, trust, ties or _Ties())
        if manifest is not None:
            _check_custody(report, source, manifest, trust, known)
    report.raise_for_failures()
    return report
