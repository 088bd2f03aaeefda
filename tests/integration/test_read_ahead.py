"""The read of the ready queue's heads that a cycle starts beside its reports
(``Dispatcher.read_ahead``): placement uses it when nothing has made a job ready since
it started, and reads again when something has (a completion unblocked a child, a
retry, a promotion), so no such job waits for the next tick. The scheduler's real
placement against the real database and broker."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from services.scheduler.database import Database
from services.scheduler.dispatch import Dispatcher
from services.scheduler.fleet import Fleet
from shared.broker import Broker
from shared.jobs import transitions
from shared.messages import JobStatusReport, WorkerCapacity, WorkerHeartbeat
from shared.outbox import Outbox
from shared.settings import Settings


@dataclass
class Placement:
    fleet: Fleet
    dispatcher: Dispatcher
    db: Database


@pytest.fixture
async def placement(settings: Settings) -> AsyncIterator[Placement]:
    db = Database(settings)
    broker = Broker(settings.amqp_url, settings.namespace, name="test-read-ahead")
    async with db.open(), broker:
        outbox = Outbox(broker, linger=0.0)
        outbox.start()
        fleet = Fleet(settings, db, outbox, rng=random.Random(0))
        dispatcher = Dispatcher(settings, db, broker, outbox, fleet)
        await dispatcher.take_over()
        fleet.register_heartbeat(
            WorkerHeartbeat(
                worker_id="w1",
                capacity=WorkerCapacity(cpu_units=16, memory_mb=65536, slots=16),
                allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=0),
                task_types=["demo.echo"],
            )
        )
        yield Placement(fleet, dispatcher, db)
        stop = asyncio.Event()
        stop.set()
        await dispatcher.settle(stop=stop)
        await outbox.close()


async def submit(client: httpx.AsyncClient, **spec: object) -> uuid.UUID:
    r = await client.post("/jobs", json={"type": "demo.echo", **spec})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


async def statuses(db: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await db.fetch("SELECT id, status FROM jobs WHERE id = ANY($1)", ids)
    return {r["id"]: r["status"] for r in rows}


async def read_ahead_finished(dispatcher: Dispatcher, freeing: int = 0) -> None:
    """Start the read ahead and let it finish: what is committed after it is not in it."""
    dispatcher.read_ahead(freeing=freeing)
    ahead = dispatcher._ahead
    assert ahead is not None, "a read ahead was expected (free slots, maybe ready)"
    await asyncio.wait_for(asyncio.shield(ahead.task), timeout=10)


async def test_a_child_a_completion_unblocked_is_placed_in_the_same_cycle(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    parent = await submit(client)
    child = await submit(client, depends_on=[str(parent)])
    other = await submit(client)
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1'"
        " WHERE id = $1",
        parent,
    )
    # As a cycle does: the read starts, then the parent's completion is applied (which
    # makes the child ready) and its events announced, then placement.
    await read_ahead_finished(placement.dispatcher, freeing=1)
    outcome = await transitions.apply_successes(
        placement.db.pool,
        [JobStatusReport(job_id=parent, attempt=1, worker_id="w1", status="completed")],
    )
    assert any(e.job_id == child and e.new_status == "ready" for e in outcome.events)
    placement.dispatcher.announce(outcome.events)

    await placement.dispatcher.place()

    # The read ahead lacked the child: placement read again instead of concluding, from
    # it, that the queue was empty (the child would have waited for the next tick).
    assert await statuses(db, [child, other]) == {child: "running", other: "running"}


async def test_the_read_ahead_is_what_placement_uses_when_nothing_turned_ready(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    early = [await submit(client) for _ in range(3)]
    await read_ahead_finished(placement.dispatcher)
    # Committed after the read, its wake-up hint not handled yet: not in the read ahead.
    late = await submit(client)

    await placement.dispatcher.place()

    assert await statuses(db, [*early, late]) == {
        **{job: "running" for job in early},
        late: "ready",
    }
    # Its hint (maybe ready) comes with the next inbox: placed then.
    placement.dispatcher.maybe_ready = True
    await placement.dispatcher.place()
    assert (await statuses(db, [late]))[late] == "running"


async def test_a_read_ahead_too_small_for_the_free_slots_is_not_used(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    first = [await submit(client) for _ in range(2)]
    await read_ahead_finished(placement.dispatcher)
    ahead = placement.dispatcher._ahead
    assert ahead is not None
    # The fleet grew past what the read was sized for (a heartbeat with more slots).
    placement.fleet.register_heartbeat(
        WorkerHeartbeat(
            worker_id="w2",
            capacity=WorkerCapacity(cpu_units=64, memory_mb=65536, slots=64),
            allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=0),
            task_types=["demo.echo"],
        )
    )
    later = await submit(client)

    await placement.dispatcher.place()

    assert set((await statuses(db, [*first, later])).values()) == {"running"}
