"""A database error that no single message explains dead-letters nothing (review of issue
17, item 2): read-only after a failover, a column missing during a migration, lost
privileges, a lock timeout, a deadlock or serialization failure, or a rule every row
breaks. The scheduler and the logger keep the batch unacked and try it again later;
once the fault is lifted every message is applied. A message the database refuses
while the rest of its batch applies is still dead-lettered (real PostgreSQL and
RabbitMQ, the services' own classes in this process)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from services.logger.logger import HistoryLogger
from services.scheduler.cycle import Scheduler
from shared.broker import Broker, Topology
from shared.messages import JobLog, WorkerCapacity, WorkerHeartbeat
from shared.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import queue_counts

# SQLSTATE raised by the fault, and what it stands for.
FAULTS = {
    "25006": "read-only transaction (a replica promoted late, a failover)",
    "42703": "undefined column (a migration half applied)",
    "42501": "insufficient privilege (a grant revoked)",
    "55P03": "lock not available (lock_timeout during a long DDL)",
    "40P01": "deadlock detected",
    "40001": "serialization failure",
    "23514": "a CHECK every row breaks (no message is to blame)",
}


async def install_fault(db: asyncpg.Connection, table: str, sqlstate: str) -> None:
    """Every write to ``table`` fails with ``sqlstate``; ``fault_hits`` counts the tries
    (a sequence: it keeps counting although each try is rolled back)."""
    await db.execute("CREATE SEQUENCE IF NOT EXISTS fault_hits")
    await db.execute(
        f"""
        CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM nextval('fault_hits');
            RAISE EXCEPTION 'injected fault {sqlstate}' USING ERRCODE = '{sqlstate}';
        END $$;
        CREATE TRIGGER injected_fault BEFORE INSERT OR UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION injected_fault();
        """
    )


async def lift_fault(db: asyncpg.Connection, table: str) -> None:
    await db.execute(f"DROP TRIGGER injected_fault ON {table}; DROP FUNCTION injected_fault()")


async def fault_hits(db: asyncpg.Connection) -> int:
    row = await db.fetchrow("SELECT last_value, is_called FROM fault_hits")
    return int(row["last_value"]) if row["is_called"] else 0


async def run_in_background(
    run: Callable[[asyncio.Event], Awaitable[None]], settings: Settings, queue: str
) -> AsyncIterator[asyncio.Event]:
    """``run`` in the background, once it consumes ``queue``: a message published
    before its queue is declared and bound is routed nowhere."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(stop))
    try:
        async with Broker(settings.amqp_url, settings.namespace, name="test-probe") as probe:

            async def consuming() -> bool:
                if task.done():
                    task.result()  # it failed to start: say why
                counts = await queue_counts(probe, queue)
                return counts is not None and counts[1] > 0

            await wait_for(consuming, timeout=20, what=f"a consumer on {queue}")
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def logger_running(settings: Settings) -> AsyncIterator[None]:
    queue = Topology(settings.namespace).logger_queue
    async for _ in run_in_background(HistoryLogger(settings).run, settings, queue):
        yield


@pytest.fixture
async def scheduler_running(settings: Settings) -> AsyncIterator[None]:
    queue = Topology(settings.namespace).scheduler_queue
    async for _ in run_in_background(Scheduler(settings).run, settings, queue):
        yield


def held_or_dead_lettered(
    broker: Broker, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> Callable[[], Awaitable[bool]]:
    """Until the service has said twice that it holds the batch back (or, as it did
    before, dead-lettered something): the fault must outlast its tries alone."""

    async def check() -> bool:
        held = sum("held back" in r.getMessage() for r in caplog.records)
        if await fault_hits(db) >= 3 and held >= 2:
            return True
        return bool(await broker.read_dead_letters(limit=1))

    return check


async def no_dead_letters(broker: Broker) -> None:
    letters = await broker.read_dead_letters(limit=100)
    assert letters == [], [(d.routing_key, d.reason) for d in letters]


async def running_job(client: httpx.AsyncClient, db: asyncpg.Connection) -> uuid.UUID:
    """A job whose first attempt went to a worker: the logger writes lines of
    dispatched attempts only."""
    job = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    await db.execute("UPDATE jobs SET status = 'running', attempts = 1, runs = 1, "
                     "worker_id = 'w' WHERE id = $1", job)  # fmt: skip
    return job


@pytest.mark.parametrize("sqlstate", list(FAULTS))
async def test_the_logger_holds_a_batch_through_a_systemic_error(
    settings: Settings,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    logger_running: None,
    caplog: pytest.LogCaptureFixture,
    sqlstate: str,
) -> None:
    job = await running_job(client, db)
    lines = [
        JobLog(job_id=job, attempt=1, seq=i, level="info", message=f"line {i}")
        for i in range(1, 21)
    ]
    await install_fault(db, "job_logs", sqlstate)
    async with Broker(settings.amqp_url, settings.namespace, name="test-sender") as broker:
        await broker.publish_many([(line, None) for line in lines])

        await wait_for(
            held_or_dead_lettered(broker, db, caplog), timeout=30,
            what=f"the logger retrying ({FAULTS[sqlstate]})",
        )  # fmt: skip
        assert await db.fetchval("SELECT count(*) FROM job_logs") == 0
        await lift_fault(db, "job_logs")

        async def all_stored() -> int:
            return await db.fetchval("SELECT count(*) FROM job_logs") == len(lines)

        await wait_for(all_stored, timeout=20, what="every line stored once the fault is lifted")
        await no_dead_letters(broker)


async def test_the_logger_still_dead_letters_the_one_line_the_database_refuses(
    settings: Settings,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    logger_running: None,
) -> None:
    job = await running_job(client, db)
    await db.execute("ALTER TABLE job_logs ADD CONSTRAINT refuse_one CHECK (message <> 'poison')")
    lines = [
        JobLog(job_id=job, attempt=1, seq=i, level="info", message="poison" if i == 7 else "ok")
        for i in range(1, 11)
    ]
    async with Broker(settings.amqp_url, settings.namespace, name="test-sender") as broker:
        await broker.publish_many([(line, None) for line in lines])

        async def others_stored() -> bool:
            return await db.fetchval("SELECT count(*) FROM job_logs") == 9

        await wait_for(others_stored, timeout=20, what="the nine good lines")

        async def dead_lettered() -> list:
            return await broker.read_dead_letters(limit=100)

        (letter,) = await wait_for(dead_lettered, timeout=20, what="the poison line dead-lettered")
        assert '"seq":7' in letter.body.decode(), letter.body
        assert "refuse_one" in (letter.reason or ""), letter.reason


def heartbeat(worker_id: str) -> WorkerHeartbeat:
    cap = WorkerCapacity(cpu_units=1, memory_mb=64, slots=1)
    return WorkerHeartbeat(worker_id=worker_id, capacity=cap, allocated=cap, task_types=[])


@pytest.mark.parametrize("sqlstate", ["25006", "42501", "40P01"])
async def test_the_scheduler_holds_its_inbox_through_a_systemic_error(
    settings: Settings,
    db: asyncpg.Connection,
    scheduler_running: None,
    caplog: pytest.LogCaptureFixture,
    sqlstate: str,
) -> None:
    await install_fault(db, "workers", sqlstate)
    workers = [f"sys-{i}" for i in range(4)]
    async with Broker(settings.amqp_url, settings.namespace, name="test-sender") as broker:
        # (scheduler_running waited for the active scheduler to consume its queue)
        await broker.publish_many([(heartbeat(w), None) for w in workers])

        await wait_for(
            held_or_dead_lettered(broker, db, caplog), timeout=30,
            what=f"the scheduler retrying ({FAULTS[sqlstate]})",
        )  # fmt: skip
        await lift_fault(db, "workers")

        async def all_saved() -> bool:
            rows = await db.fetch("SELECT id FROM workers")
            return {r["id"] for r in rows} >= set(workers)

        await wait_for(all_saved, timeout=20, what="every heartbeat saved once the fault is lifted")
        await no_dead_letters(broker)
