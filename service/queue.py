"""The capture job queue: procrastinate's tables and functions in the service's PostgreSQL database.

A capture of N tiles is queued on the queue `captures-N`. A worker with F tiles free asks only the queues
`captures-1` ... `captures-F`, so it never takes a job larger than what it has free (procrastinate's own worker
takes jobs by count, not by weight; its fetch, lock, heartbeat and abort functions are used as they are).

A job is deferred on the caller's own database connection, so the capture row, the "capture requested" custody
entry and the job commit in one transaction, or none of them does.
"""

from __future__ import annotations

from typing import Any

from procrastinate import App, PsycopgConnector, SyncPsycopgConnector
from procrastinate.jobs import Job
from sqlalchemy import Connection, make_url

from evidence import UsageError

CAPTURE_TASK = "wangzheng.capture"
MAX_TILES = 9


def capture_queue(tiles: int) -> str:
    if not 1 <= tiles <= MAX_TILES:
        raise UsageError(f"a capture has 1 to {MAX_TILES} tiles, not {tiles}")
    return f"captures-{tiles}"


def queues_for(free_tiles: int) -> list[str]:
    """The queues a worker with `free_tiles` free may take a job from."""
    return [capture_queue(n) for n in range(1, min(free_tiles, MAX_TILES) + 1)]


def libpq_url(database_url: str) -> str:
    """SQLAlchemy's postgresql+psycopg://... as the libpq URI psycopg and procrastinate take."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise UsageError("the job queue needs PostgreSQL (WZ_DATABASE_URL, or the embedded one)")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def worker_app(database_url: str) -> App:
    """The queue as a worker uses it (async, its own connection pool); open with `await app.open_async()`."""
    return App(connector=PsycopgConnector(conninfo=libpq_url(database_url), min_size=1, max_size=4))


_deferring = App(connector=SyncPsycopgConnector())  # only ever given a connection; never opens a pool


def defer_capture(conn: Connection, capture_id: str, tiles: int) -> int:
    """Queue the capture job in the transaction `conn` is in; returns the job id."""
    driver: Any = conn.connection.driver_connection
    job = Job(queue=capture_queue(tiles), lock=capture_id, queueing_lock=capture_id, task_name=CAPTURE_TASK,
              task_kwargs={"capture_id": capture_id, "tiles": tiles})
    deferred = _deferring.job_manager.defer_job(job, connection=driver)
    assert deferred.id is not None
    return deferred.id


def cancel_or_abort(conn: Connection, job_id: int) -> None:
    """Take a job no worker has started off the queue, or ask the worker running it to stop (in `conn`'s
    transaction). A stopped capture is still finalized and preserved: the worker ends it as evidence."""
    driver: Any = conn.connection.driver_connection
    _deferring.job_manager.cancel_job_by_id(job_id, abort=True, connection=driver)
