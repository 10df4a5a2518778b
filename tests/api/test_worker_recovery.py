"""Workers as separate processes: a worker killed with SIGKILL mid-recording shows `interrupted` within 60 s,
and when a worker starts again on its host, what was recorded is finalized as `partial` and preserved."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capture.fixtures import FixtureServer
from capture.fixtures.server import live_path
from storage import S3Endpoint
from tests.api.conftest import REPO, serve_process

pytestmark = pytest.mark.integration


def test_a_killed_worker_is_interrupted_then_finalized_when_it_comes_back(
        tmp_path: Path, s3_server: S3Endpoint, demo_server: FixtureServer) -> None:
    for served in serve_process(tmp_path / "data", s3_server, "--no-worker"):
        first, second = served.start_worker(4), served.start_worker(4)
        client = served.client
        wang = served.add_user("wang", "investigator")
        case_id = client.post("/cases", headers=wang, json={"title": "kill -9"}).json()["id"]
        urls = [demo_server.base_url + live_path(room) for room in (1, 2)]
        capture_id = client.post(f"/cases/{case_id}/captures", headers=wang, json={"urls": urls}).json()["id"]
        recording = served.wait_state(capture_id, "wang", ("recording",), timeout=120)
        pid = int(str(recording["worker"]).split("-")[-2])
        assert pid in (first.pid, second.pid)
        survivor = second if pid == first.pid else first
        time.sleep(6)

        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        interrupted = served.wait_state(capture_id, "wang", ("interrupted",), timeout=75)
        took = time.monotonic() - killed
        assert took < 60, f"interrupted only after {took:.0f} s"
        assert "stopped sending heartbeats" in interrupted["reason"]
        assert survivor.poll() is None, "the other worker goes on"
        # The survivor does not take over another worker's recording; the capture waits for its host.
        time.sleep(12)
        assert client.get(f"/captures/{capture_id}", headers=wang).json()["state"] == "interrupted"

        served.start_worker(4)  # the killed worker comes back
        final = served.wait_state(capture_id, "wang", ("complete", "partial", "failed"), timeout=300)
        assert final["state"] == "partial", final
        assert final["summary"]["preserved"] and final["summary"]["recorded_seconds"] >= 4, final["summary"]
        assert "finalized after its worker was interrupted" in final["reason"]
        custody = [e["action"] for e in client.get(f"/captures/{capture_id}/custody", headers=wang).json()]
        for action in ("capture-requested", "capture-started", "capture-interrupted", "captured", "signed",
                       "capture-ended"):
            assert action in custody, custody
        events = client.get(f"/captures/{capture_id}/events", headers=wang).text
        assert "event: state" in events and '"state": "interrupted"' in events and '"state": "partial"' in events
        # Downloads work for the recovered capture like any other.
        manifest = client.get(f"/captures/{capture_id}/manifest", headers=wang)
        assert manifest.status_code == 200 and manifest.json()["status"] == "partial"


def test_a_worker_on_another_host_needs_the_nodes_keys(tmp_path: Path, s3_server: S3Endpoint) -> None:
    """A second host shares the database and the store; with keys of its own it would sign the node's custody
    ledger with a stranger's key, so it refuses to start and says what to copy."""
    for served in serve_process(tmp_path / "data", s3_server, "--no-worker"):
        served.client.get("/log/checkpoint").raise_for_status()  # the service has claimed the ledger for its CA
        elsewhere = served.env | {"WZ_DATA_DIR": str(tmp_path / "other-host")}
        command = [sys.executable, "-m", "cli.main", "worker", "--tiles", "1"]
        refused = subprocess.run(command, env=elsewhere, cwd=REPO, capture_output=True, text=True, timeout=120,
                                 check=False)
        assert refused.returncode != 0
        assert "copy the node's keys directory" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr

        shutil.rmtree(tmp_path / "other-host" / "keys")  # the keys that host made for itself
        shutil.copytree(tmp_path / "data" / "keys", tmp_path / "other-host" / "keys")
        log = (tmp_path / "other-host.log").open("wb")
        worker = subprocess.Popen(command, env=elsewhere, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "ready" not in (tmp_path / "other-host.log").read_text(errors="replace"):
                assert worker.poll() is None, (tmp_path / "other-host.log").read_text(errors="replace")
                assert time.monotonic() < deadline, "the worker with the node's keys did not start"
                time.sleep(0.5)
        finally:
            worker.terminate()
            worker.wait(60)
            log.close()
