"""``GET /stats`` counts the finished jobs (most of a table with a history) for every
answer only while that is cheap; a count that takes longer is reused for a while and
made again in the background (``shared.stats.FinishedCounts``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from shared.schemas import Priority
from shared.stats import FinishedCounts
from tests.conftest import wait_for

ADD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at,
                  finished_at)
SELECT gen_random_uuid(), 'demo.echo', $1, $2, '{}', 0.1, 64, 3, 1, 2, 60, now(), now(),
       CASE WHEN $1 IN ('completed', 'failed', 'cancelled') THEN now() END
FROM generate_series(1, $3)
"""


async def add(db: asyncpg.Connection, status: str, priority: str, n: int) -> None:
    await db.execute(ADD, status, Priority(priority).rank, n)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/stats")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def counted_at(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(body["finished_counted_at"].replace("Z", "+00:00"))


async def test_a_small_history_is_counted_for_every_answer(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add(db, "completed", "normal", 5)
    await add(db, "failed", "high", 2)
    await add(db, "ready", "high", 3)
    first = await stats(client)
    assert first["by_status"] == {"completed": 5, "failed": 2, "ready": 3}
    assert first["by_priority"] == {"low": 0, "normal": 5, "high": 5, "critical": 0}
    assert first["queue_depth"]["ready"] == 3
    assert abs(counted_at(first) - datetime.now(UTC)) < timedelta(seconds=5)
    # A job that finished since is in the very next answer.
    await db.execute("UPDATE jobs SET status = 'completed', finished_at = now() "
                     "WHERE id = (SELECT id FROM jobs WHERE status = 'ready' LIMIT 1)")  # fmt: skip
    second = await stats(client)
    assert second["by_status"] == {"completed": 6, "failed": 2, "ready": 2}
    assert counted_at(second) >= counted_at(first)


async def test_a_costly_count_is_reused_and_the_rest_stays_fresh(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # As a history of millions would be: every count "costly", reused for an hour.
    app.state.finished_counts = FinishedCounts(
        every_call_below=0, reuse_factor=10**9, max_reuse_seconds=3600
    )
    await add(db, "completed", "low", 4)
    await add(db, "ready", "normal", 1)
    first = await stats(client)
    assert first["by_status"] == {"completed": 4, "ready": 1}
    await add(db, "completed", "low", 10)  # not counted again yet
    await add(db, "ready", "critical", 2)  # the unfinished jobs are counted every time
    second = await stats(client)
    assert second["by_status"] == {"completed": 4, "ready": 3}
    assert second["by_priority"] == {"low": 4, "normal": 1, "high": 0, "critical": 2}
    assert second["finished_counted_at"] == first["finished_counted_at"]
    assert second["queue_depth"]["ready"] == 3


async def test_an_old_count_is_made_again_in_the_background(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    app.state.finished_counts = FinishedCounts(
        every_call_below=0, reuse_factor=0, max_reuse_seconds=0
    )
    await add(db, "cancelled", "high", 2)
    first = await stats(client)
    assert first["by_status"] == {"cancelled": 2}
    await add(db, "cancelled", "high", 3)

    async def recounted() -> dict[str, Any] | None:
        body = await stats(client)
        return body if body["by_status"] == {"cancelled": 5} else None

    later = await wait_for(recounted, timeout=10, what="the finished jobs counted again")
    assert counted_at(later) > counted_at(first)
    assert later["by_priority"]["high"] == 5


async def test_callers_share_the_first_count(database_url: str) -> None:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    counts = FinishedCounts(every_call_below=0, reuse_factor=10**9, max_reuse_seconds=3600)
    try:
        async with pool.acquire() as conn:
            got = await asyncio.gather(*(counts.read(conn, pool) for _ in range(5)))
        assert all(c is got[0] for c in got)
    finally:
        await counts.close()
        await pool.close()


async def test_a_failed_recount_keeps_the_last_counts(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    counts = FinishedCounts(every_call_below=0, reuse_factor=0, max_reuse_seconds=0)
    await add(db, "failed", "normal", 3)
    try:
        first = await counts.read(db, pool)
        assert first.rows == [("failed", "normal", 3)]
        await pool.close()  # the next count cannot be made
        caplog.set_level(logging.WARNING, logger="shared.stats")
        for _ in range(3):
            assert await counts.read(db, pool) is first

        async def logged() -> bool:
            await asyncio.sleep(0)
            return "counting the finished jobs failed" in caplog.text

        await wait_for(logged, timeout=10, what="the failed count logged")
        assert await counts.read(db, pool) is first
    finally:
        await counts.close()
        await pool.close()
