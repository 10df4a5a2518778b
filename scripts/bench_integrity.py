"""Benchmarks of the integrity chain: `scripts/bench hashing` and `scripts/bench upload`.

Each prints ratios measured in one run on this machine; nothing here asserts a timing.

hashing: SHA-256 + SM3 of a 1 GiB file vs `openssl speed -evp` (the slower of the two), peak RSS growth
         while hashing a 2 GiB file, and `wz verify` of a ~1 GiB package vs the hashing speed.
upload:  streaming upload of a 1 GiB file to the embedded SeaweedFS (Object Lock, COMPLIANCE retention,
         digests checked in-stream) vs a raw HTTP PUT of the same bytes with curl, alternating over three
         rounds (median ratio), and peak RSS growth while uploading a 2 GiB file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

GIB = 1 << 30


def make_file(path: Path, size: int) -> Path:
    """Random bytes (incompressible), written in 16 MiB blocks."""
    if path.exists() and path.stat().st_size == size:
        return path
    block = os.urandom(16 << 20)
    with path.open("wb") as handle:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            handle.write(chunk)
            written += len(chunk)
    return path


def warm(path: Path) -> None:
    """Read once so the page cache holds it: the runs compare hashing, not the disk."""
    with path.open("rb") as handle:
        while handle.read(16 << 20):
            pass


def openssl_speed(algorithm: str, seconds: int = 3) -> float:
    """Bytes per second of `openssl speed -evp ALG` on 16 KiB blocks (its largest default size)."""
    result = subprocess.run(["openssl", "speed", "-evp", algorithm, "-seconds", str(seconds)],
                            capture_output=True, text=True, check=True)
    line = next(ln for ln in result.stdout.splitlines() if ln.lower().startswith(algorithm))
    values = re.findall(r"([\d.]+)k", line)
    return float(values[-1]) * 1000.0


def bench_hashing(work: Path) -> dict[str, Any]:
    from hashing import digest_file

    one = make_file(work / "one.bin", GIB)
    warm(one)
    sha_speed = openssl_speed("sha256")
    sm3_speed = openssl_speed("sm3")
    start = time.perf_counter()
    digest_file(one)
    elapsed = time.perf_counter() - start
    ours = GIB / elapsed
    two = make_file(work / "two.bin", 2 * GIB)
    sampler = RssSampler()  # resident set sampled every 10 ms, mapped file pages included
    sampler.start()
    digest_file(two)
    growth = sampler.growth_mib()
    return {
        "openssl_sha256_bytes_per_s": sha_speed,
        "openssl_sm3_bytes_per_s": sm3_speed,
        "ours_bytes_per_s": ours,
        "ratio_vs_slower_openssl": ours / min(sha_speed, sm3_speed),
        "rss_growth_2gib_mib": growth,
    }


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.start_rss = self.process.memory_info().rss
        self.peak = self.start_rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def growth_mib(self) -> float:
        self.done.set()
        self.join()
        return (self.peak - self.start_rss) / (1 << 20)


def bench_upload(work: Path, rounds: int = 3) -> dict[str, Any]:
    """curl and put_file alternate, `rounds` times each, so a passing load hits both alike; the median counts."""
    from hashing import digest_file
    from storage import EmbeddedSeaweed, S3ObjectStore

    seaweed = EmbeddedSeaweed(work / "seaweed", s3_port=17333, port_base=17400)
    endpoint = seaweed.ensure_running(timeout=90)
    try:
        store = S3ObjectStore(endpoint.endpoint, endpoint.access_key, endpoint.secret_key, bucket="bench-locked",
                              retention_days=1)
        store.ensure_bucket()
        one = make_file(work / "one.bin", GIB)
        warm(one)
        _size, digests = digest_file(one)
        url = store.client.presigned_put_object("bench-locked", "raw/one.bin", expires=timedelta(hours=1))
        curl_runs: list[float] = []
        ours_runs: list[float] = []
        stored = None
        for _round in range(rounds):
            start = time.perf_counter()
            subprocess.run(["curl", "-sS", "-f", "-T", str(one), "-o", "/dev/null", url], check=True)
            curl_runs.append(time.perf_counter() - start)
            start = time.perf_counter()
            stored = store.put_file("ours/one.bin", one, content_type="application/octet-stream", digests=digests)
            ours_runs.append(time.perf_counter() - start)
        assert stored is not None
        start = time.perf_counter()
        store.verify(stored)
        verify_seconds = time.perf_counter() - start
        two = make_file(work / "two.bin", 2 * GIB)
        _size2, digests2 = digest_file(two)
        sampler = RssSampler()
        sampler.start()
        store.put_file("ours/two.bin", two, content_type="application/octet-stream", digests=digests2)
        growth = sampler.growth_mib()
        store.close()
    finally:
        seaweed.stop()
    ratios = [c / o for c, o in zip(curl_runs, ours_runs, strict=True)]
    return {
        "rounds": rounds,
        "curl_put_bytes_per_s": GIB / statistics.median(curl_runs),
        "ours_bytes_per_s": GIB / statistics.median(ours_runs),
        "ratio_vs_curl": statistics.median(ratios),
        "ratio_vs_curl_each_round": ratios,
        "read_back_verify_bytes_per_s": GIB / verify_seconds,
        "rss_growth_2gib_upload_mib": growth,
    }


def bench_verify(work: Path, hashing_speed: float) -> dict[str, Any]:
    """Build a real capture record around a 1 GiB artifact, preserve and export it, then time `wz verify`."""
    from capture.assemble import build_manifest
    from capture.environment import check_components, collect_provenance
    from capture.layout import build_layout
    from evidence import CaptureStatus, Settings, TileResult, TileStatus
    from evidence.layout import write_manifest
    from preservation.export import export_capture
    from preservation.preserve import Preserver
    from preservation.registry import register
    from preservation.services import Services
    from preservation.verify import verify_package

    data = work / "data"
    os.environ.update({"WZ_DATA_DIR": str(data), "WZ_EMBEDDED_S3_PORT": "17533", "WZ_NTP_TIMEOUT_SECONDS": "1"})
    settings = Settings()
    capture_id = f"wz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-be0c4d"
    directory = work / capture_id
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "tiles" / "1" / "streams").mkdir(parents=True)
    # The one large artifact: a stream copy's bytes (verification never decodes media, only hashes it).
    shutil.copyfile(make_file(work / "one.bin", GIB), directory / "tiles" / "1" / "streams" / "stream1.mkv")
    url = "https://bench.invalid/live"
    layout = build_layout([url])
    provenance = collect_provenance(settings, urls=[url], components=check_components(settings), launch_flags=[],
                                    options={"benchmark": True}, operator="bench", case_id=None)
    now = datetime.now(UTC)
    manifest = build_manifest(
        directory, capture_id=capture_id, status=CaptureStatus.COMPLETE, reason="", started_at=now, ended_at=now,
        requested_duration=None, recorded_seconds=0.0, provenance=provenance, layout=layout,
        tiles=(TileResult(tile=1, url=url, status=TileStatus.COMPLETE),), steps=(),
    )
    write_manifest(directory, manifest)
    register(settings.registry_dir, capture_id, directory)
    package = work / "package.zip"
    package.unlink(missing_ok=True)
    with Services(settings) as services:
        Preserver(services).preserve(directory)
        export_capture(services, directory, package)
    warm(package)
    start = time.perf_counter()
    report = verify_package(package)
    seconds = time.perf_counter() - start
    size = package.stat().st_size
    subprocess.run([sys.executable, "-m", "cli.main", "services", "stop"], check=False, capture_output=True)
    return {
        "package_bytes": size,
        "checks": len(report.checks),
        "verify_bytes_per_s": size / seconds,
        "ratio_vs_hashing": (size / seconds) / hashing_speed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["hashing", "upload"])
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="wz-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    try:
        if args.what == "hashing":
            figures["hashing"] = bench_hashing(work)
            figures["verify"] = bench_verify(work, figures["hashing"]["ours_bytes_per_s"])
            h, v = figures["hashing"], figures["verify"]
            print("| measure | figure | target |")
            print("|---|---|---|")
            print(f"| `openssl speed -evp sha256` / `sm3` (16 KiB) | {h['openssl_sha256_bytes_per_s'] / 1e9:.3f} / "
                  f"{h['openssl_sm3_bytes_per_s'] / 1e9:.3f} GB/s | |")
            print(f"| SHA-256 + SM3 of 1 GiB, one pass | {h['ours_bytes_per_s'] / 1e9:.3f} GB/s = "
                  f"{h['ratio_vs_slower_openssl']:.2f} x openssl sm3 | >= 0.85 x |")
            print(f"| peak RSS growth hashing 2 GiB | {h['rss_growth_2gib_mib']:.1f} MiB | < 64 MiB |")
            print(f"| `wz verify` of a {v['package_bytes'] / GIB:.2f} GiB package ({v['checks']} checks) | "
                  f"{v['verify_bytes_per_s'] / 1e9:.3f} GB/s = {v['ratio_vs_hashing']:.2f} x hashing | >= 0.8 x |")
        else:
            figures["upload"] = bench_upload(work)
            u = figures["upload"]
            print("| measure | figure | target |")
            print("|---|---|---|")
            print(f"| raw HTTP PUT of 1 GiB (curl, presigned; median) | {u['curl_put_bytes_per_s'] / 1e6:.0f} MB/s | |")
            each = ", ".join(f"{r:.2f}" for r in u["ratio_vs_curl_each_round"])
            print(f"| `put_file` of 1 GiB (multipart, COMPLIANCE, in-stream digests) | "
                  f"{u['ours_bytes_per_s'] / 1e6:.0f} MB/s = {u['ratio_vs_curl']:.2f} x curl "
                  f"(median of {u['rounds']} alternating rounds: {each}) | >= 0.8 x |")
            print(f"| read back by version + both digests | {u['read_back_verify_bytes_per_s'] / 1e6:.0f} MB/s | |")
            print(f"| peak RSS growth uploading 2 GiB | {u['rss_growth_2gib_upload_mib']:.1f} MiB | < 64 MiB |")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
