"""unblocking children in a function with a snapshot of its own

The scheduler applies a batch of completions and unblocks their children in one
statement (one round trip instead of BEGIN, two statements and COMMIT). The children
are updated by this VOLATILE function: its query takes a fresh snapshot when it runs,
after the completions' UPDATE in the same statement has taken its row locks, so it sees
a child whose submit (which reads its parents FOR SHARE) that UPDATE had to wait for.
A plain CTE would use the statement's snapshot, taken before that wait, and miss the
child, which would then stay blocked.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION switchyard_unblock_children(parents uuid[])
        RETURNS TABLE (id uuid, type text, status text, attempts int, worker_id text)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        BEGIN
            -- Completed parents: their children's unmet counts go down; those reaching
            -- zero become ready (or pending while their run_at is ahead).
            RETURN QUERY
            WITH c AS (
                SELECT d.job_id, count(*) AS n FROM job_dependencies d
                WHERE d.depends_on_id = ANY(parents) GROUP BY d.job_id
            )
            UPDATE jobs j
            SET unmet_dependencies = j.unmet_dependencies - c.n,
                status = CASE WHEN j.unmet_dependencies - c.n > 0 THEN j.status
                              WHEN j.run_at > now() THEN 'pending' ELSE 'ready' END,
                ready_at = CASE WHEN j.unmet_dependencies - c.n = 0 AND j.run_at <= now()
                                THEN now() ELSE j.ready_at END,
                updated_at = now()
            FROM c WHERE j.id = c.job_id AND j.status = 'blocked'
            RETURNING j.id, j.type, j.status, j.attempts, j.worker_id;
        END
        $fn$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION switchyard_unblock_children(uuid[])")
