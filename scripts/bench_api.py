"""The custody service's figures, on PostgreSQL: custody appends, proof latency, hash lookups, downloads.

- appends: 4 writers appending to the ledger, each append committed before it returns; as 4 threads of one
  process sharing its ledger (the service's request threads) and as 4 processes (the service and workers).
- proofs: inclusion and consistency proof latency on a ledger of --entries entries.
- hash lookups: p50 / p99 of POST /api/v1/verify/hash from 50 concurrent clients on loopback (`wz serve`), first
  each sending the next lookup as soon as the last is answered (the most the service can take), then each pausing
  between lookups (2 s on average is the service's per-client limit), and the service's CPU per lookup.
- downloads: a --size-mib artifact through GET /api/v1/captures/{id}/artifacts/... against a direct GET of the
  same object version from the store, the CPU seconds per GiB of the store, the service and curl on each path
  (on a machine whose cores serve both, their sums bound the ratio), and the service's RSS before and after.

Prints a Markdown table; targets from the issue are beside each figure. Needs PostgreSQL at --postgres (default:
the machine's server, database `test`); makes and drops its own database there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_fixtures import write_bench_manifest  # noqa: E402 - beside this script

POSTGRES = os.environ.get("WZ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSWORD = "bench password 1"  # noqa: S105 - the bench user's password
PAUSES_MS = (2000, 500, 300, 200)  # mean pause between one client's lookups, after the unpaced run


def fresh_database(server: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, make_url

    name = f"wz_bench_{secrets.token_hex(5)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(server).set(database=name).render_as_string(hide_password=False), drop


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


# -- appends ---------------------------------------------------------------------------------------------

def _append_process(url: str, count: int, name: str, ready: Any, out: Any) -> None:
    from custody.ledger import Ledger
    from evidence import CustodyAction

    latencies = []
    with Ledger(url) as ledger:
        ledger.size()
        ready.wait(timeout=120)  # every process started and connected: the clock measures appends only
        begun = time.monotonic()
        for k in range(count):
            started = time.perf_counter()
            ledger.append(name, CustodyAction.VIEWED, f"bench-{name}", {"k": k})
            latencies.append(time.perf_counter() - started)
        out.put((begun, time.monotonic(), latencies))


def bench_appends(url: str, count: int) -> dict[str, Any]:
    from custody.ledger import Ledger
    from evidence import CustodyAction

    shared = Ledger(url)
    shared.size()
    latencies: list[float] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        mine = []
        for k in range(count):
            started = time.perf_counter()
            shared.append(f"thread {number}", CustodyAction.VIEWED, f"bench-{number}", {"k": k})
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    threaded = 4 * count / (time.perf_counter() - started)
    shared.close()

    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    ready = context.Barrier(4)
    processes = [context.Process(target=_append_process, args=(url, count, f"process {n}", ready, results))
                 for n in range(4)]
    for process in processes:
        process.start()
    process_latencies: list[float] = []
    spans = []
    for _ in processes:
        begun, ended, latencies_of_one = results.get()
        spans.append((begun, ended))
        process_latencies.extend(latencies_of_one)
    for process in processes:
        process.join()
    # From the first append to the last (CLOCK_MONOTONIC is one clock for every process of the machine).
    processes_rate = 4 * count / (max(e for _, e in spans) - min(b for b, _ in spans))
    single = Ledger(url)
    alone = []
    for k in range(300):
        begun = time.perf_counter()
        single.append("alone", CustodyAction.VIEWED, "bench-alone", {"k": k})
        alone.append(time.perf_counter() - begun)
    single.close()
    return {"threads_per_s": threaded, "threads_p50_ms": percentile(latencies, 0.5) * 1000,
            "threads_p99_ms": percentile(latencies, 0.99) * 1000, "processes_per_s": processes_rate,
            "processes_p50_ms": percentile(process_latencies, 0.5) * 1000,
            "processes_p99_ms": percentile(process_latencies, 0.99) * 1000,
            "single_p50_ms": percentile(alone, 0.5) * 1000, "single_p99_ms": percentile(alone, 0.99) * 1000}


# -- proofs ----------------------------------------------------------------------------------------------

def bench_proofs(url: str, entries: int) -> dict[str, Any]:
    from custody.ledger import Ledger
    from evidence import CustodyAction
    from evidence.canonical import canonical_json

    ledger = Ledger(url)
    have = ledger.size()
    fill_started = time.perf_counter()
    while have < entries:  # filled in large transactions through the ledger's own writer (guards on)
        batch = min(5000, entries - have)
        items = [("bench", CustodyAction.VIEWED, f"bench-{(have + k) % 97}",
                  canonical_json({"k": have + k}).decode()) for k in range(batch)]
        ledger._write_batch(items)  # bulk fill only: appends go one by one everywhere else
        have += batch
    fill = time.perf_counter() - fill_started
    size = ledger.size()
    inclusion, consistency = [], []
    ledger.inclusion_proof(size, size)  # the first query of a connection is not what a service sees
    for k in range(50):
        seq = 1 + (k * 7919 * 131) % size
        started = time.perf_counter()
        ledger.inclusion_proof(seq, size)
        inclusion.append(time.perf_counter() - started)
        started = time.perf_counter()
        ledger.consistency_proof(max(1, (size * (k + 1)) // 51 + k), size)
        consistency.append(time.perf_counter() - started)
    ledger.close()
    return {"entries": size, "fill_seconds": fill, "inclusion_ms": statistics.median(inclusion) * 1000,
            "consistency_ms": statistics.median(consistency) * 1000,
            "inclusion_p99_ms": percentile(inclusion, 0.99) * 1000,
            "consistency_p99_ms": percentile(consistency, 0.99) * 1000}


# -- the running service -----------------------------------------------------------------------------------

def make_capture(directory: Path, size_mib: int) -> str:
    capture_id = f"wz-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    directory.mkdir(parents=True)
    with (directory / "composite.mp4").open("wb") as sink:
        for _ in range(size_mib):
            sink.write(os.urandom(1 << 20))
    write_bench_manifest(directory, capture_id)
    return capture_id


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("WZ_BENCH_BODY")
local pause = tonumber(os.getenv("WZ_BENCH_PAUSE_MS") or "0")
-- Each client pauses a random time (mean `pause`): clients that all wait the same time would send in one burst.
function setup(thread) thread:set("seed", math.random(1, 1000000)) end
function init(args) math.randomseed(seed) end
if pause > 0 then
  function delay() return math.random(0, 2 * pause) end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK-JSON {\\"requests\\": %d, \\"errors\\": %d, \\"seconds\\": %f, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d}\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, body: str, clients: int, seconds: int, work: Path, *, pause_ms: int = 0,
            pid: int | None = None) -> dict[str, Any]:
    """Load from wrk (a C program, so the load costs the 2 cores little): `clients` connections, each sending its
    next lookup a random pause (mean `pause_ms`) after the last is answered (0: at once, the most the service can
    take); any non-2xx
    answer counts as an error. With `pid`, also the CPU that process spent per lookup."""
    script = work / "lookup.lua"
    script.write_text(WRK_SCRIPT)
    before = cpu_seconds(pid) if pid is not None else 0.0
    done = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script),
                           url], env=os.environ | {"WZ_BENCH_BODY": body, "WZ_BENCH_PAUSE_MS": str(pause_ms)},
                          capture_output=True, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK-JSON "))
    figures: dict[str, Any] = json.loads(line.removeprefix("WRK-JSON "))
    figures["pause_ms"] = pause_ms
    figures["per_s"] = figures["requests"] / figures["seconds"]
    if pid is not None:
        figures["cpu_ms_per_lookup"] = (cpu_seconds(pid) - before) * 1000 / max(1, figures["requests"])
    return figures


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_pid(data: Path) -> int:
    """The embedded SeaweedFS serving the bench's data directory."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or ())
        if "weed" in command and str(data) in command and " mini " in f" {command} ":
            return int(process.info["pid"])
    raise RuntimeError(f"no SeaweedFS process serves {data}")


def count_lookups(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM custody_entries WHERE action = 'hash-lookup'"))
                       .scalar_one())
    finally:
        engine.dispose()


def curl_seconds(url: str, size: int, pid: int | None = None, authorization: str | None = None, *,
                 spent: dict[str, float] | None = None, store: int | None = None) -> tuple[float, float]:
    """Seconds to fetch `url` with curl (checking every byte arrived) and the peak RSS of `pid` meanwhile. With
    `spent`, adds the CPU seconds of curl, the service (`pid`) and the store (`store`) to it."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}"]
    if authorization:
        command += ["-H", f"Authorization: {authorization}"]
    peak = 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    service_cpu = cpu_seconds(pid) if pid is not None else 0.0
    store_cpu = cpu_seconds(store) if store is not None else 0.0
    started = time.perf_counter()
    fetch = subprocess.Popen([*command, url], stdout=subprocess.PIPE, text=True)
    while fetch.poll() is None:
        if pid is not None:
            peak = max(peak, rss_mib(pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    received = int(fetch.stdout.read() if fetch.stdout else 0)
    assert fetch.returncode == 0 and received == size, (fetch.returncode, received, size)
    if spent is not None:
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent["curl"] = spent.get("curl", 0.0) + (after.ru_utime + after.ru_stime - children.ru_utime
                                                  - children.ru_stime)
        if pid is not None:
            spent["service"] = spent.get("service", 0.0) + cpu_seconds(pid) - service_cpu
        if store is not None:
            spent["store"] = spent.get("store", 0.0) + cpu_seconds(store) - store_cpu
    return seconds, peak


def bench_service(url: str, work: Path, size_mib: int, clients: int, seconds: int) -> dict[str, Any]:
    import httpx
    from minio import Minio
    from sqlalchemy import create_engine, insert, select

    from evidence import Settings
    from preservation.preserve import Preserver
    from preservation.registry import register
    from preservation.services import Services
    from service.captures import finish_from_directory
    from service.db import captures, case_members, cases, users
    from service.schema import upgrade
    from storage.seaweed import EmbeddedSeaweed

    data = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WZ_")} | {
        "WZ_DATA_DIR": str(data), "WZ_DATABASE_URL": url, "WZ_EMBEDDED_S3_PORT": "21333",
        "WZ_HASH_LOOKUPS_PER_MINUTE": "100000000", "WZ_NTP_TIMEOUT_SECONDS": "1", "WZ_ACTOR": "bench",
        "WZ_RETENTION_DAYS": "1"}
    settings = Settings(data_dir=data, database_url=url, embedded_s3_port=21333, actor="bench", retention_days=1)
    directory = settings.captures_dir / "bench"
    capture_id = make_capture(directory, size_mib)
    register(settings.registry_dir, capture_id, directory)
    engine = create_engine(url)
    upgrade(engine)
    with Services(settings) as services:
        record = Preserver(services).preserve(directory)
        wz = [sys.executable, "-m", "cli.main"]
        subprocess.run([*wz, "users", "add", "bench", "--role", "investigator", "--password-stdin"], env=env,
                       cwd=REPO, input=PASSWORD + "\n", text=True, check=True, capture_output=True)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            user = conn.execute(select(users.c.id).where(users.c.name == "bench")).scalar_one()
            conn.execute(insert(cases).values(id="C-20261130-bbbbbb", title="bench", description="", reference="",
                                              state="opened", legal_hold=False, created_by=user, created_at=now,
                                              updated_at=now))
            conn.execute(insert(case_members).values(case_id="C-20261130-bbbbbb", user_id=user, role="investigator",
                                                     added_by=user, added_at=now))
            conn.execute(insert(captures).values(id=capture_id, case_id="C-20261130-bbbbbb", requested_by=user,
                                                 state="preserving", request={"urls": []}, tiles=1,
                                                 created_at=now))
        finish_from_directory(engine, services, capture_id, directory)
        store = services.store()
        composite = next(s for s in record.stored if s.key.endswith("/composite.mp4"))
        endpoint = EmbeddedSeaweed(settings.services_dir / "seaweedfs", s3_port=21333).ensure_running()
    engine.dispose()

    port = 28080
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen([*wz, "serve", "--no-worker", "--port", str(port)], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/log/checkpoint", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        token = httpx.post(base + "/auth/token", data={"username": "bench", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        digest = record.manifest.sha256

        answer = httpx.post(base + "/verify/hash", json={"sha256": digest}, timeout=60)
        assert answer.status_code == 200 and answer.json()["registered"], answer.text
        lookups_before = count_lookups(url)
        body = json.dumps({"sha256": digest})
        wrk = run_wrk(base + "/verify/hash", body, clients, seconds, work, pid=server.pid)
        # The same clients, each pausing a random time between lookups: how the answer time grows with the rate.
        # A mean pause of 2 s is the service's own per-client limit (WZ_HASH_LOOKUPS_PER_MINUTE, 30 a minute).
        paced = [run_wrk(base + "/verify/hash", body, clients, seconds, work, pause_ms=pause, pid=server.pid)
                 for pause in PAUSES_MS]
        lookups_recorded = count_lookups(url) - lookups_before

        rss_before = rss_mib(server.pid)
        raw = Minio(endpoint.endpoint, access_key=endpoint.access_key, secret_key=endpoint.secret_key, secure=False,
                    region="us-east-1")
        direct_url = raw.presigned_get_object(store.bucket, composite.key, version_id=composite.version_id)
        # The same client (curl) for both, as a browser or a court's tool fetches it; the service's RSS is
        # sampled while it streams. Each side is fetched 3 times and the best kept.
        # The CPU each side costs (the store, the service, curl) is summed over the 3 fetches: on a machine whose
        # cores all serve one download, the sums bound what the service's path can reach.
        serving = store_pid(data)
        api_cpu: dict[str, float] = {}
        direct_cpu: dict[str, float] = {}
        api_seconds, peak = min(curl_seconds(base + f"/captures/{capture_id}/artifacts/composite.mp4",
                                             composite.size, server.pid, headers["Authorization"],
                                             spent=api_cpu, store=serving)
                                for _ in range(3))
        direct_seconds, _ = min(curl_seconds(direct_url, composite.size, spent=direct_cpu, store=serving)
                                for _ in range(3))
        per_gib = 3 * size_mib / 1024
        return {"lookups": wrk["requests"] + sum(run["requests"] for run in paced),
                "lookup_errors": wrk["errors"] + sum(run["errors"] for run in paced),
                "lookups_recorded": lookups_recorded, "paced": paced,
                "lookup_cpu_ms": wrk["cpu_ms_per_lookup"],
                "download_cpu_s_per_gib": {k: v / per_gib for k, v in api_cpu.items()},
                "direct_cpu_s_per_gib": {k: v / per_gib for k, v in direct_cpu.items()},
                "clients": clients, "lookup_p50_ms": wrk["p50_us"] / 1000, "lookup_p99_ms": wrk["p99_us"] / 1000,
                "lookup_max_ms": wrk["max_us"] / 1000, "lookups_per_s": wrk["requests"] / wrk["seconds"],
                "download_mib_s": size_mib / api_seconds, "direct_mib_s": size_mib / direct_seconds,
                "download_ratio": direct_seconds / api_seconds, "rss_before_mib": rss_before,
                "rss_peak_mib": max(peak, rss_before)}
    finally:
        server.terminate()
        server.wait(60)
        log.close()
        subprocess.run([*wz, "services", "stop"], env=env, cwd=REPO, check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=POSTGRES, help="a PostgreSQL server URL to make the databases on")
    parser.add_argument("--appends", type=int, default=2000, help="appends per writer")
    parser.add_argument("--entries", type=int, default=100_000, help="ledger size for the proof latency")
    parser.add_argument("--size-mib", type=int, default=256, help="artifact size for the download")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20, help="how long the hash lookup load runs")
    parser.add_argument("--only", default="appends,proofs,service", help="which parts to run (comma-separated)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    wanted = {part.strip() for part in args.only.split(",")}
    figures: dict[str, Any] = {"load_average_at_start": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="wz-bench-api-"))
    try:
        for name, run in (("appends", lambda url: bench_appends(url, args.appends)),
                          ("proofs", lambda url: bench_proofs(url, args.entries)),
                          ("service", lambda url: bench_service(url, work, args.size_mib, args.clients,
                                                                args.seconds))):
            if name not in wanted:
                continue
            url, drop = fresh_database(args.postgres)
            try:
                figures[name] = run(url)
            finally:
                drop()
            print(f"{name}: {json.dumps(figures[name])}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at start: {figures['load_average_at_start']:.2f}\n")
    print("| metric | figure | target |\n|---|---|---|")
    if "appends" in figures:
        a = figures["appends"]
        print(f"| custody appends/s, 4 threads of one process (each committed) | {a['threads_per_s']:,.0f} | "
              ">= 2,000 |")
        print(f"| custody appends/s, 4 processes | {a['processes_per_s']:,.0f} | >= 2,000 |")
        print(f"| one append alone p50 / p99 (ms) | {a['single_p50_ms']:.1f} / {a['single_p99_ms']:.1f} | "
              "p99 < 20 |")
        print(f"| append under 4 threads p50 / p99 (ms) | {a['threads_p50_ms']:.1f} / {a['threads_p99_ms']:.1f} | |")
        print(f"| append under 4 processes p50 / p99 (ms) | {a['processes_p50_ms']:.1f} / "
              f"{a['processes_p99_ms']:.1f} | |")
    if "proofs" in figures:
        p = figures["proofs"]
        print(f"| inclusion / consistency proof at {p['entries']:,} entries, p50 (p99) of 50 (ms) | "
              f"{p['inclusion_ms']:.1f} ({p['inclusion_p99_ms']:.1f}) / {p['consistency_ms']:.1f} "
              f"({p['consistency_p99_ms']:.1f}) | < 5 at 1,000,000 |")
    if "service" in figures:
        s = figures["service"]
        print(f"| hash lookup p50 / p99, {s['clients']} clients (wrk; ms) | {s['lookup_p50_ms']:.1f} / "
              f"{s['lookup_p99_ms']:.1f} | p99 < 50 |")
        print(f"| service CPU per lookup (ms), unpaced | {s['lookup_cpu_ms']:.2f} | |")
        for run in s["paced"]:
            print(f"| hash lookup p50 / p99, {s['clients']} clients each pausing {run['pause_ms']} ms on average "
                  f"({run['per_s']:,.0f} lookups/s; ms) | {run['p50_us'] / 1000:.1f} / {run['p99_us'] / 1000:.1f} | "
                  "p99 < 50 |")
        print(f"| hash lookups answered (all runs) / recorded in custody / errors | {s['lookups']:,} "
              f"/ {s['lookups_recorded']:,} / {s['lookup_errors']} | every lookup recorded |")
        print(f"| artifact download vs direct GET ({args.size_mib} MiB) | {s['download_mib_s']:.0f} vs "
              f"{s['direct_mib_s']:.0f} MiB/s = {s['download_ratio']:.2f}x | >= 0.8x |")
        cpu, direct = s["download_cpu_s_per_gib"], s["direct_cpu_s_per_gib"]
        print(f"| CPU seconds per GiB through the service: store / service / curl | {cpu['store']:.2f} / "
              f"{cpu['service']:.2f} / {cpu['curl']:.2f} | |")
        print(f"| CPU seconds per GiB direct: store / curl | {direct['store']:.2f} / {direct['curl']:.2f} | |")
        print(f"| service RSS before / peak during the download (MiB) | {s['rss_before_mib']:.0f} / "
              f"{s['rss_peak_mib']:.0f} | flat |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
