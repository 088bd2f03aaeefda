"""The logger's batch write is idempotent: a redelivered batch changes nothing."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from services.logger.logger import write_batch
from shared.messages import JobLog, JobStatusReport


async def test_redelivered_batch_writes_nothing_twice(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    lines = [
        JobLog(job_id=job_id, attempt=1, seq=i, level="info", message=f"m{i}") for i in range(1, 6)
    ]
    reports = [
        JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="started"),
        JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="completed", result=[1]),
    ]
    orphan = JobLog(job_id=uuid.uuid4(), attempt=1, seq=1, level="info", message="no such job")
    for _ in range(2):
        async with db.transaction():
            await write_batch(db, [*lines, orphan], reports)
    assert await db.fetchval("SELECT count(*) FROM job_logs") == 5
    rows = await db.fetch(
        "SELECT attempt, status, worker_id, result, duration_seconds FROM job_executions"
    )
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["worker_id"], rows[0]["result"]) == ("completed", "w", "[1]")
    assert rows[0]["duration_seconds"] >= 0
    # A late 'started' for a finished attempt does not undo it.
    async with db.transaction():
        await write_batch(db, [], reports[:1])
    assert await db.fetchval("SELECT status FROM job_executions") == "completed"
