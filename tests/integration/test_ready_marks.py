"""While the scheduler leads, its inbox is applied beside the placement: a completion
can turn a child ready while a placement pass reads the ready queue and finds nothing.
That pass must not conclude that nothing is ready, or the child waits for the tick.
The scheduler's real placement against the real database; the read is held in place
by a table lock, so the order of events is the one this test names."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from tests.conftest import wait_for
from tests.integration.conftest import Placement


async def blocked_on_a_lock(db: asyncpg.Connection) -> bool:
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting)


async def test_a_job_marked_ready_during_an_empty_read_is_placed_by_the_next_pass(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement, database_url: str
) -> None:
    placement.worker("w1", cpu=4, memory_mb=4096, types=["demo.echo"])
    dispatcher = placement.dispatcher
    await dispatcher.place()  # nothing ready: the next passes skip the read until a mark
    assert not dispatcher.maybe_ready

    dispatcher.mark_maybe_ready()  # a hint: the next pass reads the ready queue
    locker = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        held = locker.transaction()
        await held.start()
        await locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        placing = asyncio.create_task(dispatcher.place())
        await wait_for(lambda: blocked_on_a_lock(db), what="the pass reading the ready queue")
        # What applying a completion does when it turns a child ready, while the read
        # (which will not see the child) is in progress.
        dispatcher.mark_maybe_ready()
        await held.rollback()
        await asyncio.wait_for(placing, timeout=10)
    finally:
        await locker.close()

    assert dispatcher.maybe_ready, "a pass that began before the mark cleared it"
    r = await client.post("/jobs", json={"type": "demo.echo"})  # the child, now visible
    assert r.status_code == 201, r.text
    child = uuid.UUID(r.json()["id"])
    await dispatcher.place()
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", child) == "running"
