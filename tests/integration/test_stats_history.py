"""``GET /stats`` reads what grows with the history or the throughput (the finished
jobs' counts, the window's throughput and run times) for every answer only while that
is cheap; a read that takes longer is reused for a while and made again in the
background (``shared.costly_reads.CostlyRead``, ``shared.stats.HistoryReads``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from shared.costly_reads import COSTLY_IN_A_ROW, CostlyRead
from shared.schemas import Priority
from shared.stats import HistoryReads, count_finished
from tests.conftest import wait_for

# Finished jobs ran from 2 s before they finished.
ADD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at,
                  started_at, finished_at)
SELECT gen_random_uuid(), 'demo.echo', $1, $2, '{}', 0.1, 64, 3, 1, 2, 60, now(), now(),
       CASE WHEN $1 IN ('completed', 'failed', 'cancelled') THEN now() - interval '2 s' END,
       CASE WHEN $1 IN ('completed', 'failed', 'cancelled') THEN now() END
FROM generate_series(1, $3)
"""


async def add(db: asyncpg.Connection, status: str, priority: str, n: int) -> None:
    await db.execute(ADD, status, Priority(priority).rank, n)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/stats")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def read_at(body: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(body["history_read_at"].replace("Z", "+00:00"))


async def as_if_costly(app: Any, client: httpx.AsyncClient, **policy: float) -> None:
    """The history reads of the app as a history of millions would make them: every
    reading costly (``every_call_below=0``), reused as ``policy`` says; two readings
    made, so the reads know they are costly."""
    app.state.history = HistoryReads(every_call_below=0, **policy)
    for _ in range(COSTLY_IN_A_ROW):
        await stats(client)


async def test_a_small_history_is_read_for_every_answer(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add(db, "completed", "normal", 5)
    await add(db, "failed", "high", 2)
    await add(db, "ready", "high", 3)
    first = await stats(client)
    assert first["by_status"] == {"completed": 5, "failed": 2, "ready": 3}
    assert first["by_priority"] == {"low": 0, "normal": 5, "high": 5, "critical": 0}
    assert first["queue_depth"]["ready"] == 3
    assert first["throughput"]["completed"]["last_minute"] == 5
    assert first["durations"]["demo.echo"]["count"] == 5
    assert abs(read_at(first) - datetime.now(UTC)) < timedelta(seconds=5)
    # A job that finished since is in the very next answer, everywhere.
    await db.execute(
        "UPDATE jobs SET status = 'completed', started_at = now(), finished_at = now() "
        "WHERE id = (SELECT id FROM jobs WHERE status = 'ready' LIMIT 1)"
    )
    second = await stats(client)
    assert second["by_status"] == {"completed": 6, "failed": 2, "ready": 2}
    assert second["throughput"]["completed"]["last_minute"] == 6
    assert second["durations"]["demo.echo"]["count"] == 6
    assert read_at(second) >= read_at(first)


async def test_a_costly_history_is_reused_and_the_backlog_stays_fresh(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add(db, "completed", "low", 4)
    await add(db, "ready", "normal", 1)
    await as_if_costly(app, client, reuse_factor=10**9, max_reuse_seconds=3600)
    first = await stats(client)
    assert first["by_status"] == {"completed": 4, "ready": 1}
    await add(db, "completed", "low", 10)  # not read again yet
    await add(db, "ready", "critical", 2)  # the unfinished jobs are read every time
    second = await stats(client)
    assert second["by_status"] == {"completed": 4, "ready": 3}
    assert second["by_priority"] == {"low": 4, "normal": 1, "high": 0, "critical": 2}
    assert second["queue_depth"]["ready"] == 3
    assert second["throughput"] == first["throughput"]
    assert second["durations"] == first["durations"] != {}
    assert second["history_read_at"] == first["history_read_at"]


async def test_an_old_reading_is_made_again_in_the_background(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add(db, "cancelled", "high", 2)
    # Reused for 2 s, served until 4 s old: an answer within them need not wait.
    await as_if_costly(app, client, reuse_factor=10**9, max_reuse_seconds=2)
    first = await stats(client)
    assert first["by_status"] == {"cancelled": 2}
    await add(db, "cancelled", "high", 3)

    async def read_again() -> dict[str, Any] | None:
        body = await stats(client)
        fresh = body["by_status"] == {"cancelled": 5}
        return body if fresh and body["throughput"]["cancelled"]["last_minute"] == 5 else None

    later = await wait_for(read_again, timeout=10, what="the history read again")
    assert read_at(later) > read_at(first)
    assert later["by_priority"]["high"] == 5


class Counted:
    """``count_finished``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, db: Any) -> Any:
        self.calls += 1
        return await count_finished(db)


async def test_one_slow_reading_does_not_change_the_mode(db: asyncpg.Connection) -> None:
    counted = Counted()
    read = CostlyRead("counts", counted, every_call_below=0)  # every reading "slow"
    await read.get(db, None)
    assert not read.costly  # one slow reading: a busy moment, perhaps
    await read.get(db, None)
    assert read.costly and counted.calls == 2


async def test_stale_readings_are_made_again_once_at_a_time(database_url: str) -> None:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    counted = Counted()
    read = CostlyRead("counts", counted, every_call_below=0, reuse_factor=10**9,
                      max_reuse_seconds=1.0)  # fmt: skip
    try:
        async with pool.acquire() as conn:
            for _ in range(COSTLY_IN_A_ROW):
                await read.get(conn, pool)
            assert read.costly and counted.calls == COSTLY_IN_A_ROW
            last = await read.get(conn, pool)
            await asyncio.sleep(1.1)  # past the window, well within twice it
            got = await asyncio.gather(*(read.get(conn, pool) for _ in range(5)))
            assert all(g is last for g in got)  # served, not waited for
            await wait_for(
                lambda: _newer_than(read, conn, pool, last), timeout=10, what="a new reading"
            )
        assert counted.calls == COSTLY_IN_A_ROW + 1
    finally:
        await read.close()
        await pool.close()


async def _newer_than(read: CostlyRead[Any], db: Any, pool: Any, last: Any) -> bool:
    await asyncio.sleep(0.01)
    return read._last is not last


async def test_a_failed_reading_keeps_the_last_one_until_too_old(
    database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    counted = Counted()
    read = CostlyRead("counts", counted, every_call_below=0, reuse_factor=10**9,
                      max_reuse_seconds=1.0)  # fmt: skip
    await add(db, "failed", "normal", 3)
    try:
        for _ in range(COSTLY_IN_A_ROW):
            first = await read.get(db, pool)
        assert first.value == [("failed", "normal", 3)]
        await pool.close()  # the next reading cannot be made
        caplog.set_level(logging.WARNING, logger="shared.costly_reads")
        await asyncio.sleep(1.1)  # past the window
        for _ in range(3):
            assert await read.get(db, pool) is first

        async def logged() -> bool:
            await asyncio.sleep(0.01)
            return "reading counts failed" in caplog.text

        await wait_for(logged, timeout=10, what="the failed reading logged")
        assert caplog.text.count("reading counts failed") == 1  # not tried again at once
        assert "never retrieved" not in caplog.text
        await asyncio.sleep(1.0)  # more than twice the window old: not served
        with pytest.raises(asyncpg.InterfaceError):
            await read.get(db, pool)
    finally:
        await read.close()
        await pool.close()
