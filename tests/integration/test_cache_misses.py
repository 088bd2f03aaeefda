"""Requests that miss a cache at the same moment ask the database once, not once each.

An entry that expires under load (the task catalog's every 2 s, a remembered key's every
10 s, every key after a revocation) is missed by every request in flight; each used to
read it on a connection of its own, past the pool's size (docs/performance-history.md). The
table is locked meanwhile, so every request arrives while the first read waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx

from tests.conftest import VIEWER_KEY, auth, listening_key_cache, statements_on, wait_for

REQUESTS = 30


@asynccontextmanager
async def locked(database_url: str, table: str) -> AsyncIterator[None]:
    """``table`` locked against reads until the block ends."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


def sent(seen: list[str], n: int) -> Callable[[], Awaitable[bool]]:
    """A condition for ``wait_for``: ``n`` statements seen."""

    async def enough() -> bool:
        return len(seen) >= n

    return enough


async def concurrently_while_locked(
    database_url: str,
    table: str,
    seen: list[str],
    request: Callable[[], Awaitable[httpx.Response]],
    *,
    once_read: Callable[[], None] = lambda: None,
) -> list[httpx.Response]:
    """REQUESTS requests at once while ``table`` is locked; the lock goes once a read of
    it has been sent (``once_read`` runs then)."""
    async with locked(database_url, table):
        tasks = [asyncio.create_task(request()) for _ in range(REQUESTS)]
        await wait_for(sent(seen, 1), timeout=10, what=f"a read of {table}")
        once_read()
    return await asyncio.gather(*tasks)


async def test_submits_that_miss_the_task_catalog_together_share_one_read(
    app: object, client: httpx.AsyncClient, database_url: str
) -> None:
    catalog = app.state.catalog  # type: ignore[attr-defined]
    r = await client.post("/jobs", json={"type": "demo.echo", "payload": {}})
    assert r.status_code == 201, r.text  # the key is remembered; the type too, until:
    catalog.ttl = 0  # every entry stale now
    seen = statements_on(app, "task_types")

    def fresh_again() -> None:
        catalog.ttl = 60  # what the read brings back stays fresh for the rest

    answers = await concurrently_while_locked(
        database_url, "task_types", seen,
        lambda: client.post("/jobs", json={"type": "demo.echo", "payload": {}}),
        once_read=fresh_again,
    )  # fmt: skip
    assert [a.status_code for a in answers] == [201] * REQUESTS, answers[0].text
    assert len(seen) == 1, f"{len(seen)} reads of task_types for {REQUESTS} submits"


async def test_submits_of_an_unknown_type_together_share_the_reads_that_refuse_them(
    app: object, client: httpx.AsyncClient, database_url: str
) -> None:
    """An unknown type is read (not found), then every known name for the message: a
    flood of such submits costs a few reads, not two per request."""
    assert (await client.get("/jobs")).status_code == 200  # the key is remembered
    seen = statements_on(app, "task_types")
    answers = await concurrently_while_locked(
        database_url, "task_types", seen,
        lambda: client.post("/jobs", json={"type": "no.such.task", "payload": {}}),
    )  # fmt: skip
    assert [a.status_code for a in answers] == [422] * REQUESTS, answers[0].text
    assert "registered types: demo." in answers[-1].json()["detail"]
    # the type by one of them, the names by it on its own connection and by the others
    assert len(seen) <= 3, f"{len(seen)} reads of task_types for {REQUESTS} submits"


async def test_requests_that_miss_the_key_cache_together_share_one_lookup(
    app: object, database_url: str
) -> None:
    cache = await listening_key_cache(app)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://switchyard.test", headers=auth(VIEWER_KEY)
    ) as viewer:
        assert (await viewer.get("/jobs")).status_code == 200  # remembered...
        cache.clear()  # ...and forgotten, as a revocation of another key does
        seen = statements_on(app, "api_keys")
        answers = await concurrently_while_locked(
            database_url, "api_keys", seen, lambda: viewer.get("/jobs")
        )
    assert [a.status_code for a in answers] == [200] * REQUESTS, answers[0].text
    assert len(seen) == 1, f"{len(seen)} lookups of one key for {REQUESTS} requests"


async def test_a_request_after_the_keys_were_cleared_does_not_share_an_older_lookup(
    app: object, database_url: str
) -> None:
    """A revocation clears every remembered key: a request that comes after it must
    look its key up again, not take the answer of a lookup that began before it."""
    cache = await listening_key_cache(app)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport, base_url="http://switchyard.test", headers=auth(VIEWER_KEY)
    ) as viewer:
        seen = statements_on(app, "api_keys")
        async with locked(database_url, "api_keys"):
            before = asyncio.create_task(viewer.get("/jobs"))
            await wait_for(sent(seen, 1), timeout=10, what="the first lookup")
            cache.clear()  # as a revocation's notification does, meanwhile
            after = asyncio.create_task(viewer.get("/jobs"))
            await wait_for(sent(seen, 2), timeout=10, what="a lookup of its own")
        assert [(await t).status_code for t in (before, after)] == [200, 200]


async def test_a_caller_that_holds_a_connection_reads_the_catalog_on_it(
    app: object, database_url: str
) -> None:
    """Waiting for another request's read, which may itself wait for a pooled
    connection, while holding one could take the pool's last connections from it."""
    from sqlalchemy import text

    catalog, sessions = app.state.catalog, app.state.sessionmaker  # type: ignore[attr-defined]
    catalog.ttl = 0
    seen = statements_on(app, "task_types")
    async with sessions() as idle, sessions() as holding:
        await holding.execute(text("SELECT 1"))  # it holds a connection now
        async with locked(database_url, "task_types"):
            first = asyncio.create_task(catalog.get(idle, "demo.echo"))
            await wait_for(sent(seen, 1), timeout=10, what="the first read")
            second = asyncio.create_task(catalog.get(holding, "demo.echo"))
            await wait_for(sent(seen, 2), timeout=10, what="a read on its own connection")
        assert (await first).name == (await second).name == "demo.echo"
