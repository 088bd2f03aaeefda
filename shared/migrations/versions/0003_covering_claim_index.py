"""claim index covers the columns the claim reads

The scheduler's claim (``shared.jobs.sql.CLAIM_READY_HEADS``) reads eight columns of the
oldest ready jobs per priority. With them in the partial index the claim is an index-only
scan wherever the visibility map allows, so its cost no longer depends on how far apart
those rows lie in a table of millions (docs/performance.md, "The tables at millions of rows").

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READY = sa.text("status = 'ready'")
COLUMNS = ["priority", "run_at", "id"]


def upgrade() -> None:
    op.drop_index("jobs_claim_idx", table_name="jobs", postgresql_where=READY)
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        COLUMNS,
        postgresql_include=["type", "cpu_units", "memory_mb", "ready_at", "attempts"],
        postgresql_where=READY,
    )


def downgrade() -> None:
    op.drop_index("jobs_claim_idx", table_name="jobs", postgresql_where=READY)
    op.create_index("jobs_claim_idx", "jobs", COLUMNS, postgresql_where=READY)
