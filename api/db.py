"""The service's tables: users and their tokens, cases and their members, captures, the evidence digest index.

SQLAlchemy Core, created and changed only by Alembic migrations (api/migrations); `wz serve` and `wz worker`
upgrade the database to head before they start. The custody ledger's tables are the ledger's own (custody/), with
their append-only guards, and the job queue's are procrastinate's, applied by the first migration.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

ROLES = ("admin", "investigator", "case_handler", "court")
CASE_ROLES = ("investigator", "case_handler", "court")
CASE_STATES = ("lead", "opened", "closed")
CAPTURE_STATES = ("queued", "starting", "recording", "finalizing", "preserving", "complete", "partial", "failed",
                  "interrupted")

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True)),
    Column("disabled", Boolean, nullable=False, default=False),
    CheckConstraint(f"role IN {ROLES}", name="users_role"),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", String(16), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

cases = Table(
    "cases", metadata,
    Column("id", String(32), primary_key=True),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("reference", String(200), nullable=False, default=""),
    Column("state", String(16), nullable=False, default="lead"),
    Column("outcome", Text),
    Column("legal_hold", Boolean, nullable=False, default=False),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(f"state IN {CASE_STATES}", name="cases_state"),
)

case_members = Table(
    "case_members", metadata,
    Column("case_id", String(32), ForeignKey("cases.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("added_by", Integer, ForeignKey("users.id"), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(f"role IN {CASE_ROLES}", name="case_members_role"),
)

captures = Table(
    "captures", metadata,
    Column("id", String(40), primary_key=True),
    Column("case_id", String(32), ForeignKey("cases.id"), nullable=False),
    Column("requested_by", Integer, ForeignKey("users.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("worker", String(200)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("directory", Text),
    Column("summary", JSON),
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("witness_id", Integer, ForeignKey("users.id")),
    Column("witnessed_at", DateTime(timezone=True)),
    Column("job_id", BigInteger),
    CheckConstraint(f"state IN {CAPTURE_STATES}", name="captures_state"),
    Index("captures_case", "case_id"),
)

capture_events = Table(
    "capture_events", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("capture_id", String(40), ForeignKey("captures.id"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", JSON, nullable=False),
    Index("capture_events_capture", "capture_id", "id"),
)

capture_previews = Table(
    "capture_previews", metadata,
    Column("capture_id", String(40), ForeignKey("captures.id"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("jpeg", LargeBinary, nullable=False),
)

# Every registered file by its digests, for the public hash check: what it is, never what it shows.
evidence_digests = Table(
    "evidence_digests", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("sm3", String(64), nullable=False),
    Column("capture_id", String(40), nullable=False),
    Column("path", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("capture_id", "path", name="evidence_digests_file"),
    Index("evidence_digests_sha256", "sha256"),
    Index("evidence_digests_sm3", "sm3"),
)
