"""On a server without autovacuum, the scheduler keeps the statistics of ``jobs`` fresh:
a plan made while the table was empty takes "status = 'ready'" for one row and walks
every ready entry of the status index for each job it looks up."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from services.scheduler.database import Database
from services.scheduler.maintenance import Maintenance
from shared.settings import Settings

FILL = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at)
SELECT gen_random_uuid(), 'demo.echo', 'ready', 1, '{}', 0.1, 64, 3, 1, 2, 60, now(), now()
FROM generate_series(1, $1)
"""


async def test_jobs_is_analyzed_within_seconds_of_filling_up(
    settings: Settings, db: asyncpg.Connection
) -> None:
    if await db.fetchval("SELECT current_setting('autovacuum')") == "on":
        pytest.skip("this server analyzes on its own (autovacuum is on)")
    await db.execute("ANALYZE jobs")  # statistics of the empty table, as at a start
    await db.execute(FILL, 5000)
    database = Database(settings)
    async with database.open():
        maintenance = Maintenance(settings, database, None, None)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while True:
            maintenance.start_due_tasks()
            if maintenance._vacuum_task is not None:
                await maintenance._vacuum_task
            rows = await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'jobs'")
            if rows >= 4000:
                break
            assert time.monotonic() < deadline, f"jobs still analyzed as {rows} rows"
            await asyncio.sleep(0.2)
        await maintenance.stop()  # the retention sweep it started too
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "EXPLAIN SELECT id FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'ready'",
            [r["id"] for r in await db.fetch("SELECT id FROM jobs LIMIT 20")],
        )
    )
    assert "jobs_pkey" in plan, plan


async def _stats_show(db: asyncpg.Connection, sql: str, what: str) -> None:
    """Wait until the statistics views show ``sql`` true (a backend reports its counts
    up to a few seconds late)."""
    deadline = time.monotonic() + 20
    while True:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        if await db.fetchval(sql):
            return
        assert time.monotonic() < deadline, f"the statistics never showed {what}"
        await asyncio.sleep(0.2)


async def _check_once(maintenance: Maintenance) -> None:
    maintenance._last_analyze_check = 0.0  # the check is due now
    maintenance.start_due_tasks()
    assert maintenance._vacuum_task is not None
    await maintenance._vacuum_task


async def test_a_busy_table_is_analyzed_again_after_inserts_not_on_every_change(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A busy yard updates each job twice after inserting it: analyzing whenever a tenth
    of the table changed meant an ANALYZE every two seconds. Between vacuums only
    inserts count (a burst of new jobs into a table of finished ones must be seen: the
    statistics would know no ready job); the vacuum analyzes the rest."""
    if await db.fetchval("SELECT current_setting('autovacuum')") == "on":
        pytest.skip("this server analyzes on its own (autovacuum is on)")
    settings = settings.model_copy(update={"vacuum_seconds": 3600.0})  # no vacuum meanwhile
    await db.execute(FILL, 5000)
    await db.execute("UPDATE jobs SET status = 'completed' WHERE true")
    await db.execute("ANALYZE jobs")

    async def known_rows() -> float:
        return float(await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'jobs'"))

    def counted(column: str, n: int) -> str:
        return f"SELECT {column} >= {n} FROM pg_stat_user_tables WHERE relname = 'jobs'"

    assert await known_rows() == 5000
    await _stats_show(db, counted("n_tup_ins", 5000), "the first rows")
    database = Database(settings)
    async with database.open():
        maintenance = Maintenance(settings, database, None, None)  # type: ignore[arg-type]
        await _check_once(maintenance)  # nothing changed since the analyze
        assert await known_rows() == 5000
        # Every row changes, the table shrinks: far past autovacuum's analyze threshold.
        await db.execute("UPDATE jobs SET status = 'failed' WHERE true")
        await db.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM jobs LIMIT 3000)")
        await _stats_show(db, counted("n_mod_since_analyze", 8000), "the changes")
        await _check_once(maintenance)
        assert await known_rows() == 5000  # not analyzed again
        # 1,000 new ready jobs: more than 50 + 10 % of 5,000, less than twice the table.
        await db.execute(FILL, 1000)
        await _stats_show(db, counted("n_tup_ins", 6000), "the new rows")
        await _check_once(maintenance)
        assert await known_rows() == 3000
        await maintenance.stop()
