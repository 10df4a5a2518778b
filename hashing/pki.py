"""The node's local PKI: a root CA, an evidence-signing certificate and a local TSA certificate.

This CA is local to one capture node. It is NOT a trusted third party: it proves that the same key
signed or stamped two things, not who the node belongs to. Every name says so.

Layout of `keys_dir` (mode 0700; private keys 0600):

    ca.pem  ca.key.pem           root CA (ECDSA P-256, self-signed, 20 years)
    signer.pem  signer.key.pem   evidence signer (digitalSignature + nonRepudiation, EKU emailProtection)
    tsa.pem  tsa.key.pem         local TSA (digitalSignature + nonRepudiation, critical EKU timeStamping)

`ca.pem` is written last: a directory without it holds an interrupted creation and is created anew;
a directory with it but missing another file is refused, because replacing a key would orphan the
evidence already signed with it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evidence import ConfigurationError

ORGANIZATION = "Wangzheng"
CA_VALIDITY_YEARS = 20
LEAF_VALIDITY_YEARS = 10
# Certificates start a little in the past so a peer whose clock lags a few minutes still accepts them.
BACKDATE = timedelta(minutes=10)

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key.pem"
_SIGNER_CERT = "signer.pem"
_SIGNER_KEY = "signer.key.pem"
_TSA_CERT = "tsa.pem"
_TSA_KEY = "tsa.key.pem"
_LOCK = ".pki.lock"
_ALL = (_CA_KEY, _SIGNER_CERT, _SIGNER_KEY, _TSA_CERT, _TSA_KEY, _CA_CERT)  # ca.pem last: the completion marker
_KEYS = (_CA_KEY, _SIGNER_KEY, _TSA_KEY)


def ca_common_name(hostname: str) -> str:
    return f"Wangzheng LOCAL Evidence CA (not a trusted third party) {hostname}"


def signer_common_name(hostname: str) -> str:
    return f"Wangzheng evidence signer {hostname}"


def tsa_common_name(hostname: str) -> str:
    return f"Wangzheng LOCAL TSA (not a trusted third party) {hostname}"


def _add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February in a non-leap target year
        return moment.replace(year=moment.year + years, day=28)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file, fsync, then rename: a reader never sees half a key."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; never added any
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def _issue(
    *,
    subject: x509.Name,
    subject_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    years: int,
    ca: bool,
    key_usage: x509.KeyUsage,
    eku: tuple[list[x509.ObjectIdentifier], bool] | None,
) -> x509.Certificate:
    public = subject_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(_add_years(not_before, years))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if eku is not None:
        usages, critical = eku
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(*, digital_signature: bool = False, content_commitment: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class LocalPki:
    """The node's local CA and the two certificates it issues; `ensure()` creates them once."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir

    # -- paths --
    @property
    def ca_cert_path(self) -> Path:
        return self.keys_dir / _CA_CERT

    @property
    def ca_key_path(self) -> Path:
        return self.keys_dir / _CA_KEY

    @property
    def signer_cert_path(self) -> Path:
        return self.keys_dir / _SIGNER_CERT

    @property
    def signer_key_path(self) -> Path:
        return self.keys_dir / _SIGNER_KEY

    @property
    def tsa_cert_path(self) -> Path:
        return self.keys_dir / _TSA_CERT

    @property
    def tsa_key_path(self) -> Path:
        return self.keys_dir / _TSA_KEY

    # -- loaders --
    def ca_certificate(self) -> x509.Certificate:
        return self._load_cert(self.ca_cert_path)

    def signer_certificate(self) -> x509.Certificate:
        return self._load_cert(self.signer_cert_path)

    def tsa_certificate(self) -> x509.Certificate:
        return self._load_cert(self.tsa_cert_path)

    def signer_key(self) -> ec.EllipticCurvePrivateKey:
        return self._load_key(self.signer_key_path)

    def tsa_key(self) -> ec.EllipticCurvePrivateKey:
        return self._load_key(self.tsa_key_path)

    # -- creation --
    def ensure(self) -> LocalPki:
        """Create the CA and both certificates if they do not exist yet; check them if they do."""
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        with self._locked():
            if not self.ca_cert_path.exists():
                self._create(socket.gethostname())
            self._check()
        return self

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # An flock, not a lock file's existence: it disappears with a killed process.
        fd = os.open(self.keys_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _create(self, hostname: str) -> None:
        now = datetime.now(UTC).replace(microsecond=0) - BACKDATE
        ca_key = ec.generate_private_key(ec.SECP256R1())
        signer_key = ec.generate_private_key(ec.SECP256R1())
        tsa_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name(ca_common_name(hostname))
        ca_cert = _issue(
            subject=ca_name,
            subject_key=ca_key,
            issuer=ca_name,
            issuer_key=ca_key,
            not_before=now,
            years=CA_VALIDITY_YEARS,
            ca=True,
            key_usage=_key_usage(ca=True),
            eku=None,
        )
        signing_usage = _key_usage(digital_signature=True, content_commitment=True)
        # emailProtection: `openssl cms -verify` checks the "smimesign" purpose by default, which
        # rejects a certificate whose EKU extension lacks it.
        signer_cert = _issue(
            subject=_name(signer_common_name(hostname)),
            subject_key=signer_key,
            issuer=ca_name,
            issuer_key=ca_key,
            not_before=now,
            years=LEAF_VALIDITY_YEARS,
            ca=False,
            key_usage=signing_usage,
            eku=([ExtendedKeyUsageOID.EMAIL_PROTECTION], False),
        )
        # RFC 3161 §2.3: the TSA certificate's only EKU is timeStamping, and it is critical.
        tsa_cert = _issue(
            subject=_name(tsa_common_name(hostname)),
            subject_key=tsa_key,
            issuer=ca_name,
            issuer_key=ca_key,
            not_before=now,
            years=LEAF_VALIDITY_YEARS,
            ca=False,
            key_usage=signing_usage,
            eku=([ExtendedKeyUsageOID.TIME_STAMPING], True),
        )
        pem = serialization.Encoding.PEM
        _write_private(self.ca_key_path, _key_pem(ca_key), 0o600)
        _write_private(self.signer_key_path, _key_pem(signer_key), 0o600)
        _write_private(self.tsa_key_path, _key_pem(tsa_key), 0o600)
        _write_private(self.signer_cert_path, signer_cert.public_bytes(pem), 0o644)
        _write_private(self.tsa_cert_path, tsa_cert.public_bytes(pem), 0o644)
        _write_private(self.ca_cert_path, ca_cert.public_bytes(pem), 0o644)  # last: marks the set complete

    def _check(self) -> None:
        missing = [name for name in _ALL if not (self.keys_dir / name).exists()]
        if missing:
            raise ConfigurationError(
                f"the local PKI in {self.keys_dir} is incomplete (missing {', '.join(missing)}); it is not "
                "recreated because evidence already signed with it would no longer verify: restore the files "
                "from a backup, or move the directory aside to start a new CA"
            )
        for name in _KEYS:
            mode = stat.S_IMODE((self.keys_dir / name).stat().st_mode)
            if mode & 0o077:
                raise ConfigurationError(
                    f"private key {self.keys_dir / name} is readable by other users (mode {mode:o}): chmod 600 it"
                )
        ca = self.ca_certificate()
        pairs = (
            (self.ca_cert_path, ca, self._load_key(self.ca_key_path)),
            (self.signer_cert_path, self.signer_certificate(), self.signer_key()),
            (self.tsa_cert_path, self.tsa_certificate(), self.tsa_key()),
        )
        for path, cert, key in pairs:
            if cert.public_key() != key.public_key():
                raise ConfigurationError(f"{path} does not match its private key: restore the pair from a backup")
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise ConfigurationError(f"{path} is not issued by the local CA {self.ca_cert_path}: {exc}") from exc

    @staticmethod
    def _load_cert(path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigurationError(f"{path} does not exist: create the local PKI first (LocalPki.ensure())") from exc
        except ValueError as exc:
            raise ConfigurationError(f"{path} is not a PEM certificate: {exc}") from exc

    @staticmethod
    def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise ConfigurationError(f"{path} does not exist: create the local PKI first (LocalPki.ensure())") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{path} holds a {type(key).__name__}, not an ECDSA key")
        return key
