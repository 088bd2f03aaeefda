"""Replays over real sockets: they share a replica's database pool with everything else
(at most ``REPLAY_READS`` of their reads at once, however many sockets ask), and a
replay that fails on the database is closed with the code that says so."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets
from sqlalchemy.exc import OperationalError

from services.api.routers import stream
from services.api.routers.stream import REPLAY_READS
from tests.conftest import VIEWER_KEY, wait_for
from tests.integration.conftest import served

SOCKETS = 16
JOBS = 20
LINES = 300

WAITING_ON_THE_LINES = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
      AND query LIKE '%job_logs%' AND pid <> pg_backend_pid()
"""


async def some_jobs(client: httpx.AsyncClient, db: asyncpg.Connection) -> list[str]:
    r = await client.post("/jobs/batch", json={"jobs": [{"type": "demo.echo"}] * JOBS})
    assert r.status_code == 201, r.text
    ids = [job["id"] for job in r.json()["jobs"]]
    await db.execute(
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) "
        "SELECT j, 1, s, now(), 'info', repeat('x', 100) "
        "FROM unnest($1::uuid[]) j, generate_series(1, $2) s",
        ids, LINES,
    )  # fmt: skip
    return ids


def replay_url(address: str, ids: list[str]) -> str:
    query = "&".join(f"job_id={i}" for i in ids)
    return f"ws://{address}/jobs/stream?replay=true&token={VIEWER_KEY}&{query}"


async def test_replays_hold_at_most_their_share_of_the_pool(
    app: Any, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """Seen failing without the gate: 16 sockets' reads waited on the lines at once,
    each holding a pooled connection (a helper's 50 sockets took the whole pool, and
    requests failed after waiting 5 s for one)."""
    ids = await some_jobs(client, db)
    observer = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    most = 0

    async def replay(address: str) -> int:
        """The replay's log lines, once the last job's state has come."""
        lines = states = 0
        async with websockets.connect(replay_url(address, ids), max_size=None) as ws:
            while states < JOBS:
                event = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                lines += event["event"] == "log"
                states += event["event"] == "state" and event["data"].get("replay", False)
        return lines

    async def reads_waiting() -> bool:
        nonlocal most
        most = max(most, await observer.fetchval(WAITING_ON_THE_LINES))
        return most >= REPLAY_READS

    async def past_the_bound() -> bool:
        return not await reads_waiting() or most > REPLAY_READS

    async with served(app) as address:
        # The lines locked away: each replay's read of them waits, holding its connection.
        locked = db.transaction()
        await locked.start()
        await db.execute("LOCK TABLE job_logs IN ACCESS EXCLUSIVE MODE")
        replays = asyncio.gather(*(replay(address) for _ in range(SOCKETS)))
        try:
            await wait_for(reads_waiting, timeout=30, what="replay reads to wait on the lines")
            # Without a bound, every socket's read would soon join them.
            with contextlib.suppress(AssertionError):
                await wait_for(past_the_bound, timeout=1, what="more reads to wait")
        finally:
            await locked.rollback()
            await observer.close()
        got = await replays
    assert got == [JOBS * LINES] * SOCKETS  # every replay whole
    assert most == REPLAY_READS, most


@pytest.mark.parametrize(
    ("failure", "code", "reason"),
    [
        (OperationalError("SELECT", {}, ConnectionRefusedError()), 1013, "the database is"),
        (ValueError("a bug"), 1011, "internal error "),
    ],
)
async def test_a_replay_failing_is_closed_with_what_failed(
    app: Any,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    code: int,
    reason: str,
) -> None:
    """Seen failing: the route's own close came first, 1000 as if the replay were whole
    (the SDK ends such a stream quietly)."""
    ids = await some_jobs(client, db)

    async def failing(*_: object) -> None:
        raise failure

    monkeypatch.setattr(stream, "replay_frames", failing)
    async with served(app) as address:
        async with websockets.connect(replay_url(address, ids)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code and closed.value.rcvd.reason.startswith(reason)
