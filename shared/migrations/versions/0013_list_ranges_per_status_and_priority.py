"""the list's ranges: one per status and priority, of all jobs, of a type, of a key's own

``GET /jobs`` and ``POST /jobs/bulk`` read a selection in parts, merged. Each part
was one status (or one half) read through an index holding one of the filters, the
others checked row by row: where each filter matches many jobs and few match them all
(``type=etl.load&priority=critical`` when that type always runs at normal;
``status=failed&type=report.pdf`` when that type never fails), PostgreSQL walked one
filter's jobs to the end. At 5M jobs: 1,290 ms and 31 ms against 4.0 and 0.5 ms at 10k
(``python -m bench.scale filters``; docs/performance-history.md, "Issue 22,
twenty-fifth session").

Now every part is one status and one priority (``shared.jobs.listing``) and each is one
range of an index equal in both: ``(status, priority, created_at, id)`` for all jobs;
``(status, priority, type, created_at, id)`` for one type, in two halves, the
unfinished jobs (running included) and the finished ones; and
``(status, priority, created_by, created_at, id)`` for one key's own jobs, in the
list's two halves (waiting, finished). They replace ``(status, created_at, id)``, the
type halves, the priority halves (a priority's part is a range of the first) and the
owner halves of 0012. A job now enters one index fewer when submitted and when it
ends, and one more when dispatched (the type's unfinished half holds running jobs, so
a typed page's running part is a range, not a walk over every running job of that
priority).

Built and dropped CONCURRENTLY, the new indexes first, so the list keeps an index at
every moment; an INVALID leftover of a failed build is dropped first, so running the
upgrade again repairs it (as 0010).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 15:20:00
"""

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("status IN ('pending', 'blocked', 'ready', 'retrying')")
UNFINISHED = sa.text("status IN ('pending', 'blocked', 'ready', 'running', 'retrying')")
FINISHED = sa.text("status IN ('completed', 'failed', 'cancelled')")
HALVES = (("waiting", WAITING), ("finished", FINISHED))
Indexes = Mapping[str, tuple[list[str], sa.TextClause | None]]
OWNER = ["status", "priority", "created_by", "created_at", "id"]
TYPE = ["status", "priority", "type", "created_at", "id"]

RANGES: Indexes = {
    "jobs_status_priority_idx": (["status", "priority", "created_at", "id"], None),
    "jobs_status_owner_waiting_idx": (OWNER, WAITING),
    "jobs_status_owner_finished_idx": (OWNER, FINISHED),
    "jobs_status_type_unfinished_idx": (TYPE, UNFINISHED),
    "jobs_status_type_finished_idx": (TYPE, FINISHED),
}
BEFORE: Indexes = {
    "jobs_status_created_idx": (["status", "created_at", "id"], None),
    **{
        f"jobs_{name}_{half}_idx": (columns, where)
        for name, columns in (
            ("type", ["type", "created_at", "id"]),
            ("priority", ["priority", "created_at", "id"]),
            ("owner", ["created_by", "status", "created_at", "id"]),
        )
        for half, where in HALVES
    },
}


def _replace(build: Indexes, drop: Indexes) -> None:
    with op.get_context().autocommit_block():
        for name, (columns, where) in build.items():
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name, "jobs", columns, postgresql_where=where, postgresql_concurrently=True
            )
        for name in drop:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)


def upgrade() -> None:
    _replace(RANGES, BEFORE)


def downgrade() -> None:
    _replace(BEFORE, RANGES)
