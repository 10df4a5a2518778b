"""`wz serve` and `wz users`: the custody service from the command line."""

from __future__ import annotations

import argparse
import ctypes
import getpass
import ipaddress
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy import create_engine, insert, inspect, make_url, select, update

from api.context import Context
from api.routers.auth import add_user
from api.security import SCOPES, new_api_token, secret_key
from evidence import CustodyAction, Settings, UsageError
from service.db import ROLES, api_tokens, users
from service.schema import upgrade


def add_arguments(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="run the custody service (HTTP API) on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tiles", type=int, default=4, help="tile budget of the local worker (default 4)")
    serve.add_argument("--no-worker", action="store_true",
                       help="start no local worker (workers run elsewhere: wz worker on another host)")

    worker = commands.add_parser("worker", help="record capture jobs from the service's queue (no HTTP)")
    worker.add_argument("--tiles", type=int, default=4,
                        help="how many tiles this worker records at once (default 4: four 720p30 rooms hold "
                             "15 fps each on 2 cores)")

    users_parser = commands.add_parser("users", help="users of the custody service and their API tokens")
    user_commands = users_parser.add_subparsers(dest="users_command", required=True,
                                                parser_class=type(users_parser))
    add = user_commands.add_parser("add", help="create a user (the password is asked, or read from stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    token = user_commands.add_parser("token", help="make an API token for scripts (shown once)")
    token.add_argument("name", help="the user the token acts as")
    token.add_argument("--scope", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    token.add_argument("--label", default="script", help="what the token is for")
    revoke = user_commands.add_parser("revoke", help="revoke an API token by its id")
    revoke.add_argument("token_id")
    user_commands.add_parser("list", help="list the users")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.runner import Worker

    if not 1 <= args.tiles <= 9:
        raise UsageError(f"--tiles must be 1 to 9, not {args.tiles}")
    logging.basicConfig(level=logging.INFO, format="wz worker: %(message)s", stream=sys.stderr)
    for chatty in ("alembic", "procrastinate"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    Worker(settings, tiles=args.tiles, say=lambda message: print(f"wz worker: {message}", file=sys.stderr)).run()
    return 0


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: loading it in the forked child could deadlock


def _terminate_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalWorker:
    """The worker `wz serve` runs beside the API, in its own process (the web process never records); started
    again if it dies, asked to finish its recordings (SIGTERM) when the service stops."""

    def __init__(self, tiles: int) -> None:
        self.tiles = tiles
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="local-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # If the service itself is killed (kill -9, a supervisor's timeout), the worker is told as if the service
        # had stopped: it finishes its recordings as evidence instead of recording on, orphaned, for hours.
        return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--tiles", str(self.tiles)],
                                cwd=Path(__file__).resolve().parent.parent,
                                preexec_fn=_terminate_with_parent)  # noqa: PLW1509 - the child only calls prctl

    def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self.process = self._spawn()
            code = self.process.wait()
            if self._stopping.is_set():
                return
            # Killed or crashed: its next start finalizes what it was recording (recovery), then takes jobs.
            print(f"wz: the local worker exited (code {code}); starting it again", file=sys.stderr)
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            self._stopping.wait(delay)

    def stop(self) -> None:
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            print("wz: asking the local worker to finish its recordings", file=sys.stderr)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait()
            except KeyboardInterrupt:
                print("wz: the worker goes on finishing in the background", file=sys.stderr)


def _with_public_url(settings: Settings, host: str, port: int) -> Settings:
    """The address reports' QR codes open: WZ_PUBLIC_URL, else the one address the service listens on. A service
    on every address (0.0.0.0) does not know which one people use; its reports wait for WZ_PUBLIC_URL."""
    if settings.public_url:
        return settings
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return settings.model_copy(update={"public_url": f"http://{host}:{port}/"})  # a host name
    if address.is_unspecified:
        return settings
    shown = f"[{address}]" if address.version == 6 else str(address)
    return settings.model_copy(update={"public_url": f"http://{shown}:{port}/"})


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    import viewer
    from api.app import create_app

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1-65535, not {args.port}")
    if not 1 <= args.tiles <= 9:
        raise UsageError(f"--tiles must be 1 to 9, not {args.tiles}")
    secret = secret_key(settings, loopback=_is_loopback(args.host))
    settings = _with_public_url(settings, args.host, args.port)
    app = create_app(settings, secret=secret)
    viewer.mount(app)
    print(f"wz: the custody service listens on http://{args.host}:{args.port}/ (the viewer; the API under /api/v1, "
          "OpenAPI at /docs)",
          file=sys.stderr)
    worker = None if args.no_worker else LocalWorker(args.tiles)
    if worker is not None:
        worker.start()

    def stopped(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that would end this
    # process before the local worker is told to finish its recordings.
    signal.signal(signal.SIGTERM, stopped)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=False,
                    server_header=False)
    finally:
        if worker is not None:
            worker.stop()
    return 0


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the password on: pipe it with --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def users_command(args: argparse.Namespace, settings: Settings) -> int:
    actor = settings.actor or getpass.getuser()
    # Users and tokens are managed here; nothing is signed, so any secret will do.
    ctx = Context.open(settings, secret=secrets.token_urlsafe(32))
    try:
        upgrade(ctx.engine)
        if args.users_command == "add":
            password = _password(args.password_stdin)
            try:
                add_user(ctx, args.name, args.role, password, actor=actor)
            except HTTPException as exc:
                raise UsageError(str(exc.detail)) from exc
            print(f"wz: user {args.name} ({args.role}) created", file=sys.stderr)
            return 0
        if args.users_command == "list":
            with ctx.engine.connect() as conn:
                for row in conn.execute(select(users).order_by(users.c.id)):
                    state = "disabled" if row.disabled else ("locked" if row.locked_until else "")
                    print(f"{row.name:<24} {row.role:<14} {row.created_at:%Y-%m-%d} {state}")
            return 0
        if args.users_command == "token":
            scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
            unknown = sorted(set(scopes) - set(SCOPES))
            if unknown or not scopes:
                raise UsageError(f"--scope takes {', '.join(SCOPES)}; not {', '.join(unknown) or 'nothing'}")
            with ctx.engine.begin() as conn:
                user = conn.execute(select(users).where(users.c.name == args.name)).first()
                if user is None:
                    raise UsageError(f"no user {args.name!r}")
                token_id, token, secret_sha256 = new_api_token()
                conn.execute(insert(api_tokens).values(id=token_id, user_id=user.id, name=args.label[:100],
                                                       secret_sha256=secret_sha256, scopes=scopes,
                                                       created_at=datetime.now(UTC)))
            ctx.record(actor, CustodyAction.TOKEN_CREATED, f"user:{args.name}",
                       {"token": token_id, "scopes": scopes, "label": args.label[:100]})
            print(token)
            print(f"wz: token {token_id} for {args.name} ({', '.join(scopes)}); it is shown only now",
                  file=sys.stderr)
            return 0
        with ctx.engine.begin() as conn:
            revoked = conn.execute(update(api_tokens).where(api_tokens.c.id == args.token_id,
                                                            api_tokens.c.revoked_at.is_(None))
                                   .values(revoked_at=datetime.now(UTC)).returning(api_tokens.c.user_id)).first()
        if revoked is None:
            raise UsageError(f"no token {args.token_id!r} that is not revoked already")
        ctx.record(actor, CustodyAction.TOKEN_REVOKED, f"token:{args.token_id}", {})
        print(f"wz: token {args.token_id} revoked", file=sys.stderr)
        return 0
    finally:
        ctx.close()


def reconcile_after_recovery(settings: Settings) -> list[tuple[str, str]]:
    """After `wz` finalized interrupted captures on this host: the service's captures among them get their state.
    Nothing to do when the node has no service database (a SQLite ledger, or the service never ran)."""
    from preservation.database import database_url
    from preservation.services import Services
    from service.captures import reconcile_local

    url = database_url(settings)
    if make_url(url).get_backend_name() != "postgresql":
        return []
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("captures"):
            return []
        with Services(settings) as services:
            return reconcile_local(engine, services, settings)
    finally:
        engine.dispose()
