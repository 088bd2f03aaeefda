"""dependents to fail: the failed and cancelled jobs whose dependents are still waiting

A failed or cancelled job fails its waiting dependents, level by level. A deep chain or
a wide fan of them (10,000 jobs) done at once held the scheduler's cycle (or an API
request) for tens of seconds: heartbeats went unapplied and healthy workers were
declared lost. The statement that ends a job now fails a bounded slice of its
dependents at once and queues here the jobs whose dependents are left; the scheduler
takes the rest a slice per cycle (``shared.jobs.transitions.fail_dependents``).

No foreign key: a row whose job is gone or no longer failed (retried) is dropped when
taken; retention keeps a job while it is queued here (its edges find the dependents).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dependents_to_fail",
        sa.Column("parent_id", UUID(as_uuid=True), primary_key=True),
        # The last child failed by a slice cut short: the next goes on after it.
        sa.Column("after_child", UUID(as_uuid=True), nullable=True),
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("dependents_to_fail")
