"""The `wz` command.

Exit codes: 0 complete; 3 partial (some tiles failed, or the capture was interrupted);
2 usage error; 1 nothing captured or another failure.
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

from capture.job import CaptureJob
from capture.recovery import recover_interrupted
from capture.targets import MAX_TILES, validate_targets
from evidence import (
    CaptureEvent,
    CaptureRequest,
    CaptureStatus,
    ConfigurationError,
    EventKind,
    EvidenceError,
    IntegrityError,
    Manifest,
    PreservationRecord,
    Settings,
    UsageError,
)
from evidence.layout import has_manifest, load_manifest
from preservation.export import export_capture
from preservation.maintenance import catch_up, preserve_recovered, survey
from preservation.online import verify_capture
from preservation.preserve import Preserver
from preservation.registry import known, locate, register
from preservation.services import Services
from preservation.verify import VerificationReport, verify_package
from storage.seaweed import EmbeddedSeaweed

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
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
    capture.add_argument("--case", dest="case_id", help="case identifier recorded in the manifest")
    capture.add_argument("--operator", default=None, help="who runs the capture (default: the login name)")
    capture.add_argument("--json", action="store_true", help="print a JSON summary last on stdout")

    fixtures = commands.add_parser("fixtures", help="offline demo pages for the demo and the tests")
    fixture_commands = fixtures.add_subparsers(dest="fixtures_command", required=True, parser_class=_Parser)
    serve = fixture_commands.add_parser("serve", help="serve the demo pages")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--host", default="127.0.0.1")

    recover = commands.add_parser("recover", help="finalize captures interrupted by a crash")
    recover.add_argument("--json", action="store_true")

    stamp = commands.add_parser("timestamp", help="request the RFC 3161 tokens still pending")
    stamp.add_argument("--pending", action="store_true", required=True, help="retry every pending token")

    commands.add_parser("sync", help="upload what the local spool still holds to the object store")

    services = commands.add_parser("services", help="the embedded services (SeaweedFS)")
    services_commands = services.add_subparsers(dest="services_command", required=True, parser_class=_Parser)
    services_commands.add_parser("stop", help="stop the embedded SeaweedFS")

    custody = commands.add_parser("custody", help="the chain-of-custody ledger")
    custody_commands = custody.add_subparsers(dest="custody_command", required=True, parser_class=_Parser)
    show = custody_commands.add_parser("show", help="print a capture's custody entries")
    show.add_argument("capture_id")
    show.add_argument("--json", action="store_true")
    custody_commands.add_parser("verify", help="recompute the whole ledger: hashes, chain, Merkle tree, checkpoints")

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
    verify.add_argument("--json", action="store_true")
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
    for recovered in preserve_recovered(settings, recover_interrupted(settings), _say):
        if recovered.manifest is None:
            done.append({"directory": str(recovered.directory), "error": recovered.error})
            continue
        entry = summary(recovered.manifest, recovered.directory)
        if recovered.record is not None:
            entry["preservation"] = preservation_summary(recovered.record)
        done.append(entry)
    return done


def run_integrity(args: argparse.Namespace, settings: Settings) -> int:
    """timestamp, sync, services, custody, export, verify."""
    if args.command == "services":
        seaweed = EmbeddedSeaweed(settings.services_dir / "seaweedfs", s3_port=settings.embedded_s3_port)
        was_running = seaweed.running()
        seaweed.stop()
        _say("embedded SeaweedFS stopped" if was_running else "embedded SeaweedFS was not running")
        return EXIT_OK
    if args.command == "verify" and args.target.endswith(".zip"):
        target = Path(args.target)
        return _print_verification(lambda: verify_package(target, trusted_ca=args.ca, tsa_ca=args.tsa_ca), args.json)
    with Services(settings) as services:
        preserver = Preserver(services, report=_say)
        if args.command == "timestamp":
            left = 0
            for directory in survey(settings, _say).pending_tokens:
                left += len(preserver.retry_timestamps(directory).pending_timestamps)
            _say(f"{left} timestamp(s) still pending")
            return EXIT_OK if left == 0 else EXIT_FAILED
        if args.command == "sync":
            left = preserver.sync()
            _say(f"{left} file(s) still waiting in the spool")
            return EXIT_OK if left == 0 else EXIT_FAILED
        if args.command == "custody":
            if args.custody_command == "verify":
                size, root = services.ledger.verify(services.verify_checkpoint)
                print(f"custody ledger OK: {size} entries, root {root.hex()}")
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
    return EXIT_OK if report.ok else EXIT_FAILED


def run_capture(args: argparse.Namespace, settings: Settings) -> int:
    urls = validate_targets(list(args.urls), allow_private=settings.capture_allow_private)
    if args.duration is not None and args.duration > settings.max_duration_seconds:
        raise UsageError(f"--duration {args.duration:g} is over the maximum of {settings.max_duration_seconds:g} s "
                         "(WZ_MAX_DURATION_SECONDS)")
    if not 1 <= args.fps <= 30:
        raise UsageError(f"--fps must be 1 to 30, not {args.fps}")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"--out {args.out} is not empty; give a new or empty directory")
    operator = args.operator or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    try:
        request = CaptureRequest(
            urls=tuple(urls), duration_seconds=args.duration, out_dir=str(args.out) if args.out else None,
            fps=args.fps, layout=args.layout, case_id=args.case_id, operator=operator,
        )
    except ValidationError as exc:
        raise UsageError(exc.errors()[0]["msg"]) from exc
    services = Services(settings)
    job = CaptureJob(request, settings, on_event=ProgressPrinter(sys.stderr), stamp=services.timestamper.stamp,
                     on_created=functools.partial(register, settings.registry_dir))

    async def main() -> Manifest:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, job.request_stop, "interrupted by the operator (SIGINT)")
        loop.add_signal_handler(signal.SIGTERM, job.request_stop, "interrupted by SIGTERM")
        return await job.run()

    print(f"wz: capture {job.capture_id} of {len(urls)} page(s) into {job.capture_dir}", file=sys.stderr)
    with services:
        manifest = asyncio.run(main())
        preservation = Preserver(services, report=_say).preserve(job.capture_dir)
    result = summary(manifest, job.capture_dir)
    result["preservation"] = preservation_summary(preservation)
    print(f"wz: {manifest.status.value}: {job.capture_dir / 'manifest.json'}", file=sys.stderr)
    for tile in manifest.tiles:
        print(f"wz:   tile {tile.tile} {tile.status.value:8} {tile.url}"
              + (f"  ({tile.reason})" if tile.reason else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return STATUS_EXIT[manifest.status]


def main(argv: list[str] | None = None) -> int:
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

            serve_forever(settings.fixtures_dir, args.host, args.port)
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
        _recover(settings)
        catch_up(settings, _say)
        if args.command != "capture":
            return run_integrity(args, settings)
        if len(args.urls) > MAX_TILES:
            raise UsageError(f"at most {MAX_TILES} URLs can be recorded at once, {len(args.urls)} given")
        return run_capture(args, settings)
    except (UsageError, ConfigurationError) as exc:
        print(f"wz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EvidenceError as exc:
        print(f"wz: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("wz: interrupted", file=sys.stderr)
        return EXIT_PARTIAL
    except Exception as exc:  # the last line of defence: one line, never a traceback
        print(f"wz: unexpected error ({type(exc).__name__}): {exc}; details: run with WZ_DEBUG=1",
              file=sys.stderr)
        if os.environ.get("WZ_DEBUG"):
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
