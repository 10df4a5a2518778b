"""`wz export`: one zip a court can check offline with standard tools.

    <capture id>/
      manifest.json  manifest.p7s  preservation.json  chain.jsonl  (the capture's artifacts ...)
      certs/                     the node's CA and the signer's chain
      timestamps/                each TSA's .tsq / .tsr / .chain.pem
      custody/entries.jsonl      the capture's custody entries, one canonical entry per line
      custody/proofs.jsonl       an RFC 9162 inclusion proof of each entry in the newest checkpoint's tree
      custody/checkpoint.*       the newest checkpoint (body, DER signature, signer certificate, JSON, token files)
      custody/checkpoints.jsonl  the checkpoints that first covered each of those entries, each with its RFC 9162
                                 consistency proof to the newest: a court that kept one from an earlier export sees
                                 whether the history it covered was rewritten since
      VERIFY.md                  how to check all of it with sha256sum and openssl alone
      SM3SUMS  SHA256SUMS        every file's SM3 and SHA-256 (SHA256SUMS lists SM3SUMS too)
      SHA256SUMS.p7s             CMS signature of SHA256SUMS by the node's evidence key: it covers every file;
                                 a file that SHA256SUMS does not list is not evidence
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

from custody.checkpoints import document_for
from custody.proofs import checkpoint_body, entry_bytes
from evidence import Checkpoint, CustodyAction, DigestMismatch, EvidenceError, UsageError
from evidence.canonical import canonical_json
from evidence.layout import MANIFEST, PRESERVATION, has_preservation, load_manifest, load_preservation
from hashing import digest_file
from preservation.record import preserved_files
from preservation.services import Services

CHUNK = 1 << 20
VERIFY_TEMPLATE = Path(__file__).with_name("VERIFY.md.in")
INDEX = "SHA256SUMS"
INDEX_SIGNATURE = "SHA256SUMS.p7s"
SM3_INDEX = "SM3SUMS"


class _Sums:
    """SHA-256 and SM3 of every member, computed while it is written into the zip."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def add(self, name: str, sha256: str, sm3: str) -> None:
        self.lines.append((name, sha256, sm3))


def _write_file(archive: zipfile.ZipFile, source: Path, name: str, sums: _Sums, expected: str | None = None) -> None:
    sha256 = hashlib.sha256()
    sm3 = hashlib.new("sm3")
    info = zipfile.ZipInfo.from_file(source, name)
    # Media is already compressed: storing it keeps export and verification at hashing speed.
    compressed = {".mp4", ".ts", ".mkv", ".png"}
    info.compress_type = zipfile.ZIP_STORED if source.suffix in compressed else zipfile.ZIP_DEFLATED
    with source.open("rb") as reader, archive.open(info, "w", force_zip64=True) as writer:
        while chunk := reader.read(CHUNK):
            sha256.update(chunk)
            sm3.update(chunk)
            writer.write(chunk)
    if expected is not None and sha256.hexdigest() != expected:
        raise DigestMismatch(f"{source}: changed since the capture (SHA-256 differs from the manifest); not exported")
    sums.add(name, sha256.hexdigest(), sm3.hexdigest())


def _write_bytes(archive: zipfile.ZipFile, data: bytes, name: str, sums: _Sums | None) -> None:
    archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    if sums is not None:
        sums.add(name, hashlib.sha256(data).hexdigest(), hashlib.new("sm3", data).hexdigest())


def _covering_checkpoints(services: Services, seqs: list[int], newest: Checkpoint) -> list[Checkpoint]:
    """For each entry, the first checkpoint that covered it (older than the newest): what a court may hold."""
    earlier = [cp for cp in services.ledger.checkpoints() if cp.tree_size < newest.tree_size]
    chosen: dict[int, Checkpoint] = {}
    for seq in seqs:
        first = next((cp for cp in earlier if cp.tree_size >= seq), None)
        if first is not None:
            chosen[first.tree_size] = first
    return [chosen[size] for size in sorted(chosen)]


def export_capture(services: Services, capture_dir: Path, output: Path, *, actor: str | None = None) -> Path:
    """Write the package; records an `exported` custody entry (by `actor`, default the node's) and a fresh
    checkpoint that covers it."""
    actor = actor or services.actor
    if output.exists():
        raise UsageError(f"{output} exists; choose another file name")
    if not has_preservation(capture_dir):
        raise EvidenceError(f"{capture_dir} has no preservation record yet; run `wz sync` or capture again")
    manifest = load_manifest(capture_dir)
    preservation = load_preservation(capture_dir)
    root = manifest.capture_id
    ledger = services.ledger
    services.record_as(actor, CustodyAction.EXPORTED, manifest.capture_id, {"package": output.name})
    checkpoint = services.checkpoint()
    entries = [e for e in ledger.entries(subject=manifest.capture_id) if e.seq <= checkpoint.tree_size]
    proofs = ledger.inclusion_proofs([e.seq for e in entries], checkpoint.tree_size)
    earlier = _covering_checkpoints(services, [e.seq for e in entries], checkpoint)
    expected = {a.path: a.digests.sha256 for a in manifest.artifacts}
    expected[MANIFEST] = preservation.manifest.sha256
    sums = _Sums()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", allowZip64=True) as archive:
            for relative, _media in preserved_files(capture_dir, manifest, preservation):
                _write_file(archive, capture_dir / relative, f"{root}/{relative}", sums, expected.get(relative))
            _write_file(archive, capture_dir / PRESERVATION, f"{root}/{PRESERVATION}", sums)
            custody = f"{root}/custody"
            _write_bytes(archive, b"".join(entry_bytes(e) + b"\n" for e in entries), f"{custody}/entries.jsonl", sums)
            _write_bytes(archive, b"".join(canonical_json(p.to_json()) + b"\n" for p in proofs),
                         f"{custody}/proofs.jsonl", sums)
            body = checkpoint_body(checkpoint)
            _write_bytes(archive, body, f"{custody}/checkpoint.body", sums)
            _write_bytes(archive, base64.b64decode(checkpoint.signature), f"{custody}/checkpoint.sig", sums)
            _write_bytes(archive, canonical_json(checkpoint.model_dump(mode="json")), f"{custody}/checkpoint.json",
                         sums)
            signer_pem = services.pem(services.signer.certificate())
            _write_bytes(archive, signer_pem, f"{custody}/checkpoint-signer.pem", sums)
            if checkpoint.timestamp is not None:
                stamp_dir = services.checkpoint_dir
                for name in (checkpoint.timestamp.request_path, checkpoint.timestamp.response_path,
                             checkpoint.timestamp.chain_path):
                    if name:
                        _write_file(archive, stamp_dir / name, f"{custody}/{Path(name).name}", sums)
            lines = []
            for older in earlier:
                document = services.checkpoint_document(older)
                slim = document_for(older, document.signer_certificate, [],
                                    timestamp_request=document.timestamp_request,
                                    timestamp_token=document.timestamp_token,
                                    timestamp_chain=document.timestamp_chain)
                proof = ledger.consistency_proof(older.tree_size, checkpoint.tree_size)
                lines.append(canonical_json({"document": json.loads(slim.to_bytes()),
                                             "consistency": proof.to_json()}) + b"\n")
            _write_bytes(archive, b"".join(lines), f"{custody}/checkpoints.jsonl", sums)
            verify_md = VERIFY_TEMPLATE.read_text(encoding="utf-8").replace("{capture_id}", root)
            _write_bytes(archive, verify_md.encode("utf-8"), f"{root}/VERIFY.md", sums)
            sm3_lines = "".join(f"{sm3}  {name.removeprefix(root + '/')}\n" for name, _, sm3 in sums.lines).encode()
            _write_bytes(archive, sm3_lines, f"{root}/{SM3_INDEX}", sums)
            sha_lines = "".join(f"{sha}  {name.removeprefix(root + '/')}\n" for name, sha, _ in sums.lines).encode()
            _write_bytes(archive, sha_lines, f"{root}/{INDEX}", None)
            # The signature over the index covers every file the index lists, the SM3 list included.
            _write_bytes(archive, services.signer.sign_detached(sha_lines), f"{root}/{INDEX_SIGNATURE}", None)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    size, digests = digest_file(output)
    # The package's own digests go on the record after it is written (they cannot be inside it).
    services.record_as(actor, CustodyAction.EXPORT_WRITTEN, manifest.capture_id,
                       {"package": output.name, "size": size, "sha256": digests.sha256, "sm3": digests.sm3,
                        "index_sha256": hashlib.sha256(sha_lines).hexdigest()})
    return output
