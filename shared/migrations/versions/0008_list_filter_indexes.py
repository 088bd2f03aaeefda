"""list filters: an index for the priority filter and one for the name prefix search

``GET /jobs`` pages newest first on ``(created_at, id)``; ``status`` and ``type`` lead
their own ``(…, created_at, id)`` indexes (0001). This adds the same for ``priority``,
and ``name`` in byte order (``text_pattern_ops``) for the prefix search, only for the
jobs that have a name (most have none: they cost the index nothing). With a million
jobs a filtered first page is then a short range scan (``python -m bench.jobs_page``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMED = sa.text("name IS NOT NULL")


def upgrade() -> None:
    # CONCURRENTLY: at millions of jobs a plain CREATE INDEX blocks every write to jobs
    # (submits, claims, heartbeats' updates) for the whole build. It cannot run inside a
    # transaction, hence the autocommit block (what ran before it is committed first).
    # A build that failed half way leaves an INVALID index of the same name: dropped
    # first, so running the upgrade again repairs it.
    with op.get_context().autocommit_block():
        for name in ("jobs_priority_created_idx", "jobs_name_prefix_idx"):
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            "jobs_priority_created_idx",
            "jobs",
            ["priority", "created_at", "id"],
            postgresql_concurrently=True,
        )
        op.create_index(
            "jobs_name_prefix_idx",
            "jobs",
            ["name"],
            postgresql_ops={"name": "text_pattern_ops"},
            postgresql_where=NAMED,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "jobs_name_prefix_idx", table_name="jobs", postgresql_where=NAMED,
            postgresql_concurrently=True,
        )  # fmt: skip
        op.drop_index("jobs_priority_created_idx", table_name="jobs", postgresql_concurrently=True)
