"""Errors as RFC 9457 problem details: one handler maps the project's error tree and FastAPI's own errors."""

from __future__ import annotations

import logging
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
log = logging.getLogger("wangzheng.api")


# How every error is described in the OpenAPI document (app-wide: 4XX and 5XX answers are problems).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem", "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong and what to do"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "where": {"type": "string"}, "what": {"type": "string"}}}},
    },
}
_PROBLEM_RESPONSE = {"description": "An RFC 9457 problem", "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {"4XX": _PROBLEM_RESPONSE, "5XX": _PROBLEM_RESPONSE}


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

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback on the server; the caller learns nothing of the internals.
        log.exception("unexpected error", exc_info=exc)
        return problem(500, "the service failed unexpectedly; the error is in the service's log")

    @app.exception_handler(EvidenceError)
    async def evidence_error(_request: Request, exc: EvidenceError) -> JSONResponse:
        return problem(_status_of(exc), str(exc) or type(exc).__name__, title=type(exc).__name__)
