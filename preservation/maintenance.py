"""What every start finishes: captures recovered from a crash are preserved; preservation left unfinished,
pending timestamps and spooled uploads are taken up again. One broken capture is reported and skipped; it
never blocks the work that was asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from evidence import EvidenceError, Manifest, PreservationRecord, Settings
from evidence.layout import has_manifest, has_preservation, load_preservation
from preservation.preserve import Preserver
from preservation.record import pending_chain_requests
from preservation.registry import known
from preservation.services import Services
from storage.spool import Spool

Report = Callable[[str], None]


@dataclass(frozen=True)
class Recovered:
    """One interrupted capture that recording finalized (or failed to), and what preservation made of it."""

    directory: Path
    manifest: Manifest | None
    record: PreservationRecord | None = None
    error: str | None = None


def preserve_recovered(settings: Settings, recovered: Iterable[tuple[Path, Manifest | EvidenceError]],
                       report: Report) -> list[Recovered]:
    """Preserve each capture that recovery finalized; a capture recovery could not finish is reported."""
    results: list[Recovered] = []
    for directory, outcome in recovered:
        if isinstance(outcome, EvidenceError):
            report(f"could not finalize the interrupted capture in {directory}: {outcome}")
            results.append(Recovered(directory, None, error=str(outcome)))
            continue
        report(f"finalized interrupted capture {outcome.capture_id} as {outcome.status.value}: {directory}")
        try:
            with Services(settings) as services:
                record = Preserver(services, report=report).preserve(directory)
        except EvidenceError as exc:
            report(f"could not preserve the recovered capture {outcome.capture_id}: {exc}")
            results.append(Recovered(directory, outcome, error=str(exc)))
            continue
        results.append(Recovered(directory, outcome, record))
    return results


@dataclass
class CatchUp:
    """What a start found left undone."""

    unfinished: list[Path] = field(default_factory=list)
    pending_tokens: list[Path] = field(default_factory=list)
    spooled: int = 0

    @property
    def empty(self) -> bool:
        return not self.unfinished and not self.pending_tokens and not self.spooled


def survey(settings: Settings, report: Report) -> CatchUp:
    found = CatchUp()
    for capture_id, directory in known(settings.registry_dir):
        try:
            if not has_manifest(directory):
                continue
            if not has_preservation(directory) or not load_preservation(directory).complete:
                found.unfinished.append(directory)
            elif load_preservation(directory).pending_timestamps or pending_chain_requests(directory):
                found.pending_tokens.append(directory)
        except EvidenceError as exc:
            report(f"skipping capture {capture_id}: {exc}")
    found.spooled = len(Spool(settings.spool_dir).pending())
    return found


def catch_up(settings: Settings, report: Report, *, tokens: bool = True, spool: bool = True) -> CatchUp:
    """Finish what earlier commands left: unfinished preservation, pending tokens, spooled uploads.

    A command that is itself about to retry the tokens (`wz timestamp --pending`) or upload the spool (`wz sync`)
    passes False for that part, so nothing is tried, and reported, twice."""
    found = survey(settings, report)
    if not tokens:
        found.pending_tokens = []
    if not spool:
        found.spooled = 0
    if found.empty:
        return found
    with Services(settings) as services:
        preserver = Preserver(services, report=report)
        for directory in found.unfinished:
            _guarded(report, f"finishing the preservation of {directory}",
                     functools.partial(preserver.preserve, directory))
        for directory in found.pending_tokens:
            _guarded(report, f"retrying the pending timestamps of {directory}",
                     functools.partial(preserver.retry_timestamps, directory))
        if found.spooled:
            # Opportunistic: a sync already running elsewhere uploads these, or the next command does.
            _guarded(report, "uploading the spool", functools.partial(preserver.sync, wait=False))
    return found


def _guarded(report: Report, what: str, run: Callable[[], object]) -> None:
    try:
        run()
    except EvidenceError as exc:
        report(f"{what} failed: {exc}")
