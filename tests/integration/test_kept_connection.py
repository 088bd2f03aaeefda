"""``shared.db.KeptConnection``: one pooled connection kept for statements that run one
after another, dropped when it breaks, never shared by two statements at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import KeptConnection, fetch, is_db_outage

BACKEND = "SELECT pg_backend_pid() AS pid"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=3)
    yield pool
    # A kept connection left behind would make this wait forever: bounded.
    await asyncio.wait_for(pool.close(), timeout=10)


async def backend(kept: KeptConnection) -> int:
    (row,) = await fetch(kept, BACKEND)
    return int(row["pid"])


async def test_statements_run_on_one_kept_connection(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    # Kept between statements: the pool does not have it meanwhile.
    assert pool.get_size() - pool.get_idle_size() == 1
    assert {await backend(kept) for _ in range(5)} == {first}
    await kept.close()
    assert pool.get_size() - pool.get_idle_size() == 0


async def test_a_statement_error_keeps_the_connection(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await fetch(kept, "SELECT 1 / 0")
    assert await backend(kept) == first  # the statement's own error, not the connection's
    await kept.close()


async def test_a_broken_connection_is_dropped_and_the_next_statement_gets_a_fresh_one(
    pool: asyncpg.Pool, database_url: str
) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    with pytest.raises(Exception) as failed:
        await backend(kept)
    assert is_db_outage(failed.value)
    second = await backend(kept)
    assert second != first
    await kept.close()


async def test_a_second_statement_meanwhile_takes_a_pooled_connection(
    pool: asyncpg.Pool,
) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    slow = asyncio.create_task(fetch(kept, "SELECT pg_backend_pid() AS pid, pg_sleep(0.3)"))
    await asyncio.sleep(0)  # the slow statement holds the kept connection now
    other = await backend(kept)
    (slow_row,) = await slow
    assert slow_row["pid"] == first
    assert other != first  # not queued behind the slow one on the same connection
    assert await backend(kept) == first
    await kept.close()


async def test_a_cancelled_statement_drops_the_connection(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    slow = asyncio.create_task(fetch(kept, "SELECT pg_sleep(5)"))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    # Cancelled midway, the connection's state is unknown: the next statement runs on
    # a fresh one, at once.
    assert await asyncio.wait_for(backend(kept), timeout=2) != first
    await kept.close()


async def test_close_waits_for_the_statement_running_on_it(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    slow = asyncio.create_task(fetch(kept, "SELECT 7 AS n, pg_sleep(0.3)"))
    await asyncio.sleep(0)
    await kept.close()
    assert slow.done()
    assert (await slow)[0]["n"] == 7
    assert pool.get_size() - pool.get_idle_size() == 0
