"""The `wz` command.

Exit codes: 0 complete and preserved (for `wz verify`: verified, origin and time pinned); 4 recorded completely,
preservation pending (a timestamp or an upload waits; `wz sync` / `wz timestamp --pending`, or any later command,
finishes it); 5 (`wz verify`) verified only against roots the package shipped: pin them with --ca / --tsa-ca;
3 partial (some tiles failed, or the capture was interrupted); 2 usage error; 1 nothing captured, not verified,
or another failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO

from pydantic import ValidationError

from capture.fixtures.media import DEFAULT_PROFILE, PROFILES
from capture.journal import active_captures
from capture.layout import DEFAULT_TILE_SIZE, TILE_SIZES, build_layout
from capture.targets import MAX_TILES, TargetPolicy, validate_targets
from cli import service
from evidence import (
    CaptureEvent,
    CaptureRequest,
    CaptureStatus,
    ConfigurationError,
    CustodyAction,
    EventKind,
    EvidenceError,
    IntegrityError,
    Manifest,
    PreservationRecord,
    Settings,
    StorageError,
    SyncQuality,
    UsageError,
)
from evidence.layout import has_manifest, load_manifest
from preservation.database import embedded_postgres
from preservation.export import export_capture
from preservation.maintenance import catch_up, preserve_recovered, survey
from preservation.online import verify_capture
from preservation.preserve import Preserver
from preservation.record import pending_chain_requests, preservation_state
from preservation.registry import is_capture_id, known, locate, register
from preservation.services import Services
from preservation.verify import VerificationReport, verify_package
from storage.seaweed import EmbeddedSeaweed

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_PRESERVATION_PENDING = 4  # recorded completely; not everything is timestamped and in WORM storage yet
EXIT_NOT_PINNED = 5  # a package verifies, but only against roots it shipped itself (origin or TSA not pinned)
STATUS_EXIT = {CaptureStatus.COMPLETE: EXIT_OK, CaptureStatus.PARTIAL: EXIT_PARTIAL, CaptureStatus.FAILED: EXIT_FAILED}


class _Parser(argparse.ArgumentParser):
    """argparse that says what is wrong in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"wz: {message} (see wz {self.prog.split()[-1]} --help)\n")


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be more than 0 seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wz", description="Wangzheng (网证): internet evidence capture and preservation")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    capture = commands.add_parser("capture", help="record 1-9 pages at once into one synchronized video")
    capture.add_argument("urls", nargs="+", metavar="URL")
    capture.add_argument("--duration", type=_duration, help="seconds to record (default: until Ctrl-C or SIGTERM)")
    capture.add_argument("--out", type=Path, help="directory for the capture's files")
    capture.add_argument("--fps", type=int, default=15, help="frames per second of the composite (1-30)")
    capture.add_argument("--layout", default="auto", help="auto or ROWSxCOLS, e.g. 2x2")
    capture.add_argument("--tile-size", default=DEFAULT_TILE_SIZE, choices=list(TILE_SIZES),
                         help=f"each tile's size in the composite (default {DEFAULT_TILE_SIZE}; larger keeps small "
                              "print legible and costs more CPU)")
    capture.add_argument("--case", dest="case_id", help="case identifier recorded in the manifest")
    capture.add_argument("--operator", default=None, help="who runs the capture (default: the login name)")
    capture.add_argument("--json", action="store_true", help="print a JSON summary last on stdout")

    fixtures = commands.add_parser("fixtures", help="offline demo pages for the demo and the tests")
    fixture_commands = fixtures.add_subparsers(dest="fixtures_command", required=True, parser_class=_Parser)
    serve = fixture_commands.add_parser("serve", help="serve the demo pages")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                       help="how the rooms' streams are encoded: 360p15 (light, the tests'), 720p30 or 1080p30 "
                            "(what platforms send: H.264 High at 2.5 or 4.5 Mbit/s; made once, takes minutes)")

    recover = commands.add_parser("recover", help="finalize captures interrupted by a crash")
    recover.add_argument("--json", action="store_true")

    stamp = commands.add_parser("timestamp", help="request the RFC 3161 tokens still pending")
    stamp.add_argument("--pending", action="store_true", required=True, help="retry every pending token")

    commands.add_parser("sync", help="upload what the local spool still holds to the object store")

    services = commands.add_parser("services", help="the embedded services (SeaweedFS, PostgreSQL)")
    services_commands = services.add_subparsers(dest="services_command", required=True, parser_class=_Parser)
    services_commands.add_parser("stop", help="stop the embedded SeaweedFS and PostgreSQL")

    custody = commands.add_parser("custody", help="the chain-of-custody ledger")
    custody_commands = custody.add_subparsers(dest="custody_command", required=True, parser_class=_Parser)
    show = custody_commands.add_parser("show", help="print a capture's custody entries")
    show.add_argument("capture_id")
    show.add_argument("--json", action="store_true")
    custody_commands.add_parser("verify", help="recompute the whole ledger (hashes, chain, Merkle tree, checkpoints) "
                                               "and check it against every checkpoint in WORM storage")
    restore = custody_commands.add_parser(
        "restore-guards", help="put back the ledger's append-only triggers after tampering was investigated")
    restore.add_argument("--reason", required=True, help="why (recorded in the custody ledger)")

    hold = commands.add_parser("legal-hold", help="set or release S3 legal hold on a capture or a whole case")
    hold.add_argument("state", choices=["on", "off"])
    target = hold.add_mutually_exclusive_group(required=True)
    target.add_argument("--capture", dest="capture_id", help="one capture id")
    target.add_argument("--case", dest="case_id", help="every capture of this case")
    hold.add_argument("--reason", default="", help="why (recorded in the custody ledger)")

    export = commands.add_parser("export", help="write a self-verifying evidence package (zip)")
    export.add_argument("capture_id")
    export.add_argument("-o", "--output", type=Path, required=True)

    verify = commands.add_parser("verify", help="verify an exported package (offline) or a capture (store + ledger)")
    verify.add_argument("target", help="PACKAGE.zip or a capture id")
    verify.add_argument("--ca", type=Path, help="pin the capturing node's CA (PEM) instead of the package's own")
    verify.add_argument("--tsa-ca", type=Path, help="pin the roots (PEM) of external TSAs")
    verify.add_argument("--checkpoint", type=Path, help="a custody checkpoint you kept (custody/checkpoint.json of "
                                                        "an earlier package): the package's history must contain it")
    verify.add_argument("--json", action="store_true")
    service.add_arguments(commands)
    return parser


class ProgressPrinter:
    """A live status line per tile on a terminal; plain event lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last_progress = 0.0

    def __call__(self, event: CaptureEvent) -> None:
        if event.kind == EventKind.PROGRESS:
            if self.live:
                self.stream.write("\r\033[K" + event.message)
                self.stream.flush()
                return
            now = time.monotonic()
            if now - self._last_progress < 5:
                return
            self._last_progress = now
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(f"[{event.at:%H:%M:%S}] {event.message}\n")
        self.stream.flush()


def summary(manifest: Manifest, directory: Path) -> dict[str, object]:
    return {
        "capture_id": manifest.capture_id,
        "status": manifest.status.value,
        "reason": manifest.reason,
        "directory": str(directory),
        "manifest": str(directory / "manifest.json"),
        "recorded_seconds": manifest.recorded_seconds,
        "tiles": [
            {"tile": t.tile, "url": t.url, "status": t.status.value, "reason": t.reason} for t in manifest.tiles
        ],
    }


def _say(message: str) -> None:
    print(f"wz: {message}", file=sys.stderr)


def preservation_summary(record: PreservationRecord) -> dict[str, object]:
    return {
        "manifest_sha256": record.manifest.sha256,
        "manifest_sm3": record.manifest.sm3,
        "signature": record.signature.path if record.signature else None,
        "timestamps": [
            {"tsa": t.tsa_url, "local_tsa": t.local_tsa, "status": t.status.value,
             "gen_time": t.gen_time.isoformat() if t.gen_time else None, "error": t.error}
            for t in record.timestamps
        ],
        "stored_objects": len(record.stored),
        "custody_entries": list(record.custody_seqs),
        "problems": list(record.problems),
    }


def _recover(settings: Settings) -> list[dict[str, object]]:
    done: list[dict[str, object]] = []
    if not active_captures(settings.active_dir):
        return done
    from capture.recovery import recover_interrupted  # recording code loads only when there is work for it

    for recovered in preserve_recovered(settings, recover_interrupted(settings), _say):
        if recovered.manifest is None:
            done.append({"directory": str(recovered.directory), "error": recovered.error})
            continue
        entry = summary(recovered.manifest, recovered.directory)
        if recovered.record is not None:
            entry["preservation"] = preservation_summary(recovered.record)
        done.append(entry)
    if done:
        # Captures the service queued on this host: their state follows what recovery made of them.
        for capture_id, state in service.reconcile_after_recovery(settings):
            _say(f"capture {capture_id} is now {state} in the custody service")
    return done


def run_integrity(args: argparse.Namespace, settings: Settings) -> int:
    """timestamp, sync, services, custody, export, verify."""
    if args.command == "services":
        seaweed = EmbeddedSeaweed(settings.services_dir / "seaweedfs", s3_port=settings.embedded_s3_port)
        was_running = seaweed.running()
        seaweed.stop()
        _say("embedded SeaweedFS stopped" if was_running else "embedded SeaweedFS was not running")
        stopped = embedded_postgres(settings).stop()
        _say("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return EXIT_OK
    if args.command == "verify" and not is_capture_id(args.target):
        target = Path(args.target)
        if not target.is_file() and target.suffix.lower() != ".zip":
            raise UsageError(f"{args.target!r} is neither a package file (PACKAGE.zip) nor a capture id "
                             "(wz-YYYYMMDDTHHMMSSZ-xxxxxx)")
        return _print_verification(lambda: verify_package(target, trusted_ca=args.ca, tsa_ca=args.tsa_ca,
                                                          known_checkpoint=args.checkpoint), args.json)
    with Services(settings) as services:
        preserver = Preserver(services, report=_say)
        if args.command == "timestamp":
            left = 0
            for directory in survey(settings, _say).pending_tokens:
                left += len(preserver.retry_timestamps(directory).pending_timestamps)
                left += len(pending_chain_requests(directory))
            _say(f"{left} timestamp(s) still pending")
            return EXIT_OK if left == 0 else EXIT_FAILED
        if args.command == "sync":
            left = preserver.sync()
            _say(f"{left} file(s) still waiting in the spool")
            return EXIT_OK if left == 0 else EXIT_FAILED
        if args.command == "custody":
            if args.custody_command == "verify":
                try:
                    verified = services.verify_custody()
                except StorageError as exc:
                    size, root = services.ledger.verify(services.verify_checkpoint)
                    print(f"custody ledger NOT VERIFIED against WORM storage: the database holds {size} entries "
                          f"(root {root.hex()}) and recomputes, but the checkpoints kept in WORM storage could not "
                          f"be read: {exc}")
                    return EXIT_FAILED
                print(f"custody ledger OK: {verified.describe()}")
                return EXIT_OK
            if args.custody_command == "restore-guards":
                restored = services.ledger.restore_guards()
                if not restored:
                    _say("every append-only guard is in place; nothing was changed")
                    return EXIT_OK
                services.record(CustodyAction.GUARDS_RESTORED, "custody-ledger",
                                {"restored": restored, "reason": args.reason})
                services.checkpoint()
                preserver.sync()
                _say(f"restored {', '.join(restored)}; run `wz custody verify` to see whether anything was changed")
                return EXIT_OK
            locate(settings.registry_dir, args.capture_id)
            entries = services.ledger.entries(subject=args.capture_id)
            if args.json:
                print(json.dumps([e.model_dump(mode="json") for e in entries], ensure_ascii=False))
            for entry in entries if not args.json else []:
                print(f"{entry.seq:>6}  {entry.at:%Y-%m-%d %H:%M:%S}Z  {entry.actor:<12} {entry.action:<18} "
                      f"{json.dumps(entry.details, ensure_ascii=False)[:110]}")
            return EXIT_OK
        if args.command == "legal-hold":
            directories = _hold_targets(settings, args.capture_id, args.case_id)
            for directory in directories:
                changed = preserver.legal_hold(directory, args.state == "on", args.reason)
                _say(f"legal hold {args.state} for {changed} object version(s) of {directory.name}")
            return EXIT_OK
        if args.command == "export":
            directory = locate(settings.registry_dir, args.capture_id)
            path = export_capture(services, directory, args.output)
            _say(f"exported {args.capture_id} to {path}")
            preserver.sync()  # the export's checkpoint goes to WORM storage now, not with the next command
            return EXIT_OK
        directory = locate(settings.registry_dir, args.target)
        return _print_verification(lambda: verify_capture(services, directory), args.json)


def _hold_targets(settings: Settings, capture_id: str | None, case_id: str | None) -> list[Path]:
    if capture_id:
        return [locate(settings.registry_dir, capture_id)]
    found = []
    for _capture_id, directory in known(settings.registry_dir):
        with contextlib.suppress(OSError, ValueError):
            if has_manifest(directory) and load_manifest(directory).provenance.case_id == case_id:
                found.append(directory)
    if not found:
        raise UsageError(f"no capture of case {case_id!r} on this machine")
    return found


def _print_verification(run: Callable[[], VerificationReport], as_json: bool) -> int:
    try:
        report = run()
    except IntegrityError as exc:
        failed: VerificationReport | None = getattr(exc, "report", None)
        if failed is None:
            raise
        report = failed
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        for check in report.checks:
            mark = "OK  " if check.ok else "FAIL"
            print(f"{mark} {check.name}: {check.subject}" + (f" — {check.detail}" if check.detail else ""))
        print(f"{'VERIFIED' if report.ok else 'NOT VERIFIED'}: {len(report.checks) - len(report.failures)} checks "
              f"passed, {len(report.failures)} failed")
        if report.ok and not report.origin_pinned:
            print("ORIGIN NOT PINNED: integrity holds against the package's own CA; compare the trust anchor's "
                  "fingerprint above with the one the capturing node published, or verify again with --ca")
        if report.ok and not report.tsa_pinned:
            print(f"TSA NOT PINNED: the tokens of {', '.join(sorted(report.unpinned_tsas))} verify only against "
                  "roots shipped in the package, which a forger could have made; verify again with --tsa-ca and "
                  "the TSA's published root to prove their time")
        if report.ok and report.sync is not None:
            for line in sync_lines(report.sync):
                print(line)
        if report.ok and not report.third_party_time and any(c.name.startswith("manifest timestamp")
                                                             for c in report.checks):
            print("NO THIRD-PARTY TIME: every timestamp comes from the capturing node's own (local) TSA; it proves "
                  "the order of events on that node, not the time by an independent party")
    if not report.ok:
        return EXIT_FAILED
    # Verified against roots the package brought along is integrity, not proof of origin or time: say it in the
    # exit code too, so `wz verify PACKAGE && accept` cannot accept what a forger's own CA signed.
    return EXIT_OK if report.pinned else EXIT_NOT_PINNED


def sync_lines(sync: SyncQuality) -> list[str]:
    """The capture's own sync verdict, as the signed manifest states it, one line per tile."""
    lines = []
    if sync.composite is not None:
        c = sync.composite
        lines.append(f"SYNC composite: {c.frames} frames at {c.fps} fps, interval p50 {c.interval_p50_ms:g} ms, "
                     f"p95 {c.interval_p95_ms:g} ms, max {c.interval_max_ms:g} ms at {c.longest_gap_at_seconds:g} s, "
                     f"{c.late_frames} late")
    for tile in sync.tiles:
        spans = "; ".join(f"{s.cause.value} {s.start_seconds:g}-{s.end_seconds:g} s (worst {s.worst:g}, bound "
                          f"{s.bound:g})" for s in tile.spans)
        dropped = f", {tile.dropped_share:.2%} of video frames dropped" if tile.dropped_share is not None else ""
        cost = (f", its browser used {tile.cpu_cores_mean:.2f} cores (peak {tile.cpu_cores_peak:.2f})"
                if tile.cpu_cores_mean is not None and tile.cpu_cores_peak is not None else "")
        if tile.priority_lowered_at_seconds is not None:
            cost += (f", its CPU priority lowered at {tile.priority_lowered_at_seconds:g} s (it cost far more than "
                     "the other tiles while every core was busy)")
        lines.append(f"SYNC tile {tile.tile}: {tile.verdict.value}{dropped}{cost}" + (f": {spans}" if spans else "")
                     + (f" ({tile.remark})" if tile.remark else ""))
    return lines


_SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def _check_out(out: Path) -> None:
    """--out must become a capture directory of its own: a new or empty directory, never a file or a system tree."""
    resolved = out.resolve()
    for tree in _SYSTEM_TREES:
        if resolved == tree or resolved.is_relative_to(tree):
            raise UsageError(f"--out {out} is inside {tree}, which holds the system's own files; give a directory "
                             "for the capture")
    if resolved.exists():
        if not resolved.is_dir():
            raise UsageError(f"--out {out} is a file; give a new or empty directory")
        if any(resolved.iterdir()):
            raise UsageError(f"--out {out} is not empty; give a new or empty directory")
        if not os.access(resolved, os.W_OK):
            raise UsageError(f"--out {out} is not writable")
        return
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out} cannot be created: {parent} is not a writable directory")


def prepare_capture(args: argparse.Namespace, settings: Settings) -> CaptureRequest:
    """Every argument checked before anything starts (no store, no browser, no waiting)."""
    if len(args.urls) > MAX_TILES:
        raise UsageError(f"at most {MAX_TILES} URLs can be recorded at once, {len(args.urls)} given")
    if args.duration is not None and args.duration > settings.max_duration_seconds:
        raise UsageError(f"--duration {args.duration:g} is over the maximum of {settings.max_duration_seconds:g} s "
                         "(WZ_MAX_DURATION_SECONDS)")
    if not 1 <= args.fps <= 30:
        raise UsageError(f"--fps must be 1 to 30, not {args.fps}")
    build_layout(list(args.urls), spec=args.layout, fps=args.fps, size=args.tile_size)
    if args.out is not None:
        _check_out(args.out)
    operator = args.operator if args.operator is not None else (
        os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown")

    def request(urls: tuple[str, ...]) -> CaptureRequest:
        try:
            return CaptureRequest(urls=urls, duration_seconds=args.duration,
                                  out_dir=str(args.out) if args.out else None, fps=args.fps, layout=args.layout,
                                  tile_size=args.tile_size, case_id=args.case_id, operator=operator)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = {"case_id": "--case", "operator": "--operator"}.get(str(error["loc"][0]), str(error["loc"][0]))
            raise UsageError(f"{field}: {error['msg'].removeprefix('Value error, ')}") from exc

    request(tuple(args.urls))  # the names and numbers first: they need no network
    policy = TargetPolicy.from_settings(settings.capture_allow_networks, settings.capture_allow_private)
    targets = validate_targets(list(args.urls), policy=policy)
    return request(tuple(t.url for t in targets))


def run_capture(request: CaptureRequest, settings: Settings, as_json: bool) -> int:
    from capture.job import CaptureJob  # Playwright and the recorders load only for a capture

    services = Services(settings)
    job = CaptureJob(request, settings, on_event=ProgressPrinter(sys.stderr), stamp=services.timestamper.stamp,
                     on_created=functools.partial(register, settings.registry_dir))

    async def main() -> Manifest:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, job.request_stop, "interrupted by the operator (SIGINT)")
        loop.add_signal_handler(signal.SIGTERM, job.request_stop, "interrupted by SIGTERM")
        return await job.run()

    print(f"wz: capture {job.capture_id} of {len(request.urls)} page(s) into {job.capture_dir}", file=sys.stderr)
    with services:
        manifest = asyncio.run(main())
        record = Preserver(services, report=_say).preserve(job.capture_dir)
    state = preservation_state(job.capture_dir, manifest, record)
    result = summary(manifest, job.capture_dir)
    result["preservation"] = preservation_summary(record) | {"preserved": state.preserved,
                                                             "files_stored": state.stored,
                                                             "files_to_store": state.expected,
                                                             "not_yet": list(state.missing)}
    print(f"wz: {manifest.status.value}: {job.capture_dir / 'manifest.json'}", file=sys.stderr)
    for tile in manifest.tiles:
        print(f"wz:   tile {tile.tile} {tile.status.value:8} {tile.url}"
              + (f"  ({tile.reason})" if tile.reason else ""), file=sys.stderr)
    for line in state.lines():
        _say(line)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    code = STATUS_EXIT[manifest.status]
    if code == EXIT_OK and not state.preserved:
        return EXIT_PRESERVATION_PENDING
    return code


def main(argv: list[str] | None = None) -> int:
    # Evidence, keys, spool and ledger are the operator's alone (the embedded database's user may pass through
    # the directories above the data directory, never read what is in them).
    os.umask(0o077)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"wz: bad setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "fixtures":
            from capture.fixtures import serve_forever

            serve_forever(settings.fixtures_dir, args.host, args.port, args.profile)
            return EXIT_OK
        if args.command == "recover":
            done = _recover(settings)
            if args.json:
                print(json.dumps(done, ensure_ascii=False))
            elif not done:
                print("wz: no interrupted capture to finalize", file=sys.stderr)
            return EXIT_OK
        if args.command in ("verify", "services"):
            return run_integrity(args, settings)
        if args.command == "users":
            return service.users_command(args, settings)
        request = prepare_capture(args, settings) if args.command == "capture" else None
        _recover(settings)
        catch_up(settings, _say, tokens=args.command != "timestamp", spool=args.command != "sync")
        if args.command == "serve":
            return service.serve(args, settings)
        if args.command == "worker":
            return service.run_worker(args, settings)
        if request is None:
            return run_integrity(args, settings)
        return run_capture(request, settings, args.json)
    except (UsageError, ConfigurationError) as exc:
        print(f"wz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EvidenceError as exc:
        print(f"wz: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("wz: interrupted", file=sys.stderr)
        return EXIT_PARTIAL
    except BrokenPipeError:
        # Whoever read our output stopped reading (`wz custody show ID | head`): nothing more to say. Further
        # writes, including the interpreter's final flush, go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # the last line of defence: one line, never a traceback
        print(f"wz: unexpected error ({type(exc).__name__}): {exc}; details: run with WZ_DEBUG=1",
              file=sys.stderr)
        if os.environ.get("WZ_DEBUG"):
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
