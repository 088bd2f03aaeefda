"""Replays share a replica's database pool with everything else: at most
``REPLAY_READS`` of their reads hold a pooled connection at once, however many sockets
ask (a real HTTP server, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import httpx
import orjson
import websockets

from services.api.routers.stream import REPLAY_READS
from tests.conftest import VIEWER_KEY, wait_for
from tests.integration.conftest import served

SOCKETS = 16
JOBS = 20
LINES = 300


async def test_replays_hold_at_most_their_share_of_the_pool(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing without the gate: 16 sockets held 16 connections at once (a helper's
    50 sockets took the whole pool, and requests failed after waiting 5 s for one)."""
    r = await client.post("/jobs/batch", json={"jobs": [{"type": "demo.echo"}] * JOBS})
    assert r.status_code == 201, r.text
    ids = [job["id"] for job in r.json()["jobs"]]
    await db.execute(
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "SELECT j, 1, s, now(), 'info', repeat('x', 100) "
        "FROM unnest($1::uuid[]) j, generate_series(1, $2) s",
        ids, LINES,
    )  # fmt: skip
    pool = app.state.engine.pool
    most = 0
    past_the_bound = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, pool.checkedout())
            if most > REPLAY_READS:
                past_the_bound.set()
            await asyncio.sleep(0)

    async def replay(address: str) -> int:
        """The replay's log lines, once the last job's state has come."""
        query = "&".join(f"job_id={i}" for i in ids)
        url = f"ws://{address}/jobs/stream?replay=true&token={VIEWER_KEY}&{query}"
        lines = states = 0
        async with websockets.connect(url, max_size=None) as ws:
            while states < JOBS:
                event = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                lines += event["event"] == "log"
                states += event["event"] == "state" and event["data"].get("replay", False)
        return lines

    async def reads_waiting() -> bool:
        return most >= REPLAY_READS

    async with served(app) as address:
        watching = asyncio.create_task(watch())
        try:
            # The lines locked away: each replay's read waits, holding its connection.
            locked = db.transaction()
            await locked.start()
            await db.execute("LOCK TABLE job_logs IN ACCESS EXCLUSIVE MODE")
            replays = asyncio.gather(*(replay(address) for _ in range(SOCKETS)))
            await wait_for(reads_waiting, timeout=30, what="replay reads to wait on the lock")
            # Without a bound, every socket's read would join them at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(past_the_bound.wait(), 1.0)
            await locked.rollback()
            got = await replays
        finally:
            watching.cancel()
    assert got == [JOBS * LINES] * SOCKETS  # every replay whole
    assert most == REPLAY_READS, most
