"""The custody service: `create_app(settings)` builds the FastAPI application (every route under /api/v1; OpenAPI at
/openapi.json and /docs; `/` is left for the web viewer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import problems
from api.context import Context
from api.index import index_registered
from api.routers import auth, cases, custody, log, verify
from api.schema import upgrade
from evidence import Settings

API = "/api/v1"
MAX_JSON_BODY = 1 << 20


def create_app(settings: Settings, *, secret: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await run_in_threadpool(Context.open, settings, secret=secret)
        await run_in_threadpool(upgrade, ctx.engine)
        await run_in_threadpool(index_registered, ctx.engine, settings.registry_dir)
        app.state.context = ctx
        try:
            yield
        finally:
            await run_in_threadpool(ctx.close)

    app = FastAPI(title="Wangzheng (网证) custody service", version="1", lifespan=lifespan,
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

    for router in (auth.router, cases.router, custody.router, log.router, verify.router):
        app.include_router(router, prefix=API)
    return app
