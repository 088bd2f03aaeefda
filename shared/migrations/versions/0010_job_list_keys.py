"""job_list_keys: what the job list orders and filters by, apart from the changing row

``jobs`` changes status three or more times in a job's life (ready, running, completed),
and each change is a non-HOT update (``status`` is indexed): PostgreSQL adds an entry
for the new row version to *every* index of the table, those whose key did not change
included. The list's indexes ``(created_at, id)``, ``(type, created_at, id)`` and
``(priority, created_at, id)`` never change key, yet they took three entries per status
change, about a third of PostgreSQL's CPU per job in ``python -m bench.scheduler_alone``
(docs/performance.md, "twenty-first session").

They move to ``job_list_keys``: one row per job, written when the job is inserted and
never updated, keyed ``(created_at, id)``, with the same two filter indexes. The list
reads it joined to ``jobs`` (``shared.jobs.listing``). Triggers keep it whole whatever
writes ``jobs``: an insert statement adds its rows' keys (one statement per statement,
from its transition table), a delete (retention, a cascade) removes them, a TRUNCATE
empties it, and an update that sets one of the keys (no service does) moves it.

The upgrade fills it from ``jobs`` in the same transaction that creates the insert
trigger (which locks ``jobs`` against writes until it commits: a few seconds per
million jobs), then drops the three indexes without blocking.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = "created_at, id, type, priority"
MOVED = {
    "jobs_created_idx": ["created_at", "id"],
    "jobs_type_created_idx": ["type", "created_at", "id"],
    "jobs_priority_created_idx": ["priority", "created_at", "id"],
}
TRIGGERS = {
    "jobs_list_added": "AFTER INSERT ON jobs REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION switchyard_list_added()",
    "jobs_list_removed": "AFTER DELETE ON jobs REFERENCING OLD TABLE AS removed "
    "FOR EACH STATEMENT EXECUTE FUNCTION switchyard_list_removed()",
    "jobs_list_truncated": "AFTER TRUNCATE ON jobs "
    "FOR EACH STATEMENT EXECUTE FUNCTION switchyard_list_truncated()",
    # Only a statement that names one of these columns in its SET fires it.
    "jobs_list_rekeyed": "AFTER UPDATE OF created_at, id, type, priority ON jobs FOR EACH ROW "
    "WHEN ((OLD.created_at, OLD.id, OLD.type, OLD.priority) "
    "IS DISTINCT FROM (NEW.created_at, NEW.id, NEW.type, NEW.priority)) "
    "EXECUTE FUNCTION switchyard_list_rekeyed()",
}
FUNCTIONS = {
    "switchyard_list_added": f"INSERT INTO job_list_keys ({KEYS}) SELECT {KEYS} FROM added;",
    "switchyard_list_removed": "DELETE FROM job_list_keys k USING removed r "
    "WHERE k.created_at = r.created_at AND k.id = r.id;",
    "switchyard_list_truncated": "TRUNCATE job_list_keys;",
    "switchyard_list_rekeyed": "DELETE FROM job_list_keys "
    "WHERE created_at = OLD.created_at AND id = OLD.id; "
    f"INSERT INTO job_list_keys ({KEYS}) "
    "VALUES (NEW.created_at, NEW.id, NEW.type, NEW.priority);",
}


def upgrade() -> None:
    op.create_table(
        "job_list_keys",
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("created_at", "id", name="job_list_keys_pkey"),
    )
    for name, body in FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"BEGIN\n    {body}\n    RETURN NULL;\nEND\n$fn$"
        )
    for name, definition in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(f"INSERT INTO job_list_keys ({KEYS}) SELECT {KEYS} FROM jobs")
    op.create_index("job_list_keys_type_idx", "job_list_keys", ["type", "created_at", "id"])
    op.create_index("job_list_keys_priority_idx", "job_list_keys", ["priority", "created_at", "id"])
    # CONCURRENTLY, in an autocommit block (the above commits first): as 0008.
    with op.get_context().autocommit_block():
        for name in MOVED:
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, columns in MOVED.items():
            op.drop_index(name, table_name="jobs", postgresql_concurrently=True, if_exists=True)
            op.create_index(name, "jobs", columns, postgresql_concurrently=True)
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON jobs")
    for name in FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("job_list_keys")
