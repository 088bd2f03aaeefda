"""worker attempt usage: the per-attempt figures of a worker's last heartbeat

``workers.attempts`` holds what each process-isolated attempt on the worker used at its
last heartbeat (``shared.messages.AttemptUsage`` as JSON: job_id, attempt, isolation,
pid, cpu_percent, rss_mb, peak_rss_mb), so ``GET /workers`` can show it. It is replaced
whole by every heartbeat; thread attempts have no figures of their own and are absent.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "workers",
        sa.Column("attempts", JSONB(), server_default=sa.text("'[]'"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("workers", "attempts")
