"""The capture job: a state machine of named steps, each outcome written into the manifest.

    INIT -> ENVIRONMENT -> SETUP -> LOAD (per tile, while recording) -> RECORD -> COLLECT -> FINALIZE -> MANIFEST

Progress is reported as `CaptureEvent`s to a callback (the CLI prints them; the API will stream them).
A failed tile is recorded as failed with its reason and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Playwright, async_playwright

from capture.assemble import Assembly, assemble_videos, build_manifest, overall_status
from capture.audio import AudioServer
from capture.browser import TileBrowser, TileFailure, chromium_flags
from capture.chain import SegmentChain, Stamp
from capture.display import VirtualDisplay
from capture.egress import EgressProxy
from capture.environment import check_components, collect_provenance, resolve_chromium
from capture.journal import Journal
from capture.layout import build_layout
from capture.prefinish import Prefinisher
from capture.processes import TreeCpu, lower_priority, process_trees
from capture.recorders import AudioRecorder, Recorder, ScreenRecorder, StreamCopier
from capture.sync import LOWERED_NICENESS, SyncMonitor, read_frame_times
from capture.targets import Resolver, Target, TargetPolicy, parse_target, resolve_target, system_resolver
from capture.trust import describe, install_browser_roots, load_extra_roots
from evidence import (
    CaptureError,
    CaptureEvent,
    CaptureRequest,
    CaptureStatus,
    EventKind,
    EvidenceError,
    Layout,
    Manifest,
    Provenance,
    RecorderFailed,
    Settings,
    Step,
    StepName,
    StepOutcome,
    SyncQuality,
    TileResult,
    TileStatus,
    UsageError,
)
from evidence.layout import FRAME_TIMES, write_manifest

_log = logging.getLogger(__name__)
EventSink = Callable[[CaptureEvent], None]
MAX_STREAMS_PER_TILE = 3
HEALTH_INTERVAL = 3.0
# A renderer that leaves a probe this long unanswered is hung; one starved by heavy streams answers sooner.
HUNG_SECONDS = 20.0
VIDEO_SAMPLE_SECONDS = 2.0  # between reads of each tile's video counters
EPOCH_LEAD_SECONDS = 0.25
AUDIO_CONNECT_TIMEOUT = 10.0


CAPTURE_ID = re.compile(r"wz-\d{8}T\d{6}Z-[0-9a-f]{6}")


def new_capture_id(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return f"wz-{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _now() -> datetime:
    return datetime.now(UTC)


class CaptureJob:
    """Runs one capture from launch to manifest."""

    def __init__(
        self,
        request: CaptureRequest,
        settings: Settings,
        on_event: EventSink | None = None,
        *,
        stamp: Stamp | None = None,
        on_created: Callable[[str, Path], None] | None = None,
        resolver: Resolver = system_resolver,
        capture_id: str | None = None,
    ) -> None:
        self.request = request
        self.policy = TargetPolicy.from_settings(settings.capture_allow_networks, settings.capture_allow_private)
        self.egress = EgressProxy(self.policy, resolver=resolver, on_refused=self._refused)
        self._resolver = resolver
        self.targets: dict[int, Target] = {}
        self.target_refusals: dict[int, str] = {}
        self._stamp = stamp
        self._on_created = on_created
        self.settings = settings
        self._on_event = on_event
        self.started_at = _now()
        if capture_id is not None and not CAPTURE_ID.fullmatch(capture_id):
            raise UsageError(f"not a capture id: {capture_id[:60]!r} (wz-YYYYMMDDTHHMMSSZ-xxxxxx)")
        # A service names the capture when it is queued, so its id is known before a worker records it.
        self.capture_id = capture_id or new_capture_id(self.started_at)
        base = Path(request.out_dir) if request.out_dir else settings.captures_dir / self.capture_id
        self.capture_dir = base.resolve()
        self.layout: Layout = build_layout(list(request.urls), spec=request.layout, fps=request.fps,
                                           size=request.tile_size)
        self.journal = Journal(self.capture_dir, settings.active_dir, self.capture_id)
        self.steps: list[Step] = []
        self.tiles: dict[int, TileBrowser] = {}
        self.streams: list[StreamCopier] = []
        self._stop = asyncio.Event()
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self.stop_reason = ""
        self.interrupted = False
        self.recording_started: float | None = None
        self.recording_ended: float | None = None
        self.display_name: str | None = None  # the X display being recorded, once it runs (for previews)
        self.phase = "starting"  # starting -> recording -> finalizing -> done
        self._launch_monotonic = time.monotonic()
        self.chain = SegmentChain(self.capture_dir, stamp=stamp, stamp_seconds=settings.segment_stamp_seconds)
        self.sync = SyncMonitor(fps=self.layout.fps)
        self.prefinisher: Prefinisher | None = None  # finishing work done while recording

    # -- events and steps ------------------------------------------------------------------------

    def emit(self, kind: EventKind, message: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        elapsed = time.monotonic() - self.recording_started if self.recording_started else None
        self._on_event(
            CaptureEvent(capture_id=self.capture_id, at=_now(), kind=kind, message=message,
                         elapsed_seconds=elapsed, **fields)
        )

    def _record_step(self, name: StepName, outcome: StepOutcome, started: datetime, detail: str) -> None:
        self.steps.append(Step(name=name, outcome=outcome, started_at=started, ended_at=_now(), detail=detail))
        self.journal.update(steps=[s.model_dump(mode="json") for s in self.steps])
        self.emit(EventKind.STEP, f"{name.value}: {outcome.value}{' - ' + detail if detail else ''}",
                  step=name, outcome=outcome)

    @contextlib.contextmanager
    def step(self, name: StepName, detail: list[str] | None = None) -> Iterator[list[str]]:
        """Record a step; its detail list may be filled in by the body; an exception marks it failed."""
        started = _now()
        notes: list[str] = detail if detail is not None else []
        self.emit(EventKind.STEP, f"{name.value}: started", step=name)
        try:
            yield notes
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            self._record_step(name, StepOutcome.FAILED, started, "; ".join([*notes, message]))
            raise
        outcome = StepOutcome.PARTIAL if any(n.startswith("!") for n in notes) else StepOutcome.OK
        self._record_step(name, outcome, started, "; ".join(n.lstrip("!") for n in notes))

    def progress(self) -> dict[str, Any]:
        """Where the capture stands, for whoever watches it: phase, seconds recorded, segments chained, tiles."""
        elapsed = 0.0
        if self.recording_started is not None:
            elapsed = (self.recording_ended or time.monotonic()) - self.recording_started
        return {
            "phase": self.phase,
            "seconds_recorded": round(elapsed, 1),
            "segments_chained": len(self.chain.entries),
            "tiles": [{"tile": t.tile, "url": t.url, "status": t.status.value, "reason": t.reason}
                      for t in sorted(self.tiles.values(), key=lambda t: t.tile)],
            "steps": [{"step": s.name.value, "outcome": s.outcome.value} for s in self.steps],
            # While recording: is the machine keeping up (see SyncMonitor.live_state)?
            "keeping_up": self.sync.live_state() if self.phase == "recording" else None,
        }

    def request_stop(self, reason: str) -> None:
        """Stop recording soon (Ctrl-C, SIGTERM, the API). Safe to call from a signal handler."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    # -- the run ---------------------------------------------------------------------------------

    async def run(self) -> Manifest:
        # Checked before any step writes its journal there: never touch another capture's directory.
        if self.capture_dir.exists() and any(self.capture_dir.iterdir()):
            raise CaptureError(f"{self.capture_dir} is not empty; choose a new --out directory")
        with self.step(StepName.INIT):
            self.capture_dir.mkdir(parents=True, exist_ok=True)
            (self.capture_dir / "logs").mkdir()
            self.journal.update(
                capture_id=self.capture_id,
                pid=os.getpid(),
                started_at=self.started_at.isoformat(),
                request=self.request.model_dump(mode="json"),
                layout=self.layout.model_dump(mode="json"),
                phase="init",
            )
            self.journal.open()
            if self._on_created is not None:
                # Whoever composes the capture (the CLI, a worker) registers it; recording knows no registry.
                self._on_created(self.capture_id, self.capture_dir)
        manifest = await self._run()
        # Only a finished capture leaves the active list; anything else is recovered by the next command.
        self.journal.close()
        return manifest

    async def _run(self) -> Manifest:
        settings = self.settings
        with self.step(StepName.ENVIRONMENT) as notes:
            components = check_components(settings)
            chromium = resolve_chromium(settings.chromium)
            notes.append(f"chromium {components['chromium']}; ffmpeg {components['ffmpeg'][:40]}")
            extra_roots = load_extra_roots(Path(settings.capture_ca_file)) if settings.capture_ca_file else ()
            if extra_roots:
                notes.append(f"{len(extra_roots)} extra trusted root(s) from WZ_CAPTURE_CA_FILE")
        options = {
            "duration_seconds": self.request.duration_seconds,
            "fps": self.request.fps,
            "layout": f"{self.layout.rows}x{self.layout.cols}",
            "tile_size": self.request.tile_size,
            "segment_seconds": settings.segment_seconds,
            "load_timeout_seconds": settings.load_timeout_seconds,
            "max_duration_seconds": settings.max_duration_seconds,
            "stream_copy": settings.stream_copy,
            "network": {**self.policy.describe(),
                        "egress": "every request of the browsers and stream copies went through the capture's "
                                  "proxy, which resolved each host once and connected to the checked addresses"},
            "extra_trusted_roots": [describe(root) for root in extra_roots],
        }
        # Per-tile values (window position, profile, the tile's proxy port) are in each tile's page.json.
        common_flags = [f for f in chromium_flags(self.layout.tiles[0].rect, Path("/"))
                        if not f.startswith(("--window-position", "--user-data-dir", "--proxy-server"))]
        await self._resolve_targets()
        # NTP can take seconds; it runs while the display and browsers start.
        provenance_task = asyncio.create_task(asyncio.to_thread(
            collect_provenance, settings, urls=list(self.request.urls), components=components,
            launch_flags=common_flags, options=options, operator=self.request.operator,
            case_id=self.request.case_id, dns={}, dns_errors={},
        ))
        display = VirtualDisplay(self.layout.width, self.layout.height, xvfb=settings.xvfb,
                                 log=self.capture_dir / "logs" / "xvfb.log")
        audio = AudioServer(pulseaudio=settings.pulseaudio, log=self.capture_dir / "logs" / "pulseaudio.log")
        screen: ScreenRecorder | None = None
        audio_recorder: AudioRecorder | None = None
        status_reason = ""
        t0: float | None = None
        fatal = ""
        try:
            async with async_playwright() as playwright:
                with self.step(StepName.SETUP) as notes:
                    display.start()
                    self.display_name = display.name
                    audio.start()
                    # The browsers' $HOME is the audio server's private runtime directory (see AudioServer.env).
                    install_browser_roots(Path(audio.env()["HOME"]), extra_roots)
                    for tile in self.layout.tiles:
                        audio.add_sink(tile.tile)
                    # The shared epoch sits just before the recorders start, so the first segment boundary
                    # (t0 + segment length) comes after every recorder's first packet and no track begins with
                    # a fragment too short to assemble. The audio recorder goes first: opening one PulseAudio
                    # input per tile took 1-4 s on a loaded 2-core machine, the screen grab well under one.
                    t0 = round(time.time() - EPOCH_LEAD_SECONDS, 3)
                    self.journal.update(t0=t0, phase="recording")
                    audio_recorder = AudioRecorder(
                        sinks=audio.sinks, capture_dir=self.capture_dir, t0=t0,
                        segment_seconds=settings.segment_seconds, ffmpeg_path=settings.ffmpeg,
                        env=audio.env(), log=self.capture_dir / "logs" / "audio.log",
                    )
                    audio_recorder.start()
                    screen = ScreenRecorder(
                        display=display.name, layout=self.layout, capture_dir=self.capture_dir, t0=t0,
                        capture_id=self.capture_id, segment_seconds=settings.segment_seconds,
                        ffmpeg_path=settings.ffmpeg, log=self.capture_dir / "logs" / "screen.log",
                    )
                    screen.start()
                    self.recording_started = time.monotonic()
                    self.phase = "recording"
                    self.journal.update(recording_started_at=_now().isoformat())
                    connected = await self._await_audio_inputs(audio, audio_recorder)
                    notes.append(f"display {display.name} {self.layout.width}x{self.layout.height}; "
                                 f"{len(audio.sinks)} audio sink(s); t0={t0:.3f}")
                    notes.append(connected)
                # Tiles start and load while the recording runs: the composite shows them loading,
                # and a slow or broken page cannot delay the others.
                load_step_started = _now()
                tiles_task = asyncio.create_task(self._run_tiles(playwright, chromium, display, audio))
                chain_task = asyncio.create_task(self._chain_loop())
                sync_task = asyncio.create_task(self._sync_loop())
                self.prefinisher = Prefinisher(self.capture_dir, self.layout, ffmpeg_path=settings.ffmpeg,
                                               ffprobe=settings.ffprobe)
                self.prefinisher.start()
                with self.step(StepName.RECORD) as notes:
                    try:
                        await self._record_loop(screen, audio_recorder)
                    finally:
                        sync_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sync_task
                        await self._end_recording(tiles_task, chain_task, [screen, audio_recorder])
                    notes.append(self._record_summary())
                    notes.append(f"{len(self.chain.entries)} segments chained")
                    notes.extend("!" + problem for problem in self.chain.problems)
                    if self.interrupted:
                        notes.append("!" + self.stop_reason)
                self._record_load_step(load_step_started)
                with self.step(StepName.COLLECT) as notes:
                    await self._collect(notes)
        except (EvidenceError, PlaywrightError, OSError, ValueError, subprocess.SubprocessError) as exc:
            # The step that failed is already recorded; finish with what exists, recorders stopped.
            fatal = str(exc) or type(exc).__name__
            running: list[Recorder | None] = [screen, audio_recorder]
            await asyncio.gather(*(asyncio.to_thread(r.stop) for r in running if r is not None))
            await asyncio.to_thread(self.chain.poll, final=True)
        finally:
            self.phase = "finalizing"
            self.display_name = None
            await self._stop_prefinishing()
            if self.recording_started is not None and self.recording_ended is None:
                self.recording_ended = time.monotonic()
            await self._teardown(display, audio)
        provenance = await provenance_task
        provenance = self._with_network(self._with_user_agent(provenance))
        self.journal.update(provenance=provenance.model_dump(mode="json"), phase="finalizing")
        tile_results = self._tile_results()
        with self.step(StepName.FINALIZE) as notes:
            usable = [t.tile for t in tile_results]
            if t0 is None:
                assembly = Assembly(recorded_seconds=0.0, frames=0, problems=("nothing was recorded",),
                                    composite=False)
            else:
                # Assembly and hashing take seconds to minutes: off the event loop, so whoever runs the job (a
                # worker's heartbeat, other captures in the same process) is not held up.
                assembly = await asyncio.to_thread(
                    assemble_videos, self.capture_dir, self.layout, t0=t0, usable_tiles=usable,
                    ffmpeg_path=settings.ffmpeg, ffprobe=settings.ffprobe, prefinished=self.prefinisher)
            notes.append(f"{assembly.frames} frames over {assembly.recorded_seconds:.2f} s")
            if self.prefinisher is not None:
                done = self.prefinisher
                notes.append(f"done while recording: {done.probed} segment(s) probed, {done.cut} screen segment(s) "
                             "cut into the tiles' videos")
                notes.extend(f"finishing while recording stopped early: {problem}" for problem in done.problems)
            notes.extend("!" + p for p in assembly.problems)
            notes.extend(assembly.remarks)
        status = overall_status(tile_results, composite=assembly.composite, interrupted=self.interrupted)
        if fatal:
            status = CaptureStatus.FAILED if not assembly.composite else CaptureStatus.PARTIAL
            status_reason = fatal
        elif self.interrupted:
            status_reason = self.stop_reason
        elif status != CaptureStatus.COMPLETE:
            failed = [t for t in tile_results if t.status == TileStatus.FAILED]
            status_reason = "; ".join(f"tile {t.tile}: {t.reason}" for t in failed) or "; ".join(assembly.problems)
        sync = await asyncio.to_thread(self._judge_sync, tile_results)
        with self.step(StepName.MANIFEST) as notes:
            notes.append(f"status {status.value}")
            if sync is not None:
                verdicts = ", ".join(f"tile {t.tile} {t.verdict.value}" for t in sync.tiles)
                notes.append(f"sync: {verdicts}")
        manifest = await asyncio.to_thread(
            build_manifest,
            self.capture_dir,
            capture_id=self.capture_id,
            status=status,
            reason=status_reason,
            started_at=self.started_at,
            ended_at=_now(),
            requested_duration=self.request.duration_seconds,
            recorded_seconds=assembly.recorded_seconds,
            provenance=provenance,
            layout=self.layout,
            tiles=tile_results,
            steps=tuple(self.steps),
            sync=sync,
        )
        write_manifest(self.capture_dir, manifest)
        self.journal.update(phase="done", status=status.value)
        self.phase = "done"
        self.emit(EventKind.DONE, f"capture {status.value}: {self.capture_dir / 'manifest.json'}", status=status)
        return manifest

    # -- tiles -----------------------------------------------------------------------------------

    async def _launch(self, playwright: Playwright, chromium: str, display: VirtualDisplay, audio: AudioServer,
                      number: int) -> None:
        tile_layout = self.layout.tile(number)
        env = {**audio.env(), "DISPLAY": display.name, "PULSE_SINK": audio.sinks[number]}
        proxy = await self.egress.listen(number)
        tile = TileBrowser(number, tile_layout.url, tile_layout.rect, self.capture_dir / "tiles" / str(number),
                           chromium=chromium, env=env, on_media=self._media_seen, proxy_port=proxy,
                           addresses=self.egress.addresses)
        self.tiles[number] = tile
        if number in self.target_refusals:
            tile.fail(self.target_refusals[number])
            self._tile_event(tile)
            return
        try:
            await tile.launch(playwright, self.capture_dir / "logs" / f"chromium{number}.log")
        except (TileFailure, EvidenceError, PlaywrightError) as exc:
            tile.fail(f"browser did not start: {str(exc).splitlines()[0]}")
        self._tile_event(tile)

    def _tile_event(self, tile: TileBrowser) -> None:
        text = f"tile {tile.tile}: {tile.status.value}" + (f" ({tile.reason})" if tile.reason else "")
        self.emit(EventKind.TILE, text, tile=tile.tile, tile_status=tile.status)

    async def _run_tiles(self, playwright: Playwright, chromium: str, display: VirtualDisplay,
                         audio: AudioServer) -> None:
        async def run(number: int) -> None:
            await self._launch(playwright, chromium, display, audio, number)
            tile = self.tiles[number]
            if tile.status == TileStatus.FAILED:
                tile.write_page_info()
                return
            await tile.load(self.settings.load_timeout_seconds)
            self._explain_refusal(tile)
            self._tile_event(tile)
            if tile.status == TileStatus.RECORDING:
                problems = await tile.snapshot("start")
                for problem in problems:
                    tile.event("problem", message=problem)
            if tile.status == TileStatus.RECORDING:
                with contextlib.suppress(Exception):
                    await tile.certificates()  # also closes the CDP session kept for the chain
            tile.write_page_info()

        results = await asyncio.gather(*(run(tile.tile) for tile in self.layout.tiles), return_exceptions=True)
        for tile, result in zip(self.layout.tiles, results, strict=True):
            if isinstance(result, Exception) and tile.tile in self.tiles:
                # Whatever broke one tile is its recorded reason; the others went on.
                first_line = str(result).splitlines()[0] if str(result) else "no answer in time"
                kind = "hung" if isinstance(result, TimeoutError) else "failed"
                self.tiles[tile.tile].fail(f"the page stopped answering the browser ({kind}; "
                                           f"{type(result).__name__}: {first_line})")

    def _record_load_step(self, started: datetime) -> None:
        failed = [t for t in self.tiles.values() if t.status == TileStatus.FAILED]
        detail = "; ".join(f"tile {t.tile}: {t.reason}" for t in failed)
        loaded = len(self.tiles) - len(failed)
        outcome = StepOutcome.OK if not failed else (StepOutcome.PARTIAL if loaded else StepOutcome.FAILED)
        self._record_step(StepName.LOAD, outcome, started, f"{loaded} of {len(self.tiles)} loaded"
                          + (f"; {detail}" if detail else ""))

    def _media_seen(self, tile: TileBrowser, url: str) -> None:
        if not self.settings.stream_copy or self._stop.is_set():
            return
        if sum(1 for s in self.streams if s.tile == tile.tile) >= MAX_STREAMS_PER_TILE:
            return
        copier = StreamCopier(
            tile=tile.tile, index=sum(1 for s in self.streams if s.tile == tile.tile) + 1, url=url,
            directory=tile.directory / "streams", referer=tile.final_url or tile.url, user_agent=tile.user_agent,
            cookies="", ffmpeg_path=self.settings.ffmpeg,
            log=self.capture_dir / "logs" / f"stream{tile.tile}.log", proxy=self.egress.url(tile.tile),
        )
        self.streams.append(copier)

        async def start() -> None:
            copier.cookies = await tile.cookie_header(url)
            if copier.user_agent is None and tile.page is not None:
                with contextlib.suppress(Exception):
                    copier.user_agent = await tile.page.evaluate("navigator.userAgent")
            if not self._stop.is_set():
                copier.start()
                tile.event("stream-copy-started", url=url, file=copier.output.name)

        task = asyncio.get_running_loop().create_task(start())
        self._stream_tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._stream_tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                tile.event("stream-copy-failed", url=url, error=str(finished.exception()))

        task.add_done_callback(done)

    # -- recording -------------------------------------------------------------------------------

    async def _await_audio_inputs(self, audio: AudioServer, recorder: AudioRecorder) -> str:
        """Wait until the audio recorder reads every tile's sink before the browsers start.

        The recorder opens one PulseAudio input after another, and each track begins when its input opens. With
        four browsers starting at once on two cores the fourth opened 5.3 s after the first; with the browsers
        held back until every input is open, each track begins well inside the first segment."""
        started = time.monotonic()
        while time.monotonic() - started < AUDIO_CONNECT_TIMEOUT:
            if await asyncio.to_thread(audio.recording_streams) >= len(audio.sinks):
                return f"audio inputs open after {time.monotonic() - started:.2f} s"
            if not recorder.alive():
                raise RecorderFailed(f"the audio recorder stopped while opening its inputs; see "
                                     f"{self.capture_dir}/logs/audio.log")
            await asyncio.sleep(0.05)
        return f"!audio inputs still opening after {AUDIO_CONNECT_TIMEOUT:.0f} s; the browsers started anyway"

    async def _record_loop(self, screen: ScreenRecorder, audio_recorder: AudioRecorder) -> None:
        assert self.recording_started is not None
        duration = self.request.duration_seconds
        limit = min(duration, self.settings.max_duration_seconds) if duration else self.settings.max_duration_seconds
        last_health = time.monotonic()
        while not self._stop.is_set():
            elapsed = time.monotonic() - self.recording_started
            if elapsed >= limit:
                if duration is None or duration > self.settings.max_duration_seconds:
                    self.request_stop(f"reached the maximum duration of {self.settings.max_duration_seconds:.0f} s")
                    self.interrupted = False
                break
            if not screen.alive():
                raise CaptureError(f"the screen recorder stopped unexpectedly; see {self.capture_dir}/logs/screen.log")
            if not audio_recorder.alive() and audio_recorder.process is not None:
                self.emit(EventKind.PROGRESS, f"the audio recorder stopped; see {self.capture_dir}/logs/audio.log")
            if time.monotonic() - last_health >= HEALTH_INTERVAL:
                last_health = time.monotonic()
                await self._check_health()
            self.emit(EventKind.PROGRESS, self._progress_line(elapsed, limit if duration else None))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(1.0, max(0.05, limit - elapsed)))
        if self._stop.is_set() and self.stop_reason.startswith("interrupted"):
            # Without --duration the operator's stop is the normal end of the capture.
            self.interrupted = duration is not None

    async def _end_recording(self, tiles_task: asyncio.Task[None], chain_task: asyncio.Task[None],
                             recorders: list[Recorder]) -> None:
        """Stop tiles, recorders and the chain loop in order, whatever ended the recording."""
        self._stop.set()
        self.recording_ended = time.monotonic()
        for task in (tiles_task, chain_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for browser in self.tiles.values():
            if browser.status in (TileStatus.PENDING, TileStatus.LOADING):
                browser.fail("page did not finish loading before the capture ended")
                self._tile_event(browser)
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in recorders))
        await self._stop_prefinishing()
        # The last segments closed when the recorders stopped: chain them and stamp the head.
        await asyncio.to_thread(self.chain.poll, final=True)

    async def _stop_prefinishing(self) -> None:
        if self.prefinisher is not None:
            await asyncio.to_thread(self.prefinisher.stop)

    async def _chain_loop(self) -> None:
        """Hash each segment as it closes; stamping may wait on a TSA, so it never blocks the recording loop."""
        while True:
            await asyncio.to_thread(self.chain.poll)
            await asyncio.sleep(1.0)

    async def _sync_loop(self) -> None:
        """The readings the capture's sync verdict is made of: the CPU every second and each recording tile's
        video counters every VIDEO_SAMPLE_SECONDS, on loops of their own (a page slow to answer must not stretch
        the CPU's cadence); a page that does not answer in time is skipped for that round, never waited for."""

        async def cpu() -> None:
            meters: dict[int, TreeCpu] = {}
            while True:
                started = time.time()
                self.sync.sample_cpu(started)
                browsers = {t.tile: t.process.pid for t in list(self.tiles.values())
                            if t.status == TileStatus.RECORDING and t.process is not None}
                try:
                    lowered = await asyncio.to_thread(self._sample_tile_costs, meters, browsers)
                except (OSError, psutil.Error) as exc:  # a reading lost, never the recording
                    _log.warning("could not read the tiles' CPU: %s", exc)
                    lowered = None
                if lowered is not None:
                    self._lowered(*lowered)
                await asyncio.sleep(max(0.1, 1.0 - (time.time() - started)))

        async def video() -> None:
            while True:
                started = time.time()
                recording = [t for t in self.tiles.values() if t.status == TileStatus.RECORDING]
                answers = await asyncio.gather(*(t.video_counters(timeout=1.5) for t in recording))
                for tile, counters in zip(recording, answers, strict=True):
                    if counters is None:
                        self.sync.add_unanswered(tile.tile)
                    else:
                        self.sync.add_video(tile.tile, time.time(), *counters)
                await asyncio.sleep(max(0.1, VIDEO_SAMPLE_SECONDS - (time.time() - started)))

        await asyncio.gather(cpu(), video())

    def _sample_tile_costs(self, meters: dict[int, TreeCpu], browsers: dict[int, int]
                           ) -> tuple[int, float, float, float, int] | None:
        """Read what each recording tile's browser (`browsers`: tile -> pid) has cost; lower the priority of one
        that costs far more than the others while the machine is saturated (SyncMonitor.costly_tile). Returns
        (tile, cores, others' median, when, threads changed) when a tile was lowered just now. Runs in a thread:
        it scans /proc."""
        trees = process_trees(browsers.values())
        for tile, pid in browsers.items():
            if trees[pid]:
                reading = meters.setdefault(tile, TreeCpu()).read(trees[pid])
                self.sync.add_tile_cpu(tile, time.time(), reading)
        for tile in self.sync.lowered:
            if tile in browsers:
                lower_priority(trees[browsers[tile]], LOWERED_NICENESS)  # again: it may have started processes
        costly = self.sync.costly_tile(set(browsers))
        if costly is None:
            return None
        tile, cores, median = costly
        changed = lower_priority(trees[browsers[tile]], LOWERED_NICENESS)
        # Claimed in the manifest only when it was done (a sandbox may refuse setpriority).
        return (tile, cores, median, time.time(), changed) if changed else None

    def _lowered(self, tile: int, cores: float, median: float, when: float, threads: int) -> None:
        """Record that a tile's browser was held back: the manifest (via the monitor), its timeline, the progress."""
        self.sync.lowered[tile] = when
        self.tiles[tile].event("priority-lowered", cores=round(cores, 2), others_median=round(median, 2),
                               niceness=LOWERED_NICENESS, threads=threads)
        self.emit(EventKind.TILE, f"tile {tile}: its browser uses {cores:.2f} cores, the other tiles {median:.2f} "
                  "each, and every core is busy: its CPU priority is lowered so the others keep their rate",
                  tile=tile, cpu_cores=round(cores, 2), others_cores=round(median, 2))

    def _progress_line(self, elapsed: float, limit: float | None) -> str:
        tiles = " ".join(f"{t.tile}:{t.status.value}" for t in self.tiles.values())
        total = f"/{limit:.0f}" if limit else ""
        warning = self.sync.live_warning()
        return f"recording {elapsed:5.1f}{total} s  {tiles}" + (f"  ! {warning}" if warning else "")

    async def _check_health(self) -> None:
        async def check(tile: TileBrowser) -> None:
            if tile.status != TileStatus.RECORDING:
                return
            if tile.process is not None and tile.process.poll() is not None:
                tile.fail(f"the browser exited (code {tile.process.returncode})")
            elif (waited := tile.unanswered_seconds()) >= HUNG_SECONDS:
                tile.fail(f"the page's renderer stopped responding (hung: no answer for {waited:.0f} s)")
            else:
                return
            self._tile_event(tile)

        await asyncio.gather(*(check(t) for t in self.tiles.values()))

    def _judge_sync(self, tile_results: tuple[TileResult, ...]) -> SyncQuality | None:
        frames_csv = self.capture_dir / FRAME_TIMES
        if not frames_csv.exists():
            return None
        return self.sync.judge(read_frame_times(frames_csv), {t.tile: t.status for t in tile_results})

    def _record_summary(self) -> str:
        assert self.recording_started is not None
        return f"{time.monotonic() - self.recording_started:.1f} s recorded; stop: {self.stop_reason or 'duration'}"

    async def _collect(self, notes: list[str]) -> None:
        async def collect(tile: TileBrowser) -> None:
            if tile.status == TileStatus.RECORDING:
                await tile.playback_quality()
                for problem in await tile.snapshot("end"):
                    notes.append(f"!tile {tile.tile}: {problem}")
            tile.write_har(self._browser_version(tile))
            tile.write_page_info()

        await asyncio.gather(*(collect(t) for t in self.tiles.values()))
        for copier in self.streams:
            code = await asyncio.to_thread(copier.stop)
            if copier.started_at is not None:
                copier.write_info(code)
        notes.append(f"{len(self.streams)} media stream(s) copied")

    @staticmethod
    def _browser_version(tile: TileBrowser) -> str:
        with contextlib.suppress(Exception):
            if tile.browser is not None:
                return tile.browser.version
        return "unknown"

    async def _teardown(self, display: VirtualDisplay, audio: AudioServer) -> None:
        for copier in self.streams:
            await asyncio.to_thread(copier.stop)
        await asyncio.gather(*(tile.close() for tile in self.tiles.values()), return_exceptions=True)
        await self.egress.close()
        audio.close()
        display.close()

    # -- the network rule ------------------------------------------------------------------------

    async def _resolve_targets(self) -> None:
        """Check every tile's URL (resolving each host once) and pin the answers the browsers will use."""
        for tile in self.layout.tiles:
            try:
                target = await asyncio.to_thread(resolve_target, parse_target(tile.url), self.policy,
                                                 self._resolver)
            except EvidenceError as exc:
                self.target_refusals[tile.tile] = str(exc)
                continue
            self.targets[tile.tile] = target
            self.egress.pin(target.host, target.addresses)

    def _refused(self, tile: int, what: str, reason: str) -> None:
        browser = self.tiles.get(tile)
        if browser is not None:
            browser.event("request-refused", target=what, reason=reason)

    def _explain_refusal(self, tile: TileBrowser) -> None:
        """A page the network rule refused fails with the rule's reason, not only the browser's error name."""
        if tile.status != TileStatus.FAILED:
            return
        host = urlsplit(tile.final_url or tile.url).hostname or ""
        refusal = self.egress.refusal_for(tile.tile, host)
        if refusal and "refused" not in tile.reason:
            tile.reason = f"refused by the capture's network rule: {refusal} ({tile.reason})"
            return
        unreachable = self.egress.unreachable_for(tile.tile, host)
        if unreachable:
            # The browser saw the proxy's 502; the proxy knows why the site was not reached.
            tile.reason = f"the site could not be reached: {unreachable}"

    def _with_network(self, provenance: Provenance) -> Provenance:
        """The DNS answers the capture used (each host resolved once, by the egress proxy) and what it refused."""
        dns = {host: tuple(addresses) for host, addresses in self.egress.pinned().items()}
        errors = {str(r["host"]): str(r["reason"]) for r in self.egress.refusals}
        errors.update({self.layout.tile(n).url: reason for n, reason in self.target_refusals.items()})
        return provenance.model_copy(update={"dns": dns, "dns_errors": errors})

    def _with_user_agent(self, provenance: Provenance) -> Provenance:
        agents = sorted({t.user_agent for t in self.tiles.values() if t.user_agent})
        if not agents:
            return provenance
        return provenance.model_copy(update={"user_agent": agents[0]})

    def _tile_results(self) -> tuple[TileResult, ...]:
        results = []
        for layout_tile in self.layout.tiles:
            tile = self.tiles.get(layout_tile.tile)
            if tile is None:
                results.append(TileResult(tile=layout_tile.tile, url=layout_tile.url, status=TileStatus.FAILED,
                                          reason="the tile was never started"))
                continue
            status = tile.status
            if status == TileStatus.RECORDING:
                status = TileStatus.PARTIAL if self.interrupted else TileStatus.COMPLETE
            reason = tile.reason or (self.stop_reason if self.interrupted else "")
            results.append(
                TileResult(
                    tile=tile.tile, url=tile.url, status=status, reason=reason, final_url=tile.final_url,
                    redirect_chain=tuple(tile.redirect_chain), title=tile.title, http_status=tile.http_status,
                    remote_ip=tile.remote_ip, user_agent=tile.user_agent, audio_sink=f"wz_tile{tile.tile}",
                    media_urls=tuple(tile.media_urls), loaded_at=tile.loaded_at, failed_at=tile.failed_at,
                    metrics=tile.metrics,
                )
            )
        return tuple(results)
