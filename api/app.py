"""The custody service: `create_app(settings)` builds the FastAPI application (every route under /api/v1; OpenAPI at
/openapi.json and /docs; `/` is left for the web viewer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import problems
from api.context import Context
from api.routers import auth, captures, cases, custody, evidence, log, verify
from evidence import Settings
from service.captures import mark_stale_interrupted, reconcile_local
from service.index import index_registered
from service.schema import upgrade

logger = logging.getLogger("wangzheng.api")
REAP_SECONDS = 10.0


async def _reap(ctx: Context) -> None:
    """Captures whose worker stopped beating become `interrupted`, even when no other worker runs."""
    while True:
        await asyncio.sleep(REAP_SECONDS)
        try:
            await run_in_threadpool(mark_stale_interrupted, ctx.engine, ctx.services, detected_by="the service")
        except Exception:
            logger.exception("looking for interrupted captures failed")

API = "/api/v1"
MAX_JSON_BODY = 1 << 20


def create_app(settings: Settings, *, secret: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await run_in_threadpool(Context.open, settings, secret=secret)
        await run_in_threadpool(upgrade, ctx.engine)
        await run_in_threadpool(index_registered, ctx.engine, settings.registry_dir, ctx.services.ledger)
        await run_in_threadpool(reconcile_local, ctx.engine, ctx.services, settings)
        app.state.context = ctx
        reaper = asyncio.create_task(_reap(ctx))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await run_in_threadpool(ctx.close)

    app = FastAPI(title="Wangzheng (网证) custody service", version="1", lifespan=lifespan,
                  responses=problems.PROBLEM_RESPONSES,
                  description="Cases, captures, verified evidence, chain of custody and verification for courts. "
                              "Errors are RFC 9457 problem details.")
    problems.install(app)

    @app.middleware("http")
    async def bounded_bodies(request, call_next):  # type: ignore[no-untyped-def]
        # JSON bodies are small; only the package check takes a large body, and it streams with its own limit.
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_JSON_BODY and \
                not request.url.path.endswith("/verify/package"):
            return problems.problem(413, f"a request body may have at most {MAX_JSON_BODY} bytes")
        return await call_next(request)

    for router in (auth.router, cases.router, captures.router, evidence.router, custody.router, log.router,
                   verify.router):
        app.include_router(router, prefix=API)
    return app
