"""Who is asking: passwords (argon2), short-lived login tokens (signed JWT), API tokens for scripts (stored hashed).

An API token reads `wzt_<id>_<secret>`: the id finds the row, the secret's SHA-256 is compared in constant time,
and only that hash is ever stored. Tokens are accepted in the Authorization header only, never in a URL.

A media ticket is the one thing that may ride in a URL (`?ticket=`): a browser's <video> and <img> and a download
link cannot send a header. It is a signed claim for one user (and API token) to read one capture's files, with
its own audience so it never passes as a login token, and it expires within hours, like a pre-signed S3 URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from evidence import ConfigurationError, Settings
from evidence.files import write_atomic

ISSUER = "wangzheng"
MEDIA_AUDIENCE = "wangzheng-media"
MEDIA_TICKET_MINUTES = 120  # long enough to watch a long capture; a player asks for a new one when it lapses
TICKET_SCOPES = ("read", "export")
ALGORITHM = "HS256"
TOKEN_PREFIX = "wzt_"  # noqa: S105 - the prefix that marks an API token, not a secret
SCOPES = ("read", "capture", "export", "verify", "admin")
MIN_SECRET_LENGTH = 32
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user by login, or a user's API token with its scopes."""

    user_id: int
    name: str
    role: str
    token_id: str | None = None
    scopes: tuple[str, ...] = SCOPES

    @property
    def actor(self) -> str:
        """How the custody ledger names this caller."""
        return f"{self.name} (token {self.token_id})" if self.token_id else self.name

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_password_check() -> None:
    """Spend a verification's time for a user that does not exist, so timing does not tell names apart."""
    password_matches(_DUMMY_HASH, "not the password")


_DUMMY_HASH = _hasher.hash("a password nobody has")


def secret_key(settings: Settings, *, loopback: bool) -> str:
    """The key that signs login tokens: WZ_SECRET_KEY, or (on loopback only) a random one kept in the data dir."""
    if settings.secret_key:
        if len(settings.secret_key) < MIN_SECRET_LENGTH:
            raise ConfigurationError(f"WZ_SECRET_KEY must have at least {MIN_SECRET_LENGTH} characters")
        return settings.secret_key
    if not loopback:
        raise ConfigurationError("the service listens beyond this machine, so it needs its own WZ_SECRET_KEY "
                                 f"(at least {MIN_SECRET_LENGTH} random characters); a default key is refused")
    path: Path = settings.keys_dir / "service-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, secrets.token_urlsafe(48).encode(), mode=0o600)
    return path.read_text(encoding="ascii").strip()


def issue_access_token(key: str, user_id: int, name: str, minutes: int) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=minutes)
    token = jwt.encode({"iss": ISSUER, "sub": str(user_id), "name": name, "iat": now, "exp": expires,
                        "jti": secrets.token_hex(8)}, key, algorithm=ALGORITHM)
    return token, expires


def read_access_token(key: str, token: str) -> int | None:
    """The user id a valid, unexpired login token names; None for anything else (a media ticket included: it
    carries an audience, and a token with an audience is refused where none is expected)."""
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub", "iss"]})
        return int(claims["sub"])
    except (jwt.PyJWTError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class MediaTicket:
    user_id: int
    capture_id: str
    token_id: str | None
    scopes: tuple[str, ...]


def issue_media_ticket(key: str, principal: Principal, capture_id: str,
                       minutes: int = MEDIA_TICKET_MINUTES) -> tuple[str, datetime]:
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=minutes)
    # Only what reading files needs: to read, and to take the package where the caller may.
    scopes = [scope for scope in principal.scopes if scope in TICKET_SCOPES]
    ticket = jwt.encode({"iss": ISSUER, "aud": MEDIA_AUDIENCE, "sub": str(principal.user_id), "cap": capture_id,
                         "tok": principal.token_id, "scp": scopes, "iat": now, "exp": expires,
                         "jti": secrets.token_hex(8)}, key, algorithm=ALGORITHM)
    return ticket, expires


def read_media_ticket(key: str, ticket: str) -> MediaTicket | None:
    """What a valid, unexpired media ticket grants; None for anything else (a login token included)."""
    try:
        claims = jwt.decode(ticket, key, algorithms=[ALGORITHM], issuer=ISSUER, audience=MEDIA_AUDIENCE,
                            options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        token_id = claims.get("tok")
        scopes = claims["scp"]
        if not isinstance(claims["cap"], str) or not isinstance(scopes, list) or \
                not all(isinstance(scope, str) for scope in scopes) or \
                (token_id is not None and not isinstance(token_id, str)):
            return None
        return MediaTicket(user_id=int(claims["sub"]), capture_id=claims["cap"], token_id=token_id,
                           scopes=tuple(scopes))
    except (jwt.PyJWTError, ValueError, KeyError, TypeError):
        return None


def new_api_token() -> tuple[str, str, str]:
    """(token id, the token to hand out once, the SHA-256 of its secret to store)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", hashlib.sha256(secret.encode()).hexdigest()


def split_api_token(token: str) -> tuple[str, str] | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    if not token_id or not secret:
        return None
    return token_id, secret


def secret_matches(stored_sha256: str, secret: str) -> bool:
    return hmac.compare_digest(stored_sha256, hashlib.sha256(secret.encode()).hexdigest())
