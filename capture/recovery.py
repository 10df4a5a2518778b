"""Finish captures whose process died: segments become a playable composite, the manifest says partial."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from capture.assemble import (
    Assembly,
    assemble_videos,
    build_manifest,
    overall_status,
    read_tile_result,
)
from capture.chain import SegmentChain
from capture.environment import check_components, collect_provenance
from capture.journal import Journal, active_captures
from evidence import (
    EvidenceError,
    Layout,
    Manifest,
    Provenance,
    Settings,
    Step,
    StepName,
    StepOutcome,
)
from evidence.layout import MANIFEST, load_manifest, write_manifest
from system.processes import pid_alive


@contextlib.contextmanager
def _recovery_lock(settings: Settings) -> Iterator[bool]:
    """One recovering process at a time; others go on with their own work."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with (settings.data_dir / ".recovery.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _is_running(journal: Journal) -> bool:
    pid = journal.data.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    # A reused pid that is not a Python/wz process does not keep the capture alive.
    return "wz" in cmdline or "python" in cmdline or "capture" in cmdline


def leftover_processes(capture_dir: Path) -> list[int]:
    """Processes still writing into a capture directory (e.g. an ffmpeg stuck on a dead PulseAudio)."""
    marker = str(capture_dir.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_leftovers(capture_dir: Path, grace: float = 5.0) -> list[int]:
    """SIGTERM (recorders then close their open segment), then SIGKILL what is still there after `grace`."""
    pids = leftover_processes(capture_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids


def recover_capture(settings: Settings, capture_dir: Path) -> Manifest:
    """Finalize one interrupted capture from its journal and the segments on disk."""
    journal = Journal.load(capture_dir, settings.active_dir)
    data = journal.data
    capture_id = str(data["capture_id"])
    if (capture_dir / MANIFEST).exists() and data.get("phase") == "done":
        journal.close()
        return load_manifest(capture_dir)
    started = datetime.now(UTC)
    leftovers = stop_leftovers(capture_dir)
    pid = data.get("pid")
    reason = (f"interrupted: the capture process (pid {pid}) ended before finishing; "
              "finalized by a later wz command")
    layout = Layout.model_validate(data["layout"])
    steps = [Step.model_validate(s) for s in data.get("steps", [])]
    notes: list[str] = [f"stopped {len(leftovers)} leftover recorder process(es)"] if leftovers else []
    if "provenance" in data:
        provenance = Provenance.model_validate(data["provenance"])
    else:
        request = data.get("request", {})
        provenance = collect_provenance(
            settings, urls=[t.url for t in layout.tiles], components=check_components(settings), launch_flags=[],
            options={"recovered": True}, operator=str(request.get("operator", "unknown")),
            case_id=request.get("case_id"),
        )
        notes.append("provenance collected at recovery time, not at capture time")
    tiles = tuple(read_tile_result(capture_dir, t.tile, t.url, reason) for t in layout.tiles)
    t0 = data.get("t0")
    # Segments closed after the last poll (ffmpeg closes its open segment when the capture dies).
    SegmentChain(capture_dir).poll()
    if isinstance(t0, int | float):
        assembly = assemble_videos(
            capture_dir, layout, t0=float(t0),
            usable_tiles=[t.tile for t in tiles],
            ffmpeg_path=settings.ffmpeg, ffprobe=settings.ffprobe,
        )
    else:
        assembly = Assembly(recorded_seconds=0.0, frames=0, problems=("recording never started",), composite=False)
    notes.append(f"{assembly.frames} frames over {assembly.recorded_seconds:.2f} s")
    notes.extend((*assembly.problems, *assembly.remarks))
    steps.append(Step(name=StepName.RECOVER, outcome=StepOutcome.PARTIAL if assembly.composite else StepOutcome.FAILED,
                      started_at=started, ended_at=datetime.now(UTC), detail="; ".join(notes)))
    status = overall_status(tiles, composite=assembly.composite, interrupted=True)
    manifest = build_manifest(
        capture_dir,
        capture_id=capture_id,
        status=status,
        reason=reason,
        started_at=datetime.fromisoformat(str(data["started_at"])),
        ended_at=datetime.now(UTC),
        requested_duration=data.get("request", {}).get("duration_seconds"),
        recorded_seconds=assembly.recorded_seconds,
        provenance=provenance,
        layout=layout,
        tiles=tiles,
        steps=tuple(steps),
    )
    write_manifest(capture_dir, manifest)
    journal.update(phase="done", status=status.value, recovered_at=datetime.now(UTC).isoformat())
    journal.close()
    return manifest


def recover_interrupted(settings: Settings) -> list[tuple[Path, Manifest | EvidenceError]]:
    """Finalize every capture marked active whose process is gone. Returns what was done, per capture."""
    results: list[tuple[Path, Manifest | EvidenceError]] = []
    with _recovery_lock(settings) as locked:
        if not locked:
            return results
        for _capture_id, directory in active_captures(settings.active_dir):
            marker = settings.active_dir / _capture_id
            if not (directory / "capture.json").exists():
                marker.unlink(missing_ok=True)
                continue
            try:
                journal = Journal.load(directory, settings.active_dir)
                if _is_running(journal):
                    continue
                results.append((directory, recover_capture(settings, directory)))
            except EvidenceError as exc:
                results.append((directory, exc))
            except (OSError, ValueError, KeyError) as exc:
                results.append((directory, EvidenceError(f"could not recover {directory}: {exc}")))
    return results
