"""One worker process: a tile budget, a fetch loop, a heartbeat, a reaper, and recovery of its host's captures.

- It takes a job only from the queues its free tiles allow (`service.queue`), records it in this process on the
  capture engine (each capture has its own display, audio server and browsers), then preserves it.
- Every HEARTBEAT_SECONDS it writes each running capture's progress (phase, seconds recorded, segments chained,
  tiles) and heartbeat, flushes its events, grabs a preview JPEG, and learns whether someone asked it to stop.
- Every REAP_SECONDS it marks captures whose worker (any worker) has stopped beating as `interrupted`.
- On start it finalizes and preserves what its host recorded before a crash, and gives those captures their state.
- SIGTERM or SIGINT: it takes no more jobs, stops its recordings normally, preserves them, and exits. Nothing
  that started recording is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procrastinate.jobs import Job, Status
from sqlalchemy import create_engine, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from capture.job import CaptureJob
from capture.recovery import recover_interrupted
from evidence import CaptureEvent, CaptureRequest, CustodyAction, EventKind, EvidenceError, Settings, UsageError
from preservation.maintenance import preserve_recovered
from preservation.preserve import Preserver
from preservation.registry import register
from preservation.services import Services
from service.captures import (
    HEARTBEAT_SECONDS,
    add_event,
    fail,
    finish_from_directory,
    mark_stale_interrupted,
    reconcile_local,
    set_state,
)
from service.db import capture_previews, captures, users, workers
from service.queue import CAPTURE_TASK, MAX_TILES, queues_for, worker_app
from service.schema import upgrade
from worker.preview import grab_preview

log = logging.getLogger("wangzheng.worker")

DEFAULT_TILES = 4  # 4 rooms of real 720p30 livestreams hold 15 fps per tile on 2 cores; 6 do not yet
FETCH_SECONDS = 1.0
REAP_SECONDS = 10.0
PREVIEW_SECONDS = 2.0
PROGRESS_EVENT_SECONDS = 2.0
_PHASE_STATE = {"starting": "starting", "recording": "recording", "finalizing": "finalizing", "done": "finalizing"}


@dataclass
class Running:
    """One capture this worker is running."""

    capture_id: str
    tiles: int
    job_id: int
    capture: CaptureJob | None = None
    state: str = "starting"
    # The capture's events, and the states it entered, in the order they happened; written by the heartbeat.
    events: deque[CaptureEvent | str] = field(default_factory=deque)
    progress_event_at: float = 0.0
    preview_at: float = 0.0
    stop_seen: bool = False

    def sink(self, event: CaptureEvent) -> None:
        # Called on the capture's event loop; progress lines are sampled by the heartbeat instead. Every change of
        # phase is followed by an event, so a state is queued here, before the event that revealed it.
        if self.capture is not None:
            state = _PHASE_STATE[self.capture.phase]
            if self.state not in (state, "preserving"):
                self.state = state
                self.events.append(state)
        if event.kind != EventKind.PROGRESS:
            self.events.append(event)


class Worker:
    def __init__(self, settings: Settings, tiles: int = DEFAULT_TILES, *, say: Any = None) -> None:
        if not 1 <= tiles <= MAX_TILES:
            raise UsageError(f"--tiles must be 1 to {MAX_TILES}, not {tiles}")
        host = socket.gethostname()
        self.worker_id = f"{host[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        if not settings.actor:
            settings = settings.model_copy(update={"actor": f"wz-worker@{host[:40]}"})
        self.settings = settings
        self.tiles = tiles
        self.host = host
        self.say = say or log.info
        self.services = Services(settings)
        self.services.background_checkpoints = True
        self.engine = create_engine(self.services.database_url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        self.queue = worker_app(self.services.database_url)
        self.running: dict[str, Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue_worker_id: int | None = None
        self._stopping: asyncio.Event | None = None
        self._preserving = asyncio.Lock()

    @property
    def free_tiles(self) -> int:
        return self.tiles - sum(r.tiles for r in self.running.values())

    def stop(self, reason: str) -> None:
        """Take no more jobs; stop the running recordings normally (they are finalized and preserved)."""
        if self._stopping is not None and not self._stopping.is_set():
            self.say(f"worker {self.worker_id}: stopping ({reason})")
            self._stopping.set()
        for running in self.running.values():
            if running.capture is not None:
                running.capture.request_stop(f"stopped because the worker was shut down ({reason})")

    # -- the process ----------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.run(self.serve(install_signal_handlers=True))

    async def serve(self, *, install_signal_handlers: bool = False) -> None:
        self._stopping = asyncio.Event()
        if install_signal_handlers:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        await asyncio.to_thread(upgrade, self.engine)
        await asyncio.to_thread(self.services.check_node_identity)  # before taking a job it could not sign
        await self.queue.open_async()
        loops: list[asyncio.Task[None]] = []
        try:
            self._queue_worker_id = await self.queue.job_manager.register_worker()
            await asyncio.to_thread(self._register)
            await self._recover()
            loops = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._reap_loop())]
            self.say(f"worker {self.worker_id}: ready, {self.tiles} tiles")
            while not self._stopping.is_set():
                if self.free_tiles > 0 and await self._take_job():
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), FETCH_SECONDS)
            if self._tasks:
                self.say(f"worker {self.worker_id}: finishing {len(self._tasks)} capture(s)")
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in loops:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._deregister)
            if self._queue_worker_id is not None:
                with contextlib.suppress(Exception):
                    await self.queue.job_manager.unregister_worker(self._queue_worker_id)
            await self.queue.close_async()
            self.engine.dispose()
            self.services.close()

    def _register(self) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(insert(workers).values(id=self.worker_id, host=self.host[:255], pid=os.getpid(),
                                                tiles=self.tiles, free_tiles=self.tiles, started_at=now,
                                                heartbeat_at=func.now()))

    def _deregister(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(workers).where(workers.c.id == self.worker_id)
                         .values(stopped_at=func.now(), free_tiles=0))

    # -- recovery -------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Finalize and preserve what this host recorded before a crash; bring those captures' state in line."""
        recovered = await asyncio.to_thread(recover_interrupted, self.settings)
        if recovered:
            await asyncio.to_thread(preserve_recovered, self.settings, recovered, self.say)
        done = await asyncio.to_thread(reconcile_local, self.engine, self.services, self.settings)
        for capture_id, state in done:
            self.say(f"capture {capture_id}: finalized after an interruption as {state}")

    # -- jobs -----------------------------------------------------------------------------------

    async def _take_job(self) -> bool:
        assert self._queue_worker_id is not None
        job = await self.queue.job_manager.fetch_job(queues_for(self.free_tiles), self._queue_worker_id)
        if job is None:
            return False
        kwargs = job.task_kwargs
        capture_id, tiles = kwargs.get("capture_id"), kwargs.get("tiles")
        if job.task_name != CAPTURE_TASK or not isinstance(capture_id, str) or not isinstance(tiles, int):
            await self._finish(job, Status.FAILED)
            self.say(f"worker {self.worker_id}: job {job.id} is not a capture job ({job.task_name}); failed it")
            return True
        assert job.id is not None
        running = Running(capture_id=capture_id, tiles=tiles, job_id=job.id)
        self.running[capture_id] = running
        task = asyncio.create_task(self._run(running, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _finish(self, job: Job, status: Status) -> None:
        with contextlib.suppress(Exception):
            await self.queue.job_manager.finish_job(job, status, delete_job=False)

    async def _run(self, running: Running, job: Job) -> None:
        capture_id = running.capture_id
        try:
            row = await asyncio.to_thread(self._claim, capture_id)
            if row is None:
                await self._finish(job, Status.ABORTED)  # stopped before it started: the API recorded why
                return
            await self._record_and_preserve(running, row)
            await self._finish(job, Status.SUCCEEDED)
        except Exception as exc:  # a capture must end as evidence or as a recorded failure, never vanish
            log.exception("capture %s failed", capture_id)
            reason = f"the worker could not run the capture: {str(exc) or type(exc).__name__}"
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._end_after_error, running, reason)
            await self._finish(job, Status.FAILED)
        finally:
            self.running.pop(capture_id, None)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._flush, running)

    def _claim(self, capture_id: str) -> Any:
        with self.engine.begin() as conn:
            row = conn.execute(select(captures, users.c.name.label("operator"))
                               .join(users, users.c.id == captures.c.requested_by)
                               .where(captures.c.id == capture_id).with_for_update(of=captures)).first()
            if row is None or row.state != "queued":
                return None
            set_state(conn, capture_id, "starting", worker=self.worker_id, started_at=func.now(),
                      heartbeat_at=func.now())
        self.services.record_as(f"worker {self.worker_id}", CustodyAction.CAPTURE_STARTED, capture_id,
                                {"worker": self.worker_id, "host": self.host, "operator": row.operator})
        return row

    async def _record_and_preserve(self, running: Running, row: Any) -> None:
        asked = row.request
        request = CaptureRequest(urls=tuple(asked["urls"]), duration_seconds=asked.get("duration"),
                                 fps=asked.get("fps", 15), layout=asked.get("layout", "auto"),
                                 tile_size=asked.get("tile_size", "640x360"), case_id=row.case_id,
                                 operator=row.operator)

        def created(capture_id: str, directory: Path) -> None:
            register(self.settings.registry_dir, capture_id, directory)
            with self.engine.begin() as conn:
                conn.execute(update(captures).where(captures.c.id == capture_id).values(directory=str(directory)))

        capture = CaptureJob(request, self.settings, on_event=running.sink, stamp=self.services.timestamper.stamp,
                             on_created=created, capture_id=running.capture_id)
        running.capture = capture
        if row.stop_requested_at is not None:
            capture.request_stop("stopped through the service before recording began")
        await capture.run()
        running.state = "preserving"
        running.events.append("preserving")
        await asyncio.to_thread(self._flush, running)
        async with self._preserving:  # one preservation at a time: they share the signer, spool and ledger
            await asyncio.to_thread(Preserver(self.services, report=self.say).preserve, capture.capture_dir)
        state = await asyncio.to_thread(finish_from_directory, self.engine, self.services, running.capture_id,
                                        capture.capture_dir)
        self.say(f"capture {running.capture_id}: {state}")

    def _end_after_error(self, running: Running, reason: str) -> None:
        directory = running.capture.capture_dir if running.capture is not None else None
        if directory is not None and (directory / "manifest.json").exists():
            with contextlib.suppress(EvidenceError):
                Preserver(self.services, report=self.say).preserve(directory)
            if finish_from_directory(self.engine, self.services, running.capture_id, directory, note=reason):
                return
        fail(self.engine, self.services, running.capture_id, reason)

    # -- heartbeat, progress, previews, stop ------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._beat()
            except Exception:  # a missed beat is retried; the reaper waits STALE_SECONDS before it acts
                log.exception("heartbeat failed")
            await asyncio.sleep(max(0.1, HEARTBEAT_SECONDS / 2 - (time.monotonic() - started)))

    async def _beat(self) -> None:
        assert self._queue_worker_id is not None
        await self.queue.job_manager.update_heartbeat(self._queue_worker_id)
        previews: dict[str, bytes] = {}
        now = time.monotonic()
        for running in list(self.running.values()):
            capture = running.capture
            if capture is None or capture.display_name is None or now - running.preview_at < PREVIEW_SECONDS:
                continue
            running.preview_at = now
            try:
                previews[running.capture_id] = await grab_preview(
                    capture.display_name, capture.layout.width, capture.layout.height,
                    ffmpeg_path=self.settings.ffmpeg)
            except OSError as exc:
                log.warning("preview of %s: %s", running.capture_id, exc)
        stops = await asyncio.to_thread(self._write_beat, previews)
        for capture_id, who in stops.items():
            asked = self.running.get(capture_id)
            if asked is not None and asked.capture is not None and not asked.stop_seen:
                asked.stop_seen = True
                asked.capture.request_stop(f"stopped by {who} through the service")

    def _write_beat(self, previews: dict[str, bytes]) -> dict[str, str]:
        """Progress, events, previews and heartbeats in one transaction; returns {capture id: who asked to stop}."""
        stops: dict[str, str] = {}
        with self.engine.begin() as conn:
            conn.execute(update(workers).where(workers.c.id == self.worker_id)
                         .values(heartbeat_at=func.now(), free_tiles=self.free_tiles))
            for running in list(self.running.values()):
                self._flush_events(conn, running)
                capture = running.capture
                values: dict[str, Any] = {"heartbeat_at": func.now()}
                if capture is not None:
                    progress = capture.progress()
                    values["progress"] = progress
                    if time.monotonic() - running.progress_event_at >= PROGRESS_EVENT_SECONDS:
                        running.progress_event_at = time.monotonic()
                        add_event(conn, running.capture_id, "progress",
                                  f"{progress['phase']} {progress['seconds_recorded']:.0f} s, "
                                  f"{progress['segments_chained']} segments chained", **progress)
                row = conn.execute(update(captures).where(captures.c.id == running.capture_id,
                                                          captures.c.worker == self.worker_id)
                                   .values(**values).returning(captures.c.stop_requested_by, captures.c.state)).first()
                if row is not None and row.state == "interrupted":
                    # Declared interrupted while this worker was only slow (a stalled database, a paused VM).
                    set_state(conn, running.capture_id, running.state, "its worker's heartbeats resumed")
                if row is not None and row.stop_requested_by is not None:
                    name = conn.execute(select(users.c.name).where(users.c.id == row.stop_requested_by)).scalar()
                    stops[running.capture_id] = str(name)
            for capture_id, jpeg in previews.items():
                conn.execute(pg_insert(capture_previews).values(capture_id=capture_id, at=func.now(), jpeg=jpeg)
                             .on_conflict_do_update(index_elements=["capture_id"],
                                                    set_={"at": func.now(), "jpeg": jpeg}))
        return stops

    def _flush(self, running: Running) -> None:
        with self.engine.begin() as conn:
            self._flush_events(conn, running)

    @staticmethod
    def _flush_events(conn: Any, running: Running) -> None:
        while running.events:
            event = running.events.popleft()
            if isinstance(event, str):
                set_state(conn, running.capture_id, event)
                continue
            fields = event.model_dump(mode="json", exclude_none=True, exclude={"capture_id", "kind", "message"})
            add_event(conn, running.capture_id, event.kind.value, event.message, **fields)

    # -- interrupted captures anywhere --------------------------------------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_SECONDS)
            try:
                for capture_id in await asyncio.to_thread(mark_stale_interrupted, self.engine, self.services,
                                                          detected_by=f"worker {self.worker_id}"):
                    self.say(f"capture {capture_id}: interrupted (its worker stopped beating)")
                await self._fail_stalled_jobs()
            except Exception:
                log.exception("looking for interrupted captures failed")

    async def _fail_stalled_jobs(self) -> None:
        manager = self.queue.job_manager
        await manager.prune_stalled_workers(60)
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=60):
            if job.id is not None and job.task_name == CAPTURE_TASK:
                # Never retried: a recording cannot be taken again. The capture row says what became of it.
                await manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
