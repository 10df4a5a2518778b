"""RFC 3161 against the real local TSA over HTTP, cross-checked with the openssl CLI.

Tokens that openssl refuses to produce (a TSA certificate without the critical timeStamping EKU,
a wrong ESSCertID) are built by `forge_response`, a minimal TSA in Python; a control test proves
that the same forger with a proper certificate yields a token both openssl and we accept, so each
refusal is caused by the one thing changed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from asn1crypto import algos, cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evidence import (
    ConfigurationError,
    IntegrityError,
    TimestampInvalid,
    TimestampStatus,
    TimestampUnavailable,
    UsageError,
)
from hashing.pki import LocalPki
from hashing.rfc3161 import (
    HASH_OIDS,
    QUERY_TYPE,
    HttpTimestamper,
    TsaEntry,
    build_request,
    external_tsa_entries,
    load_trusted_roots,
    parse_request,
    post_request,
    retry_pending,
    verify_response,
)
from hashing.tsa import LOCAL_TSA_LABEL, LOCAL_TSA_POLICY_OID, LocalTsa

DATA = b"Wangzheng evidence \xe7\xbd\x91\xe8\xaf\x81\n" * 1000


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command is required for these tests (apt-get install openssl)")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def ts_text(tsr: Path) -> str:
    result = openssl("ts", "-reply", "-in", tsr, "-text")
    assert result.returncode == 0, result.stderr
    return result.stdout


def text_field(text: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (.+)$", text, re.MULTILINE)
    assert match, f"{label} not in:\n{text}"
    return match.group(1).strip()


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return LocalPki(tmp_path_factory.mktemp("pki") / "keys").ensure()


@pytest.fixture(scope="module")
def tsa(pki: LocalPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTsa]:
    with LocalTsa(pki, tmp_path_factory.mktemp("tsa-state")) as server:
        yield server


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "evidence.bin"
    path.write_bytes(DATA)
    return path


def local_entry(pki: LocalPki, tsa: LocalTsa) -> TsaEntry:
    return TsaEntry(url=tsa.url, roots=(pki.ca_certificate(),), local=True)


def stamp_one(pki: LocalPki, tsa: LocalTsa, directory: Path, name: str = "evidence", algorithm: str = "sha256") -> Path:
    digest = hashlib.new(algorithm, DATA).digest()
    [record] = HttpTimestamper([local_entry(pki, tsa)]).stamp(digest, directory, name, hash_algorithm=algorithm)
    assert record.status is TimestampStatus.GRANTED
    assert record.response_path is not None
    return directory / record.response_path


# -- requests --


def test_request_has_nonce_cert_req_and_the_digest(tmp_path: Path) -> None:
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    _other, other_nonce = build_request(digest)
    assert nonce != other_nonce
    request = tsp.TimeStampReq.load(tsq)
    assert request["cert_req"].native is True
    assert request["nonce"].native == nonce
    assert request["message_imprint"]["hashed_message"].native == digest
    assert request["message_imprint"]["hash_algorithm"]["algorithm"].dotted == HASH_OIDS["sha256"]
    assert parse_request(tsq).nonce == nonce
    (tmp_path / "q.tsq").write_bytes(tsq)
    text = openssl("ts", "-query", "-in", tmp_path / "q.tsq", "-text")
    assert text.returncode == 0, text.stderr
    assert "Certificate required: yes" in text.stdout
    assert int(text_field(text.stdout, "Nonce"), 16) == nonce
    assert text_field(text.stdout, "Hash Algorithm") == "sha256"


def test_request_checks_algorithm_and_length() -> None:
    with pytest.raises(UsageError, match="unsupported time-stamp hash algorithm 'md5'"):
        build_request(b"\x00" * 16, "md5")
    with pytest.raises(UsageError, match="a sha256 digest has 32 bytes, not 31"):
        build_request(b"\x00" * 31)
    tsq, _nonce = build_request(hashlib.new("sm3", DATA).digest(), "sm3")
    assert tsp.TimeStampReq.load(tsq)["message_imprint"]["hash_algorithm"]["algorithm"].dotted == "1.2.156.10197.1.401"


# -- the local TSA and openssl --


def test_token_verifies_with_openssl(pki: LocalPki, tsa: LocalTsa, tmp_path: Path, data_file: Path) -> None:
    tsr = stamp_one(pki, tsa, tmp_path)
    tsq = tsr.with_suffix(".tsq")
    result = openssl("ts", "-verify", "-data", data_file, "-in", tsr, "-CAfile", pki.ca_cert_path)
    assert result.returncode == 0, result.stderr
    assert "Verification: OK" in result.stdout
    result = openssl("ts", "-verify", "-queryfile", tsq, "-in", tsr, "-CAfile", pki.ca_cert_path)
    assert result.returncode == 0, result.stderr

    text = ts_text(tsr)
    assert text_field(text, "Status") == "Granted."
    assert text_field(text, "Policy OID") == LOCAL_TSA_POLICY_OID
    assert text_field(text, "Hash Algorithm") == "sha256"
    assert text_field(text, "Accuracy") == "0x01 seconds, unspecified millis, unspecified micros"
    assert text_field(text, "Ordering") == "no"
    assert int(text_field(text, "Nonce"), 16) == parse_request(tsq.read_bytes()).nonce
    assert "LOCAL TSA (not a trusted third party)" in text_field(text, "TSA")


def test_record_and_files(pki: LocalPki, tsa: LocalTsa, tmp_path: Path) -> None:
    digest = hashlib.sha256(DATA).digest()
    before = datetime.now(UTC) - timedelta(seconds=2)
    [record] = HttpTimestamper([local_entry(pki, tsa)]).stamp(digest, tmp_path, "manifest")
    assert record.status is TimestampStatus.GRANTED
    assert record.local_tsa and record.tsa_url == tsa.url
    assert record.request_path == "timestamps/manifest.0.tsq"
    assert record.response_path == "timestamps/manifest.0.tsr"
    assert record.chain_path == "timestamps/manifest.0.chain.pem"
    assert record.message_imprint == digest.hex() and record.hash_algorithm == "sha256"
    assert record.policy == LOCAL_TSA_POLICY_OID
    assert record.tsa_name is not None and "not a trusted third party" in record.tsa_name
    assert record.gen_time is not None and before <= record.gen_time <= datetime.now(UTC) + timedelta(seconds=2)
    assert record.error is None
    chain = x509.load_pem_x509_certificates((tmp_path / record.chain_path).read_bytes())
    assert chain == [pki.tsa_certificate(), pki.ca_certificate()]
    # Only the signer certificate travels in the token (see hashing/tsa.py).
    token = tsp.TimeStampResp.load((tmp_path / record.response_path).read_bytes())["time_stamp_token"]
    assert [c.chosen.dump() for c in token["content"]["certificates"]] == [
        pki.tsa_certificate().public_bytes(serialization.Encoding.DER)
    ]
    with pytest.raises(UsageError, match="'manifest' already exist"):  # evidence files are never overwritten
        HttpTimestamper([local_entry(pki, tsa)]).stamp(digest, tmp_path, "manifest")
    HttpTimestamper([local_entry(pki, tsa)]).stamp(digest, tmp_path, "manifest-2")  # a prefix is not a clash
    with pytest.raises(UsageError, match="plain file name"):
        HttpTimestamper([local_entry(pki, tsa)]).stamp(digest, tmp_path, "../escape")


def test_serial_increases_across_requests_and_restart(pki: LocalPki, tmp_path: Path) -> None:
    state = tmp_path / "state"
    serials: list[int] = []
    with LocalTsa(pki, state) as first:
        for name in ("a", "b"):
            serials.append(int(text_field(ts_text(stamp_one(pki, first, tmp_path, name)), "Serial number"), 16))
    with LocalTsa(pki, state) as restarted:
        tsr = stamp_one(pki, restarted, tmp_path, "c")
        serials.append(int(text_field(ts_text(tsr), "Serial number"), 16))
    assert serials[0] < serials[1] < serials[2]
    assert serials[1] == serials[0] + 1 and serials[2] == serials[1] + 1


def test_concurrent_requests_on_one_state_dir_get_distinct_serials(pki: LocalPki, tmp_path: Path) -> None:
    state = tmp_path / "state"
    digest = hashlib.sha256(DATA).digest()
    # Two servers on one state directory stand for two processes sharing a data directory.
    with LocalTsa(pki, state) as one, LocalTsa(pki, state) as two:
        results: list[int] = []
        errors: list[BaseException] = []

        def ask(url: str) -> None:
            try:
                tsq, nonce = build_request(digest)
                info = verify_response(
                    post_request(url, tsq, 30), digest=digest, nonce=nonce, roots=[pki.ca_certificate()]
                )
                results.append(info.serial_number)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(server.url,)) for server in (one, two) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors
    assert len(results) == 12 and len(set(results)) == 12


def test_sm3_imprint_end_to_end(pki: LocalPki, tsa: LocalTsa, tmp_path: Path, data_file: Path) -> None:
    tsr = stamp_one(pki, tsa, tmp_path, "sm3", algorithm="sm3")  # verified by us and rfc3161-client
    tsq = tsr.with_suffix(".tsq")
    assert text_field(ts_text(tsr), "Hash Algorithm") == "sm3"
    for check in (
        ("-data", data_file),
        ("-queryfile", tsq),
        ("-digest", hashlib.new("sm3", DATA).hexdigest()),
    ):
        result = openssl("ts", "-verify", *check, "-in", tsr, "-CAfile", pki.ca_cert_path)
        assert result.returncode == 0, (check, result.stderr)
    wrong = openssl(
        "ts", "-verify", "-digest", hashlib.sha256(DATA).hexdigest(), "-in", tsr, "-CAfile", pki.ca_cert_path
    )
    assert wrong.returncode != 0


def test_local_tsa_configuration(tsa: LocalTsa) -> None:
    config = tsa.config_path.read_text()
    for line in (
        "signer_digest = sha256",
        "digests = sha256, sha384, sha512, sm3",
        "accuracy = secs:1",
        "ordering = no",
        "tsa_name = yes",
        "ess_cert_id_alg = sha256",
        "ess_cert_id_chain = no",
        f"default_policy = {LOCAL_TSA_POLICY_OID}",
    ):
        assert line in config.splitlines()
    assert not any(line.startswith("certs") for line in config.splitlines())
    assert LOCAL_TSA_LABEL in config
    assert tsa.url.startswith("http://127.0.0.1:")


# -- the local TSA's HTTP surface --


def http(url: str, body: bytes, content_type: str | None, method: str = "POST") -> tuple[int, str, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


def test_bad_http_requests_get_400_not_500(pki: LocalPki, tsa: LocalTsa) -> None:
    tsq, _ = build_request(hashlib.sha256(DATA).digest())
    code, _type, body = http(tsa.url, tsq, "text/plain")
    assert code == 400 and b"Content-Type must be application/timestamp-query" in body
    assert LOCAL_TSA_LABEL.encode() in body
    code, _type, body = http(tsa.url, b"\x30\x03garbage", QUERY_TYPE)
    assert code == 400 and b"not a DER RFC 3161 TimeStampReq" in body
    code, _type, body = http(tsa.url, b"", "", method="GET")
    assert code == 405
    code, content_type, body = http(tsa.url, tsq, QUERY_TYPE)
    assert code == 200 and content_type == "application/timestamp-reply"
    with pytest.raises(TimestampUnavailable, match=r"answered HTTP 400"):
        post_request(tsa.url, b"garbage", 10)


# -- tampering and refusals --


@pytest.fixture
def granted(pki: LocalPki, tsa: LocalTsa) -> tuple[bytes, bytes, int]:
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    return post_request(tsa.url, tsq, 30), digest, nonce


def test_wrong_nonce(pki: LocalPki, granted: tuple[bytes, bytes, int]) -> None:
    tsr, digest, nonce = granted
    verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])
    with pytest.raises(TimestampInvalid, match="nonce does not match the request"):
        verify_response(tsr, digest=digest, nonce=nonce ^ 1, roots=[pki.ca_certificate()])


def test_wrong_digest(pki: LocalPki, granted: tuple[bytes, bytes, int]) -> None:
    tsr, digest, nonce = granted
    with pytest.raises(TimestampInvalid, match="message imprint does not match the digest"):
        verify_response(tsr, digest=flip(digest, 0), nonce=nonce, roots=[pki.ca_certificate()])
    with pytest.raises(TimestampInvalid, match="message imprint algorithm sha256 is not the requested sm3"):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()], hash_algorithm="sm3")


def test_untrusted_root(pki: LocalPki, granted: tuple[bytes, bytes, int], tmp_path: Path) -> None:
    tsr, digest, nonce = granted
    other = LocalPki(tmp_path / "other").ensure()
    with pytest.raises(TimestampInvalid, match="TSA certificate not issued by a trusted root"):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[other.ca_certificate()])
    (tmp_path / "x.tsr").write_bytes(tsr)
    result = openssl("ts", "-verify", "-digest", digest.hex(), "-in", tmp_path / "x.tsr", "-CAfile", other.ca_cert_path)
    assert result.returncode != 0


def _tsr_signature_offset(tsr: bytes) -> int:
    token = tsp.TimeStampResp.load(tsr)["time_stamp_token"]
    value = bytes(token["content"]["signer_infos"][0]["signature"].native)
    return tsr.index(value) + len(value) - 1


def _tsr_gen_time_offset(tsr: bytes) -> int:
    token = tsp.TimeStampResp.load(tsr)["time_stamp_token"]
    gen_time = token["content"]["encap_content_info"]["content"].parsed["gen_time"]
    encoded = gen_time.dump()
    return tsr.index(encoded) + len(encoded) - len(gen_time.contents) + 12  # a seconds digit: YYYYMMDDHHMM[S]S


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (_tsr_signature_offset, "token signature check failed: signature does not verify"),
        (_tsr_gen_time_offset, "token signature check failed: content digest does not match the signature"),
    ],
)
def test_flipped_byte_fails_both(
    pki: LocalPki, granted: tuple[bytes, bytes, int], tmp_path: Path, where: Callable[[bytes], int], message: str
) -> None:
    tsr, digest, nonce = granted
    bad = flip(tsr, where(tsr))
    with pytest.raises(TimestampInvalid, match=message):
        verify_response(bad, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])
    (tmp_path / "bad.tsr").write_bytes(bad)
    result = openssl("ts", "-verify", "-digest", digest.hex(), "-in", tmp_path / "bad.tsr", "-CAfile", pki.ca_cert_path)
    assert result.returncode != 0
    assert "Verification: FAILED" in result.stdout


def test_every_single_byte_flip_of_a_token_is_refused(pki: LocalPki, granted: tuple[bytes, bytes, int]) -> None:
    tsr, digest, nonce = granted
    for index in range(len(tsr)):
        with pytest.raises(TimestampInvalid):
            verify_response(flip(tsr, index), digest=digest, nonce=nonce, roots=[pki.ca_certificate()])


def test_rejection_status_from_the_tsa(pki: LocalPki, tsa: LocalTsa) -> None:
    digest = hashlib.sha256(DATA).digest()
    md5_request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "md5"},
                "hashed_message": hashlib.md5(DATA, usedforsecurity=False).digest(),
            },
            "nonce": 7,
            "cert_req": True,
        }
    ).dump()
    with pytest.raises(TimestampInvalid, match=r"TSA refused: status 2 \(rejection\), .*algorithm.*bad_alg"):
        verify_response(post_request(tsa.url, md5_request, 30), digest=digest, nonce=7, roots=[pki.ca_certificate()])
    tsq, nonce = build_request(digest, policy="1.2.3.4")
    with pytest.raises(TimestampInvalid, match=r"TSA refused: status 2 .*policy.*unaccepted_policy"):
        verify_response(post_request(tsa.url, tsq, 30), digest=digest, nonce=nonce, roots=[pki.ca_certificate()])


def test_rejected_reply_is_kept_and_raised(pki: LocalPki, tsa: LocalTsa, tmp_path: Path) -> None:
    entry = TsaEntry(url=tsa.url, roots=(pki.ca_certificate(),), local=True, policy="1.2.3.4")
    with pytest.raises(TimestampInvalid, match=r"TSA refused: status 2.*kept in timestamps/x\.0\.tsr\.rejected"):
        HttpTimestamper([entry]).stamp(hashlib.sha256(DATA).digest(), tmp_path, "x")
    assert (tmp_path / "timestamps/x.0.tsq").exists()
    assert not (tmp_path / "timestamps/x.0.tsr").exists()
    assert "Status: Rejected." in ts_text(tmp_path / "timestamps/x.0.tsr.rejected")


def test_requested_policy_is_enforced(pki: LocalPki, tsa: LocalTsa) -> None:
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest, policy=LOCAL_TSA_POLICY_OID)
    tsr = post_request(tsa.url, tsq, 30)
    assert verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()]).policy == (
        LOCAL_TSA_POLICY_OID
    )
    with pytest.raises(TimestampInvalid, match=r"is not the requested policy 1\.2\.3\.4"):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()], policy="1.2.3.4")


# -- forged tokens: what openssl ts -reply refuses to sign --


def issue_tsa_certificate(
    pki: LocalPki, eku: list[x509.ObjectIdentifier] | None, *, critical: bool = True
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TSA certificate from the real local CA, with the EKU under test."""
    ca_key = serialization.load_pem_private_key((pki.keys_dir / "ca.key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC) - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA")]))
        .issuer_name(pki.ca_certificate().subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=critical)
    return builder.sign(ca_key, hashes.SHA256()), key


def forge_response(
    tsq: bytes,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    ess_certificate: x509.Certificate | None = None,
    tsa_name: x509.Name | None = None,
) -> bytes:
    """A granted TimeStampResp for `tsq`, signed like openssl ts -reply signs (ESSCertIDv2, SHA-256)."""
    request = tsp.TimeStampReq.load(tsq)
    now = datetime.now(UTC).replace(microsecond=0)
    cert_der = certificate.public_bytes(serialization.Encoding.DER)
    asn1_cert = asn1_x509.Certificate.load(cert_der)
    tst_info = tsp.TSTInfo(
        {
            "version": "v1",
            "policy": LOCAL_TSA_POLICY_OID,
            "message_imprint": tsp.MessageImprint.load(request["message_imprint"].dump()),
            "serial_number": 4242,
            "gen_time": now,
            "nonce": request["nonce"].native,
            "tsa": asn1_x509.GeneralName(
                {"directory_name": asn1_x509.Name.load(tsa_name.public_bytes()) if tsa_name else asn1_cert.subject}
            ),
        }
    )
    tst_der = tst_info.dump()
    bound = (ess_certificate or certificate).public_bytes(serialization.Encoding.DER)
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": now})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(tst_der).digest()]}),
            cms.CMSAttribute(
                {
                    "type": "signing_certificate_v2",
                    "values": [{"certs": [{"cert_hash": hashlib.sha256(bound).digest()}]}],
                }
            ),
        ]
    )
    signature = key.sign(signed_attrs.dump(), ec.ECDSA(hashes.SHA256()))
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number}
                    )
                }
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info", "content": tst_info},
            "certificates": [asn1_cert],
            "signer_infos": [signer_info],
        }
    )
    token = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    response: bytes = tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token}).dump()
    return response


def openssl_verifies(pki: LocalPki, tmp_path: Path, tsq: bytes, tsr: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "f.tsq").write_bytes(tsq)
    (tmp_path / "f.tsr").write_bytes(tsr)
    return openssl(
        "ts", "-verify", "-queryfile", tmp_path / "f.tsq", "-in", tmp_path / "f.tsr", "-CAfile", pki.ca_cert_path
    )


def test_forger_control_a_proper_forged_token_passes_everywhere(pki: LocalPki, tmp_path: Path) -> None:
    certificate, key = issue_tsa_certificate(pki, [ExtendedKeyUsageOID.TIME_STAMPING])
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    tsr = forge_response(tsq, certificate, key)
    info = verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])
    assert info.serial_number == 4242 and info.tsa_certificate == certificate
    result = openssl_verifies(pki, tmp_path, tsq, tsr)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("eku", "critical", "message", "openssl_error"),
    [
        (None, True, "lacks the timeStamping extended key usage", "unsuitable certificate purpose"),
        ([ExtendedKeyUsageOID.TIME_STAMPING], False, "timeStamping extended key usage is not critical", "purpose"),
        (
            [ExtendedKeyUsageOID.TIME_STAMPING, ExtendedKeyUsageOID.CODE_SIGNING],
            True,
            "extended key usage must be timeStamping only",
            "purpose",
        ),
        ([ExtendedKeyUsageOID.CODE_SIGNING], True, "extended key usage must be timeStamping only", "purpose"),
    ],
)
def test_tsa_certificate_eku_is_enforced(
    pki: LocalPki,
    tmp_path: Path,
    *,
    eku: list[x509.ObjectIdentifier] | None,
    critical: bool,
    message: str,
    openssl_error: str,
) -> None:
    certificate, key = issue_tsa_certificate(pki, eku, critical=critical)
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    tsr = forge_response(tsq, certificate, key)
    with pytest.raises(TimestampInvalid, match=message):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])
    result = openssl_verifies(pki, tmp_path, tsq, tsr)
    assert result.returncode != 0
    assert openssl_error in result.stderr


def test_ess_cert_id_must_bind_the_signer(pki: LocalPki, tmp_path: Path) -> None:
    certificate, key = issue_tsa_certificate(pki, [ExtendedKeyUsageOID.TIME_STAMPING])
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    tsr = forge_response(tsq, certificate, key, ess_certificate=pki.tsa_certificate())
    with pytest.raises(TimestampInvalid, match="ESSCertID does not bind the signer certificate"):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])
    result = openssl_verifies(pki, tmp_path, tsq, tsr)
    assert result.returncode != 0


def test_tsa_name_must_be_the_certificate_subject(pki: LocalPki) -> None:
    certificate, key = issue_tsa_certificate(pki, [ExtendedKeyUsageOID.TIME_STAMPING])
    digest = hashlib.sha256(DATA).digest()
    tsq, nonce = build_request(digest)
    tsr = forge_response(tsq, certificate, key, tsa_name=pki.tsa_certificate().subject)
    with pytest.raises(TimestampInvalid, match="TSA name in the token does not match the TSA certificate"):
        verify_response(tsr, digest=digest, nonce=nonce, roots=[pki.ca_certificate()])


class RogueTsa:
    """An HTTP TSA that answers with forged tokens from a given certificate."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        forge = forge_response

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                reply = forge(body, certificate, key)
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RogueTsa:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_timestamper_keeps_the_invalid_reply_and_raises(pki: LocalPki, tsa: LocalTsa, tmp_path: Path) -> None:
    certificate, key = issue_tsa_certificate(pki, None)
    with RogueTsa(certificate, key) as rogue:
        entries = [local_entry(pki, tsa), TsaEntry(url=rogue.url, roots=(pki.ca_certificate(),))]
        with pytest.raises(TimestampInvalid, match=r"lacks the timeStamping .* kept in timestamps/m\.1\.tsr\.rejected"):
            HttpTimestamper(entries).stamp(hashlib.sha256(DATA).digest(), tmp_path, "m")
    # The good TSA's token is on disk; the bad reply is kept apart for inspection.
    assert (tmp_path / "timestamps/m.0.tsr").exists()
    assert (tmp_path / "timestamps/m.1.tsq").exists()
    assert not (tmp_path / "timestamps/m.1.tsr").exists()
    assert (tmp_path / "timestamps/m.1.tsr.rejected").exists()


# -- outages and retries --


def test_unreachable_tsa_gives_pending_then_retry_grants(pki: LocalPki, tmp_path: Path, data_file: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    entry = TsaEntry(url=url, roots=(pki.ca_certificate(),), local=True)
    digest = hashlib.sha256(DATA).digest()
    [record] = HttpTimestamper([entry], timeout=5).stamp(digest, tmp_path, "later")
    assert record.status is TimestampStatus.PENDING
    assert record.error is not None and url in record.error and "unreachable" in record.error
    assert record.request_path == "timestamps/later.0.tsq" and (tmp_path / record.request_path).exists()
    assert record.response_path is None

    still = retry_pending(record, tmp_path, roots=[pki.ca_certificate()], timeout=5)
    assert still.status is TimestampStatus.PENDING and still.error is not None

    with LocalTsa(pki, tmp_path / "state", port=port):
        granted = retry_pending(still, tmp_path, roots=[pki.ca_certificate()], timeout=5)
    assert granted.status is TimestampStatus.GRANTED
    assert granted.nonce == record.nonce and granted.error is None
    assert granted.response_path == "timestamps/later.0.tsr"
    tsr, tsq = tmp_path / granted.response_path, tmp_path / record.request_path
    for check in (("-queryfile", tsq), ("-data", data_file)):
        result = openssl("ts", "-verify", *check, "-in", tsr, "-CAfile", pki.ca_cert_path)
        assert result.returncode == 0, result.stderr
    assert retry_pending(granted, tmp_path, roots=[pki.ca_certificate()]) is granted


def test_retry_refuses_a_request_file_that_does_not_match(pki: LocalPki, tmp_path: Path) -> None:
    entry = TsaEntry(url=f"http://127.0.0.1:{free_port()}/", roots=(pki.ca_certificate(),))
    [record] = HttpTimestamper([entry], timeout=5).stamp(hashlib.sha256(DATA).digest(), tmp_path, "r")
    assert record.request_path is not None
    other, _ = build_request(hashlib.sha256(b"other").digest())
    (tmp_path / record.request_path).write_bytes(other)
    with pytest.raises(IntegrityError, match="does not match its time-stamp record"):
        retry_pending(record, tmp_path, roots=[pki.ca_certificate()])


def test_silent_tsa_times_out_as_unavailable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # connections complete in the kernel; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(TimestampUnavailable, match=rf"TSA {re.escape(url)} unreachable: .*timed out"):
            post_request(url, b"x", 0.5)


def test_non_tsa_answer_is_unavailable(tsa: LocalTsa) -> None:
    class Html(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"<html>captive portal</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TimestampUnavailable, match="answered text/html, not application/timestamp-reply"):
            post_request(f"http://127.0.0.1:{server.server_address[1]}/", b"x", 5)
    finally:
        server.shutdown()
        server.server_close()


# -- configuration --


def test_external_tsa_configuration(pki: LocalPki, tmp_path: Path) -> None:
    assert external_tsa_entries([], None) == []
    with pytest.raises(ConfigurationError, match="WZ_TSA_CA_FILE is not"):
        external_tsa_entries(["https://tsa.example/"], None)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_trusted_roots(tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="not a PEM certificate bundle"):
        load_trusted_roots(tmp_path / "bad.pem")
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(pki.ca_cert_path.read_bytes() + pki.tsa_cert_path.read_bytes())
    [entry] = external_tsa_entries(["https://tsa.example/"], bundle)
    assert entry.roots == (pki.ca_certificate(), pki.tsa_certificate()) and not entry.local
    with pytest.raises(ConfigurationError, match="must start with http"):
        post_request("file:///etc/passwd", b"x", 1)
