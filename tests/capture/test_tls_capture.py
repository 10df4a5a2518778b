"""An https page: the capture keeps the TLS certificate chain the browser itself was served.

The demo site is served over TLS with a certificate from a CA made here, which the capture browser trusts
only when WZ_CAPTURE_CA_FILE names it (as an organisation's own CA would be); nothing else differs from a
capture of a public site.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capture.fixtures import PATH_PRODUCT, FixtureServer
from evidence import ArtifactRole, CaptureStatus
from evidence.layout import load_manifest
from hashing import digest_file
from storage import S3Endpoint
from tests.conftest import base_env, wz

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Wangzheng tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make_chain(directory: Path) -> tuple[x509.Certificate, x509.Certificate, Path, Path]:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("TLS fixture CA")).issuer_name(_name("TLS fixture CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    chain = directory / "chain.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key = directory / "key.pem"
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca, leaf, chain, key


@pytest.fixture(scope="module")
def https_site(tmp_path_factory: pytest.TempPathFactory, fixture_cache: Path
               ) -> Iterator[tuple[FixtureServer, x509.Certificate, x509.Certificate, Path]]:
    base = tmp_path_factory.mktemp("tls")
    ca, leaf, chain, key = _make_chain(base)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    ca_file = base / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    with FixtureServer(fixture_cache, tls=context) as server:
        yield server, ca, leaf, ca_file


def test_https_page_keeps_the_certificate_chain_it_was_served(
    https_site: tuple[FixtureServer, x509.Certificate, x509.Certificate, Path], tmp_path: Path,
    s3_server: S3Endpoint,
) -> None:
    server, ca, leaf, ca_file = https_site
    assert server.base_url.startswith("https://")
    env = {**base_env(tmp_path / "data", s3_server), "WZ_CAPTURE_CA_FILE": str(ca_file)}
    out = tmp_path / "capture"

    result = wz(["capture", server.url(PATH_PRODUCT), "--duration", "6", "--out", str(out), "--json"], env)

    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete"
    pem_path = out / "tiles" / "1" / "certificates.pem"
    text = pem_path.read_text(encoding="ascii")
    assert text.startswith("# TLS certificate chain of 127.0.0.1, from the browser's own connection")
    served = x509.load_pem_x509_certificates(text.split("\n", 1)[1].encode())
    assert served[0] == leaf  # the leaf first, as the server sent it
    assert ca in served
    page = json.loads((out / "tiles" / "1" / "page.json").read_text(encoding="utf-8"))
    assert page["final_url"].startswith("https://127.0.0.1:")
    assert page["security_details"] and page["security_details"].get("protocol", "").startswith("TLS")
    manifest = load_manifest(out)
    assert manifest.status == CaptureStatus.COMPLETE
    [certificate] = [a for a in manifest.artifacts if a.role == ArtifactRole.CERTIFICATE]
    assert certificate.tile == 1 and certificate.path == "tiles/1/certificates.pem"
    assert certificate.digests == digest_file(pem_path)[1]
    fingerprint = ca.fingerprint(hashes.SHA256()).hex(":").upper()
    [root] = manifest.provenance.options["extra_trusted_roots"]
    assert "CN=TLS fixture CA" in root and fingerprint in root  # what the browser was told to trust


def test_untrusted_certificate_fails_the_tile_and_says_why(
    https_site: tuple[FixtureServer, x509.Certificate, x509.Certificate, Path], tmp_path: Path,
    s3_server: S3Endpoint,
) -> None:
    server, _ca, _leaf, _ca_file = https_site
    env = base_env(tmp_path / "data", s3_server)  # the machine's own trust settings play no part

    result = wz(["capture", server.url(PATH_PRODUCT), "--duration", "4", "--out", str(tmp_path / "c"), "--json"],
                env)

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1, result.stderr[-3000:]
    assert summary["status"] == "failed"
    assert "ERR_CERT_AUTHORITY_INVALID" in summary["tiles"][0]["reason"]


@pytest.mark.parametrize("content", [b"not a certificate", None])
def test_a_bad_ca_file_stops_the_capture_before_it_starts(tmp_path: Path, s3_server: S3Endpoint,
                                                          content: bytes | None) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    env = {**base_env(tmp_path / "data", s3_server), "WZ_CAPTURE_CA_FILE": str(ca_file)}

    result = wz(["capture", "https://127.0.0.1:9/", "--duration", "2", "--out", str(tmp_path / "c")], env)

    assert result.returncode != 0
    assert "WZ_CAPTURE_CA_FILE" in result.stderr and str(ca_file) in result.stderr
    assert "Traceback" not in result.stderr
