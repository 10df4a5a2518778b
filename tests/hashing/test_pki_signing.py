"""The local PKI and detached CMS signatures, checked against the real openssl CLI and our verifier."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evidence import ConfigurationError, SignatureInvalid
from hashing.pki import LocalPki
from hashing.signing import LocalSigner, Signer, verify_detached, verify_raw

CMS_VERIFY = ("cms", "-verify", "-binary", "-inform", "DER")


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command is required for these tests (apt-get install openssl)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki(tmp_path_factory.mktemp("pki") / "keys").ensure()


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki(tmp_path_factory.mktemp("other-pki") / "keys").ensure()


@pytest.fixture
def signed_file(tmp_path: Path, pki: LocalPki) -> Iterator[tuple[Path, Path]]:
    # Line feeds, CR LF and NUL: any text canonicalisation would change these bytes.
    content = tmp_path / "manifest.json"
    content.write_bytes(b'{"a":1}\n{"b":"\xe7\xbd\x91\xe8\xaf\x81"}\r\n\x00\x01' * 50)
    signature = tmp_path / "manifest.json.p7s"
    signature.write_bytes(LocalSigner(pki).sign_detached(content.read_bytes()))
    yield content, signature


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def signature_value_offset(p7s: bytes) -> int:
    """Offset of the last byte of the ECDSA signature value inside a DER SignedData."""
    value = bytes(cms.ContentInfo.load(p7s)["content"]["signer_infos"][0]["signature"].native)
    assert p7s.count(value) == 1
    return p7s.index(value) + len(value) - 1


# -- the PKI --


def _eku(cert: x509.Certificate) -> x509.Extension[x509.ExtendedKeyUsage]:
    return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_pki_certificates_have_the_specified_profile(pki: LocalPki) -> None:
    ca, signer, tsa = pki.ca_certificate(), pki.signer_certificate(), pki.tsa_certificate()
    host = os.uname().nodename
    cn = NameOID.COMMON_NAME
    assert ca.subject.get_attributes_for_oid(cn)[0].value == (
        f"Wangzheng LOCAL Evidence CA (not a trusted third party) {host}"
    )
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Wangzheng"
    assert signer.subject.get_attributes_for_oid(cn)[0].value == f"Wangzheng evidence signer {host}"
    assert tsa.subject.get_attributes_for_oid(cn)[0].value == f"Wangzheng LOCAL TSA (not a trusted third party) {host}"
    for cert in (ca, signer, tsa):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_usage.critical and ca_usage.value.key_cert_sign and ca_usage.value.crl_sign
    assert not ca_usage.value.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=20 * 365)

    for leaf in (signer, tsa):
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature and usage.value.content_commitment
        assert not usage.value.key_cert_sign
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert timedelta(days=10 * 365) <= validity < timedelta(days=11 * 365)
    assert list(_eku(signer).value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    assert list(_eku(tsa).value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert _eku(tsa).critical  # RFC 3161 §2.3


def test_pki_files_are_private_and_ensure_is_idempotent(pki: LocalPki) -> None:
    assert stat.S_IMODE(pki.keys_dir.stat().st_mode) == 0o700
    for key in (pki.signer_key_path, pki.tsa_key_path, pki.keys_dir / "ca.key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = [p.read_bytes() for p in (pki.ca_cert_path, pki.signer_cert_path, pki.tsa_cert_path)]
    again = LocalPki(pki.keys_dir).ensure()
    assert [p.read_bytes() for p in (again.ca_cert_path, again.signer_cert_path, again.tsa_cert_path)] == before


def test_concurrent_processes_create_one_ca(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    script = (
        "import sys; from pathlib import Path; from hashing.pki import LocalPki; "
        "print(LocalPki(Path(sys.argv[1])).ensure().ca_certificate().serial_number)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(keys)], stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    serials = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(serials) == 1
    assert serials == {str(LocalPki(keys).ca_certificate().serial_number)}


def test_incomplete_or_unsafe_pki_is_refused_not_replaced(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "keys").ensure()
    ca = pki.ca_cert_path.read_bytes()
    pki.signer_key_path.unlink()
    with pytest.raises(ConfigurationError, match=r"incomplete \(missing signer\.key\.pem\)"):
        pki.ensure()
    assert pki.ca_cert_path.read_bytes() == ca

    other = LocalPki(tmp_path / "keys2").ensure()
    other.tsa_key_path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="readable by other users"):
        other.ensure()


def test_interrupted_creation_is_started_over(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "keys").ensure()
    pki.ca_cert_path.unlink()  # ca.pem is written last: without it nothing was ever signed
    old_signer = pki.signer_cert_path.read_bytes()
    pki.ensure()
    assert pki.signer_cert_path.read_bytes() != old_signer
    pki.signer_certificate().verify_directly_issued_by(pki.ca_certificate())


# -- detached CMS signatures --


def test_signer_protocol_and_chain(pki: LocalPki) -> None:
    signer: Signer = LocalSigner(pki)
    assert signer.name == f"Wangzheng evidence signer {os.uname().nodename}"
    assert signer.certificate() == pki.signer_certificate()
    assert signer.chain() == [pki.signer_certificate(), pki.ca_certificate()]


def test_signature_structure(pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    _content, signature = signed_file
    info = cms.ContentInfo.load(signature.read_bytes())
    signed_data = info["content"]
    assert info["content_type"].native == "signed_data"
    assert signed_data["encap_content_info"]["content"].native is None  # detached
    signer_info = signed_data["signer_infos"][0]
    assert signer_info["digest_algorithm"]["algorithm"].native == "sha256"
    attributes = {attr["type"].native for attr in signer_info["signed_attrs"]}
    assert {"content_type", "signing_time", "message_digest"} <= attributes
    embedded = [cert.chosen.dump() for cert in signed_data["certificates"]]
    assert embedded == [pki.signer_certificate().public_bytes(serialization.Encoding.DER)]


def test_signature_verifies_in_openssl_and_python(pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    content, signature = signed_file
    result = openssl(
        *CMS_VERIFY, "-in", signature, "-content", content, "-CAfile", pki.ca_cert_path, "-out", os.devnull
    )
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    assert verify_detached(content, signature.read_bytes(), [pki.ca_certificate()]) == pki.signer_certificate()
    assert verify_detached(content.read_bytes(), signature.read_bytes(), [pki.ca_certificate()]).subject == (
        pki.signer_certificate().subject
    )


def test_without_binary_openssl_rewrites_line_ends(pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    # Documents why -binary is part of the command: S/MIME text mode changes the bytes hashed.
    content, signature = signed_file
    result = openssl(
        "cms", "-verify", "-inform", "DER", "-in", signature, "-content", content,
        "-CAfile", pki.ca_cert_path, "-out", os.devnull,
    )  # fmt: skip
    assert result.returncode != 0


def test_flipped_content_byte_fails_both(tmp_path: Path, pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    content, signature = signed_file
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(flip(content.read_bytes(), 100))
    result = openssl(
        *CMS_VERIFY, "-in", signature, "-content", tampered, "-CAfile", pki.ca_cert_path, "-out", os.devnull
    )
    assert result.returncode != 0
    assert "content verify error" in result.stderr
    with pytest.raises(SignatureInvalid, match="content digest does not match the signature"):
        verify_detached(tampered, signature.read_bytes(), [pki.ca_certificate()])


def test_flipped_signature_byte_fails_both(tmp_path: Path, pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    content, signature = signed_file
    original = signature.read_bytes()
    bad = tmp_path / "bad.p7s"
    bad.write_bytes(flip(original, signature_value_offset(original)))
    result = openssl(*CMS_VERIFY, "-in", bad, "-content", content, "-CAfile", pki.ca_cert_path, "-out", os.devnull)
    assert result.returncode != 0
    assert "Verification failure" in result.stderr
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_detached(content, bad.read_bytes(), [pki.ca_certificate()])


def test_other_ca_fails_both(pki: LocalPki, other_pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    content, signature = signed_file
    result = openssl(
        *CMS_VERIFY, "-in", signature, "-content", content, "-CAfile", other_pki.ca_cert_path, "-out", os.devnull
    )
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stderr
    with pytest.raises(SignatureInvalid, match="signer not issued by a trusted CA"):
        verify_detached(content, signature.read_bytes(), [other_pki.ca_certificate()])


def test_signature_by_another_nodes_signer_is_refused(
    pki: LocalPki, other_pki: LocalPki, signed_file: tuple[Path, Path]
) -> None:
    content, _signature = signed_file
    foreign = LocalSigner(other_pki).sign_detached(content.read_bytes())
    with pytest.raises(SignatureInvalid, match="signer not issued by a trusted CA"):
        verify_detached(content, foreign, [pki.ca_certificate()])
    assert verify_detached(content, foreign, [pki.ca_certificate(), other_pki.ca_certificate()]) == (
        other_pki.signer_certificate()
    )


def test_every_single_byte_flip_of_a_signature_is_refused(pki: LocalPki, signed_file: tuple[Path, Path]) -> None:
    # Versions and digestAlgorithms are outside the signed attributes; they are checked too.
    content, signature = signed_file
    data, original = content.read_bytes(), signature.read_bytes()
    for index in range(len(original)):
        with pytest.raises(SignatureInvalid):
            verify_detached(data, flip(original, index), [pki.ca_certificate()])


def test_not_a_signature(pki: LocalPki) -> None:
    for garbage in (b"", b"not DER at all", b"\x30\x03\x02\x01\x01"):
        with pytest.raises(SignatureInvalid, match="not a CMS SignedData structure"):
            verify_detached(b"data", garbage, [pki.ca_certificate()])


def test_embedded_content_is_not_a_detached_signature(pki: LocalPki) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs7

    attached = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(b"data")
        .add_signer(pki.signer_certificate(), pki.signer_key(), hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    with pytest.raises(SignatureInvalid, match="not a detached signature"):
        verify_detached(b"data", attached, [pki.ca_certificate()])


def test_large_file_is_streamed(tmp_path: Path, pki: LocalPki) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    signature = LocalSigner(pki).sign_detached(data)
    assert verify_detached(path, signature, [pki.ca_certificate()]) == pki.signer_certificate()
    with path.open("r+b") as handle:
        handle.seek(len(data) - 1)
        handle.write(bytes([data[-1] ^ 0x01]))
    with pytest.raises(SignatureInvalid, match="content digest does not match the signature"):
        verify_detached(path, signature, [pki.ca_certificate()])


def test_raw_signature_verifies_in_python_and_openssl(tmp_path: Path, pki: LocalPki) -> None:
    data = b"checkpoint 42 root 00ff"
    signature = LocalSigner(pki).sign_raw(data)
    verify_raw(data, signature, pki.signer_certificate())
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "sig").write_bytes(signature)
    (tmp_path / "pub.pem").write_bytes(
        pki.signer_certificate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = openssl(
        "dgst", "-sha256", "-verify", tmp_path / "pub.pem", "-signature", tmp_path / "sig", tmp_path / "data"
    )
    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_raw(data + b"!", signature, pki.signer_certificate())
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_raw(data, flip(signature, len(signature) - 1), pki.signer_certificate())
    with pytest.raises(SignatureInvalid, match="signature does not verify"):
        verify_raw(data, signature, pki.tsa_certificate())


def test_reencoded_signer_certificate_is_refused_like_openssl(tmp_path: Path) -> None:
    # A signatureValue BIT STRING may declare one unused bit when its last byte is even: still the
    # same signature bytes to cryptography, refused by OpenSSL ("invalid bit string bits left").
    for attempt in range(64):
        pki = LocalPki(tmp_path / f"keys{attempt}").ensure()
        if pki.signer_certificate().signature[-1] % 2 == 0:
            break
    else:
        pytest.fail("no certificate with an even last signature byte in 64 tries")
    content = tmp_path / "data"
    content.write_bytes(b"evidence")
    original = LocalSigner(pki).sign_detached(content.read_bytes())
    value = cms.ContentInfo.load(original)["content"]["certificates"][0].chosen["signature_value"]
    index = original.index(value.dump()) + len(value.dump()) - len(value.contents)
    assert original[index] == 0x00  # the unused-bits octet
    altered = tmp_path / "altered.p7s"
    altered.write_bytes(flip(original, index))
    result = openssl(*CMS_VERIFY, "-in", altered, "-content", content, "-CAfile", pki.ca_cert_path, "-out", os.devnull)
    assert result.returncode != 0
    assert "invalid bit string bits left" in result.stderr
    with pytest.raises(SignatureInvalid, match="unused bits"):
        verify_detached(content, altered.read_bytes(), [pki.ca_certificate()])
