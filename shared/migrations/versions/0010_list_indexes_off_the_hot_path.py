"""list indexes off the hot path: the created_at, type and priority indexes in two halves

Every status change of a job is a non-HOT update of ``jobs`` (``status`` is indexed),
and PostgreSQL adds an entry for the new row version to every index whose predicate the
new version meets, unchanged keys included. The list's ``(created_at, id)``,
``(type, created_at, id)`` and ``(priority, created_at, id)`` never change key, yet
took an entry at the insert and at each status change: about a third of PostgreSQL's
CPU per job in ``python -m bench.scheduler_alone`` (docs/performance-history.md, "Issue 22,
twenty-first session").

The three are now partial, each in two halves: the waiting jobs (pending, blocked,
ready, retrying) and the finished ones (completed, failed, cancelled). A job enters the
first when it is submitted and the second when it ends; its dispatch and its start
write neither. Running jobs are few (the fleet's slots) and are read through the status
index. The list reads the two halves and the running jobs apart, merged, or one status
at a time when it names statuses (``shared.jobs.listing``).

Built and dropped CONCURRENTLY (nothing blocks writes to ``jobs``), the new indexes
first, so the list keeps an index at every moment. A build that failed half way leaves
an INVALID index of the same name: dropped first, so running the upgrade again
repairs it (as 0008).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 05:40:00
"""

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status IN ('pending', 'blocked', 'ready', 'retrying')")
FINISHED = sa.text("status IN ('completed', 'failed', 'cancelled')")
HALVES = {
    f"jobs_{key}_{half}_idx": ([*leading, "created_at", "id"], where)
    for key, leading in (("created", []), ("type", ["type"]), ("priority", ["priority"]))
    for half, where in (("waiting", WAITING), ("finished", FINISHED))
}
WHOLE = {
    "jobs_created_idx": ["created_at", "id"],
    "jobs_type_created_idx": ["type", "created_at", "id"],
    "jobs_priority_created_idx": ["priority", "created_at", "id"],
}


def _replace(build: Mapping[str, tuple[list[str], sa.TextClause | None]], drop: list[str]) -> None:
    with op.get_context().autocommit_block():
        for name, (columns, where) in build.items():
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name, "jobs", columns, postgresql_where=where, postgresql_concurrently=True
            )
        for name in drop:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _replace(HALVES, list(WHOLE))


def downgrade() -> None:
    _replace({name: (columns, None) for name, columns in WHOLE.items()}, list(HALVES))
