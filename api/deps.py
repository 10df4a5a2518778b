"""FastAPI dependencies: the context, the caller, and one guard per kind of permission.

Roles: `admin` (users), `investigator` (creates cases; launches captures in cases they belong to), `case_handler`
(reads, downloads, exports, legal hold within their cases), `court` (reads what a case shares with it; verifies).
A case the caller is not a member of answers 404, exactly as a case that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, select, update

from api.context import Context
from api.security import Principal, read_access_token, read_media_ticket, secret_matches, split_api_token
from service.db import api_tokens, captures, case_members, cases, users

CASE_ID_PATTERN = r"^C-\d{8}-[0-9a-f]{6}$"
CaseId = Annotated[str, Path(pattern=CASE_ID_PATTERN, description="a case id, e.g. C-20261130-4f3a2b")]
CAPTURE_ID_PATTERN = r"^wz-\d{8}T\d{6}Z-[0-9a-f]{6}$"
CaptureId = Annotated[str, Path(pattern=CAPTURE_ID_PATTERN, description="a capture id, e.g. wz-20261130T101500Z-"
                                                                          "4f3a2b")]

# Which case roles each global role may hold.
CASE_ROLES_FOR = {"investigator": ("investigator", "case_handler"), "case_handler": ("case_handler",),
                  "court": ("court",), "admin": ()}


# Dependencies that do no I/O are coroutines: FastAPI runs a plain function dependency on a worker thread, a hop
# per dependency per request that cost more than the hash check itself under load.
async def context(request: Request) -> Context:
    ctx: Context = request.app.state.context
    return ctx


ContextDep = Annotated[Context, Depends(context)]


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _unauthorized(message: str = "sign in first (POST /api/v1/auth/token), then send the token as "
                                  "'Authorization: Bearer ...'") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _principal(ctx: Context, token: str) -> Principal | None:
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        parts = split_api_token(token)
        if parts is not None:
            row = conn.execute(select(api_tokens, users.c.name, users.c.role, users.c.disabled)
                               .join(users, users.c.id == api_tokens.c.user_id)
                               .where(api_tokens.c.id == parts[0])).first()
            if row is None or row.revoked_at is not None or row.disabled or \
                    not secret_matches(row.secret_sha256, parts[1]):
                return None
            conn.execute(update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now))
            return Principal(user_id=row.user_id, name=row.name, role=row.role, token_id=row.id,
                             scopes=tuple(row.scopes))
        user_id = read_access_token(ctx.secret, token)
        if user_id is None:
            return None
        user = conn.execute(select(users).where(users.c.id == user_id)).first()
        if user is None or user.disabled:
            return None
        return Principal(user_id=user.id, name=user.name, role=user.role)


async def optional_principal(request: Request, ctx: ContextDep) -> Principal | None:
    token = _bearer(request)
    if token is None:
        return None
    principal = await run_in_threadpool(_principal, ctx, token)
    if principal is None:
        raise _unauthorized("the token is unknown, expired or revoked; sign in again")
    return principal


async def current_principal(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise _unauthorized()
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def _ticket_principal(ctx: Context, ticket: str, capture_id: str) -> Principal | None:
    granted = read_media_ticket(ctx.secret, ticket)
    if granted is None or granted.capture_id != capture_id:
        return None
    with ctx.engine.connect() as conn:
        user = conn.execute(select(users).where(users.c.id == granted.user_id)).first()
        if user is None or user.disabled:
            return None
        if granted.token_id is not None:  # a script's ticket lapses with its token
            token = conn.execute(select(api_tokens).where(api_tokens.c.id == granted.token_id,
                                                          api_tokens.c.user_id == user.id)).first()
            if token is None or token.revoked_at is not None:
                return None
    return Principal(user_id=user.id, name=user.name, role=user.role, token_id=granted.token_id,
                     scopes=granted.scopes)


async def media_principal(request: Request, capture_id: CaptureId, ctx: ContextDep,
                          ticket: Annotated[str | None, Query(
                              max_length=2000, description="a media ticket (POST /captures/{capture_id}/media-ticket)"
                              " for a player or a download link, which cannot send a header")] = None) -> Principal:
    """The caller of a file download: the Authorization header, or else a media ticket for this very capture."""
    if _bearer(request) is not None or ticket is None:
        return await current_principal(await optional_principal(request, ctx))
    principal = await run_in_threadpool(_ticket_principal, ctx, ticket, capture_id)
    if principal is None:
        raise _unauthorized("the media ticket is expired, revoked or for another capture; ask for a new one")
    return principal


MediaPrincipalDep = Annotated[Principal, Depends(media_principal)]


def require_role(*roles: str, scope: str = "read") -> Callable[..., Awaitable[Principal]]:
    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles or not principal.may(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the role {' or '.join(roles)}"
                                + (f" and the token scope '{scope}'" if principal.token_id else ""))
        return principal

    return check


class CaseAccess:
    """The caller's membership of one case: what they may do there."""

    def __init__(self, principal: Principal, case: Any, role: str) -> None:
        self.principal = principal
        self.case = case
        self.role = role


def load_case_access(conn: Connection, principal: Principal, case_id: str) -> CaseAccess | None:
    row = conn.execute(select(cases, case_members.c.role.label("member_role"))
                       .join(case_members, case_members.c.case_id == cases.c.id)
                       .where(cases.c.id == case_id, case_members.c.user_id == principal.user_id)).first()
    if row is None:
        return None
    return CaseAccess(principal, row, row.member_role)


def not_found(what: str = "case") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}, or not one you may see")


def require_case_role(*case_roles: str, scope: str = "read") -> Callable[..., CaseAccess]:
    """The case named in the path, if the caller is a member in one of `case_roles` (404 if not a member)."""
    def check(case_id: CaseId, principal: PrincipalDep, ctx: ContextDep) -> CaseAccess:
        with ctx.engine.connect() as conn:
            access = load_case_access(conn, principal, case_id)
        if access is None:
            raise not_found()
        if access.role not in case_roles or not principal.may(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"in this case your role is {access.role}; this needs {' or '.join(case_roles)}"
                                + (f" and the token scope '{scope}'" if principal.token_id else ""))
        return access

    return check


class CaptureAccess:
    """The caller's membership of the case a capture belongs to."""

    def __init__(self, principal: Principal, capture: Any, role: str) -> None:
        self.principal = principal
        self.capture = capture
        self.role = role


def load_capture_access(conn: Connection, principal: Principal, capture_id: str) -> CaptureAccess | None:
    row = conn.execute(select(captures, case_members.c.role.label("member_role"))
                       .join(case_members, case_members.c.case_id == captures.c.case_id)
                       .where(captures.c.id == capture_id, case_members.c.user_id == principal.user_id)).first()
    if row is None:
        return None
    return CaptureAccess(principal, row, row.member_role)


def _capture_access(ctx: Context, principal: Principal, capture_id: str, case_roles: tuple[str, ...],
                    scope: str) -> CaptureAccess:
    with ctx.engine.connect() as conn:
        access = load_capture_access(conn, principal, capture_id)
    if access is None:
        raise not_found("capture")
    if access.role not in case_roles or not principal.may(scope):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"in this capture's case your role is {access.role}; this needs "
                            f"{' or '.join(case_roles)}"
                            + (f" and the token scope '{scope}'" if principal.token_id else ""))
    return access


def require_capture_role(*case_roles: str, scope: str = "read") -> Callable[..., CaptureAccess]:
    """The capture named in the path, if the caller is a member of its case in one of `case_roles` (else 404)."""
    def check(capture_id: CaptureId, principal: PrincipalDep, ctx: ContextDep) -> CaptureAccess:
        return _capture_access(ctx, principal, capture_id, case_roles, scope)

    return check


def require_capture_file_role(*case_roles: str, scope: str = "read") -> Callable[..., CaptureAccess]:
    """As require_capture_role, for a file download: the caller may also come with a media ticket."""
    def check(capture_id: CaptureId, principal: MediaPrincipalDep, ctx: ContextDep) -> CaptureAccess:
        return _capture_access(ctx, principal, capture_id, case_roles, scope)

    return check
