"""Single submits that arrive together go into the database as one statement
(``shared.jobs.grouped``), and each request still gets its own row or its own error."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from shared.broker import Broker, Delivery
from shared.jobs import sql
from shared.jobs.grouped import GroupedInserts
from shared.messages import JobStateChanged, JobSubmitted
from shared.settings import Settings
from tests.conftest import wait_for


def wire_row(**values: Any) -> dict[str, Any]:
    """A new ready job as ``insert_one`` takes it (``sql.INSERT_COLUMNS``, in order)."""
    now = datetime.now(UTC)
    row = {
        "id": uuid.uuid4(), "type": "demo.echo", "name": None, "status": "ready",
        "priority": 2, "payload": "{}", "cpu_units": 0.1, "memory_mb": 16,
        "timeout_seconds": None, "max_attempts": 1, "retry_initial_delay": 1.0,
        "retry_backoff": 2.0, "retry_max_delay": 60.0, "run_at": now, "depends_on": "{}",
        "unmet_dependencies": 0, "error": None, "idempotency_key": None,
        "idempotency_fingerprint": None, "created_by": None, "created_at": now,
        "updated_at": now, "ready_at": now, "finished_at": None,
    }  # fmt: skip
    row.update(values)
    assert tuple(row) == tuple(sql.INSERT_COLUMNS)
    return row


def audit_of(row: dict[str, Any]) -> tuple[Any, ...]:
    detail = json.dumps({"job_ids": [str(row["id"])], "count": 1})
    return ("test", "admin", "job.submit", "127.0.0.1", row["id"], "ok", detail)


async def submit_together(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    """``n`` single submits at once (payload ``{"i": i}``), all answered 201."""
    answers = await asyncio.gather(
        *(client.post("/jobs", json={"type": "demo.echo", "payload": {"i": i}}) for i in range(n))
    )
    assert [a.status_code for a in answers] == [201] * n, answers[0].text
    return list(answers)


async def insert_together(inserts: GroupedInserts, rows: list[dict[str, Any]]) -> list[Any]:
    """Each row through ``inserts`` at once: the first goes alone, the others wait for it
    and then go as groups. Each request's stored row, or what it raised."""
    return await asyncio.gather(
        *(inserts.insert(row, audit_of(row)) for row in rows), return_exceptions=True
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as p:
        yield p


async def test_concurrent_submits_share_statements_and_each_gets_its_own_job(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    n = 40
    jobs = [a.json() for a in await submit_together(client, n)]
    # Each answer is its own request's job, as stored.
    assert [job["payload"] for job in jobs] == [{"i": i} for i in range(n)]
    stored = {
        str(r["id"]): json.loads(r["payload"])
        for r in await db.fetch("SELECT id, payload FROM jobs")
    }
    assert stored == {job["id"]: job["payload"] for job in jobs}
    audited = await db.fetch(
        "SELECT job_id, detail FROM audit_log WHERE action = 'job.submit' AND outcome = 'ok'"
    )
    assert sorted(str(a["job_id"]) for a in audited) == sorted(stored)
    assert all(json.loads(a["detail"])["job_ids"] == [str(a["job_id"])] for a in audited)
    # Rows written by one statement share its transaction id: the 40 went in together,
    # not as 40 transactions.
    transactions = await db.fetchval("SELECT count(DISTINCT xmin::text) FROM jobs")
    assert transactions < n / 4


async def test_concurrent_submits_wake_the_scheduler_once_per_published_chunk(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The API's outbox sends one hint for the requests it publishes together, after
    their events (``one_hint``): 40 concurrent submits are not 40 hints."""
    hints: list[JobSubmitted] = []
    events: list[JobStateChanged] = []

    async def collect(delivery: Delivery) -> None:
        for message in delivery.messages:
            if isinstance(message, JobSubmitted):
                hints.append(message)
            elif isinstance(message, JobStateChanged):
                events.append(message)
        await delivery.ack()

    broker = Broker(settings.amqp_url, settings.namespace, name="test-hints")
    await broker.connect()
    try:
        await broker.consume(
            f"{settings.namespace}.test-hints", ["job.submitted.#", "job.state.#"], collect,
            exclusive=True, auto_delete=True, durable=False,
        )  # fmt: skip
        n = 40
        answers = await submit_together(client, n)

        async def every_event() -> bool:
            return len(events) >= n and bool(hints)

        await wait_for(every_event, timeout=10, what="40 submitted events and a hint")
        assert {str(e.job_id) for e in events} == {a.json()["id"] for a in answers}
        assert len(hints) < n / 4, len(hints)
    finally:
        await broker.close()


async def test_a_row_the_database_refuses_fails_alone(
    pool: asyncpg.Pool, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    inserts = GroupedInserts(pool)
    rows = [wire_row(), wire_row(), wire_row(name="nul\x00byte"), wire_row()]
    # The first goes alone; the other three wait for it and then go as one group,
    # which the database refuses for its third row.
    results = await insert_together(inserts, rows)
    assert "a group of 3 submits failed" in caplog.text
    assert isinstance(results[2], asyncpg.PostgresError), results[2]
    assert [r["id"] for i, r in enumerate(results) if i != 2] == [  # type: ignore[index]
        row["id"] for i, row in enumerate(rows) if i != 2
    ]
    stored = {r["id"] for r in await db.fetch("SELECT id FROM jobs")}
    assert stored == {rows[0]["id"], rows[1]["id"], rows[3]["id"]}
    audited = {r["job_id"] for r in await db.fetch("SELECT job_id FROM audit_log")}
    assert audited == stored
    await inserts.close()


async def test_a_request_cancelled_while_it_waits_submits_nothing(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    inserts = GroupedInserts(pool)
    rows = [wire_row() for _ in range(3)]
    tasks = [asyncio.create_task(inserts.insert(row, audit_of(row))) for row in rows]
    await asyncio.sleep(0)  # each has started: the first runs its statement, two wait
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert {done[0]["id"], done[2]["id"]} == {rows[0]["id"], rows[2]["id"]}  # type: ignore[index]
    stored = {r["id"] for r in await db.fetch("SELECT id FROM jobs")}
    assert stored == {rows[0]["id"], rows[2]["id"]}
    await inserts.close()


async def test_a_group_is_bounded_by_its_payload_bytes(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    inserts = GroupedInserts(pool)
    payload = '{"pad": "' + "x" * 90 + '"}'
    inserts.MAX_GROUP_BYTES = 2 * len(payload)  # two payloads per statement
    rows = [wire_row(payload=payload) for _ in range(5)]
    results = await insert_together(inserts, rows)
    assert [r["id"] for r in results] == [row["id"] for row in rows]
    # The first alone, then the four that waited in two statements of two.
    assert await db.fetchval("SELECT count(DISTINCT xmin::text) FROM jobs") == 3
    await inserts.close()


async def test_a_row_the_statement_leaves_out_is_answered_with_an_error_not_retried(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """A row the status guard leaves out (not a new job's status) does not make the
    committed others go again: they are answered, it gets an error."""
    inserts = GroupedInserts(pool)
    rows = [wire_row(), wire_row(), wire_row(status="running"), wire_row()]
    results = await insert_together(inserts, rows)
    assert isinstance(results[2], Exception)
    assert [r["id"] for i, r in enumerate(results) if i != 2] == [  # type: ignore[index]
        row["id"] for i, row in enumerate(rows) if i != 2
    ]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 3
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 3
    await inserts.close()
