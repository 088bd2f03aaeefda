"""audit retention: the append-only guard lets the retention sweep delete old rows

The audit log stays append-only: UPDATE and TRUNCATE are refused for every role, and so
is DELETE, except in a transaction that says it is the retention sweep
(``SET LOCAL switchyard.audit_retention = 'on'``, ``shared.jobs.retention.prune_audit``),
which runs only when ``SWITCHYARD_AUDIT_RETENTION_DAYS`` is set.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GUARD_WITH_RETENTION = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('switchyard.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

GUARD_STRICT = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.execute(GUARD_WITH_RETENTION)


def downgrade() -> None:
    op.execute(GUARD_STRICT)
