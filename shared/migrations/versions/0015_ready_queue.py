"""ready queue: the claimable jobs in a small table of their own, kept by triggers

The claim read the head of a partial index of ``jobs`` (ready and not parked). A job
leaves that index when it is dispatched, but its entry stays until ``jobs`` is
vacuumed, at the head of the range every claim reads: autovacuum takes ``jobs`` after a
fifth of its rows changed, so a yard with 5 million jobs of history walked up to about
half a million dead entries at each claim (6.1 ms against 0.25 right after a vacuum;
docs/performance-history.md). ``ready_jobs`` holds the same rows, keyed in claim order;
it stays small, and the scheduler vacuums it every few seconds
(``SWITCHYARD_QUEUE_VACUUM_SECONDS``), so the dead entries ahead of the head are those of
the last seconds, whatever the size of the history.

Statement triggers on ``jobs`` keep it: every statement that makes a job claimable
(a submission, an unblocked child, a promoted or returned job, an un-parked one) adds
its row in the same transaction, every one that takes a job out (a dispatch, a cancel,
parking, a delete) removes it, whichever code ran the statement. One set-based
statement per trigger and statement, not a function call per row: a batch of 2,000
ready jobs is one insert here.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = "status = 'ready' AND NOT parked"
KEY = ["priority", "run_at", "id"]
CARRIED = ["type", "cpu_units", "memory_mb", "ready_at", "attempts"]
COLUMNS = ", ".join(KEY + CARRIED)


def _of(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in KEY + CARRIED)


def _claimable(alias: str) -> str:
    return f"({alias}.status = 'ready' AND NOT {alias}.parked)"


# The key is the claim order; the other columns ride in the key's index (INCLUDE), so the
# claim reads the index alone. One function for the three row triggers, set-based: the
# rows a statement took out of the claimable set leave the queue, the rows it left
# claimable (re)enter it. No join of the old and new rows: a plan made for a statement
# of one row (plpgsql keeps it) would compare every old row with every new one in a
# statement of thousands (seen: 3.4 s to park 5,000 jobs); each part is a scan of one
# transition table, a key probe per row where it meets the queue, in that order: the
# LATERAL subquery (OFFSET 0: never flattened into a join the planner may turn around)
# is looked up for each row. A join was planned the other way round once the queue's
# statistics said it was empty: every queued job against every parked one, past any
# timeout. A row that stays
# claimable is replaced (a priority or attempt may have changed): the statements that
# write such rows (a waiting reason changed) write few. A plain insert, not ON CONFLICT
# (which cost a batch of 2,000 ready jobs 11 % more than the index this replaces, the
# plain one 4 %, /tmp/probe measures in docs/performance-history.md): a row already
# queued for a job that was not claimable would mean the queue was written around these
# triggers, and is refused rather than patched.
TRIGGERS = f"""
CREATE FUNCTION switchyard_ready_queue() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $fn$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM ready_jobs WHERE ctid = ANY (ARRAY(
            SELECT q.ctid FROM old_rows o,
                LATERAL (SELECT ctid FROM ready_jobs
                         WHERE priority = o.priority AND run_at = o.run_at AND id = o.id
                         OFFSET 0) q
            WHERE {_claimable("o")}));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO ready_jobs ({COLUMNS})
        SELECT {_of("n")} FROM new_rows n WHERE {_claimable("n")};
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION switchyard_ready_queue_truncated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE ready_jobs;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER jobs_queue_on_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ready_queue();

CREATE TRIGGER jobs_queue_on_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ready_queue();

CREATE TRIGGER jobs_queue_on_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ready_queue();

CREATE TRIGGER jobs_queue_on_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_ready_queue_truncated();
"""


def upgrade() -> None:
    op.create_table(
        "ready_jobs",
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.dialects.postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("cpu_units", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name="ready_jobs_pkey"),
    )
    # Alembic has no INCLUDE for a primary key: the key's index is replaced by one that
    # carries the claim's columns (the claim reads it alone).
    op.execute(
        "ALTER TABLE ready_jobs DROP CONSTRAINT ready_jobs_pkey, "
        f"ADD CONSTRAINT ready_jobs_pkey PRIMARY KEY ({', '.join(KEY)}) "
        f"INCLUDE ({', '.join(CARRIED)})"
    )
    # One statement per call (asyncpg prepares each).
    for statement in TRIGGERS.strip().split("\n\n"):
        op.execute(statement)
    op.execute(f"INSERT INTO ready_jobs ({COLUMNS}) SELECT {COLUMNS} FROM jobs WHERE {CLAIMABLE}")
    op.drop_index("jobs_claim_idx", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        KEY,
        postgresql_include=CARRIED,
        postgresql_where=sa.text(CLAIMABLE),
    )
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER jobs_queue_on_{event} ON jobs")
    op.execute("DROP FUNCTION switchyard_ready_queue()")
    op.execute("DROP FUNCTION switchyard_ready_queue_truncated()")
    op.drop_table("ready_jobs")
