"""Backfill behind any number of jobs that fit no live worker: the scheduler's real
placement (``Dispatcher.place``: claim, plan, park, dispatch) against the real database
and broker, one call being one cycle's placement."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from shared.jobs import sql
from tests.integration.conftest import Placement


async def submit(client: httpx.AsyncClient, jobs: list[dict]) -> list[uuid.UUID]:
    r = await client.post("/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201, r.text
    return [uuid.UUID(j["id"]) for j in r.json()["jobs"]]


async def statuses(db: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM jobs WHERE id = ANY($1) GROUP BY status", ids
    )
    return {r["status"]: r["n"] for r in rows}


CRITICAL_HUGE = {"type": "demo.echo", "priority": "critical", "resources": {"cpu_units": 64}}
ORPHAN = {"type": "demo.sleep", "priority": "critical", "payload": {"seconds": 0}}
CRITICAL_SMALL = {"type": "demo.echo", "priority": "critical", "resources": {"cpu_units": 1}}


async def test_a_small_job_is_placed_in_one_cycle_behind_600_too_large_ones(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    huge = await submit(client, [CRITICAL_HUGE] * 600)
    (small,) = await submit(client, [CRITICAL_SMALL])
    placement.worker("w4", cpu=4, memory_mb=4096, types=["demo.echo"])

    await placement.dispatcher.place()

    row = await db.fetchrow("SELECT status, worker_id FROM jobs WHERE id = $1", small)
    assert (row["status"], row["worker_id"]) == ("running", "w4")
    assert await statuses(db, huge) == {"ready": 600}
    reasons = {
        r["waiting_reason"]
        for r in await db.fetch("SELECT waiting_reason FROM jobs WHERE id = ANY($1)", huge)
    }
    assert reasons == {
        "fits no live worker: needs 64 cpu units and 16 MB; the largest worker running "
        "'demo.echo' has 4 cpu units and 4096 MB"
    }


async def test_a_job_is_placed_in_one_cycle_behind_600_of_a_type_no_worker_runs(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    orphans = await submit(client, [ORPHAN] * 600)
    (echo,) = await submit(client, [{"type": "demo.echo", "priority": "critical"}])
    placement.worker("echo-only", cpu=4, memory_mb=4096, types=["demo.echo"])

    await placement.dispatcher.place()

    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", echo) == "running"
    assert await statuses(db, orphans) == {"ready": 600}
    reason = await db.fetchval("SELECT waiting_reason FROM jobs WHERE id = $1", orphans[0])
    assert reason == "no live worker runs task type 'demo.sleep' (start one with --tasks)"


async def test_jobs_that_fit_nowhere_are_placed_once_a_worker_that_fits_them_joins(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    huge = await submit(client, [CRITICAL_HUGE] * 600)
    orphans = await submit(client, [ORPHAN] * 600)
    placement.worker("w4", cpu=4, memory_mb=4096, types=["demo.echo"])
    await placement.dispatcher.place()
    assert await statuses(db, huge + orphans) == {"ready": 1200}

    placement.worker("w64", cpu=64, memory_mb=4096, types=["demo.echo"])
    await placement.dispatcher.place()
    assert await statuses(db, huge) == {"ready": 599, "running": 1}

    placement.worker("sleeper", cpu=4, memory_mb=4096, types=["demo.sleep"])
    await placement.dispatcher.place()
    assert await statuses(db, orphans) == {"ready": 596, "running": 4}  # its 4 slots
    # The ones still waiting say why they wait now (the worker runs their type).
    reason = await db.fetchval(
        "SELECT waiting_reason FROM jobs WHERE id = ANY($1) AND status = 'ready' LIMIT 1",
        orphans,
    )
    assert reason is None or "no live worker" not in reason, reason


async def test_backfill_past_jobs_that_fit_a_worker_but_not_its_room_now(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """600 jobs that need the whole of the big worker, which is busy: a small job behind
    them goes to the small worker in the same cycle (they are not hidden, nor parked)."""
    placement.worker("big", cpu=8, memory_mb=4096, types=["demo.echo"])
    placement.worker("small", cpu=1, memory_mb=1024, types=["demo.echo"])
    (first,) = await submit(client, [{**CRITICAL_HUGE, "resources": {"cpu_units": 8}}])
    await placement.dispatcher.place()
    assert await db.fetchval("SELECT worker_id FROM jobs WHERE id = $1", first) == "big"

    whole = await submit(client, [{**CRITICAL_HUGE, "resources": {"cpu_units": 8}}] * 600)
    (small,) = await submit(client, [CRITICAL_SMALL])
    placement.dispatcher.maybe_ready = True  # the submissions' wake-up hint, as the cycle
    await placement.dispatcher.place()

    assert await db.fetchval("SELECT worker_id FROM jobs WHERE id = $1", small) == "small"
    assert await statuses(db, whole) == {"ready": 600}
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1) AND parked", whole) == 0


async def test_a_parked_job_that_leaves_ready_and_comes_back_is_claimable_again(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    (orphan,) = await submit(client, [ORPHAN])
    placement.worker("echo-only", cpu=4, memory_mb=4096, types=["demo.echo"])
    await placement.dispatcher.place()
    assert await db.fetchval("SELECT parked FROM jobs WHERE id = $1", orphan) is True

    assert (await client.patch(f"/jobs/{orphan}/cancel")).status_code == 200
    assert await db.fetchval("SELECT parked FROM jobs WHERE id = $1", orphan) is False
    assert (await client.post(f"/jobs/{orphan}/retry")).status_code == 200
    row = await db.fetchrow("SELECT status, parked FROM jobs WHERE id = $1", orphan)
    assert (row["status"], row["parked"]) == ("ready", False)


async def test_a_backlog_waiting_only_for_room_is_not_rewritten(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """Jobs that fit a live worker, only not now, keep their row as it is (no reason
    written: one more row version of every queued job, each cycle's heads) and read as
    waiting for free capacity."""
    queued = await submit(client, [{"type": "demo.echo"}] * 40)
    versions = {r["id"]: r["xmin"] for r in await db.fetch(
        "SELECT id, xmin::text FROM jobs WHERE id = ANY($1)", queued)}  # fmt: skip
    placement.worker("w", cpu=4, memory_mb=4096, types=["demo.echo"])  # 4 slots

    await placement.dispatcher.place()

    rows = await db.fetch(
        "SELECT id, xmin::text, status, waiting_reason FROM jobs WHERE id = ANY($1)", queued
    )
    waiting = [r for r in rows if r["status"] == "ready"]
    assert len(waiting) == 36
    assert [r["id"] for r in waiting if r["xmin"] != versions[r["id"]]] == []
    assert {r["waiting_reason"] for r in waiting} == {None}
    read = (await client.get(f"/jobs/{waiting[0]['id']}")).json()
    assert read["waiting_reason"] == (
        "waiting for free capacity: needs 0.1 cpu units, 16 MB and a slot on a worker "
        "that runs 'demo.echo'"
    )


async def test_a_reason_an_earlier_leader_wrote_is_cleared_once_it_no_longer_holds(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """A reservation text written by the leader before (read when leading starts) is
    cleared when the job only waits for room now; a parked job keeps its own."""
    queued = await submit(client, [{"type": "demo.echo"}] * 8)
    stale = "waiting for worker gone to free 0.1 cpu units and 16 MB (reserved for this job: it has waited 900 s)"  # fmt: skip
    await db.execute("UPDATE jobs SET waiting_reason = $2 WHERE id = $1", queued[-1], stale)
    placement.worker("w", cpu=4, memory_mb=4096, types=["demo.echo"])  # 4 slots
    await placement.dispatcher.take_over()  # a new leader

    await placement.dispatcher.place()

    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", queued[-1]) == "ready"
    assert await db.fetchval("SELECT waiting_reason FROM jobs WHERE id = $1", queued[-1]) is None
    read = (await client.get(f"/jobs/{queued[-1]}")).json()
    assert read["waiting_reason"].startswith("waiting for free capacity: needs 0.1 cpu units")


async def test_a_parked_job_cancelled_and_retried_does_not_keep_its_old_reason(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """Parking writes why a job fits nowhere; cancelled, then retried once a worker for
    it runs, it must not say so any more (its reason is cleared with the status)."""
    (orphan,) = await submit(client, [ORPHAN])
    placement.worker("echo-only", cpu=4, memory_mb=4096, types=["demo.echo"])
    await placement.dispatcher.place()
    assert "no live worker runs" in await db.fetchval(
        "SELECT waiting_reason FROM jobs WHERE id = $1", orphan
    )
    assert (await client.patch(f"/jobs/{orphan}/cancel")).status_code == 200
    assert await db.fetchval("SELECT waiting_reason FROM jobs WHERE id = $1", orphan) is None
    assert (await client.post(f"/jobs/{orphan}/retry")).status_code == 200

    read = (await client.get(f"/jobs/{orphan}")).json()
    assert read["status"] == "ready"
    assert read["waiting_reason"].startswith("waiting for free capacity"), read


async def test_parking_behind_stale_statistics_is_one_pass_of_the_heads(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """Statistics taken when no job was ready, then 10,000 unfittable ready jobs (an
    attacking helper's one batch, after the scheduler's own ANALYZE): seen failing, the
    parking statement ran the heads again for every ready row and did not end in 30 s
    (the scheduler's cycle stood still for minutes)."""
    for _ in range(2):  # a history of finished jobs, and statistics with no ready one
        await submit(client, [{"type": "demo.echo"}] * 1000)
    await db.execute("UPDATE jobs SET status = 'completed'")
    await db.execute("ANALYZE jobs")
    for _ in range(10):
        await submit(client, [CRITICAL_HUGE] * 1000)
    (small,) = await submit(client, [CRITICAL_SMALL])
    placement.worker("w4", cpu=4, memory_mb=4096, types=["demo.echo"])
    await asyncio.wait_for(placement.dispatcher.place(), 60)
    row = await db.fetchrow("SELECT status, worker_id FROM jobs WHERE id = $1", small)
    assert (row["status"], row["worker_id"]) == ("running", "w4")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE parked") > 0


async def _statistics_with_the_ready_queue_empty(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """Every unfittable job parked when ``jobs`` is analyzed: the ready queue holds none."""
    await submit(client, [CRITICAL_HUGE] * 1000)
    await asyncio.wait_for(placement.dispatcher.place(), 60)
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE NOT parked") == 0
    await db.execute("ANALYZE jobs, ready_jobs")


async def _statistics_with_no_job_ready(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    """A history of finished jobs and none ready when ``jobs`` is analyzed."""
    await submit(client, [{"type": "demo.echo"}] * 2000)
    await db.execute("UPDATE jobs SET status = 'completed'")
    await db.execute("ANALYZE jobs, ready_jobs")


@pytest.mark.parametrize(
    "stale", [_statistics_with_the_ready_queue_empty, _statistics_with_no_job_ready]
)
async def test_parking_reads_ranges_and_keys_whatever_the_statistics_say(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    placement: Placement,
    stale: Callable[..., Awaitable[None]],
) -> None:
    """Statistics taken before 20,000 unfittable jobs arrived (an attacking helper's
    batches), with the ready queue empty or no job ready: generic plans once looked each
    head up in an index by ``id``, not its leading column (the claim index, then the
    status index), reading every ready entry for every head (11.5 s a statement at
    108,000 entries, the scheduler's cycle timing out for minutes). In the plan the
    scheduler runs (planned once, for every value): no sequential scan of ``jobs``, the
    ready queue read as ranges by priority, each unfit head found by
    the primary key; and one cycle places the fitting job."""
    placement.worker("w4", cpu=4, memory_mb=4096, types=["demo.echo"])
    await stale(client, db, placement)
    for _ in range(20):
        await submit(client, [CRITICAL_HUGE] * 1000)
    (small,) = await submit(client, [CRITICAL_SMALL])

    await db.execute(f"PREPARE parking AS {sql.PARK_UNFITTABLE}")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        explained = await db.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE parking("
            "'{demo.echo}', '{4.0}', '{4096}', 5000, '{}', '{}', '')"
        )
    finally:
        await db.execute("DEALLOCATE parking")
        await db.execute("RESET plan_cache_mode")
    nodes = _nodes(json.loads(explained)[0]["Plan"])
    scans = [n for n in nodes if "Scan" in n["Node Type"] and n.get("Relation Name") == "jobs"]
    assert all(n["Node Type"] != "Seq Scan" for n in scans), scans
    # The heads: ranges of the ready queue's key, a priority each.
    queue = [
        n for n in nodes if "Scan" in n["Node Type"] and n.get("Relation Name") == "ready_jobs"
    ]
    assert len(queue) == 4, queue
    assert all("priority" in n.get("Index Cond", "") for n in queue), queue
    # Each unfit head's look-up: by the primary key.
    by_key = [n for n in scans if "h.id" in n.get("Index Cond", "")]
    assert [n.get("Index Name") for n in by_key] == ["jobs_pkey"], by_key

    placement.dispatcher.maybe_ready = True  # what their wake-up hint does
    started = time.monotonic()
    await asyncio.wait_for(placement.dispatcher.place(), 60)
    took = time.monotonic() - started
    row = await db.fetchrow("SELECT status, worker_id FROM jobs WHERE id = $1", small)
    assert (row["status"], row["worker_id"]) == ("running", "w4")
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE NOT parked AND status = 'ready'") == 0
    assert took < 10, f"one cycle's placement took {took:.1f} s"


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]
