"""A page of the audit log, newest first, each filter through an index of its own.

The log grows by two rows a job, so every page must be a bounded range: by ``job_id``,
by ``actor`` and ``action`` together, by ``action``, or else by no filter (the primary
key). An ``actor`` alone has no ``(actor, id)`` index (each audit row would write one
more entry: migration 0011): its actions are found first (skipping through
``(actor, action, id)`` from one to the next, a descent each), then the newest rows of
each pair are read and merged.

Which index PostgreSQL takes for a pair depends on how many rows it expects the pair to
have: walking the primary key from the newest row looks cheap for a pair it takes for
common, and reads the whole log when the pair is rare. The migration gives it the
pairs' frequencies (extended statistics on ``(actor, action)``), and every statement
here is planned for its own values (``plan_cache_mode``), not by a generic plan that
knows none.
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import ColumnElement, Select, desc, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import ExecutableReturnsRows

from shared.models import AuditEntry

# Our code writes about twenty actions; past this many, an actor's page is read as one
# statement (its rows in id order, filtered) rather than one part per action.
MAX_ACTIONS = 64
# The actions an actor has (up to MAX_ACTIONS + 1): the first, then the next after each
# (a descent each).
ACTIONS_OF = text(f"""
WITH RECURSIVE actions(action, n) AS (
    (SELECT action, 1 FROM audit_log WHERE actor = :actor ORDER BY action LIMIT 1)
    UNION ALL
    SELECT (SELECT a.action FROM audit_log a
            WHERE a.actor = :actor AND a.action > actions.action
            ORDER BY a.action LIMIT 1), n + 1
    FROM actions WHERE actions.action IS NOT NULL AND n <= {MAX_ACTIONS}
)
SELECT action FROM actions WHERE action IS NOT NULL
""")


async def audit_page(
    session: AsyncSession,
    *,
    actor: str | None,
    action: str | None,
    job_id: UUID | None,
    before: int | None,
    limit: int,
) -> list[AuditEntry]:
    """Up to ``limit`` rows matching every filter given, newest first, ids below
    ``before``. Runs in the session's transaction."""
    # For this transaction only (the session's first statement begins it).
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    actions = [action] if action else None
    if actor and not action and not job_id:
        actions = list(await session.scalars(ACTIONS_OF, {"actor": actor}))
        if not actions:
            return []
        if len(actions) > MAX_ACTIONS:
            actions = None
    statement = audit_statement(
        actor=actor, actions=actions, job_id=job_id, before=before, limit=limit
    )
    return list(await session.scalars(statement))  # type: ignore[call-overload]


def audit_statement(
    *,
    actor: str | None,
    actions: list[str] | None,
    job_id: UUID | None,
    before: int | None,
    limit: int,
) -> ExecutableReturnsRows:
    """The page's rows: with several ``actions``, the newest of each merged."""

    def newest(action: str | None) -> Select[AuditEntry]:
        query = select(AuditEntry).where(*_matching(actor, action, job_id, before))
        return query.order_by(AuditEntry.id.desc()).limit(limit)

    if actions and len(actions) > 1:
        merged = union_all(*map(newest, actions)).order_by(desc("id")).limit(limit)
        return select(AuditEntry).from_statement(merged)
    return newest(actions[0] if actions else None)


def _matching(
    actor: str | None, action: str | None, job_id: UUID | None, before: int | None
) -> list[ColumnElement[bool]]:
    conditions = []
    if actor:
        conditions.append(AuditEntry.actor == actor)
    if action:
        conditions.append(AuditEntry.action == action)
    if job_id:
        conditions.append(AuditEntry.job_id == job_id)
    if before:
        conditions.append(AuditEntry.id < before)
    return conditions
