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
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "EXPLAIN SELECT id FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'ready'",
            [r["id"] for r in await db.fetch("SELECT id FROM jobs LIMIT 20")],
        )
    )
    assert "jobs_pkey" in plan, plan
