"""unblocking children: each child reached by its key, whatever the statistics say

``switchyard_unblock_children`` (migration 0004) guarded its update with
``j.status = 'blocked'``. On statistics of ``jobs`` taken while nothing was blocked,
then a burst of pipelines, its plan read every blocked job from a status index and
checked each against the children: unblocking one child read 5,032 buffers (10 ms)
behind 5,000 blocked jobs. The guard is now written as
``shared.jobs.guards.unindexed_in`` writes the guards of the statements given their
rows' ids, so no index but the primary key matches it. The function is otherwise
unchanged.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:59:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _function(guard: str) -> str:
    return f"""
        CREATE OR REPLACE FUNCTION switchyard_unblock_children(parents uuid[])
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
            FROM c WHERE j.id = c.job_id AND {guard}
            RETURNING j.id, j.type, j.status, j.attempts, j.worker_id;
        END
        $fn$
        """


def upgrade() -> None:
    op.execute(_function("(j.status IN ('blocked')) IS TRUE"))


def downgrade() -> None:
    op.execute(_function("j.status = 'blocked'"))
