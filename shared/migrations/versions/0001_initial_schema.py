"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 03:26:13.885626
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_GUARD = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), server_default="api", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'submitter', 'admin')", name="api_keys_role_valid"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("client", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("audit_log_actor_idx", "audit_log", ["actor", "id"], unique=False)
    op.create_index("audit_log_action_idx", "audit_log", ["action", "id"], unique=False)
    op.create_index(
        "audit_log_job_idx",
        "audit_log",
        ["job_id", "id"],
        unique=False,
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )
    op.create_index(
        "audit_log_execution_key",
        "audit_log",
        ["job_id", "attempt", "action"],
        unique=True,
        postgresql_where=sa.text("attempt IS NOT NULL"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cpu_units", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_initial_delay", sa.Float(), nullable=False),
        sa.Column("retry_backoff", sa.Float(), nullable=False),
        sa.Column("retry_max_delay", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("runs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("depends_on", postgresql.ARRAY(sa.UUID()), server_default="{}", nullable=False),
        sa.Column("unmet_dependencies", sa.Integer(), server_default="0", nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("progress", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("waiting_reason", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("idempotency_fingerprint", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'blocked', 'ready', 'running', 'retrying', 'completed', 'failed', 'cancelled')",
            name="jobs_status_valid",
        ),
        sa.CheckConstraint("cpu_units > 0 AND memory_mb > 0", name="jobs_resources_positive"),
        sa.CheckConstraint("priority BETWEEN 0 AND 3", name="jobs_priority_valid"),
        sa.CheckConstraint("unmet_dependencies >= 0", name="jobs_unmet_nonnegative"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        ["priority", "run_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'ready'"),
    )
    op.create_index("jobs_created_idx", "jobs", ["created_at", "id"], unique=False)
    op.create_index(
        "jobs_due_idx",
        "jobs",
        ["run_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    )
    op.create_index(
        "jobs_idempotency_key_idx",
        "jobs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "jobs_running_idx",
        "jobs",
        ["worker_id"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index("jobs_status_created_idx", "jobs", ["status", "created_at", "id"], unique=False)
    op.create_index("jobs_type_created_idx", "jobs", ["type", "created_at", "id"], unique=False)
    op.create_index(
        "jobs_finished_idx",
        "jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_table(
        "task_types",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("parameters_schema", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cpu_units", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_initial_delay", sa.Float(), nullable=False),
        sa.Column("retry_backoff", sa.Float(), nullable=False),
        sa.Column("retry_max_delay", sa.Float(), nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("cpu_units", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("allocated_cpu_units", sa.Float(), server_default="0", nullable=False),
        sa.Column("allocated_memory_mb", sa.Integer(), server_default="0", nullable=False),
        sa.Column("allocated_slots", sa.Integer(), server_default="0", nullable=False),
        sa.Column("running", postgresql.ARRAY(sa.UUID()), server_default="{}", nullable=False),
        sa.Column("task_types", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("memory_percent", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "last_heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("depends_on_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(["depends_on_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id"),
    )
    op.create_index(
        "job_dependencies_parent_idx", "job_dependencies", ["depends_on_id", "job_id"], unique=False
    )
    op.create_table(
        "job_executions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("resources", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "attempt", name="job_executions_attempt_key"),
    )
    op.create_table(
        "job_logs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "attempt", "seq", name="job_logs_line_key"),
    )
    # The audit log is append-only for everyone, the application's role included.
    op.execute(AUDIT_GUARD)
    for event in ("UPDATE OR DELETE", "TRUNCATE"):
        level = "ROW" if event.startswith("UPDATE") else "STATEMENT"
        name = "audit_log_no_update" if level == "ROW" else "audit_log_no_truncate"
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {event} ON audit_log "
            f"FOR EACH {level} EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table("job_logs")
    op.drop_table("job_executions")
    op.drop_index("job_dependencies_parent_idx", table_name="job_dependencies")
    op.drop_table("job_dependencies")
    op.drop_table("workers")
    op.drop_table("task_types")
    op.drop_index("jobs_type_created_idx", table_name="jobs")
    op.drop_index(
        "jobs_finished_idx", table_name="jobs", postgresql_where=sa.text("finished_at IS NOT NULL")
    )
    op.drop_index("jobs_status_created_idx", table_name="jobs")
    op.drop_index(
        "jobs_running_idx", table_name="jobs", postgresql_where=sa.text("status = 'running'")
    )
    op.drop_index(
        "jobs_idempotency_key_idx",
        table_name="jobs",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "jobs_due_idx",
        table_name="jobs",
        postgresql_where=sa.text("status IN ('pending', 'retrying')"),
    )
    op.drop_index("jobs_created_idx", table_name="jobs")
    op.drop_index("jobs_claim_idx", table_name="jobs", postgresql_where=sa.text("status = 'ready'"))
    op.drop_table("jobs")
    op.drop_table("audit_log")  # and its indexes
    op.drop_table("api_keys")
