"""Audit retention: off by default; when set, the scheduler's sweep deletes old rows only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.scheduler.database import Database
from services.scheduler.maintenance import Maintenance
from shared.jobs.retention import prune_audit
from shared.settings import Settings
from tests.conftest import wait_for


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
        await maintenance.stop()  # what else it started (an analyze)


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


async def _pkey_entries_read(db: asyncpg.Connection) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    n = await db.fetchval(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'audit_log_pkey'"
    )
    return int(n)


async def test_a_sweep_reads_each_old_row_about_once(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Batch after batch, the sweep goes on from where the last one stopped: walking
    from the start to the boundary again for every batch read the old rows once per
    batch (hours of reading when a large log first gets a retention)."""
    old, young, batch = 3000, 50, 100
    await db.execute(
        "INSERT INTO audit_log (at, action, outcome) "
        "SELECT now() - interval '400 days', 'old', 'ok' FROM generate_series(1, $1)",
        old,
    )
    await db.execute(
        "INSERT INTO audit_log (at, action, outcome) VALUES (now(), 'young', 'ok'),"
        " (now() - interval '400 days', 'old, after a young row', 'ok')"
    )
    await db.execute(
        "INSERT INTO audit_log (at, action, outcome) "
        "SELECT now(), 'young', 'ok' FROM generate_series(1, $1)",
        young,
    )
    await db.execute("ANALYZE audit_log")  # as a log large enough to matter is
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        before = await _pkey_entries_read(db)
        deleted = await prune_audit(
            pool, older_than=datetime.now(UTC) - timedelta(days=30), batch=batch
        )
        await pool.execute("SELECT pg_stat_force_next_flush()")  # once it is idle
        read = await wait_for(
            lambda: _read_since(db, before), timeout=20, what="the sweep's reads reported"
        )
    finally:
        await pool.close()
    assert deleted == old
    left = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    # Only rows before the first young one go: a later row is kept, whatever its time.
    assert left == ["young", "old, after a young row"] + ["young"] * young
    # The boundary walk, each batch's selection and its delete: about 3 reads per row
    # (a walk per batch made it about old * old / batch / 2 = 45,000).
    assert read < 5 * old, f"{read} primary-key entries read to delete {old} rows"


async def _read_since(db: asyncpg.Connection, before: int) -> int:
    """The entries read since ``before``, once the counter has moved (0 until then)."""
    now = await _pkey_entries_read(db)
    return now - before if now > before else 0


async def test_rows_of_workers_gone_for_a_week_are_deleted_whatever_the_settings(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await db.executemany(
        "INSERT INTO workers (id, state, cpu_units, memory_mb, slots, last_heartbeat_at)"
        " VALUES ($1, $2, 1, 64, 1, now() - make_interval(days => $3))",
        [("gone", "dead", 8), ("gone-running", "dead", 8), ("recent", "dead", 2),
         ("alive", "alive", 0)],
    )  # fmt: skip
    await db.execute(
        "INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb,"
        " max_attempts, retry_initial_delay, retry_backoff, retry_max_delay, run_at,"
        " worker_id, attempts) VALUES (gen_random_uuid(), 'demo.echo', 'running', 1, '{}',"
        " 0.1, 64, 3, 1, 2, 60, now(), 'gone-running', 1)"
    )
    assert settings.retention_days == 0 and settings.audit_retention_days == 0
    await _sweep(settings)
    left = [r["id"] for r in await db.fetch("SELECT id FROM workers ORDER BY id")]
    assert left == ["alive", "gone-running", "recent"]
