"""The service's tables: users and their tokens, cases and their members, captures, workers, the evidence index.

SQLAlchemy Core, created and changed only by Alembic migrations (service/migrations); `wz serve` and `wz worker`
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
    Column("reason", Text, nullable=False, default=""),
    Column("request", JSON, nullable=False),
    Column("tiles", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("worker", String(64)),  # the worker node that took the job (workers.id)
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("progress", JSON),  # the newest per-tile states, seconds recorded, segments chained
    Column("directory", Text),  # on the worker's host
    Column("summary", JSON),  # the manifest summary, once there is a manifest
    Column("record", JSON),  # the preservation record, once preserved (what the store holds, by version)
    Column("manifest_sha256", String(64)),
    Column("stop_requested_by", Integer, ForeignKey("users.id")),
    Column("stop_requested_at", DateTime(timezone=True)),
    Column("second_officer_id", Integer, ForeignKey("users.id")),  # named at launch, confirms with their login
    Column("witnessed_at", DateTime(timezone=True)),
    Column("job_id", BigInteger),
    CheckConstraint(f"state IN {CAPTURE_STATES}", name="captures_state"),
    CheckConstraint("tiles BETWEEN 1 AND 9", name="captures_tiles"),
    Index("captures_case", "case_id"),
    Index("captures_state", "state"),
)

capture_events = Table(
    "capture_events", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("capture_id", String(40), ForeignKey("captures.id"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("event", JSON, nullable=False),
    Index("capture_events_capture", "capture_id", "id"),
)

capture_previews = Table(
    "capture_previews", metadata,
    Column("capture_id", String(40), ForeignKey("captures.id"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("jpeg", LargeBinary, nullable=False),
)

# The workers that record: each advertises its tile budget and beats every few seconds.
workers = Table(
    "workers", metadata,
    Column("id", String(64), primary_key=True),  # stable per data directory (worker-id file)
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("tiles", Integer, nullable=False),
    Column("free_tiles", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
)

# Every registered file by its digests and its object version in the store: for the public hash check (what a
# file is, never what it shows) and for downloads by version.
evidence_files = Table(
    "evidence_files", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("sm3", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("capture_id", String(40), nullable=False),
    Column("path", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("media_type", String(100), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("bucket", String(63)),
    Column("object_key", Text),
    Column("version_id", Text),
    Column("custody_seq", Integer),  # the custody entry that registered it (stored, or hashed for the manifest)
    UniqueConstraint("capture_id", "path", name="evidence_files_file"),
    Index("evidence_files_sha256", "sha256"),
    Index("evidence_files_sm3", "sm3"),
)
