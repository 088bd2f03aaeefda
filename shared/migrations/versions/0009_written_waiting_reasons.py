"""written waiting reasons: a partial index of the ready jobs that carry one

The scheduler no longer writes a reason on a ready job that only waits for room (it
reads as "waiting for free capacity"); the few it writes (a reservation) it reads back
when it starts leading, so that one an earlier leader wrote is cleared once it no longer
holds. This index holds just those rows, so the read does not walk the whole ready queue
(``shared.jobs.sql.WRITTEN_WAITING_REASONS``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "jobs_written_reason_idx"
WRITTEN = sa.text("status = 'ready' AND NOT parked AND waiting_reason IS NOT NULL")


def upgrade() -> None:
    # CONCURRENTLY, in an autocommit block, an invalid leftover dropped first: as 0008.
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="jobs", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            NAME, "jobs", ["id"], postgresql_where=WRITTEN, postgresql_concurrently=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="jobs", postgresql_concurrently=True, if_exists=True)
