"""Signing in (OAuth2 password flow, short-lived signed tokens), who am I, and users (admin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from api.deps import ContextDep, PrincipalDep, client_of, require_role
from api.models import TokenPublic, UserCreate, UserPublic
from api.security import (
    Principal,
    dummy_password_check,
    hash_password,
    issue_access_token,
    password_matches,
)
from evidence import CustodyAction
from service.db import users

router = APIRouter(tags=["auth"])


def _public(row: object) -> UserPublic:
    return UserPublic.model_validate(row, from_attributes=True)


@router.post("/auth/token", response_model=TokenPublic, summary="Sign in; returns a short-lived bearer token")
def sign_in(request: Request, ctx: ContextDep,
            username: Annotated[str, Form(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")],
            password: Annotated[str, Form(max_length=1000)]) -> TokenPublic:
    client = client_of(request)
    wait = ctx.logins.retry_after(client)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many sign-in attempts from here; wait",
                            headers={"Retry-After": str(wait)})
    now = datetime.now(UTC)
    refused = HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong name or password, or the account is locked",
                            headers={"WWW-Authenticate": "Bearer"})
    # The failure count must be committed: decide inside the transaction, refuse after it.
    locked: datetime | None = None
    with ctx.engine.begin() as conn:
        user = conn.execute(select(users).where(users.c.name == username).with_for_update()).first()
        if user is None or user.disabled or (user.locked_until is not None and user.locked_until > now):
            dummy_password_check()
            accepted = False
        elif not password_matches(user.password_hash, password):
            accepted = False
            failures = user.failed_logins + 1
            locked = now + timedelta(minutes=ctx.settings.login_lock_minutes) \
                if failures >= ctx.settings.login_max_failures else None
            conn.execute(update(users).where(users.c.id == user.id).values(
                failed_logins=0 if locked else failures, locked_until=locked))
        else:
            accepted = True
            conn.execute(update(users).where(users.c.id == user.id).values(failed_logins=0, locked_until=None))
    if user is None or not accepted:
        if user is not None and locked is not None:
            ctx.record(f"anonymous ({client})", CustodyAction.LOGIN_LOCKED, f"user:{user.name}",
                       {"failures": ctx.settings.login_max_failures, "until": locked.isoformat(), "client": client})
        raise refused
    token, expires = issue_access_token(ctx.secret, user.id, user.name, ctx.settings.access_token_minutes)
    return TokenPublic(access_token=token, expires_at=expires)


@router.get("/me", response_model=UserPublic, summary="The signed-in user")
def me(principal: PrincipalDep, ctx: ContextDep) -> UserPublic:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.id == principal.user_id)).one()
    return _public(row)


@router.get("/users", response_model=list[UserPublic], summary="Every user (admin)")
def list_users(ctx: ContextDep, _admin: Annotated[Principal, Depends(require_role("admin", scope="admin"))]
               ) -> list[UserPublic]:
    with ctx.engine.connect() as conn:
        return [_public(row) for row in conn.execute(select(users).order_by(users.c.id))]


@router.post("/users", response_model=UserPublic, status_code=201, summary="Create a user (admin)")
def create_user(body: UserCreate, ctx: ContextDep,
                admin: Annotated[Principal, Depends(require_role("admin", scope="admin"))]) -> UserPublic:
    return _public(add_user(ctx, body.name, body.role, body.password, actor=admin.actor))


def add_user(ctx: ContextDep, name: str, role: str, password: str, *, actor: str) -> object:
    now = datetime.now(UTC)
    try:
        password_hash = hash_password(password)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    try:
        with ctx.engine.begin() as conn:
            user_id = conn.execute(insert(users).values(name=name, role=role, password_hash=password_hash,
                                                        created_at=now, failed_logins=0, disabled=False)
                                   .returning(users.c.id)).scalar_one()
            row = conn.execute(select(users).where(users.c.id == user_id)).one()
    except DatabaseIntegrityError as exc:
        raise HTTPException(409, f"a user named {name!r} exists") from exc
    ctx.record(actor, CustodyAction.USER_CREATED, f"user:{name}", {"role": role})
    return row
