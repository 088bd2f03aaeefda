"""The ready queue (``ready_jobs``, migration 0015): the claimable jobs, kept by
statement triggers on ``jobs`` whichever statement changes them, and vacuumed by the
scheduler so the claim does not walk the dead entries of the jobs dispatched before."""

from __future__ import annotations

import asyncio
import json
import random
import time

import asyncpg

from services.scheduler.database import Database
from services.scheduler.maintenance import Maintenance
from shared.db import plan_as_the_scheduler
from shared.jobs import sql
from shared.settings import Settings

FILL = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at, parked)
SELECT gen_random_uuid(), 't' || (g % 3), s, g % 4, '{}', 0.1 * (1 + g % 5), 64, 3, 1, 2, 60,
       now() - make_interval(secs => g), now(), g % 7 = 0
FROM generate_series(1, $1::int) AS g,
     LATERAL (SELECT (ARRAY['ready', 'pending', 'blocked', 'running', 'completed'])[1 + g % 5]) AS x(s)
"""
CLAIM_16 = sql.CLAIM_READY_HEADS.replace("$1", "16")  # 16 heads a priority, as text
CLAIMABLE_IN_JOBS = """
SELECT priority, run_at, id, type, cpu_units, memory_mb, ready_at, attempts
FROM jobs WHERE status = 'ready' AND NOT parked ORDER BY 1, 2, 3
"""
IN_THE_QUEUE = """
SELECT priority, run_at, id, type, cpu_units, memory_mb, ready_at, attempts
FROM ready_jobs ORDER BY 1, 2, 3
"""
# Every kind of change a statement can make to jobs, over random sets of rows: into
# ready and out of it, parking and un-parking, a key or a carried column changed while
# ready, changes that leave claimability alone, deletes. (The yard's own statements
# run over the queue in the rest of the suite: the scheduler places only what it holds.)
CHANGES = [
    "UPDATE jobs SET status = 'ready' WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET status = 'running', attempts = attempts + 1 WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET status = 'completed' WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET status = 'cancelled' WHERE id = ANY($1::uuid[]) AND status <> 'ready'",
    "UPDATE jobs SET parked = NOT parked WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET priority = (priority + 1) % 4 WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET run_at = run_at - interval '1 hour' WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET attempts = attempts + 1, cpu_units = cpu_units * 2 WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET waiting_reason = 'held' WHERE id = ANY($1::uuid[])",
    "UPDATE jobs SET status = 'ready', parked = false WHERE id = ANY($1::uuid[])",
    "DELETE FROM jobs WHERE id = ANY($1::uuid[])",
]


async def _same(db: asyncpg.Connection, after: str) -> None:
    in_jobs = [tuple(r) for r in await db.fetch(CLAIMABLE_IN_JOBS)]
    in_queue = [tuple(r) for r in await db.fetch(IN_THE_QUEUE)]
    assert in_queue == in_jobs, f"after {after}: {len(in_queue)} queued, {len(in_jobs)} claimable"


async def test_the_queue_holds_exactly_the_claimable_jobs_after_any_statement(
    db: asyncpg.Connection,
) -> None:
    """Random statements of every kind, on one row to thousands (a plan the trigger made
    for a small statement, or on the statistics of an empty queue, must not make a large
    one quadratic: seen in test_parking at 3.4 s, then past a 10 s timeout, for 5,000
    rows), some inside a transaction rolled back; the queue is compared with the
    claimable rows of jobs after each."""
    rng = random.Random(22)
    # Statistics of an empty queue and table, as at a start, and plans made once on them
    # (a join the trigger once made was planned the wrong way round on such statistics).
    await db.execute("ANALYZE jobs, ready_jobs")
    await plan_as_the_scheduler(db)
    await db.execute(FILL, 6000)
    await _same(db, "the insert")
    for i in range(60):
        ids = [r["id"] for r in await db.fetch("SELECT id FROM jobs")]
        picked = rng.sample(ids, min(len(ids), rng.choice([1, 3, 50, 2500])))
        statement = rng.choice(CHANGES)
        if i % 10 == 9:  # in a transaction, then rolled back
            transaction = db.transaction()
            await transaction.start()
            await db.execute(statement, picked)
            await _same(db, f"{statement} of {len(picked)} rows, in its transaction")
            await transaction.rollback()
        else:
            started = time.perf_counter()
            await db.execute(statement, picked)
            took = time.perf_counter() - started
            assert took < 2, f"{statement} of {len(picked)} rows took {took:.1f} s"
        await _same(db, f"{statement} of {len(picked)} rows")
        if i % 20 == 19:
            await db.execute(FILL, 1000)
            await _same(db, "another insert")
    await db.execute("TRUNCATE jobs CASCADE")
    assert await db.fetchval("SELECT count(*) FROM ready_jobs") == 0


async def test_the_claim_does_not_walk_the_dispatched_jobs_once_the_scheduler_vacuums(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """20,000 ready jobs dispatched and completed, 5 ready behind them: the claim's read
    of the head visits the dead entries they left until the queue is vacuumed, and the
    scheduler's maintenance vacuums it within SWITCHYARD_QUEUE_VACUUM_SECONDS, autovacuum
    on or off. (Before the queue, the claim index of jobs kept those entries until jobs
    itself was vacuumed: after a fifth of its rows changed, half a million dispatched
    jobs at 5 million rows.)"""
    await db.execute("ALTER TABLE ready_jobs SET (autovacuum_enabled = false)")
    await plan_as_the_scheduler(db)  # as the scheduler plans the claim
    await db.execute(
        """
        INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb,
                          max_attempts, retry_initial_delay, retry_backoff, retry_max_delay,
                          run_at, ready_at)
        SELECT gen_random_uuid(), 'demo.echo', 'ready', 2, '{}', 0.1, 64, 3, 1, 2, 60,
               now() - interval '1 day' + make_interval(secs => g), now()
        FROM generate_series(1, 20005) AS g
        """
    )
    await db.execute("VACUUM ANALYZE ready_jobs")
    first = [r["id"] for r in await db.fetch(
        "SELECT id FROM jobs ORDER BY run_at LIMIT 20000")]  # fmt: skip
    for i in range(0, len(first), 2000):
        chunk = first[i : i + 2000]
        await db.execute("UPDATE jobs SET status = 'running' WHERE id = ANY($1::uuid[])", chunk)
        await db.execute("UPDATE jobs SET status = 'completed' WHERE id = ANY($1::uuid[])", chunk)

    async def buffers_read_by_the_claim() -> int:
        plan = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CLAIM_16}")
        root = json.loads(plan)[0]["Plan"]
        return root["Shared Hit Blocks"] + root.get("Shared Read Blocks", 0)

    behind_the_dead = await buffers_read_by_the_claim()
    assert len(await db.fetch(CLAIM_16)) == 5
    fast = settings.model_copy(update={"queue_vacuum_seconds": 0.2})
    database = Database(fast)
    async with database.open():
        maintenance = Maintenance(fast, database, None, None)  # type: ignore[arg-type]
        deadline = time.monotonic() + 20
        while True:
            maintenance.start_due_tasks()
            if maintenance._queue_vacuum_task is not None:
                await maintenance._queue_vacuum_task
            after = await buffers_read_by_the_claim()
            if after * 5 < behind_the_dead:
                break
            assert time.monotonic() < deadline, (behind_the_dead, after)
            await asyncio.sleep(0.2)
        await maintenance.stop()
    print(f"the claim read {behind_the_dead} buffers behind 20,000 dispatched jobs, {after} after")
    assert len(await db.fetch(CLAIM_16)) == 5
