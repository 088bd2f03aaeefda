"""a key's own jobs: ``(created_by, status, created_at, id)`` in the list's two halves

``POST /jobs/bulk`` from a submitter acts on that key's own jobs only, so its selection
adds ``created_by = <key>`` to each status range it reads, and no index had that
column: PostgreSQL walked every job of each status the action names and filtered them
one by one. A key with few such jobs paid for everyone's history, on every request (a
dry run included): at 5M jobs 83 ms for a cancel and 567 ms for a retry (the failed and
cancelled history), against 1.2 and 0.5 ms at 10k (docs/performance-history.md, "Issue
22, twenty-fourth session").

The index comes in the list's two halves (migration 0010): the waiting jobs and the
finished ones. A job enters the first when it is submitted (or retried) and the second
when it ends; its dispatch and its start write neither. Running jobs are few (the
fleet's slots) and are read through the status index, as the list reads them. The
status is in the key, after the owner, so that each status a selection names is one
range of that key's jobs: without it a retry (failed, cancelled) by a key with a long
history of completed jobs would read them all. It costs no more entries: every status
change writes a new entry in each index whose predicate the new row meets anyway.

Built and dropped CONCURRENTLY; an INVALID leftover of a failed build is dropped first,
so running the upgrade again repairs it (as 0010).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HALVES = {
    "jobs_owner_waiting_idx": sa.text("status IN ('pending', 'blocked', 'ready', 'retrying')"),
    "jobs_owner_finished_idx": sa.text("status IN ('completed', 'failed', 'cancelled')"),
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, where in HALVES.items():
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name,
                "jobs",
                ["created_by", "status", "created_at", "id"],
                postgresql_where=where,
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name in HALVES:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
