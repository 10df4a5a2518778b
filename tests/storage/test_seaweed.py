"""The embedded SeaweedFS launcher: one detached server per directory, every port chosen by us."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from evidence import ComponentMissing, ConfigurationError, Settings
from storage import EmbeddedSeaweed, S3Endpoint, SeaweedPorts, store_from_settings
from tests.storage.conftest import PORT_BASE, S3_PORT, make_store, write_file

pytestmark = pytest.mark.integration  # a real SeaweedFS

REPO = Path(__file__).resolve().parents[2]


def listening_ports(pid: int, expected: set[int]) -> set[int]:
    """The ports `pid` listens on, once it listens on `expected` (the admin server starts after S3 answers)."""
    deadline = time.monotonic() + 15
    while True:
        ports = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN}
        if expected <= ports or time.monotonic() > deadline:
            return ports
        time.sleep(0.1)


def test_ensure_running_again_reuses_the_same_server(seaweed: EmbeddedSeaweed, endpoint: S3Endpoint) -> None:
    pid = seaweed.pid
    assert pid is not None and seaweed.running()
    again = seaweed.ensure_running()
    assert again == endpoint
    assert seaweed.pid == pid
    # A second launcher object for the same directory finds the same server too.
    other = EmbeddedSeaweed(seaweed.directory, s3_port=S3_PORT, port_base=PORT_BASE)
    assert other.ensure_running() == endpoint
    assert other.pid == pid
    weeds = [p for p in psutil.process_iter(["cmdline"]) if f"-dir={seaweed.data_dir}" in (p.info["cmdline"] or [])]
    assert [p.pid for p in weeds] == [pid]


def test_every_listening_port_is_ours(seaweed: EmbeddedSeaweed, endpoint: S3Endpoint) -> None:
    ports = SeaweedPorts.layout(S3_PORT, PORT_BASE)
    assert seaweed.pid is not None
    expected = set(ports.as_dict().values())
    assert listening_ports(seaweed.pid, expected) == expected
    assert endpoint.endpoint == f"127.0.0.1:{S3_PORT}" and not endpoint.secure
    argv = psutil.Process(seaweed.pid).cmdline()
    for flag in ("-s3.port", "-s3.port.grpc", "-master.port", "-master.port.grpc", "-volume.port",
                 "-volume.port.grpc", "-filer.port", "-filer.port.grpc", "-admin.port", "-admin.port.grpc"):
        assert any(arg.startswith(flag + "=") for arg in argv), flag
    assert "-master.telemetry=false" in argv and "-ip.bind=127.0.0.1" in argv


def test_credentials_and_state_are_private(seaweed: EmbeddedSeaweed, endpoint: S3Endpoint) -> None:
    for path in (seaweed.identities_path, seaweed.state_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(seaweed.directory.stat().st_mode) == 0o700
    identities = json.loads(seaweed.identities_path.read_text())
    assert identities["identities"][0]["credentials"] == [
        {"accessKey": endpoint.access_key, "secretKey": endpoint.secret_key}
    ]
    state = json.loads(seaweed.state_path.read_text())
    assert state["pid"] == seaweed.pid and state["ports"] == SeaweedPorts.layout(S3_PORT, PORT_BASE).as_dict()
    assert len(endpoint.secret_key) >= 40


def test_the_filer_http_api_is_closed(seaweed: EmbeddedSeaweed, store: Any) -> None:
    """The filer's HTTP API takes no credentials and ignores Object Lock; it must not serve."""
    ports = SeaweedPorts.layout(S3_PORT, PORT_BASE)
    for port in (ports.filer, ports.master):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("DELETE", f"/buckets/{store.bucket}?recursive=true")
            assert conn.getresponse().status == 404
        finally:
            conn.close()
    store.ensure_bucket()  # the bucket is untouched


def test_other_ports_for_a_running_directory_are_refused(seaweed: EmbeddedSeaweed) -> None:
    with pytest.raises(ConfigurationError, match="already runs"):
        EmbeddedSeaweed(seaweed.directory, s3_port=S3_PORT + 1, port_base=PORT_BASE).ensure_running()


def test_missing_weed_is_a_missing_component(tmp_path: Path) -> None:
    with pytest.raises(ComponentMissing, match=re.escape("./scripts/setup")):
        EmbeddedSeaweed(tmp_path, s3_port=18933, port_base=18940, weed=str(tmp_path / "no-weed")).ensure_running()
    assert not (tmp_path / "seaweed.json").exists()


def test_ports_in_use_are_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 18951))  # what will be the master port
        taken.listen()
        with pytest.raises(ConfigurationError, match=re.escape("ports [18951] on 127.0.0.1 are in use")):
            EmbeddedSeaweed(tmp_path, s3_port=18950, port_base=18951).ensure_running()
    assert not (tmp_path / "seaweed.json").exists()


def test_ports_in_the_ephemeral_range_are_refused(tmp_path: Path) -> None:
    low, _high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    with pytest.raises(ConfigurationError, match="ephemeral port range"):
        EmbeddedSeaweed(tmp_path, s3_port=low + 100, port_base=1200).ensure_running()


def test_port_layout_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="outside"):
        SeaweedPorts.layout(8333, 60000)  # admin gRPC would be 70007
    with pytest.raises(ConfigurationError, match="overlap"):
        SeaweedPorts.layout(8334, 8330)


START = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from storage import EmbeddedSeaweed
    seaweed = EmbeddedSeaweed(Path(sys.argv[1]), s3_port=int(sys.argv[2]), port_base=int(sys.argv[3]))
    endpoint = seaweed.ensure_running()
    print(seaweed.pid, endpoint.endpoint, endpoint.access_key)
    """
)


def test_concurrent_starts_stop_and_restart_keep_one_server_and_the_data(tmp_path: Path) -> None:
    directory, s3_port, port_base = tmp_path / "seaweedfs", 18533, 18600
    args = [sys.executable, "-c", START, str(directory), str(s3_port), str(port_base)]
    starters = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outputs = [starter.communicate(timeout=120) for starter in starters]
    assert all(starter.returncode == 0 for starter in starters), outputs
    seaweed = EmbeddedSeaweed(directory, s3_port=s3_port, port_base=port_base)
    try:
        assert outputs[0][0] == outputs[1][0]  # the same pid, endpoint and key: one server was started
        pid = int(outputs[0][0].split()[0])
        assert seaweed.pid == pid
        endpoint = seaweed.ensure_running()
        store = make_store(endpoint, "persist")
        path, digests = write_file(tmp_path / "f", b"kept across restarts")
        stored = store.put_file("f", path, content_type="text/plain", digests=digests)
        store.close()

        seaweed.stop()
        assert not seaweed.running()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s3_port), timeout=2).close()

        again = seaweed.ensure_running()
        assert again == endpoint  # credentials persist in identities.json
        assert seaweed.pid not in (None, pid)
        assert make_store(again, "persist").verify(stored).verified_at is not None
    finally:
        seaweed.stop()
    assert not seaweed.running()


def test_store_from_settings_starts_the_embedded_server(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", s3_endpoint="", embedded_s3_port=18433,
                        s3_bucket="wangzheng-evidence", retention_days=1)
    embedded = EmbeddedSeaweed(settings.services_dir / "seaweedfs", s3_port=18433)
    try:
        store = store_from_settings(settings)
        assert store.endpoint == "127.0.0.1:18433"
        assert embedded.running()
        assert embedded.pid is not None
        expected = set(SeaweedPorts.layout(18433, None).as_dict().values())
        assert listening_ports(embedded.pid, expected) == expected
        store.ensure_bucket()
        path, digests = write_file(tmp_path / "f", os.urandom(1000))
        assert store.verify(store.put_file("f", path, content_type="x/y", digests=digests)).verified_at
    finally:
        embedded.stop()


def test_a_failed_start_is_named_by_its_cause_not_by_the_start_banner(tmp_path: Path) -> None:
    instance = EmbeddedSeaweed(tmp_path, s3_port=S3_PORT, port_base=PORT_BASE)
    banner = [f"I1130 12:00:0{n} master.go:{n}] SeaweedFS {n} starting, listening on ..." for n in range(20)]
    instance.log_path.write_text("\n".join([*banner[:12], "F1130 12:00:12 volume.go:99] failed to listen on "
                                            "127.0.0.1:18402: bind: address already in use", *banner[12:]]) + "\n")
    cause = instance._log_cause()
    assert cause.startswith("F1130") and "address already in use" in cause and "\n" not in cause
