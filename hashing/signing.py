"""Detached CMS signatures (RFC 5652) over evidence, and their verification.

Signing sits behind the `Signer` protocol so the key can later live in an HSM (PKCS#11) without
touching the callers. `LocalSigner` uses the node's `LocalPki`.

Verification is our own, in Python (asn1crypto + cryptography), so that each failure names the
check that failed. The same signatures verify with

    openssl cms -verify -binary -inform DER -in SIG.p7s -content FILE -CAfile ca.pem -out /dev/null

(`-binary`: the content is bytes, not S/MIME text; without it OpenSSL rewrites line endings before
hashing and the digest no longer matches. No `-purpose` and no `-noverify`: OpenSSL 3.0 checks the
"smimesign" purpose by default, which accepts a signer certificate with no EKU or with an EKU that
includes emailProtection, and refuses one whose EKU lacks it; hence emailProtection on our signer.)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evidence import IntegrityError, SignatureInvalid
from hashing.digest import CHUNK
from hashing.pki import LocalPki

# Digest algorithms accepted in signatures we verify; SHA-1 and MD5 are refused on purpose.
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class Signer(Protocol):
    """Who signs evidence. `name` is the subject CN of the signing certificate."""

    name: str

    def sign_detached(self, data: bytes) -> bytes:
        """A DER CMS SignedData over `data`: detached, binary, SHA-256, signed attributes, signer certificate."""
        ...

    def sign_raw(self, data: bytes) -> bytes:
        """A DER ECDSA-SHA256 signature over `data`."""
        ...

    def certificate(self) -> x509.Certificate: ...

    def chain(self) -> list[x509.Certificate]:
        """The signer certificate, then the CA that issued it."""
        ...


def common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


class LocalSigner:
    """Signs with the evidence-signing key of the node's local PKI (software key, mode 0600)."""

    def __init__(self, pki: LocalPki) -> None:
        self._certificate = pki.signer_certificate()
        self._key = pki.signer_key()
        self._ca = pki.ca_certificate()
        self.name = common_name(self._certificate)

    def sign_detached(self, data: bytes) -> bytes:
        signature = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(data)
            .add_signer(self._certificate, self._key, hashes.SHA256())
            # Binary: sign the bytes as they are (no S/MIME line-ending canonicalisation).
            # NoCapabilities: S/MIME encryption preferences mean nothing for evidence.
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities],
            )
        )
        # A signature that does not verify must never be written next to evidence.
        verify_detached(data, signature, [self._ca])
        return signature

    def sign_raw(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def certificate(self) -> x509.Certificate:
        return self._certificate

    def chain(self) -> list[x509.Certificate]:
        return [self._certificate, self._ca]


# -- verification helpers, shared with the RFC 3161 verifier --
#
# asn1crypto parses lazily, and reading `.native` of a container marks it as changed, so a later
# `.dump()` re-encodes it. Signed bytes are therefore captured (`.dump()`) before any value is read,
# and structural errors surface wherever a field is first touched: callers wrap the whole
# verification in one `except MALFORMED`.

MALFORMED = (ValueError, TypeError, KeyError, IndexError, OverflowError)


def absent(value: Any) -> bool:
    """True for an OPTIONAL field that is not there (asn1crypto gives a Void)."""
    return isinstance(value, core.Void)


def _digest_of(data: bytes | Path, algorithm: str) -> bytes:
    hasher = hashlib.new(algorithm)
    if isinstance(data, Path):
        with data.open("rb") as handle:  # stream: evidence files can be gigabytes
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
    else:
        hasher.update(data)
    return hasher.digest()


@dataclass(frozen=True)
class SignerView:
    """The one SignerInfo of a SignedData, with the exact bytes its signature covers."""

    info: cms.SignerInfo
    signed_attrs_der: bytes  # the [0] IMPLICIT signedAttrs as received; empty when absent
    certificate: x509.Certificate
    digest_algorithm: str


def signer_view(signed_data: cms.SignedData, error: type[IntegrityError]) -> SignerView:
    """Find the single signer and its certificate, after checking the unsigned framing (RFC 5652).

    Versions and the digestAlgorithms set are not covered by the signature; holding them to the
    values RFC 5652 §5.1/§5.3 prescribe means no byte of an accepted signature can be altered.
    """
    infos = signed_data["signer_infos"]
    if len(infos) != 1:
        raise error(f"expected exactly one signer in the CMS SignedData, found {len(infos)}")
    info: cms.SignerInfo = infos[0]
    signed_attrs_der = b"" if absent(info["signed_attrs"]) else bytes(info["signed_attrs"].dump())
    certificates = [] if absent(signed_data["certificates"]) else list(signed_data["certificates"])
    if any(choice.name != "certificate" for choice in certificates):
        raise error("the CMS SignedData holds certificate types other than X.509 certificates")
    sid = info["sid"]
    sid_version = {"issuer_and_serial_number": 1, "subject_key_identifier": 3}[sid.name]
    if info["version"].native != f"v{sid_version}":
        raise error(f"the SignerInfo version {info['version'].native} does not match its signer identifier")
    plain_data = signed_data["encap_content_info"]["content_type"].native == "data"
    expected = "v1" if plain_data and sid_version == 1 else "v3"
    if signed_data["version"].native != expected:
        raise error(f"the CMS SignedData version {signed_data['version'].native} should be {expected} (RFC 5652 §5.1)")
    digest_oid = info["digest_algorithm"]["algorithm"].dotted
    listed = [algorithm["algorithm"].dotted for algorithm in signed_data["digest_algorithms"]]
    if listed != [digest_oid]:
        raise error("the CMS digestAlgorithms set does not match the signer's digest algorithm")
    # SHA-2 and ECDSA/RSA PKCS#1 v1.5 identifiers carry no parameters (or NULL, which parses as None).
    for algorithm in (*signed_data["digest_algorithms"], info["digest_algorithm"], info["signature_algorithm"]):
        if algorithm["parameters"].native is not None:
            raise error(f"unexpected parameters in the algorithm identifier {algorithm['algorithm'].native}")
    digest_algorithm = str(info["digest_algorithm"]["algorithm"].native)
    if digest_algorithm not in HASHES:
        raise error(f"unsupported digest algorithm {digest_algorithm} in the signature (accepted: {', '.join(HASHES)})")
    certificate = _signer_certificate(certificates, sid, error)
    return SignerView(info, signed_attrs_der, certificate, digest_algorithm)


def _signer_certificate(choices: list[Any], sid: cms.SignerIdentifier, error: type[IntegrityError]) -> x509.Certificate:
    """The embedded certificate named by the sid (issuer and serial, or subject key identifier)."""
    for choice in choices:
        der = bytes(choice.chosen.dump())  # before reading any field: the bytes as received
        tbs = choice.chosen["tbs_certificate"]
        if sid.name == "issuer_and_serial_number":
            matches = (
                tbs["serial_number"].native == sid.chosen["serial_number"].native
                and tbs["issuer"].dump() == sid.chosen["issuer"].dump()
            )
        else:
            matches = choice.chosen.key_identifier == sid.chosen.native
        if not matches:
            continue
        check_signature_bits(choice.chosen, error)
        try:
            certificate = x509.load_der_x509_certificate(der)
            # Parse names, key and extensions now: a malformed signer certificate is named as such.
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
            certificate.public_key()
            for _ in certificate.extensions:
                pass
        except (ValueError, x509.InvalidVersion, x509.DuplicateExtension, UnsupportedAlgorithm) as exc:
            raise error(f"the signer certificate cannot be parsed: {exc}") from exc
        return certificate
    raise error("the signer certificate is not included in the CMS SignedData")


def check_signature_bits(certificate: Any, error: type[IntegrityError]) -> None:
    """Refuse a certificate whose signatureValue BIT STRING declares unused bits.

    ECDSA and RSA signatures are whole octets. A non-zero unused-bits count (with zero padding) is
    still valid BER/DER that cryptography accepts, which would let an embedded certificate be
    re-encoded without breaking its issuer's signature; OpenSSL refuses it, and so do we.
    """
    if certificate["signature_value"].contents[:1] != b"\x00":
        raise error("a certificate's signature BIT STRING has unused bits: the certificate was altered")


def _single_attribute(attributes: cms.CMSAttributes, name: str, error: type[IntegrityError]) -> Any:
    found = [attr for attr in attributes if attr["type"].native == name]
    if not found:
        return None
    if len(found) != 1 or len(found[0]["values"]) != 1:
        # RFC 5652 §5.3: each of these attributes appears once, with one value.
        raise error(f"the signed attribute {name} must appear exactly once with one value")
    return found[0]["values"][0]


@dataclass(frozen=True)
class SignedAttributes:
    attributes: cms.CMSAttributes  # parsed from exactly the bytes the signature covers
    signing_time: datetime | None


def verify_signer(
    view: SignerView, *, content_digest: bytes, content_type: str, error: type[IntegrityError]
) -> SignedAttributes:
    """Check the signed attributes and the signature of the signer; return the attributes it signed.

    `content_digest` is the digest of the signed content with `view.digest_algorithm`.
    """
    if not view.signed_attrs_der:
        raise error("the signature has no signed attributes (content type, message digest)")
    # RFC 5652 §5.4: the signature covers the DER of the attributes with the SET OF tag, not [0].
    to_verify = b"\x31" + view.signed_attrs_der[1:]
    attributes = cms.CMSAttributes.load(to_verify, strict=True)
    declared_type = _single_attribute(attributes, "content_type", error)
    if declared_type is None or declared_type.dotted != content_type:
        raise error("the content-type signed attribute does not match the signed content")
    message_digest = _single_attribute(attributes, "message_digest", error)
    if message_digest is None:
        raise error("the signature has no message-digest signed attribute")
    if not hmac.compare_digest(bytes(message_digest.native), content_digest):
        raise error("content digest does not match the signature")
    signing_time = _single_attribute(attributes, "signing_time", error)

    _check_signature_algorithm(view.info, view.digest_algorithm, error)
    signature = bytes(view.info["signature"].native)
    hash_algorithm = HASHES[view.digest_algorithm]()
    public_key = view.certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, to_verify, ec.ECDSA(hash_algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, to_verify, padding.PKCS1v15(), hash_algorithm)
        else:
            raise error(f"unsupported signer key type {type(public_key).__name__}")
    except InvalidSignature as exc:
        raise error("signature does not verify") from exc
    moment = None if signing_time is None else signing_time.native.astimezone(UTC)
    return SignedAttributes(attributes, moment)


def _check_signature_algorithm(signer_info: cms.SignerInfo, digest: str, error: type[IntegrityError]) -> None:
    algorithm = signer_info["signature_algorithm"]
    try:
        kind = algorithm.signature_algo
    except ValueError as exc:
        raise error(f"unsupported signature algorithm {algorithm['algorithm'].dotted}") from exc
    if kind not in ("ecdsa", "rsassa_pkcs1v15"):
        raise error(f"unsupported signature algorithm {algorithm['algorithm'].native}")
    try:
        named_hash = algorithm.hash_algo
    except ValueError:  # bare ecPublicKey / rsaEncryption: the digest algorithm field decides
        return
    if named_hash != digest:
        raise error(f"signature algorithm {algorithm['algorithm'].native} does not match digest algorithm {digest}")


def valid_at(certificate: x509.Certificate, moment: datetime) -> bool:
    return certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc


def issuing_root(certificate: x509.Certificate, trusted: list[x509.Certificate]) -> x509.Certificate | None:
    """The trusted CA whose key signed `certificate`, if any."""
    for root in trusted:
        if root.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return root
    return None


def verify_detached(data: bytes | Path, signature: bytes, trusted: list[x509.Certificate]) -> x509.Certificate:
    """Verify a detached CMS signature over `data` (bytes, or a file streamed from disk).

    Returns the signer certificate; raises `SignatureInvalid` naming the failed check.
    """
    try:
        info = cms.ContentInfo.load(signature, strict=True)
        if info["content_type"].native != "signed_data":
            raise SignatureInvalid(f"not a CMS SignedData structure (content type {info['content_type'].native})")
        signed_data: cms.SignedData = info["content"]
        view = signer_view(signed_data, SignatureInvalid)
        encap = signed_data["encap_content_info"]
        if not absent(encap["content"]):
            raise SignatureInvalid("not a detached signature: the CMS SignedData embeds its content")
        signed = verify_signer(
            view,
            content_digest=_digest_of(data, view.digest_algorithm),
            content_type=encap["content_type"].dotted,
            error=SignatureInvalid,
        )
    except MALFORMED as exc:
        raise SignatureInvalid(f"not a CMS SignedData structure: {exc}") from exc
    root = issuing_root(view.certificate, trusted)
    if root is None:
        raise SignatureInvalid(f"signer not issued by a trusted CA: {view.certificate.subject.rfc4514_string()}")
    _check_signing_certificate(view.certificate, root, signed.signing_time or datetime.now(UTC))
    return view.certificate


def _check_signing_certificate(certificate: x509.Certificate, root: x509.Certificate, moment: datetime) -> None:
    for cert, role in ((certificate, "signer"), (root, "CA")):
        if not valid_at(cert, moment):
            raise SignatureInvalid(
                f"{role} certificate {cert.subject.rfc4514_string()} was not valid at signing time {moment.isoformat()}"
            )
    try:
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise SignatureInvalid(f"signer not issued by a trusted CA: {root.subject.rfc4514_string()} is not a CA")
    refuse_timestamping_signer(certificate)
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise SignatureInvalid("the signer certificate's key usage does not allow signatures")


def refuse_timestamping_signer(certificate: x509.Certificate) -> None:
    """The node's CA issues two keys: the evidence signer and the local TSA. A signature on evidence made with the
    TSA's key proves nothing about the evidence (that key signs whatever digest it is sent)."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.TIME_STAMPING in list(usages):
        raise SignatureInvalid(f"{certificate.subject.rfc4514_string()} is a time-stamping certificate, not a signer "
                               "of evidence")


def verify_raw(data: bytes, signature: bytes, certificate: x509.Certificate) -> None:
    """Verify a raw ECDSA-SHA256 (or RSA PKCS#1 v1.5 SHA-256) signature; raise `SignatureInvalid`."""
    public_key = certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureInvalid(f"unsupported key type {type(public_key).__name__}")
    except InvalidSignature as exc:
        raise SignatureInvalid("signature does not verify") from exc
