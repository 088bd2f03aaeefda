"""Audit retention: off by default; when set, the scheduler's sweep deletes old rows only."""

from __future__ import annotations

import asyncpg
import pytest

from services.scheduler.database import Database
from services.scheduler.maintenance import Maintenance
from shared.settings import Settings


async def _seed(db: asyncpg.Connection) -> None:
    await db.executemany(
        "INSERT INTO audit_log (at, action, outcome) VALUES (now() - make_interval(days => $1), $2, 'ok')",
        [(400, "old.1"), (31, "old.2"), (29, "young.1"), (0, "young.2")],
    )


async def _sweep(settings: Settings) -> None:
    db = Database(settings)
    async with db.open():
        # The sweep needs only the database: no outbox, no fleet.
        maintenance = Maintenance(settings, db, None, None)  # type: ignore[arg-type]
        maintenance.start_due_tasks()
        task = maintenance._prune_task
        if task is not None:
            await task


async def test_off_by_default_nothing_is_deleted(
    settings: Settings, db: asyncpg.Connection
) -> None:
    assert settings.audit_retention_days == 0
    await _seed(db)
    await _sweep(settings)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 4


async def test_when_set_rows_older_than_the_setting_are_deleted(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await _seed(db)
    await _sweep(settings.model_copy(update={"audit_retention_days": 30}))
    left = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert left == ["young.1", "young.2"]


async def test_any_other_delete_or_update_is_still_refused(db: asyncpg.Connection) -> None:
    await _seed(db)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE audit_log SET outcome = 'x'")
    async with db.transaction():
        await db.execute("SET LOCAL switchyard.audit_retention = 'on'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute("UPDATE audit_log SET outcome = 'x'")
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 4
