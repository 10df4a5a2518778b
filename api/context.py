"""What every request of the service shares: settings, the database, the node's integrity services, limits."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine

from evidence import CustodyAction, CustodyEntry, Settings
from preservation.services import Services

REQUEST_THREADS = 40  # threads running sync endpoints (anyio's default; set by the app at start)

T = TypeVar("T")


class RateLimiter:
    """A sliding window per client: at most `limit` calls in `window` seconds (in this process)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """0 when the call may go ahead (and counts it); else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(client, deque())
            while calls and now - calls[0] >= self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                return max(1, int(self.window - (now - calls[0])) + 1)
            calls.append(now)
            if len(self._calls) > 100_000:  # forget idle clients rather than grow without bound
                for key in [k for k, v in self._calls.items() if not v][:50_000]:
                    del self._calls[key]
            return 0


@dataclass
class Context:
    settings: Settings
    services: Services
    engine: Engine
    secret: str
    hash_lookups: RateLimiter
    logins: RateLimiter
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, *, secret: str) -> Context:
        services = Services(settings)
        services.background_checkpoints = True  # a request never waits for a checkpoint's signature and upload
        # One kept connection per request thread (anyio's pool has 40): a pool smaller than that closes and opens
        # PostgreSQL connections (a process each) under load, which cost more than the requests themselves.
        engine = create_engine(services.database_url, pool_pre_ping=True, pool_size=REQUEST_THREADS,
                               max_overflow=10)
        return cls(settings=settings, services=services, engine=engine, secret=secret,
                   hash_lookups=RateLimiter(settings.hash_lookups_per_minute),
                   logins=RateLimiter(20))

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """One object per service kept under `key` (a throttle, a rate limiter, a cache), made on first use."""
        found = self.extra.get(key)
        if found is None:
            found = self.extra.setdefault(key, make())  # two first uses at once keep the same one
        return cast(T, found)

    def record(self, actor: str, action: CustodyAction, subject: str, details: dict[str, Any]) -> CustodyEntry:
        """One custody entry for something a person did through the service."""
        return self.services.record_as(actor, action, subject, details)

    def record_in(self, conn: Connection, actor: str, action: CustodyAction, subject: str,
                  details: dict[str, Any]) -> CustodyEntry:
        """A custody entry that commits with the caller's transaction; call `after_commit` once it has."""
        return self.services.record_in(conn, actor, action, subject, details)

    def after_commit(self, entry: CustodyEntry) -> None:
        self.services.after_commit(entry)

    def close(self) -> None:
        self.engine.dispose()
        self.services.close()
