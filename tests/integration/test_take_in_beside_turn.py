"""The active scheduler applies the workers' reports while a turn (timed work,
placement) is held up: the two run as loops of their own. The scheduler's real leading
loops, fed by the real broker, against the real database; the turn is held by a lock on
``schedules``, which only its timed work reads."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from services.scheduler.cycle import Scheduler
from shared.broker import Broker
from shared.messages import JobStatusReport
from shared.settings import Settings
from tests.conftest import wait_for


async def test_reports_are_applied_while_a_turn_waits(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    r = await client.post("/jobs", json={"type": "demo.echo"})
    assert r.status_code == 201, r.text
    job = uuid.UUID(r.json()["id"])
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1'"
        " WHERE id = $1",
        job,
    )
    # Its worker, live (the scheduler reads the live workers when it takes over).
    await db.execute(
        "INSERT INTO workers (id, state, cpu_units, memory_mb, slots, task_types,"
        " started_at, last_heartbeat_at) VALUES ('w1', 'alive', 1, 4096, 2, '{demo.echo}',"
        " now(), now())"
    )
    scheduler = Scheduler(settings.model_copy(update={"scheduler_tick_seconds": 0.2}))
    stop = asyncio.Event()
    leading = asyncio.create_task(scheduler.run(stop))
    locker = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    publisher = Broker(settings.amqp_url, settings.namespace, name="test-take-in-worker")
    try:
        await wait_for(lambda: _true(scheduler.leadership.is_leader), what="the scheduler leading")
        held = locker.transaction()
        await held.start()
        await locker.execute("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")

        async def turn_waits() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query ILIKE '%schedules%'"
                )
            )

        await wait_for(turn_waits, what="a turn's timed work waiting for the lock")
        async with publisher:
            await publisher.publish_many(
                [
                    (JobStatusReport(job_id=job, attempt=1, worker_id="w1", status=s), None)
                    for s in ("started", "completed")
                ]
            )

            async def completed() -> bool:
                status = await db.fetchval("SELECT status FROM jobs WHERE id = $1", job)
                return status == "completed"

            await wait_for(completed, what="the report applied while the turn waits")
        assert await turn_waits(), "the turn was not held the whole time"
        await held.rollback()
    finally:
        await locker.close()
        stop.set()
        await asyncio.wait_for(leading, timeout=30)


async def _true(value: bool) -> bool:
    return value
