"""`wz verify CAPTURE_ID`: a capture on this node, against its files, the object store and the whole ledger."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from evidence import CustodyAction, EvidenceError, IntegrityError, StoredObject
from evidence.layout import load_preservation
from preservation.record import object_key, preserved_files
from preservation.services import Services
from preservation.verify import Check, EvidenceSource, Trust, VerificationReport, verify_source


def verify_capture(services: Services, capture_dir: Path) -> VerificationReport:
    """Online: the local files, every stored object re-read by version, and the whole custody ledger."""
    report = VerificationReport(target=str(capture_dir))
    source = EvidenceSource(directory=capture_dir)
    tsa_roots = [root for entry in services.timestamper.entries if not entry.local for root in entry.roots]
    trust = Trust(node_roots=[services.pki.ca_certificate()], node_pinned=True, tsa_roots=tsa_roots)
    report.origin_pinned = True
    manifest, _record = verify_source(report, source, trust)
    if manifest is None:
        report.raise_for_failures()
        return report
    preservation = load_preservation(capture_dir)
    expected_keys = {object_key(manifest.capture_id, path) for path, _media in
                     preserved_files(capture_dir, manifest, preservation)}
    missing = sorted(expected_keys - set(preservation.stored_by_key()))
    report.checks.append(Check("stored in WORM store", manifest.capture_id, not missing,
                               f"{len(missing)} file(s) not stored yet (run `wz sync`): {', '.join(missing[:3])}"
                               if missing else f"all {len(expected_keys)} files stored"))
    recorded = {object_key(manifest.capture_id, a.path): a.digests for a in manifest.artifacts}
    store = None
    try:
        store = services.store()
    except EvidenceError as exc:
        report.checks.append(Check("object store reachable", services.settings.s3_endpoint or "embedded", False,
                                   str(exc)))
    if store is not None:
        for stored in preservation.stored:
            def check(stored: StoredObject = stored, key: str = stored.key) -> str:
                if key in recorded and stored.digests != recorded[key]:
                    raise IntegrityError(f"{key}: the stored version's digests are not the manifest's")
                verified = store.verify(stored)
                until = f"{verified.retain_until:%Y-%m-%d}"
                return f"version {verified.version_id}, {verified.retention_mode} until {until}"
            report.run("object re-read by version", stored.key, check)

    def ledger() -> str:
        return services.verify_custody().describe()

    report.run("custody ledger", services.database_url.split("@")[-1], ledger)
    subject_entries = services.ledger.entries(subject=manifest.capture_id)
    counts = Counter(e.action.value for e in subject_entries)
    report.checks.append(Check("custody entries for capture", manifest.capture_id, bool(subject_entries),
                               f"{len(subject_entries)} entries: "
                               + ", ".join(f"{action} {count}" for action, count in counts.items())))
    # The verification itself is an action on the evidence: it goes on the record, passed or not.
    services.record(CustodyAction.VERIFIED, manifest.capture_id, {
        "ok": report.ok, "checks": len(report.checks),
        "failed": [f"{c.name} [{c.subject}]" for c in report.failures][:20],
        "objects_reread": sum(1 for c in report.checks if c.name == "object re-read by version"),
    })
    report.raise_for_failures()
    return report
