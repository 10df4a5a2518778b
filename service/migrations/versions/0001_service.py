"""The service: users, API tokens, cases and members, captures with their events and previews, workers, the
evidence file index, and procrastinate's job queue.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from procrastinate.schema import SchemaManager

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROLES = "('admin', 'investigator', 'case_handler', 'court')"
CASE_ROLES = "('investigator', 'case_handler', 'court')"
CASE_STATES = "('lead', 'opened', 'closed')"
CAPTURE_STATES = ("('queued', 'starting', 'recording', 'finalizing', 'preserving', 'complete', 'partial', 'failed', "
                  "'interrupted')")


def when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", when()),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.CheckConstraint(f"role IN {ROLES}", name="users_role"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("revoked_at", when()),
        sa.Column("last_used_at", when()),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("reference", sa.String(200), nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False, server_default="lead"),
        sa.Column("outcome", sa.Text),
        sa.Column("legal_hold", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("updated_at", when(), nullable=False),
        sa.CheckConstraint(f"state IN {CASE_STATES}", name="cases_state"),
    )
    op.create_table(
        "case_members",
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("added_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("added_at", when(), nullable=False),
        sa.CheckConstraint(f"role IN {CASE_ROLES}", name="case_members_role"),
    )
    op.create_table(
        "captures",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("case_id", sa.String(32), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("requested_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("tiles", sa.Integer, nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("started_at", when()),
        sa.Column("ended_at", when()),
        sa.Column("worker", sa.String(64)),
        sa.Column("heartbeat_at", when()),
        sa.Column("progress", sa.JSON),
        sa.Column("directory", sa.Text),
        sa.Column("summary", sa.JSON),
        sa.Column("record", sa.JSON),
        sa.Column("manifest_sha256", sa.String(64)),
        sa.Column("stop_requested_by", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("stop_requested_at", when()),
        sa.Column("second_officer_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("witnessed_at", when()),
        sa.Column("job_id", sa.BigInteger),
        sa.CheckConstraint(f"state IN {CAPTURE_STATES}", name="captures_state"),
        sa.CheckConstraint("tiles BETWEEN 1 AND 9", name="captures_tiles"),
    )
    op.create_index("captures_case", "captures", ["case_id"])
    op.create_index("captures_state", "captures", ["state"])
    op.create_table(
        "capture_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("capture_id", sa.String(40), sa.ForeignKey("captures.id"), nullable=False),
        sa.Column("at", when(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event", sa.JSON, nullable=False),
    )
    op.create_index("capture_events_capture", "capture_events", ["capture_id", "id"])
    op.create_table(
        "capture_previews",
        sa.Column("capture_id", sa.String(40), sa.ForeignKey("captures.id"), primary_key=True),
        sa.Column("at", when(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("tiles", sa.Integer, nullable=False),
        sa.Column("free_tiles", sa.Integer, nullable=False),
        sa.Column("started_at", when(), nullable=False),
        sa.Column("heartbeat_at", when(), nullable=False),
        sa.Column("stopped_at", when()),
    )
    op.create_table(
        "evidence_files",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("sm3", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("capture_id", sa.String(40), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("acquired_at", when(), nullable=False),
        sa.Column("bucket", sa.String(63)),
        sa.Column("object_key", sa.Text),
        sa.Column("version_id", sa.Text),
        sa.Column("custody_seq", sa.Integer),
        sa.UniqueConstraint("capture_id", "path", name="evidence_files_file"),
    )
    op.create_index("evidence_files_sha256", "evidence_files", ["sha256"])
    op.create_index("evidence_files_sm3", "evidence_files", ["sm3"])
    # The job queue (procrastinate), in the same database: a job and the custody event that asked for it commit
    # in one transaction.
    op.execute(SchemaManager.get_schema())


def downgrade() -> None:
    raise NotImplementedError("the service's schema is never rolled back: it holds evidence records")
