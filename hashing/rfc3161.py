"""RFC 3161 / RFC 5816 time-stamping: requests, HTTP transport, verification, and the Timestamper stage.

Requests are built here with asn1crypto because rfc3161-client's `TimestampRequestBuilder` hashes the
data itself (SHA-256/SHA-512 only); we stamp digests we already hold, SM3 included.

`verify_response` runs our own checks first, each naming what failed, then rfc3161-client's
`Verifier` as a second, independent implementation. rfc3161-client (1.0.9) checks: status GRANTED;
the PKCS#7 signature, messageDigest and the chain to the given roots at genTime (OpenSSL PKCS7_verify
with the timestampsign purpose, which also wants the EKU to be timeStamping only and critical); the
nonce; the policy if one is given; that the EKU is present, critical and holds timeStamping; and the
imprint bytes. It does not check: the imprint's hash algorithm (an SM3 token passes as SHA-256 when
the bytes match), the ESSCertID/ESSCertIDv2 binding of the signer certificate, that the `tsa` name
is the certificate's, the content-type signed attribute, or the unsigned CMS framing (versions,
digestAlgorithms). Those are done here, and every check of theirs is done here too, so that the
error names the failed check instead of an OpenSSL error stack.

Every stored token verifies with OpenSSL as well:

    openssl ts -verify -data FILE -in NAME.N.tsr -CAfile ROOT.pem
    openssl ts -verify -queryfile NAME.N.tsq -in NAME.N.tsr -CAfile ROOT.pem   (also checks the nonce)

(`-untrusted NAME.N.chain.pem` only when a TSA's token lacks its intermediate certificates.)
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from rfc3161_client import VerificationError, VerifierBuilder, decode_timestamp_response

from evidence import (
    ConfigurationError,
    IntegrityError,
    TimestampInvalid,
    TimestampRecord,
    TimestampStatus,
    TimestampUnavailable,
    UsageError,
)
from hashing.signing import (
    MALFORMED,
    SignedAttributes,
    absent,
    check_signature_bits,
    issuing_root,
    signer_view,
    valid_at,
    verify_signer,
)

HASH_OIDS: dict[str, str] = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "sm3": "1.2.156.10197.1.401",  # GB/T 32905, OID from GM/T 0006
}
HASH_SIZES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64, "sm3": 32}
ID_CT_TSTINFO = "1.2.840.113549.1.9.16.1.4"
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
# A few old TSAs still answer with the type of the RFC 3161 drafts.
_REPLY_TYPES = (REPLY_TYPE, "application/timestamp-response")
MAX_REPLY_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_STATUS_NUMBERS = {name: number for number, name in tsp.PKIStatus._map.items()}


class _TimeStampResp(core.Sequence):  # type: ignore[misc]
    """RFC 3161 §2.4.2 TimeStampResp; asn1crypto's own marks timeStampToken as required, so it cannot
    parse a rejection, which has none."""

    _fields = [  # noqa: RUF012 - asn1crypto's schema convention
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


@dataclass(frozen=True)
class TimestampInfo:
    """What a verified token says, and the certificate path it was verified with."""

    gen_time: datetime
    serial_number: int
    policy: str
    tsa_name: str | None
    hash_algorithm: str
    message_imprint: str
    nonce: int
    accuracy: timedelta | None
    ordering: bool
    chain: tuple[x509.Certificate, ...]  # TSA certificate, intermediates, then the trusted root

    @property
    def tsa_certificate(self) -> x509.Certificate:
        return self.chain[0]


# -- request and transport --


def _check_algorithm(digest: bytes, hash_algorithm: str) -> str:
    if hash_algorithm not in HASH_OIDS:
        raise UsageError(f"unsupported time-stamp hash algorithm {hash_algorithm!r}; use one of {', '.join(HASH_OIDS)}")
    if len(digest) != HASH_SIZES[hash_algorithm]:
        raise UsageError(f"a {hash_algorithm} digest has {HASH_SIZES[hash_algorithm]} bytes, not {len(digest)}")
    return HASH_OIDS[hash_algorithm]


def build_request(digest: bytes, hash_algorithm: str = "sha256", *, policy: str | None = None) -> tuple[bytes, int]:
    """A DER TimeStampReq for `digest` with a random 64-bit nonce and certReq=true: (tsq, nonce)."""
    oid = _check_algorithm(digest, hash_algorithm)
    nonce = secrets.randbits(64)
    request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {"hash_algorithm": {"algorithm": oid}, "hashed_message": digest},
            "req_policy": policy,
            "nonce": nonce,
            "cert_req": True,  # RFC 3161 §2.4.1: the TSA then includes its certificate in the token
        }
    )
    return request.dump(), nonce


@dataclass(frozen=True)
class ParsedRequest:
    hash_algorithm: str
    digest: bytes
    nonce: int
    policy: str | None


def parse_request(tsq: bytes) -> ParsedRequest:
    """Read back a kept .tsq (to retry it, or to know what a token must answer)."""
    try:
        request = tsp.TimeStampReq.load(tsq, strict=True)
        imprint = request["message_imprint"]
        oid = imprint["hash_algorithm"]["algorithm"].dotted
        digest = bytes(imprint["hashed_message"].native)
        nonce = request["nonce"].native
        policy = request["req_policy"].dotted if request["req_policy"].native is not None else None
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampInvalid(f"not an RFC 3161 TimeStampReq: {exc}") from exc
    names = {value: key for key, value in HASH_OIDS.items()}
    if oid not in names or nonce is None:
        raise TimestampInvalid(f"the request uses hash {oid} or has no nonce; Wangzheng never builds such requests")
    return ParsedRequest(names[oid], digest, int(nonce), policy)


def post_request(url: str, tsq: bytes, timeout: float) -> bytes:
    """POST a TimeStampReq and return the body of the reply; any transport failure is TimestampUnavailable."""
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"TSA URL {url!r} must start with http:// or https://")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=tsq, method="POST", headers={"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE}
    )
    # The local TSA listens on loopback: an http_proxy from the environment must not carry it away.
    loopback = urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "::1", "localhost")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if loopback else urllib.request.build_opener()
    try:
        with opener.open(request, timeout=timeout) as response:
            content_type = response.headers.get_content_type()
            body: bytes = response.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise TimestampUnavailable(f"TSA {url} answered HTTP {exc.code} {exc.reason}; the request is kept") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise TimestampUnavailable(f"TSA {url} unreachable: {reason}; the request is kept to retry") from exc
    if content_type not in _REPLY_TYPES:
        raise TimestampUnavailable(f"TSA {url} answered {content_type}, not {REPLY_TYPE}; the request is kept")
    if len(body) > MAX_REPLY_BYTES:
        raise TimestampUnavailable(f"TSA {url} answered more than {MAX_REPLY_BYTES} bytes; the request is kept")
    return body


# -- verification --


def _status_text(status: tsp.PKIStatusInfo) -> str:
    parts: list[str] = []
    if status["status_string"].native:
        parts.append("; ".join(str(text) for text in status["status_string"].native))
    if status["fail_info"].native:
        parts.append("failure: " + ", ".join(sorted(status["fail_info"].native)))
    return ", ".join(parts) or "no reason given"


def _load_response(tsr: bytes) -> tuple[cms.SignedData, bytes, tsp.TSTInfo]:
    """Status first (a refusal carries no token), then the token's SignedData and its TSTInfo."""
    response = _TimeStampResp.load(tsr, strict=True)
    status = response["status"]
    name = status["status"].native
    if name != "granted":
        number = _STATUS_NUMBERS.get(name, name)
        raise TimestampInvalid(f"TSA refused: status {number} ({name}), {_status_text(status)}")
    token = response["time_stamp_token"]
    if absent(token):
        raise TimestampInvalid("the TSA granted the request but sent no timeStampToken")
    if token["content_type"].native != "signed_data":
        raise TimestampInvalid("the timeStampToken is not a CMS SignedData")
    signed_data: cms.SignedData = token["content"]
    encap = signed_data["encap_content_info"]
    if encap["content_type"].dotted != ID_CT_TSTINFO or absent(encap["content"]):
        raise TimestampInvalid("the timeStampToken does not encapsulate a TSTInfo")
    tst_der = bytes(encap["content"].contents)  # the signed octets, exactly as received
    tst_info = tsp.TSTInfo.load(tst_der, strict=True)
    tst_info.native  # noqa: B018 - parse every field now; this copy is never re-encoded
    return signed_data, tst_der, tst_info


def _check_eku(certificate: x509.Certificate) -> None:
    """RFC 3161 §2.3: exactly one EKU, id-kp-timeStamping, in a critical extension."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound as exc:
        raise TimestampInvalid("the TSA certificate lacks the timeStamping extended key usage (RFC 3161 §2.3)") from exc
    if list(extension.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise TimestampInvalid(
            "the TSA certificate's extended key usage must be timeStamping only (RFC 3161 §2.3), found "
            + ", ".join(usage.dotted_string for usage in extension.value)
        )
    if not extension.critical:
        raise TimestampInvalid("the TSA certificate's timeStamping extended key usage is not critical (RFC 3161 §2.3)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise TimestampInvalid("the TSA certificate's key usage does not allow signatures")


def _check_ess_cert_id(signed: SignedAttributes, certificate: x509.Certificate) -> None:
    """RFC 2634 / RFC 5035 (RFC 5816 for TSAs): the signed SigningCertificate[V2] names the TSA certificate."""
    attrs = [
        attr for attr in signed.attributes if attr["type"].native in ("signing_certificate", "signing_certificate_v2")
    ]
    if len(attrs) != 1 or len(attrs[0]["values"]) != 1:
        raise TimestampInvalid("the token must carry exactly one signed ESSCertID/ESSCertIDv2 attribute")
    cert_ids = attrs[0]["values"][0]["certs"]
    if len(cert_ids) == 0:
        raise TimestampInvalid("the token's ESSCertID attribute is empty")
    cert_id = cert_ids[0]  # the first names the signer; any others name its chain
    if attrs[0]["type"].native == "signing_certificate":
        algorithm = "sha1"  # ESSCertID (v1) is defined with SHA-1 only
    else:
        algorithm = str(cert_id["hash_algorithm"]["algorithm"].native)
        if algorithm not in ("sha256", "sha384", "sha512"):
            raise TimestampInvalid(f"unsupported ESSCertIDv2 hash algorithm {algorithm}")
    der = certificate.public_bytes(serialization.Encoding.DER)
    if not hmac.compare_digest(hashlib.new(algorithm, der).digest(), bytes(cert_id["cert_hash"].native)):
        raise TimestampInvalid("ESSCertID does not bind the signer certificate (certificate hash differs)")
    issuer_serial = cert_id["issuer_serial"]
    if issuer_serial.native is not None:
        issuer = asn1_x509.Certificate.load(der).issuer
        issuers = [name.chosen for name in issuer_serial["issuer"] if name.name == "directory_name"]
        if issuer_serial["serial_number"].native != certificate.serial_number or issuer not in issuers:
            raise TimestampInvalid("ESSCertID does not bind the signer certificate (issuer and serial differ)")


def _tsa_name(tst_info: tsp.TSTInfo, certificate: x509.Certificate) -> str | None:
    """RFC 3161 §2.4.2: if present, `tsa` must correspond to a subject name of the TSA certificate."""
    general_name = tst_info["tsa"]
    if general_name.native is None:
        return None
    if general_name.name == "directory_name":
        subject = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER)).subject
        if general_name.chosen != subject:
            raise TimestampInvalid(
                "the TSA name in the token does not match the TSA certificate subject "
                f"{certificate.subject.rfc4514_string()}"
            )
        return certificate.subject.rfc4514_string()
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        alternative = None
    value = str(general_name.native)
    if alternative is None or value not in [str(name.value) for name in alternative]:
        raise TimestampInvalid(f"the TSA name {value!r} in the token is not a name of the TSA certificate")
    return value


def _certificates(signed_data: cms.SignedData) -> list[x509.Certificate]:
    certificates = signed_data["certificates"]
    if absent(certificates):
        return []
    for choice in certificates:
        check_signature_bits(choice.chosen, TimestampInvalid)
    try:
        return [x509.load_der_x509_certificate(choice.chosen.dump()) for choice in certificates]
    except (ValueError, x509.InvalidVersion) as exc:
        raise TimestampInvalid(f"a certificate in the token cannot be parsed: {exc}") from exc


def _chain(
    leaf: x509.Certificate, pool: list[x509.Certificate], roots: list[x509.Certificate], moment: datetime
) -> tuple[x509.Certificate, ...]:
    """The path leaf -> intermediates from the token -> a trusted root, each valid at `moment`."""
    path = [leaf]
    current = leaf
    for _ in range(8):  # deeper TSA hierarchies do not exist in practice; a loop must end
        root = issuing_root(current, roots)
        if root is not None:
            path.append(root)
            break
        parent = issuing_root(current, [cert for cert in pool if cert not in path and _is_ca(cert)])
        if parent is None:
            subject = current.subject.rfc4514_string()
            raise TimestampInvalid(f"TSA certificate not issued by a trusted root: no trusted issuer for {subject}")
        path.append(parent)
        current = parent
    else:
        raise TimestampInvalid("TSA certificate not issued by a trusted root: the chain is too long")
    for certificate in path:
        if not valid_at(certificate, moment):
            raise TimestampInvalid(
                f"certificate {certificate.subject.rfc4514_string()} was not valid at genTime {moment.isoformat()}"
            )
    return tuple(path)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _is_panic(exc: BaseException) -> bool:
    # Defensive: a Rust panic inside rfc3161-client would surface as pyo3's PanicException, which
    # derives from BaseException; our own parsing runs first, so none is expected.
    return type(exc).__name__ == "PanicException"


def _rfc3161_client_verify(tsr: bytes, digest: bytes, nonce: int, roots: list[x509.Certificate]) -> None:
    try:
        response = decode_timestamp_response(tsr)
        # Only the roots are passed as trusted: a TSA certificate given here would become a trust anchor.
        verifier = VerifierBuilder(roots=list(roots), nonce=nonce).build()
        verifier.verify(response, digest)
    except (VerificationError, ValueError, TypeError) as exc:
        raise TimestampInvalid(f"rfc3161-client (OpenSSL PKCS#7) verification failed: {exc}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise TimestampInvalid(f"rfc3161-client could not parse the token: {exc}") from None


def _check_tst_info(
    tst_info: tsp.TSTInfo, *, oid: str, hash_algorithm: str, digest: bytes, nonce: int, policy: str | None
) -> None:
    if tst_info["version"].native != "v1":
        raise TimestampInvalid(f"unsupported TSTInfo version {tst_info['version'].native}")
    imprint = tst_info["message_imprint"]
    imprint_algorithm = imprint["hash_algorithm"]
    if imprint_algorithm["algorithm"].dotted != oid or imprint_algorithm["parameters"].native:
        raise TimestampInvalid(
            f"message imprint algorithm {imprint_algorithm['algorithm'].native} is not the requested {hash_algorithm}"
        )
    if not hmac.compare_digest(bytes(imprint["hashed_message"].native), digest):
        raise TimestampInvalid("message imprint does not match the digest")
    token_nonce = tst_info["nonce"].native
    if token_nonce is None:
        raise TimestampInvalid("the token has no nonce although the request had one")
    if token_nonce != nonce:
        raise TimestampInvalid(f"nonce does not match the request (sent {nonce}, token has {token_nonce})")
    token_policy = tst_info["policy"].dotted
    if policy is not None and token_policy != policy:
        raise TimestampInvalid(f"policy {token_policy} is not the requested policy {policy}")


def verify_response(
    tsr: bytes,
    *,
    digest: bytes,
    nonce: int,
    roots: list[x509.Certificate],
    hash_algorithm: str = "sha256",
    policy: str | None = None,
) -> TimestampInfo:
    """Verify a TimeStampResp per RFC 3161 §2.4.2 for `digest`; raise `TimestampInvalid` naming the check."""
    oid = _check_algorithm(digest, hash_algorithm)
    if not roots:
        raise ConfigurationError("no trusted TSA roots given: a token cannot be verified without them")
    try:
        signed_data, tst_der, tst_info = _load_response(tsr)
        _check_tst_info(tst_info, oid=oid, hash_algorithm=hash_algorithm, digest=digest, nonce=nonce, policy=policy)
        try:
            view = signer_view(signed_data, TimestampInvalid)
            signed = verify_signer(
                view,
                content_digest=hashlib.new(view.digest_algorithm, tst_der).digest(),
                content_type=ID_CT_TSTINFO,
                error=TimestampInvalid,
            )
        except TimestampInvalid as exc:
            raise TimestampInvalid(f"token signature check failed: {exc}") from exc
        certificate = view.certificate
        _check_eku(certificate)
        _check_ess_cert_id(signed, certificate)
        tsa_name = _tsa_name(tst_info, certificate)
        gen_time: datetime = tst_info["gen_time"].native.astimezone(UTC)
        chain = _chain(certificate, _certificates(signed_data), roots, gen_time)
    except MALFORMED as exc:
        raise TimestampInvalid(f"not a well-formed RFC 3161 TimeStampResp: {exc}") from exc
    _rfc3161_client_verify(tsr, digest, nonce, roots)

    accuracy = tst_info["accuracy"].native
    return TimestampInfo(
        gen_time=gen_time,
        serial_number=int(tst_info["serial_number"].native),
        policy=tst_info["policy"].dotted,
        tsa_name=tsa_name,
        hash_algorithm=hash_algorithm,
        message_imprint=digest.hex(),
        nonce=nonce,
        accuracy=None
        if accuracy is None
        else timedelta(
            seconds=accuracy["seconds"] or 0, milliseconds=accuracy["millis"] or 0, microseconds=accuracy["micros"] or 0
        ),
        ordering=bool(tst_info["ordering"].native),
        chain=chain,
    )


# -- the Timestamper stage --


@dataclass(frozen=True)
class TsaEntry:
    """One TSA to ask: where, which roots its tokens must chain to, and whether it is our local TSA."""

    url: str
    roots: tuple[x509.Certificate, ...]
    local: bool = False
    policy: str | None = None  # request this TSA policy (some TSAs require one); None: the TSA's default


class Timestamper(Protocol):
    """Obtains RFC 3161 tokens for a digest; files go to `directory/timestamps/`."""

    def stamp(
        self, digest: bytes, directory: Path, name: str, *, hash_algorithm: str = "sha256"
    ) -> list[TimestampRecord]: ...


def load_trusted_roots(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (WZ_TSA_CA_FILE): the roots external TSA tokens must chain to."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigurationError(f"TSA CA bundle {path} does not exist") from exc
    except ValueError as exc:
        raise ConfigurationError(f"TSA CA bundle {path} is not a PEM certificate bundle: {exc}") from exc
    return certificates


def external_tsa_entries(urls: Sequence[str], ca_file: Path | None) -> list[TsaEntry]:
    """Entries for configured external TSAs (WZ_TSA_URLS), all trusting the roots in `ca_file` (WZ_TSA_CA_FILE)."""
    if not urls:
        return []
    if ca_file is None:
        raise ConfigurationError(
            "WZ_TSA_URLS is set but WZ_TSA_CA_FILE is not: set it to a PEM bundle of the TSA roots you trust"
        )
    roots = tuple(load_trusted_roots(ca_file))
    return [TsaEntry(url=url, roots=roots) for url in urls]


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never overwrite evidence) and make it durable before going on."""
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _keep_rejected(path: Path, data: bytes) -> Path:
    candidate = path
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.name}.{counter}")
    _write_new(candidate, data)
    return candidate


def _chain_pem(chain: tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in chain)


def _settle(
    record: TimestampRecord,
    tsr: bytes,
    *,
    directory: Path,
    base: str,
    digest: bytes,
    roots: list[x509.Certificate],
    policy: str | None,
) -> TimestampRecord:
    """Verify a reply to a kept request; write the token and chain, or keep the bad reply and raise."""
    assert record.nonce is not None
    try:
        info = verify_response(
            tsr, digest=digest, nonce=record.nonce, roots=roots, hash_algorithm=record.hash_algorithm, policy=policy
        )
    except TimestampInvalid as exc:
        kept = _keep_rejected(directory / f"{base}.tsr.rejected", tsr)
        raise TimestampInvalid(
            f"TSA {record.tsa_url}: {exc}; its reply is kept in {kept.relative_to(directory).as_posix()}"
        ) from exc
    response_path = f"{base}.tsr"
    chain_path = f"{base}.chain.pem"
    _write_new(directory / response_path, tsr)
    _write_new(directory / chain_path, _chain_pem(info.chain))
    return record.model_copy(
        update={
            "status": TimestampStatus.GRANTED,
            "response_path": response_path,
            "chain_path": chain_path,
            "gen_time": info.gen_time,
            "serial_number": info.serial_number,
            "policy": info.policy,
            "tsa_name": info.tsa_name,
            "error": None,
        }
    )


class HttpTimestamper:
    """Asks every configured TSA over HTTP; an unreachable one leaves a PENDING record to retry."""

    def __init__(self, entries: Sequence[TsaEntry], *, timeout: float = 15.0) -> None:
        if not entries:
            raise ConfigurationError("no TSA configured: give at least one (the local TSA by default)")
        for entry in entries:
            if not entry.roots:
                raise ConfigurationError(f"TSA {entry.url} has no trusted roots: its tokens could not be verified")
        self.entries = list(entries)
        self.timeout = timeout

    def stamp(
        self, digest: bytes, directory: Path, name: str, *, hash_algorithm: str = "sha256"
    ) -> list[TimestampRecord]:
        _check_algorithm(digest, hash_algorithm)
        if not _NAME.match(name):
            raise UsageError(f"time-stamp name {name!r} must be a plain file name (letters, digits, . _ -)")
        folder = directory / "timestamps"
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(path.name for path in folder.glob(f"{glob.escape(name)}.*"))
        if existing:
            # Evidence files are never overwritten: each stamp needs a name of its own.
            raise UsageError(f"time-stamp files named {name!r} already exist in {folder}: {', '.join(existing[:3])}")
        pending: list[tuple[TsaEntry, str, bytes, TimestampRecord]] = []
        for index, entry in enumerate(self.entries):
            base = f"timestamps/{name}.{index}"
            tsq, nonce = build_request(digest, hash_algorithm, policy=entry.policy)
            _write_new(directory / f"{base}.tsq", tsq)  # kept before sending: nothing lost if we crash
            record = TimestampRecord(
                tsa_url=entry.url,
                local_tsa=entry.local,
                status=TimestampStatus.PENDING,
                hash_algorithm=hash_algorithm,
                message_imprint=digest.hex(),
                nonce=nonce,
                request_path=f"{base}.tsq",
            )
            pending.append((entry, base, tsq, record))

        def send(item: tuple[TsaEntry, str, bytes, TimestampRecord]) -> bytes | TimestampUnavailable:
            try:
                return post_request(item[0].url, item[2], self.timeout)
            except TimestampUnavailable as exc:
                return exc

        # TSAs are asked in parallel: one that times out must not delay the others.
        with ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
            replies = list(pool.map(send, pending))

        records: list[TimestampRecord] = []
        failures: list[TimestampInvalid] = []
        for (entry, base, _tsq, record), reply in zip(pending, replies, strict=True):
            if isinstance(reply, TimestampUnavailable):
                records.append(record.model_copy(update={"error": str(reply)}))
                continue
            try:
                records.append(
                    _settle(
                        record,
                        reply,
                        directory=directory,
                        base=base,
                        digest=digest,
                        roots=list(entry.roots),
                        policy=entry.policy,
                    )
                )
            except TimestampInvalid as exc:
                failures.append(exc)
        if failures:
            # An invalid token is an attack or a broken TSA, not an outage: stop the pipeline, loudly.
            others = f" (and {len(failures) - 1} other TSA(s))" if len(failures) > 1 else ""
            raise TimestampInvalid(f"{failures[0]}{others}") from failures[0]
        return records


def retry_pending(
    record: TimestampRecord,
    directory: Path,
    *,
    roots: Sequence[x509.Certificate],
    timeout: float = 15.0,
) -> TimestampRecord:
    """Send a PENDING record's kept .tsq again (same nonce); GRANTED on success, else the record with the new error."""
    if record.status is TimestampStatus.GRANTED:
        return record
    if record.request_path is None or not record.request_path.endswith(".tsq"):
        raise UsageError("this pending time-stamp record has no kept request (.tsq) to send again")
    if not roots:
        raise ConfigurationError(f"TSA {record.tsa_url} has no trusted roots: its token could not be verified")
    tsq = (directory / record.request_path).read_bytes()
    request = parse_request(tsq)
    if (
        request.nonce != record.nonce
        or request.digest.hex() != record.message_imprint
        or request.hash_algorithm != record.hash_algorithm
    ):
        raise IntegrityError(f"{record.request_path} does not match its time-stamp record (digest or nonce differ)")
    try:
        tsr = post_request(record.tsa_url, tsq, timeout)
    except TimestampUnavailable as exc:
        return record.model_copy(update={"error": str(exc)})
    return _settle(
        record,
        tsr,
        directory=directory,
        base=record.request_path.removesuffix(".tsq"),
        digest=request.digest,
        roots=list(roots),
        policy=request.policy,
    )
