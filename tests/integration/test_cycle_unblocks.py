"""One scheduler cycle places the child its own reports unblocked, on the slot the
parent freed: the completion's ``ready`` event tells placement to look again, so the
child does not wait for the next tick or message. The scheduler's real cycle, its
consumer fed by the real broker, against the real database."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from services.scheduler.cycle import Scheduler
from shared.broker import Broker, Topology
from shared.messages import JobStatusReport, WorkerCapacity, WorkerHeartbeat
from shared.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import stop_scheduler


async def submit(client: httpx.AsyncClient, **spec: object) -> uuid.UUID:
    r = await client.post("/jobs", json={"type": "demo.echo", **spec})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


async def statuses(db: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await db.fetch("SELECT id, status FROM jobs WHERE id = ANY($1)", ids)
    return {r["id"]: r["status"] for r in rows}


async def test_a_cycle_places_the_child_its_reports_unblocked(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    parent = await submit(client)
    child = await submit(client, depends_on=[str(parent)])
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1'"
        " WHERE id = $1",
        parent,
    )
    # No tick during the test: what places the child is the cycle's own doing, not the
    # tick's safety net (its first turn is taken here).
    scheduler = Scheduler(settings.model_copy(update={"scheduler_tick_seconds": 3600}))
    scheduler.timed.take_turn()
    publisher = Broker(settings.amqp_url, settings.namespace, name="test-cycle-worker")
    async with scheduler.db.open(), scheduler.broker, publisher:
        scheduler.outbox.start()
        await scheduler._take_over()  # the parent's assignment, from the database
        scheduler.fleet.register_heartbeat(
            WorkerHeartbeat(
                worker_id="w1",
                # Its heartbeat still counts the parent's slot: it has a second one.
                capacity=WorkerCapacity(cpu_units=1, memory_mb=4096, slots=2),
                allocated=WorkerCapacity(cpu_units=0.1, memory_mb=64, slots=1),
                task_types=["demo.echo"],
                running=[parent],
            )
        )
        consumer = await scheduler.broker.consume(
            scheduler.broker.topology.scheduler_queue,
            Topology.SCHEDULER_BINDINGS,
            scheduler._on_delivery,
        )
        try:
            # What the worker sends when the parent ends: its start and end, one batch.
            await publisher.publish_many(
                [
                    (JobStatusReport(job_id=parent, attempt=1, worker_id="w1", status=s), None)
                    for s in ("started", "completed")
                ]
            )

            async def delivered() -> int:
                return len(scheduler.inbox)

            await wait_for(delivered, what="the reports delivered")
            # The last look found the ready queue empty (the child was still blocked).
            scheduler.dispatch.maybe_ready = False

            await scheduler.cycle()

            # Placed in this cycle, on the slot its parent freed: not left for the tick.
            assert await statuses(db, [parent, child]) == {
                parent: "completed",
                child: "running",
            }
        finally:
            await stop_scheduler(scheduler, consumer)
