"""Errors as RFC 9457 problem details: one handler maps the project's error tree and FastAPI's own errors."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from evidence import (
    ConfigurationError,
    EvidenceError,
    IntegrityError,
    LedgerCorrupt,
    StorageError,
    StoreUnavailable,
    TimestampUnavailable,
    UsageError,
)

PROBLEM = "application/problem+json"


def problem(status: int, detail: str, *, title: str | None = None, headers: Mapping[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status,
            "detail": detail[:2000], **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _status_of(error: EvidenceError) -> int:
    if isinstance(error, UsageError):
        return 422
    if isinstance(error, LedgerCorrupt):
        return 500  # the custody record does not hold: nobody should be told otherwise
    if isinstance(error, IntegrityError):
        return 409
    if isinstance(error, StoreUnavailable | TimestampUnavailable):
        return 503
    if isinstance(error, StorageError | ConfigurationError):
        return 500
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(HTTPException)
    async def fastapi_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"where": ".".join(str(p) for p in e.get("loc", ())), "what": str(e.get("msg", ""))[:300]}
                  for e in exc.errors()[:20]]
        said = "; ".join(f"{e['where']}: {e['what']}" for e in errors)
        return problem(422, f"the request is not valid: {said}", errors=errors)

    @app.exception_handler(EvidenceError)
    async def evidence_error(_request: Request, exc: EvidenceError) -> JSONResponse:
        return problem(_status_of(exc), str(exc) or type(exc).__name__, title=type(exc).__name__)
