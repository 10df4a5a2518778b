"""The embedded SeaweedFS: an S3 server with Object Lock on this machine, used when WZ_S3_ENDPOINT is unset.

One `weed mini` process per directory, started detached so it outlives the command that started it and
serves later commands. Its pid, ports and credentials are recorded in `<directory>/seaweed.json`; a file
lock makes sure two commands starting at once start one server. Every port is set by a flag, so two
instances (a user's and the tests') never collide.

What the embedded store does and does not protect: Object Lock refuses deletion and overwrite through S3.
It is not a defence against someone with local access to the data directory or to SeaweedFS's own
unauthenticated gRPC ports; a deployment that must withstand that points WZ_S3_ENDPOINT at a hardened
S3 service with Object Lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from evidence import ComponentMissing, ConfigurationError, StorageError, StoreUnavailable
from system.processes import pid_alive

log = logging.getLogger(__name__)

STATE_FILE = "seaweed.json"
# Not evidence: a small object read at every start to know the stored data is readable again.
READY_BUCKET = "wangzheng-embedded-ready"
READY_KEY = "ready"
READY_BODY = b"wangzheng: the embedded SeaweedFS serves stored objects\n" * 64
IDENTITIES_FILE = "identities.json"
LOCK_FILE = "seaweed.lock"
LOG_FILE = "weed.log"

# SeaweedFS's admin worker dials the admin gRPC port as admin HTTP port + 10000 whatever -admin.port.grpc
# says (4.48), so the admin gRPC port must sit exactly there.
GRPC_PORT_OFFSET = 10000
# Only what weed needs: S3_BUCKET, AWS_ACCESS_KEY_ID and friends would otherwise create buckets or identities.
_WEED_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")

# Runs between us and weed: starts weed in a new session with its output in the log, prints its pid, exits.
# weed is then nobody's child here (no zombie, no ResourceWarning) and keeps running after we exit.
_LAUNCHER = """
import os, sys
log, argv = sys.argv[1], sys.argv[2:]
null = os.open(os.devnull, os.O_RDONLY)
out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
pid = os.posix_spawn(argv[0], argv, os.environ, setsid=True,
                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                                   (os.POSIX_SPAWN_DUP2, out, 2)])
print(pid, flush=True)
"""


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how to reach an S3 server."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False


@dataclass(frozen=True)
class SeaweedPorts:
    """Every TCP port one `weed mini` listens on."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def layout(cls, s3_port: int, port_base: int | None) -> SeaweedPorts:
        """`s3_port` for S3; the others at `port_base` + 0..7 (default: right after the S3 port)."""
        base = s3_port + 1 if port_base is None else port_base
        ports = cls(
            s3=s3_port,
            master=base,
            master_grpc=base + 1,
            volume=base + 2,
            volume_grpc=base + 3,
            filer=base + 4,
            filer_grpc=base + 5,
            s3_grpc=base + 6,
            admin=base + 7,
            admin_grpc=base + 7 + GRPC_PORT_OFFSET,
        )
        values = list(ports.as_dict().values())
        if any(not 1 <= port <= 65535 for port in values):
            raise ConfigurationError(
                f"embedded SeaweedFS ports {sorted(values)} fall outside 1-65535; "
                f"choose a lower WZ_EMBEDDED_S3_PORT (the admin gRPC port is the admin port + {GRPC_PORT_OFFSET})"
            )
        if len(set(values)) != len(values):
            raise ConfigurationError(f"embedded SeaweedFS ports overlap: {ports.as_dict()}; choose another port base")
        return ports

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def find_weed() -> str:
    """The `weed` binary: the one installed beside this Python (the project venv) first, then PATH."""
    beside = Path(sys.executable).parent / "weed"  # the venv's bin, also when the venv is not activated
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ComponentMissing("SeaweedFS (`weed`) is not installed; run ./scripts/setup")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports (Linux), if known."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return None
    return int(low), int(high)


def _random_token(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _write_private(path: Path, text: str) -> None:
    """Write a file only the owner can read, atomically (it holds credentials)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def probe_s3(endpoint: S3Endpoint, *, timeout: float = 5.0) -> None:
    """Real S3 calls with the credentials: ListBuckets, then a read of the readiness object.

    Answering ListBuckets is not enough: after a restart the master learns the volumes only from the
    volume server's first heartbeat, and until then every object read fails ("volume 1 not found", HTTP
    500). The readiness object, written once, reads back only when the volumes are known again.
    Raises whatever the client raises while the server is not ready.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout, 2.0), read=timeout), retries=urllib3.Retry(total=0)
    )
    try:
        client = Minio(
            endpoint.endpoint,
            access_key=endpoint.access_key,
            secret_key=endpoint.secret_key,
            secure=endpoint.secure,
            region="us-east-1",
            http_client=http,
        )
        client.list_buckets()
        try:
            response = client.get_object(READY_BUCKET, READY_KEY)
        except S3Error as exc:
            if exc.code not in {"NoSuchBucket", "NoSuchKey"}:
                raise
            # First start (or the object is gone): write it; the next probe reads it back.
            with contextlib.suppress(S3Error):
                client.make_bucket(READY_BUCKET)
            client.put_object(READY_BUCKET, READY_KEY, io.BytesIO(READY_BODY), len(READY_BODY))
            raise StoreUnavailable("readiness object written; reading it back next") from exc
        try:
            body = response.read()
        finally:
            response.close()
            response.release_conn()
        if body != READY_BODY:
            raise StorageError(f"the readiness object {READY_BUCKET}/{READY_KEY} reads back wrong")
    finally:
        http.clear()


class EmbeddedSeaweed:
    """One `weed mini` serving S3 on 127.0.0.1, its data and state kept in `directory`."""

    def __init__(
        self, directory: Path, *, s3_port: int = 8333, port_base: int | None = None, weed: str | None = None
    ) -> None:
        self.directory = Path(directory).absolute()
        self.ports = SeaweedPorts.layout(s3_port, port_base)
        self._weed = weed

    # -- paths --
    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def identities_path(self) -> Path:
        return self.directory / IDENTITIES_FILE

    # -- public API --
    def ensure_running(self, timeout: float = 60) -> S3Endpoint:
        """The running instance's endpoint, starting one if none answers S3."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # the data and the credentials are for this user only
        with self._locked(timeout + 30):
            state = self._read_state()
            if state is not None and self._is_ours(int(state["pid"])):
                return self._reuse(state, timeout)
            stray = self._stray_pid()
            if stray is not None:
                raise StorageError(
                    f"a SeaweedFS (pid {stray}) already serves {self.data_dir} but is not recorded in "
                    f"{self.state_path}; stop it (kill {stray}) and try again"
                )
            return self._start(timeout)

    def stop(self, timeout: float = 20) -> None:
        """Stop the recorded instance: SIGTERM, then SIGKILL after `timeout` seconds."""
        if not self.directory.is_dir():
            return  # never started here: nothing to stop
        with self._locked(timeout + 30):
            state = self._read_state()
            if state is None:
                return
            pid = int(state["pid"])
            if self._is_ours(pid):
                self._terminate(pid, timeout)
            self.state_path.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether the recorded instance's process is alive (it may still be starting)."""
        state = self._read_state()
        return state is not None and self._is_ours(int(state["pid"]))

    @property
    def pid(self) -> int | None:
        state = self._read_state()
        if state is None or not self._is_ours(int(state["pid"])):
            return None
        return int(state["pid"])

    def command(self, weed: str) -> list[str]:
        """The exact command line; every listening port is given explicitly."""
        p = self.ports
        return [
            weed,
            f"-logdir={self.directory / 'logs'}",
            "-alsologtostderr=false",  # glog files rotate in logs/; stderr (weed.log) keeps errors only
            "-log_max_size_mb=64",
            f"-config_dir={self.directory / 'config'}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-s3.config={self.identities_path}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Without this the filer's and master's HTTP APIs (no credentials) can delete locked objects.
            "-disableHttp",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin_grpc}",
        ]

    # -- internals --
    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)  # O_CLOEXEC: weed never holds it
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(
                            f"another process has held {self.directory / LOCK_FILE} for {timeout:.0f} s "
                            "while starting or stopping SeaweedFS; try again"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self.state_path} is unreadable ({exc}); stop SeaweedFS and delete it") from exc
        if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
            raise StorageError(f"{self.state_path} is malformed; stop SeaweedFS and delete it")
        return state

    def _is_ours(self, pid: int) -> bool:
        """Alive, and really a weed serving our data directory (pids are reused)."""
        if not pid_alive(pid, holds_ports=True):
            return False
        argv = _cmdline(pid)
        return bool(argv) and Path(argv[0]).name == "weed" and f"-dir={self.data_dir}" in argv

    def _stray_pid(self) -> int | None:
        """A weed on our data directory that the state file does not know (state deleted by hand)."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                return int(entry.name)
        return None

    def _reuse(self, state: dict[str, Any], timeout: float) -> S3Endpoint:
        if state.get("ports") != self.ports.as_dict():
            raise ConfigurationError(
                f"the SeaweedFS of {self.directory} already runs (pid {state['pid']}) with ports {state.get('ports')}; "
                f"stop it before using other ports"
            )
        endpoint = S3Endpoint(
            endpoint=f"127.0.0.1:{self.ports.s3}", access_key=state["access_key"], secret_key=state["secret_key"]
        )
        # It may still be starting in a process that died before it answered: give it the same time.
        self._wait_ready(int(state["pid"]), endpoint, timeout, started_here=False)
        return endpoint

    def _credentials(self) -> tuple[str, str]:
        """The admin identity from identities.json, created with random keys the first time."""
        if self.identities_path.exists():
            config = json.loads(self.identities_path.read_text())
            credential = config["identities"][0]["credentials"][0]
            return str(credential["accessKey"]), str(credential["secretKey"])
        access_key = "WZ" + _random_token(18, string.ascii_uppercase + string.digits)
        secret_key = _random_token(40, string.ascii_letters + string.digits)
        config = {
            "identities": [
                {
                    "name": "wangzheng",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _write_private(self.identities_path, json.dumps(config, indent=2))
        return access_key, secret_key

    def _start(self, timeout: float) -> S3Endpoint:
        weed = self._weed or find_weed()
        if not (Path(weed).is_file() and os.access(weed, os.X_OK)):
            raise ComponentMissing(f"SeaweedFS (`weed`) is not installed at {weed}; run ./scripts/setup")
        ephemeral = _ephemeral_range()
        if ephemeral is not None:
            # weed's own outgoing connections take local ports from this range while it starts, and a
            # listener that finds its port taken that way dies (seen: the filer, "address already in use").
            inside = sorted(port for port in self.ports.as_dict().values() if ephemeral[0] <= port <= ephemeral[1])
            if inside:
                raise ConfigurationError(
                    f"embedded SeaweedFS ports {inside} lie in the kernel's ephemeral port range "
                    f"{ephemeral[0]}-{ephemeral[1]}, where outgoing connections can take them; choose ports "
                    f"below {ephemeral[0]} (WZ_EMBEDDED_S3_PORT)"
                )
        busy = [port for port in self.ports.as_dict().values() if not _port_free(port)]
        if busy:
            raise ConfigurationError(
                f"ports {busy} on 127.0.0.1 are in use by another program, so the embedded SeaweedFS cannot "
                f"start; set WZ_EMBEDDED_S3_PORT to a free port (it uses {sorted(self.ports.as_dict().values())})"
            )
        access_key, secret_key = self._credentials()
        self.data_dir.mkdir(exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        (self.directory / "config").mkdir(exist_ok=True)  # empty: no stray filer.toml/security.toml applies
        argv = self.command(weed)
        env = {key: os.environ[key] for key in _WEED_ENV_KEYS if key in os.environ}
        with self.log_path.open("a") as log:
            log.write(f"\n== {datetime.now(UTC).isoformat()} starting: {' '.join(argv)}\n")
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(self.log_path), *argv],
            env=env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if launched.returncode != 0 or not launched.stdout.strip().isdigit():
            raise ComponentMissing(f"could not start {weed}: {launched.stderr.strip()[-500:]}; run ./scripts/setup")
        pid = int(launched.stdout.strip())
        endpoint = S3Endpoint(endpoint=f"127.0.0.1:{self.ports.s3}", access_key=access_key, secret_key=secret_key)
        state = {
            "pid": pid,
            "ports": self.ports.as_dict(),
            "endpoint": endpoint.endpoint,
            "access_key": access_key,
            "secret_key": secret_key,
            "data_dir": str(self.data_dir),
            "started_at": datetime.now(UTC).isoformat(),
            "argv": argv,
        }
        _write_private(self.state_path, json.dumps(state, indent=2))
        self._wait_ready(pid, endpoint, timeout, started_here=True)
        return endpoint

    def _wait_ready(self, pid: int, endpoint: S3Endpoint, timeout: float, *, started_here: bool) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            if not pid_alive(pid, holds_ports=True):
                self.state_path.unlink(missing_ok=True)
                raise StorageError(
                    f"SeaweedFS (pid {pid}) exited before serving S3 on {endpoint.endpoint}: {self._log_cause()} "
                    f"(see {self.log_path})"
                )
            try:
                probe_s3(endpoint, timeout=5)
            except Exception as exc:  # not ready yet: refused, reset, 500/503, volumes not registered yet
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if started_here:
            self._terminate(pid, 20)
            self.state_path.unlink(missing_ok=True)
        raise StoreUnavailable(
            f"SeaweedFS (pid {pid}) did not answer S3 on {endpoint.endpoint} within {timeout:.0f} s "
            f"({last_error[:200]}); last logged: {self._log_cause()} (see {self.log_path})"
        )

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10):
                raise StorageError(f"SeaweedFS (pid {pid}) survived SIGKILL; stop it by hand")
        # Return only once its ports are free again, so that a restart right after cannot collide with it.
        deadline = time.monotonic() + 10
        while any(not _port_free(port) for port in self.ports.as_dict().values()):
            if time.monotonic() > deadline:
                log.warning("SeaweedFS (pid %d) has exited but its ports are still in use", pid)
                return
            time.sleep(0.1)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(pid, holds_ports=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _log_cause(self) -> str:
        """The one log line that says what went wrong (its last error, else its last line), not the start banner."""
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        if not lines:
            return "nothing logged"
        markers = ("error", "fatal", "panic", "fail", "cannot", "denied", "address already in use")
        errors = [line for line in lines if any(marker in line.lower() for marker in markers)]
        cause = (errors or lines)[-1]
        return cause if len(cause) <= 300 else cause[:299] + "…"
