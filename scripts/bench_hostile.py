"""Memory and time of `wz verify` on hostile packages: members that decompress to gigabytes, a million members,
the largest manifest the verifier accepts. Target: any package verifies (or is refused) within 256 MiB.

Each verification runs in a fresh process that reports its own peak RSS (ru_maxrss), so one case cannot hide
another's memory. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_fixtures import write_bench_manifest  # noqa: E402 - beside this script

CHILD = """
import json, sys, time
from pathlib import Path
from preservation.verify import verify_package
from evidence import IntegrityError
started = time.perf_counter()
try:
    report = verify_package(Path(sys.argv[1]))
    outcome = f"VERIFIED ({len(report.checks)} checks)"
except IntegrityError as exc:
    report = getattr(exc, "report", None)
    failures = report.failures if report is not None else []
    first = failures[0] if failures else None
    outcome = f"refused: {first.name}: {first.detail[:90]}" if first else str(exc)[:120]
# VmHWM, not ru_maxrss: after fork and exec the latter still counts the parent's peak.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - started, "outcome": outcome, "peak_rss_mib": peak / 1024}))
"""


def genuine_package(work: Path, artifacts: int = 4) -> tuple[Path, str]:
    from evidence import Settings
    from preservation.export import export_capture
    from preservation.preserve import Preserver
    from preservation.registry import register
    from preservation.services import Services

    settings = Settings(data_dir=work / "data", s3_endpoint="127.0.0.1:9", s3_access_key="bench",
                        s3_secret_key="bench-only", actor="bench", ntp_timeout_seconds=1,  # noqa: S106
                        database_url=f"sqlite:///{work / 'data' / 'custody.sqlite3'}")
    capture_id = f"wz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    directory = work / f"capture-{artifacts}"
    for n in range(artifacts):
        path = directory / "segments" / f"audio1_{n:05d}.ts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64))
    write_bench_manifest(directory, capture_id)
    register(settings.registry_dir, capture_id, directory)
    package = work / f"genuine-{artifacts}.zip"
    with Services(settings) as services:
        Preserver(services).preserve(directory)
        export_capture(services, directory, package)
    return package, capture_id


def variant(genuine: Path, root: str, target: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(genuine) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if info.filename == f"{root}/{member}":
                continue
            out.writestr(info, source.read(info))
        out.writestr(f"{root}/{member}", data)
    return target


def many_members(target: Path, root: str, count: int) -> Path:
    with zipfile.ZipFile(target, "w") as out:
        for n in range(count):
            out.writestr(f"{root}/extra/{n}", b"")
    return target


def measure(package: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(package)], capture_output=True, text=True,
                            cwd=REPO, check=False, timeout=3600)
    if result.returncode != 0 or not result.stdout.strip():
        return {"seconds": 0.0, "outcome": f"the verifier crashed: {result.stderr.strip()[-200:]}",
                "peak_rss_mib": float("nan")}
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench hostile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="wz-bench-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        genuine, root = genuine_package(work)
        zeros = b"\0" * (1 << 30)
        cases: list[tuple[str, Path]] = [("genuine package (4 artifacts)", genuine)]
        for member in ("manifest.json", "custody/entries.jsonl", "custody/checkpoint.json", "SHA256SUMS",
                       "chain.jsonl", "manifest.p7s", "preservation.json"):
            cases.append((f"1 GiB of zeros as {member}",
                          variant(genuine, root, work / f"zeros-{member.replace('/', '-')}.zip", member, zeros)))
        del zeros
        cases.append(("1,000,000 extra members", many_members(work / "many.zip", root, 1_000_000)))
        large, large_root = genuine_package(work, artifacts=30_000)
        cases.append(("genuine package, 30,000 artifacts (a 4-hour 9-tile capture)", large))
        del large_root
        print("| package | size | peak RSS | time | outcome |")
        print("|---|---|---|---|---|")
        for label, package in cases:
            figures = measure(package)
            size = package.stat().st_size
            rows.append({"case": label, "bytes": size, **figures})
            print(f"| {label} | {size / 1e6:.1f} MB | {figures['peak_rss_mib']:.0f} MiB | {figures['seconds']:.1f} s "
                  f"| {figures['outcome']} |", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
