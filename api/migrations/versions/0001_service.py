"""The service: users, API tokens, cases and members, captures with their events and previews, the digest index,
and procrastinate's job queue.

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
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("started_at", when()),
        sa.Column("ended_at", when()),
        sa.Column("worker", sa.String(200)),
        sa.Column("heartbeat_at", when()),
        sa.Column("directory", sa.Text),
        sa.Column("summary", sa.JSON),
        sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("witness_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("witnessed_at", when()),
        sa.Column("job_id", sa.BigInteger),
        sa.CheckConstraint(f"state IN {CAPTURE_STATES}", name="captures_state"),
    )
    op.create_index("captures_case", "captures", ["case_id"])
    op.create_table(
        "capture_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("capture_id", sa.String(40), sa.ForeignKey("captures.id"), nullable=False),
        sa.Column("at", when(), nullable=False),
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
        "evidence_digests",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("sm3", sa.String(64), nullable=False),
        sa.Column("capture_id", sa.String(40), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("acquired_at", when(), nullable=False),
        sa.UniqueConstraint("capture_id", "path", name="evidence_digests_file"),
    )
    op.create_index("evidence_digests_sha256", "evidence_digests", ["sha256"])
    op.create_index("evidence_digests_sm3", "evidence_digests", ["sm3"])
    # The job queue (procrastinate), in the same database: a job and the custody event that asked for it commit
    # in one transaction.
    op.execute(SchemaManager.get_schema())


def downgrade() -> None:
    raise NotImplementedError("the service's schema is never rolled back: it holds evidence records")
