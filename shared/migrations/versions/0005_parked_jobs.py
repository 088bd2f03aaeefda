"""parked: ready jobs that fit no live worker leave the claim index

A ready job that no live worker could run even when empty (no live worker runs its
type, or it needs more CPU or memory than any of them has) is *parked* by the scheduler
(``shared.jobs.parking``): the claim index holds only unparked ready jobs, so any number
of such jobs costs the claim nothing and hides no job behind them. A second partial
index holds the parked ones (in id order, the order rows are locked in), so
un-parking when the fleet grows reads only them, a chunk at a time.

``parked`` means something only while a job is ready: the trigger clears it whenever a
job's status changes, so every road back to ``ready`` (a hand-back, an undone dispatch,
a requeue, a cancel and retry) finds the job claimable, whichever statement took it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READY = sa.text("status = 'ready'")
CLAIMABLE = sa.text("status = 'ready' AND NOT parked")
PARKED = sa.text("status = 'ready' AND parked")
CLAIM_COLUMNS = ["priority", "run_at", "id"]
CLAIM_INCLUDE = ["type", "cpu_units", "memory_mb", "ready_at", "attempts"]


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parked", sa.Boolean(), server_default="false", nullable=False))
    op.drop_index("jobs_claim_idx", table_name="jobs", postgresql_where=READY)
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        CLAIM_COLUMNS,
        postgresql_include=CLAIM_INCLUDE,
        postgresql_where=CLAIMABLE,
    )
    op.create_index(
        "jobs_parked_idx",
        "jobs",
        ["id"],
        postgresql_include=["type", "cpu_units", "memory_mb"],
        postgresql_where=PARKED,
    )
    op.execute(
        """
        CREATE FUNCTION switchyard_unpark() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            NEW.parked := false;
            RETURN NEW;
        END
        $fn$
        """
    )
    # The WHEN is checked without calling the function: an unparked row (every row on
    # the hot path) pays only that test.
    op.execute(
        """
        CREATE TRIGGER jobs_unpark_on_status_change BEFORE UPDATE OF status ON jobs
        FOR EACH ROW WHEN (OLD.parked AND NEW.status IS DISTINCT FROM OLD.status)
        EXECUTE FUNCTION switchyard_unpark()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_unpark_on_status_change ON jobs")
    op.execute("DROP FUNCTION switchyard_unpark()")
    op.drop_index("jobs_parked_idx", table_name="jobs", postgresql_where=PARKED)
    op.drop_index("jobs_claim_idx", table_name="jobs", postgresql_where=CLAIMABLE)
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        CLAIM_COLUMNS,
        postgresql_include=CLAIM_INCLUDE,
        postgresql_where=READY,
    )
    op.drop_column("jobs", "parked")
