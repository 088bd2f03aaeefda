"""``shared.db.KeptConnection``: one pooled connection kept for statements that run one
after another, dropped when it breaks, never shared by two statements at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import KeptConnection, fetch, is_db_outage
from tests.conftest import wait_for

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


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own, to watch and terminate the kept one's backend."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    yield conn
    await conn.close()


async def until_active(admin: asyncpg.Connection, pid: int, *, active: bool) -> None:
    """Wait (bounded) until backend ``pid`` runs a statement (or is gone, ``active=False``)."""
    running = "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
    exists = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"

    async def reached() -> bool:
        return bool(await admin.fetchval(running if active else exists, pid))

    await wait_for(reached, timeout=5, what=f"backend {pid} {'active' if active else 'gone'}")


async def test_a_connection_the_server_closed_while_kept_is_replaced_before_use(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    kept = KeptConnection(pool)
    first = await backend(kept)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    await until_active(admin, first, active=False)

    async def noticed() -> bool:  # asyncpg learns of it when the socket says so
        return not kept.holds_open

    await wait_for(noticed, timeout=5, what="the kept connection seen closed")
    # Not an error for the caller: the statement never reaches the closed connection.
    assert await backend(kept) != first
    await kept.close()


async def slow_statement(
    kept: KeptConnection, admin: asyncpg.Connection
) -> tuple[int, asyncio.Task[list[asyncpg.Record]]]:
    """A 30 s statement on the kept connection, once the server runs it: the backend
    and the task."""
    pid = await backend(kept)
    slow = asyncio.create_task(fetch(kept, "SELECT pg_sleep(30)"))
    await until_active(admin, pid, active=True)
    return pid, slow


async def test_a_connection_that_breaks_under_a_statement_is_dropped(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    kept = KeptConnection(pool)
    first, slow = await slow_statement(kept, admin)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    with pytest.raises(Exception) as failed:
        await slow
    assert is_db_outage(failed.value)
    assert await backend(kept) != first
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


async def test_a_cancelled_statement_is_cancelled_on_the_server_too(
    pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    kept = KeptConnection(pool)
    first, slow = await slow_statement(kept, admin)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
    assert await admin.fetchval(sleeping, first) == 0  # not left running (holding locks)
    assert await asyncio.wait_for(backend(kept), timeout=2) > 0
    await kept.close()


async def test_close_waits_for_the_statement_running_on_it(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    slow = asyncio.create_task(fetch(kept, "SELECT 7 AS n, pg_sleep(0.3)"))
    await asyncio.sleep(0)
    await kept.close()
    assert slow.done()
    assert (await slow)[0]["n"] == 7
    assert pool.get_size() - pool.get_idle_size() == 0


async def test_after_close_statements_take_pooled_connections(pool: asyncpg.Pool) -> None:
    kept = KeptConnection(pool)
    await backend(kept)
    await kept.close()
    assert await backend(kept) > 0
    # Nothing kept again: the fixture's bounded pool.close() would time out otherwise.
    assert pool.get_size() - pool.get_idle_size() == 0
