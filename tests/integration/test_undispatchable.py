"""One job whose dispatch cannot be built (a stored payload the message schema refuses)
fails alone, with why; the other jobs placed in the same cycle are dispatched. The
scheduler's real placement (``Dispatcher.place``) against the real database and broker."""

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
from shared.jsonvalues import MAX_JSON_DEPTH
from shared.messages import WorkerCapacity, WorkerHeartbeat
from shared.outbox import Outbox
from shared.settings import Settings


@dataclass
class Placement:
    fleet: Fleet
    dispatcher: Dispatcher


@pytest.fixture
async def placement(settings: Settings) -> AsyncIterator[Placement]:
    db = Database(settings)
    broker = Broker(settings.amqp_url, settings.namespace, name="test-undispatchable")
    async with db.open(), broker:
        outbox = Outbox(broker, linger=0.0)
        outbox.start()
        fleet = Fleet(settings, db, outbox, rng=random.Random(0))
        dispatcher = Dispatcher(settings, db, broker, outbox, fleet)
        await dispatcher.take_over()
        yield Placement(fleet, dispatcher)
        stop = asyncio.Event()
        stop.set()
        await dispatcher.settle(stop=stop)
        await outbox.close()


async def test_an_undispatchable_job_fails_alone_and_the_rest_of_its_cycle_goes_out(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    r = await client.post("/jobs/batch", json={"jobs": [{"type": "demo.echo"}] * 5})
    assert r.status_code == 201, r.text
    ids = [uuid.UUID(j["id"]) for j in r.json()["jobs"]]
    child = await client.post("/jobs", json={"type": "demo.echo", "depends_on": [str(ids[2])]})
    assert child.status_code == 201, child.text
    # A payload no dispatch can carry, as a row written by hand or by another version
    # could hold (jsonb takes any nesting; the message schema takes MAX_JSON_DEPTH).
    deep = '{"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    await db.execute("UPDATE jobs SET payload = $2::jsonb WHERE id = $1", ids[2], deep)
    placement.fleet.register_heartbeat(
        WorkerHeartbeat(
            worker_id="w1",
            capacity=WorkerCapacity(cpu_units=16, memory_mb=65536, slots=16),
            allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=0),
            task_types=["demo.echo"],
        )
    )

    await placement.dispatcher.place()

    rows = {
        r["id"]: r
        for r in await db.fetch("SELECT id, status, error FROM jobs WHERE id = ANY($1)", ids)
    }
    assert rows[ids[2]]["status"] == "failed"
    assert "dispatch cannot be built" in rows[ids[2]]["error"]
    assert "nested deeper than" in rows[ids[2]]["error"]
    assert {rows[i]["status"] for i in ids if i != ids[2]} == {"running"}
    child_row = await db.fetchrow(
        "SELECT status, error FROM jobs WHERE id = $1", uuid.UUID(child.json()["id"])
    )
    assert child_row["status"] == "failed" and str(ids[2]) in child_row["error"]
    # The failed one holds no room on the worker; the others do.
    assert set(placement.fleet.assignments) == {i for i in ids if i != ids[2]}
