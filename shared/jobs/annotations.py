"""What is written on a job beside its status: the progress of its running attempt and
why it waits while ready (both by the scheduler)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from shared.db import Db, fetch, json_text
from shared.jobs import sql


async def save_progress(db: Db, updates: dict[tuple[UUID, int], dict[str, Any]]) -> None:
    """The latest progress per (job, attempt)."""
    if not updates:
        return
    updates = dict(sorted(updates.items()))  # lock rows in id order, as everyone does
    await fetch(
        db,
        sql.SAVE_PROGRESS,
        [k[0] for k in updates],
        [k[1] for k in updates],
        [json_text(v) for v in updates.values()],
    )


async def set_waiting_reasons(db: Db, reasons: dict[UUID, str | None]) -> set[UUID]:
    """Write the reasons that changed (None: back to the default the row reads as); the
    ids of the jobs still ready (whose reason is now the one given)."""
    if not reasons:
        return set()
    rows = await fetch(db, sql.SET_WAITING_REASONS, list(reasons), list(reasons.values()))
    return {r["id"] for r in rows}


async def written_waiting_reasons(db: Db, *, limit: int) -> dict[UUID, str]:
    """The reasons written on ready jobs the scheduler may place (not parked ones, whose
    reason parking keeps): at most ``limit``."""
    rows = await fetch(db, sql.WRITTEN_WAITING_REASONS, limit)
    return {r["id"]: r["waiting_reason"] for r in rows}
