"""The embedded PostgreSQL: a private cluster under the data directory, used when WZ_DATABASE_URL is unset.

Debian's `postgresql` binaries; `initdb` once, then `pg_ctl start` listening on a Unix socket only (no TCP port),
trust authentication on a socket directory only its owner can enter. It keeps running for later commands, like
the embedded SeaweedFS, and `wz services stop` stops it.

PostgreSQL refuses to run as root. Run as root, the cluster belongs to the unprivileged system user `wangzheng`
(made by ./scripts/setup for this and nothing else, not the `postgres` user the machine's own server runs as),
and that user is given search permission (an ACL entry `u:wangzheng:--x`, nothing more) on the directories above
the data directory it could not otherwise pass, such as /root. Passing is not reading: `wz` writes everything
with umask 077, so the files it keeps there are its owner's alone, and Wangzheng connects as a role that is no
superuser, so no SQL reads a file. Run as another user, the cluster is that user's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from evidence import ComponentMissing, ConfigurationError, StorageError

log = logging.getLogger(__name__)

DATABASE = "wangzheng"
ROLE = "wz"  # what Wangzheng connects as: owns its database, no superuser (no file access through SQL)
ADMIN_ROLE = "wz_admin"  # the cluster's superuser, used only to create the role and the database
SERVICE_USER = "wangzheng"
DEFAULT_PORT = 5432  # names the socket file only: the cluster listens on no TCP port
MAX_CONNECTIONS = 300
_SOCKET_PATH_LIMIT = 100  # sun_path holds 107 bytes; ".s.PGSQL.NNNNN" is appended to the directory


def find_bindir() -> Path:
    """The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/N/bin)."""
    root = Path("/usr/lib/postgresql")
    candidates = sorted((p for p in root.glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not candidates:
        raise ComponentMissing("PostgreSQL's server programs (initdb, pg_ctl) are not installed; run ./scripts/setup "
                               "(Debian package postgresql) or set WZ_DATABASE_URL to an external PostgreSQL")
    return candidates[-1]


class EmbeddedPostgres:
    """One private cluster per directory (`<data dir>/services/postgres`)."""

    def __init__(self, directory: Path, *, port: int = DEFAULT_PORT) -> None:
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"the embedded PostgreSQL's port must be 1-65535, not {port}")
        self.directory = Path(directory).absolute()
        self.port = port
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._user = SERVICE_USER if os.geteuid() == 0 else None

    # -- where --

    @property
    def socket_dir(self) -> Path:
        """Under the cluster's directory when the path is short enough for a Unix socket, else under /tmp."""
        beside = self.directory / "run"
        if len(str(beside)) + 16 <= _SOCKET_PATH_LIMIT:
            return beside
        tag = hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"wz-pg-{tag}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{ROLE}@/{DATABASE}?host={self.socket_dir}&port={self.port}"


    # -- running programs as the cluster's owner --

    def _run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL, cwd="/")
        except FileNotFoundError as exc:
            raise ComponentMissing(f"{argv[0]} is not installed; run ./scripts/setup") from exc
        except subprocess.TimeoutExpired as exc:
            raise StorageError(f"{' '.join(argv[:4])} did not finish within {timeout:.0f} s") from exc

    def _owner_ids(self) -> tuple[int, int]:
        if self._user is None:
            return os.getuid(), os.getgid()
        try:
            entry = pwd.getpwnam(self._user)
        except KeyError as exc:
            raise ComponentMissing(f"the system user {self._user!r} that runs the embedded PostgreSQL does not exist; "
                                   "run ./scripts/setup") from exc
        return entry.pw_uid, entry.pw_gid

    def _grant_search(self, path: Path) -> list[str]:
        """Let the service user pass through every directory above `path` (search only, by ACL)."""
        if self._user is None:
            return []
        granted = []
        for ancestor in reversed(path.parents):
            if self._run(["test", "-x", str(ancestor)]).returncode == 0:
                continue
            if shutil.which("setfacl") is None:
                raise ComponentMissing(f"{self._user} cannot reach {path} through {ancestor}, and setfacl (package "
                                       "acl) is missing to allow it; run ./scripts/setup")
            done = subprocess.run(["setfacl", "-m", f"u:{self._user}:x", str(ancestor)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise StorageError(f"could not let {self._user} pass through {ancestor}: {done.stderr.strip()}")
            granted.append(str(ancestor))
        return granted

    # -- lifecycle --

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "cluster.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(f"another process has held {self.directory}/cluster.lock for {timeout:.0f}"
                                           " s while starting or stopping PostgreSQL; try again") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._run([str(find_bindir() / "pg_ctl"), "status", "-D", str(self.data)], timeout=30).returncode == 0

    def ensure_running(self, timeout: float = 60) -> str:
        """The cluster's URL, creating and starting it when needed."""
        bindir = find_bindir()
        with self._locked(timeout + 30):
            uid, gid = self._owner_ids()
            for folder in (self.directory, self.socket_dir):
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, uid, gid)
                os.chmod(folder, 0o700)  # trust authentication: the socket is for the owner (and root) only
            granted = self._grant_search(self.directory)
            if granted:
                log.warning("PostgreSQL's user %s may now pass through %s (ACL, search only)", self._user, granted)
            if not self.initialized():
                self._initdb(bindir)
            if self._run([str(bindir / "pg_ctl"), "status", "-D", str(self.data)], timeout=30).returncode != 0:
                self._start(bindir, timeout)
            self._ensure_database()
        return self.url

    def _initdb(self, bindir: Path) -> None:
        if self.data.exists() and any(self.data.iterdir()):
            raise StorageError(f"{self.data} holds files but no PostgreSQL cluster; move it away and try again")
        result = self._run([str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", ADMIN_ROLE, "-E", "UTF8",
                            "--locale=C.UTF-8", "--no-instructions"])
        if result.returncode != 0:
            raise StorageError(f"initdb of the embedded PostgreSQL failed: {_last_line(result.stderr)}")

    def _start(self, bindir: Path, timeout: float) -> None:
        # The service keeps a connection per request thread, and each worker its own: room above the default 100.
        options = (f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -p {self.port} "
                   f"-c max_connections={MAX_CONNECTIONS}")
        uid, gid = self._owner_ids()
        if not self.log_path.exists():
            self.log_path.touch(mode=0o600)
            os.chown(self.log_path, uid, gid)
        result = self._run([str(bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log_path),
                            "-o", options, "-w", "-t", str(int(timeout))], timeout=timeout + 10)
        if result.returncode != 0:
            raise StorageError(f"the embedded PostgreSQL did not start: {self._log_cause()} (see {self.log_path}); "
                               "if another cluster uses its socket, set WZ_EMBEDDED_DB_PORT")

    def _ensure_database(self) -> None:
        import psycopg

        dsn = f"host={self.socket_dir} port={self.port} user={ADMIN_ROLE} dbname=postgres"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
                    conn.execute(f'CREATE ROLE "{ROLE}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"')
        except psycopg.Error as exc:
            raise StorageError(f"the embedded PostgreSQL at {self.socket_dir} does not answer: {exc}") from exc

    def stop(self, timeout: float = 30) -> bool:
        """Stop the cluster if it runs; returns whether it did."""
        if not self.initialized():
            return False
        bindir = find_bindir()
        with self._locked(timeout + 30):
            if self._run([str(bindir / "pg_ctl"), "status", "-D", str(self.data)], timeout=30).returncode != 0:
                return False
            result = self._run([str(bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t",
                                str(int(timeout))], timeout=timeout + 10)
            if result.returncode != 0:
                raise StorageError(f"the embedded PostgreSQL did not stop: {_last_line(result.stderr)}")
        return True

    def _log_cause(self) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "nothing logged"
        errors = [line for line in lines if any(word in line for word in ("FATAL", "ERROR", "PANIC"))]
        cause = (errors or lines or ["nothing logged"])[-1]
        return cause[:300]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"
