"""The custody service: `create_app(settings)` builds the FastAPI application (every route under /api/v1; OpenAPI at
/openapi.json and /docs; `/` is left for the web viewer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.context import REQUEST_THREADS, Context
from api.routers import auth, captures, cases, custody, evidence, log, reports, verify
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


class BoundedBodies:
    """JSON bodies are small: refuse one over MAX_JSON_BODY with 413, by its Content-Length before it is read, or
    (chunked, no length) as soon as the bytes received pass the limit. Only the package check takes a large body,
    and it streams to disk under its own limit. Plain ASGI: no task or copy per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith("/verify/package"):
            await self.app(scope, receive, send)
            return
        too_large = f"a request body may have at most {MAX_JSON_BODY} bytes"
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_JSON_BODY:
            await problems.problem(413, too_large)(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_JSON_BODY:
                    raise HTTPException(413, too_large)  # answered by the problem handlers like any other
            return message

        await self.app(scope, bounded_receive, send)


def create_app(settings: Settings, *, secret: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Request threads and kept database connections go together (Context.open sizes its pool to match).
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        ctx = await run_in_threadpool(Context.open, settings, secret=secret)
        await run_in_threadpool(upgrade, ctx.engine)
        await run_in_threadpool(ctx.services.check_node_identity)
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

    app.add_middleware(BoundedBodies)
    for router in (auth.router, cases.router, captures.router, evidence.router, reports.router, custody.router,
                   log.router, verify.router):
        app.include_router(router, prefix=API)
    return app
