"""A failed or cancelled job fails its waiting dependents a bounded slice at a time: a
short chain at once, a deep chain or a wide fan in slices the scheduler takes one per
cycle, with its inbox (heartbeats) applied between them. Real database, real broker,
the scheduler's real cycle; the long chains are copied in SQL from a job the API
submitted (10,000 requests would be the test's whole time)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from services.scheduler.cycle import Scheduler
from shared.broker import Broker, Topology
from shared.jobs import transitions
from shared.jobs.retention import prune_finished
from shared.messages import JobStatusReport, WorkerCapacity, WorkerHeartbeat
from shared.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import fail_queued_dependents, stop_scheduler

AT_ONCE, PER_CYCLE = transitions.AT_ONCE, transitions.PER_CYCLE


async def submit(client: httpx.AsyncClient, **spec: object) -> uuid.UUID:
    r = await client.post("/jobs", json={"type": "demo.echo", **spec})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


# Copies of the job $1 (blocked on one parent), each with its own id ($2) and parent ($3).
COPY_JOBS = """
INSERT INTO jobs
SELECT (jsonb_populate_record(NULL::jobs, to_jsonb(t) || jsonb_build_object(
            'id', c.id, 'depends_on', jsonb_build_array(c.parent)))).*
FROM jobs t, unnest($2::uuid[], $3::uuid[]) AS c(id, parent) WHERE t.id = $1
"""
EDGES = "INSERT INTO job_dependencies (job_id, depends_on_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])"


async def dependents(
    client: httpx.AsyncClient, db: asyncpg.Connection, root: uuid.UUID, n: int, *, chain: bool
) -> list[uuid.UUID]:
    """``n`` blocked jobs under ``root``: a chain (each on the one before) or a fan."""
    first = await submit(client, depends_on=[str(root)])
    ids = [first] + [uuid.uuid4() for _ in range(n - 1)]
    parents = ids[:-1] if chain else [root] * (n - 1)
    await db.execute(COPY_JOBS, first, ids[1:], parents)
    await db.execute(EDGES, ids[1:], parents)
    return ids


async def failed_count(db: asyncpg.Connection, ids: list[uuid.UUID]) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'failed'", ids)
    )


async def errors(db: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    rows = await db.fetch("SELECT id, error FROM jobs WHERE id = ANY($1)", ids)
    return {r["id"]: r["error"] for r in rows}


async def test_a_cancelled_chain_fails_a_slice_at_once_and_the_rest_in_slices(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    root = await submit(client)
    chain = await dependents(client, db, root, 1000, chain=True)
    r = await client.patch(f"/jobs/{root}/cancel")
    assert r.status_code == 200, r.text
    # At once: the first levels (one job each), the rest queued behind the last of them.
    assert await failed_count(db, chain) == AT_ONCE.levels
    queued = await db.fetch("SELECT parent_id FROM dependents_to_fail")
    assert [q["parent_id"] for q in queued] == [chain[AT_ONCE.levels - 1]]

    sizes = await fail_queued_dependents(db)
    assert max(sizes) <= PER_CYCLE.levels and sum(sizes) == 1000 - AT_ONCE.levels
    assert await failed_count(db, chain) == 1000
    got = await errors(db, chain)
    assert got[chain[0]] == f"dependency {root} cancelled"
    assert all(got[c] == f"dependency {p} failed" for p, c in itertools.pairwise(chain))
    assert await db.fetchval("SELECT count(*) FROM dependents_to_fail") == 0


async def test_a_wide_fan_fails_in_slices_of_rows(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    root = await submit(client)
    fan = await dependents(client, db, root, 1500, chain=False)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    assert await failed_count(db, fan) == AT_ONCE.rows
    sizes = await fail_queued_dependents(db)
    assert max(sizes) <= PER_CYCLE.rows and sum(sizes) == 1500 - AT_ONCE.rows
    assert set((await errors(db, fan)).values()) == {f"dependency {root} cancelled"}


async def test_a_queued_job_retried_meanwhile_fails_nobody(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    root = await submit(client)
    fan = await dependents(client, db, root, AT_ONCE.rows + 50, chain=False)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    assert (await client.post(f"/jobs/{root}/retry")).status_code == 200
    assert await fail_queued_dependents(db) == [0]
    # The 50 the cancel left are waiting for the retried job, not failed.
    assert await failed_count(db, fan) == AT_ONCE.rows
    waiting = await db.fetchval(
        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'blocked'", fan
    )
    assert waiting == 50
    why = (await client.get(f"/jobs/{fan[0]}/why")).json()
    assert why["status"] == "failed"
    blocked = await db.fetchval(
        "SELECT id FROM jobs WHERE id = ANY($1) AND status = 'blocked' LIMIT 1", fan
    )
    why = (await client.get(f"/jobs/{blocked}/why")).json()
    assert why["reason"] == "dependencies" and "waiting on 1 unfinished" in why["message"]


async def test_why_says_a_dependent_of_a_failed_job_is_about_to_fail(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    root = await submit(client)
    chain = await dependents(client, db, root, AT_ONCE.levels + 5, chain=True)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    waiting = chain[AT_ONCE.levels]  # its parent failed; the scheduler fails it next
    why = (await client.get(f"/jobs/{waiting}/why")).json()
    assert why["reason"] == "dependencies"
    assert why["message"].startswith(
        f"dependency {chain[AT_ONCE.levels - 1]} failed: this job fails"
    )


async def test_the_scheduler_fails_a_long_chain_a_slice_per_cycle(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The defect: a failed root of a 10,000-deep chain held one cycle for ~50 s, during
    which no heartbeat was applied and healthy workers were declared lost."""
    root = await submit(client, retry={"max_attempts": 1})
    chain = await dependents(client, db, root, 600, chain=True)
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1'"
        " WHERE id = $1",
        root,
    )
    scheduler = Scheduler(settings.model_copy(update={"scheduler_tick_seconds": 3600}))
    scheduler.timed.take_turn()  # no tick during the test
    publisher = Broker(settings.amqp_url, settings.namespace, name="test-cascade-worker")
    async with scheduler.db.open(), scheduler.broker, publisher:
        scheduler.outbox.start()
        await scheduler._take_over()
        scheduler.fleet.register_heartbeat(beat("w1", running=[root]))
        consumer = await scheduler.broker.consume(
            scheduler.broker.topology.scheduler_queue,
            Topology.SCHEDULER_BINDINGS,
            scheduler._on_delivery,
        )
        try:
            await scheduler.cycle()  # nothing queued: the scheduler stops looking
            assert not scheduler.dependents_left
            report = JobStatusReport(
                job_id=root, attempt=1, worker_id="w1", status="failed", error="boom"
            )
            await publisher.publish_many([(report, None)])
            await wait_for(lambda: _some(scheduler.inbox), what="the report delivered")
            await scheduler.cycle()
            assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", root) == "failed"
            # The report's own slice, then the cycle's: one job per level.
            assert await failed_count(db, chain) == AT_ONCE.levels + PER_CYCLE.levels
            assert scheduler.dependents_left and scheduler.wake.is_set()

            cycles, beats = 0, 0
            while scheduler.dependents_left:
                before = await failed_count(db, chain)
                # A heartbeat between slices is applied in the next cycle, not after the
                # whole cascade.
                await publisher.publish_many([(beat(f"w{cycles}"), None)])
                await wait_for(lambda: _some(scheduler.inbox), what="the heartbeat delivered")
                scheduler.wake.clear()
                await scheduler.cycle()
                cycles += 1
                beats += f"w{cycles - 1}" in scheduler.fleet.workers
                assert await failed_count(db, chain) - before <= PER_CYCLE.levels
                assert cycles < 20, "the cascade does not end"
            assert beats == cycles
            assert await failed_count(db, chain) == 600
            assert not scheduler.wake.is_set()
        finally:
            await stop_scheduler(scheduler, consumer)


def beat(worker_id: str, running: list[uuid.UUID] | None = None) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker_id,
        capacity=WorkerCapacity(cpu_units=1, memory_mb=1024, slots=1),
        allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=0),
        task_types=["demo.echo"],
        running=running or [],
    )


async def _some(items: list[object]) -> bool:
    return bool(items)


async def test_a_slice_never_fails_the_dependents_of_a_job_a_retry_holds(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """Seen failing (a reviewer): the slice read the queued job's status unlocked, so a
    retry between that read and the slice's statements had all its dependents failed
    while it ran again."""
    root = await submit(client)
    fan = await dependents(client, db, root, AT_ONCE.rows + 50, chain=False)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    retry = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with retry.transaction():  # what POST /jobs/{id}/retry holds until it commits
            await retry.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", root)
            async with db.transaction():
                events, left = await transitions.fail_queued_dependents(db)
            # Skipped and still queued, but not "left" for the next cycle at once: the
            # scheduler would spin on it while the retry holds it.
            assert (events, left) == ([], False)
            assert await db.fetchval("SELECT count(*) FROM dependents_to_fail") == 1
            await retry.execute("UPDATE jobs SET status = 'ready' WHERE id = $1", root)
    finally:
        await retry.close()
    assert await fail_queued_dependents(db) == [0]  # no longer failed: taken off
    assert await failed_count(db, fan) == AT_ONCE.rows


async def test_a_slice_cut_short_goes_on_after_its_last_child(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A wide fan's slices read each child once: before the cursor, every slice read
    and skipped all the children the slices before it had failed (a reviewer: 60,000
    children, slices from 0.19 s rising to 0.65 s, 28.6 s in all)."""
    root = await submit(client)
    fan = await dependents(client, db, root, AT_ONCE.rows + 10, chain=False)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    failed = await db.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1) AND status = 'failed' ORDER BY id", fan
    )
    queued = await db.fetch("SELECT parent_id, after_child FROM dependents_to_fail")
    assert [(q["parent_id"], q["after_child"]) for q in queued] == [(root, failed[-1]["id"])]
    waiting = await db.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1) AND status = 'blocked' ORDER BY id", fan
    )
    assert len(waiting) == 10 and waiting[0]["id"] > failed[-1]["id"]
    assert await fail_queued_dependents(db) == [10]


async def test_retention_keeps_a_job_while_its_dependents_are_queued(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """Its edges are what find its dependents: deleted with it, they stayed blocked."""
    root = await submit(client)
    fan = await dependents(client, db, root, AT_ONCE.rows + 5, chain=False)
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    await db.execute("UPDATE jobs SET finished_at = now() - interval '30 days'")
    settings_url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(settings_url, min_size=1, max_size=1)
    assert pool is not None
    try:
        older_than = datetime.now(UTC) - timedelta(days=1)
        await prune_finished(pool, older_than=older_than)
        # The failed dependents went; the queued job stays, and so its last five fail.
        assert await db.fetchval("SELECT count(*) FROM jobs WHERE id = $1", root) == 1
        assert await fail_queued_dependents(db) == [5]
        assert await failed_count(db, fan) == 5
        await db.execute("UPDATE jobs SET finished_at = now() - interval '30 days'")
        await prune_finished(pool, older_than=older_than)
        assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    finally:
        await pool.close()


async def test_a_bulk_cancel_leaves_the_dependents_to_the_scheduler(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A chunk of 200 cancels in one transaction failed 200 cascades in it (a reviewer:
    up to 40,000 rows over 4,000 statements in one request)."""
    roots = [await submit(client, name="bulk-root") for _ in range(3)]
    kids = [(await dependents(client, db, root, 3, chain=True))[0] for root in roots]
    r = await client.post("/jobs/bulk", json={"action": "cancel", "filter": {"name": "bulk-root"}})
    assert r.status_code == 200 and r.json()["changed"] == 3, r.text
    assert await failed_count(db, kids) == 0
    assert await db.fetchval("SELECT count(*) FROM dependents_to_fail") == 3
    await fail_queued_dependents(db)
    assert await failed_count(db, kids) == 3


async def test_an_undone_dispatch_that_ends_cancelled_fails_its_dependents(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing (a reviewer): a cancel that came while the dispatch could not be
    delivered ended the job cancelled, and its dependents stayed blocked for ever."""
    parent = await submit(client)
    (child,) = await dependents(client, db, parent, 1, chain=True)
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1',"
        " cancel_requested = true WHERE id = $1",
        parent,
    )
    placed = transitions.Placed(
        id=parent, type="demo.echo", payload={}, cpu_units=0.1, memory_mb=16,
        timeout_seconds=None, attempts=1, worker_id="w1", waited_seconds=0.0,
    )  # fmt: skip
    async with db.transaction():
        events = await transitions.undo_dispatch(db, [placed])
    assert [(e.job_id, e.new_status) for e in events] == [
        (parent, "cancelled"), (child, "failed")
    ]  # fmt: skip
    assert (await errors(db, [child]))[child] == f"dependency {parent} cancelled"


async def test_a_child_ended_by_another_transaction_mid_level_leaves_none_behind(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """Seen failing (a reviewer): with a window of children per parent, a child another
    transaction ended while the level waited for its lock was dropped, the level came
    back one short of its slice, and the parent counted as done: 10 children stayed
    blocked under a cancelled parent for ever."""
    root = await submit(client)
    fan = await dependents(client, db, root, AT_ONCE.rows + 10, chain=False)
    fifth = await db.fetchval(
        "SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id OFFSET 4 LIMIT 1", fan
    )
    other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with other.transaction():
            await other.execute("UPDATE jobs SET status = 'cancelled' WHERE id = $1", fifth)
            cancel = asyncio.create_task(client.patch(f"/jobs/{root}/cancel"))

            async def waiting_for_the_lock() -> bool:
                return bool(await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ))  # fmt: skip

            await wait_for(waiting_for_the_lock, what="the cancel waiting on the child")
        assert (await cancel).status_code == 200
    finally:
        await other.close()
    await fail_queued_dependents(db)
    left = await db.fetchval(
        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'blocked'", fan
    )
    assert left == 0
    assert await failed_count(db, fan) == len(fan) - 1
