"""The logger's batch write is idempotent: a redelivered batch changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from services.logger.logger import write_batch
from shared.messages import JobLog, JobStatusReport


async def dispatched_job(
    client: httpx.AsyncClient, db: asyncpg.Connection, *, worker_id: str = "w"
) -> uuid.UUID:
    """A job as the scheduler leaves it once its first attempt went to ``worker_id``."""
    job_id = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = $2 "
        "WHERE id = $1", job_id, worker_id,
    )  # fmt: skip
    return job_id


async def test_redelivered_batch_writes_nothing_twice(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await dispatched_job(client, db)
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


async def test_a_folded_start_is_written_as_its_own_start(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A worker's end report that carries its start (fold_starts): the execution row and
    the audit log have the start as if its report had come on its own; again, nothing
    twice."""
    job_id = await dispatched_job(client, db)
    started = datetime(2026, 1, 1, tzinfo=UTC)
    ended = started + timedelta(seconds=2)
    folded = JobStatusReport(
        job_id=job_id, attempt=1, worker_id="w", status="completed", result=[1],
        ts=ended, started_at=started,
    )  # fmt: skip
    for _ in range(2):
        async with db.transaction():
            await write_batch(db, [], [folded])
    row = await db.fetchrow(
        "SELECT status, started_at, finished_at, duration_seconds FROM job_executions"
        " WHERE job_id = $1",
        job_id,
    )
    assert (row["status"], row["started_at"], row["finished_at"]) == ("completed", started, ended)
    assert row["duration_seconds"] == 2
    audit = await db.fetch(
        "SELECT action, outcome, at, actor FROM audit_log WHERE job_id = $1 AND attempt = 1"
        " ORDER BY at",
        job_id,
    )
    assert [(r["action"], r["outcome"], r["at"], r["actor"]) for r in audit] == [
        ("execution.start", "started", started, "w"),
        ("execution.end", "completed", ended, "w"),
    ]


async def test_a_start_after_its_end_is_written_as_the_end(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A worker whose clock runs ahead reports its start; the scheduler then declares the
    attempt lost, stamped by its own clock: the execution row does not start after it
    ended, nor run for a negative time (in one batch or in two)."""
    ahead = datetime.now(UTC) + timedelta(hours=1)
    for together in (True, False):
        job_id = await dispatched_job(client, db)
        start = JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="started",
                                ts=ahead)  # fmt: skip
        lost = JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="lost",
                               error="worker w lost")  # fmt: skip
        batches = [[start, lost]] if together else [[start], [lost]]
        for reports in batches:
            async with db.transaction():
                await write_batch(db, [], reports)
        row = await db.fetchrow(
            "SELECT status, started_at, finished_at, duration_seconds FROM job_executions"
            " WHERE job_id = $1",
            job_id,
        )
        assert row["status"] == "lost", row
        assert row["started_at"] == row["finished_at"] < ahead, row
        assert row["duration_seconds"] == 0, row


async def test_an_attempt_that_never_started_has_no_start_and_no_run_time(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """An attempt declared lost before any start report (or handed back unstarted): its
    execution row says it has no start and no run time, not a zero-second run; a late
    start then fills it in."""
    job_id = await dispatched_job(client, db)
    lost = JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="lost",
                           error="worker w lost")  # fmt: skip
    async with db.transaction():
        await write_batch(db, [], [lost])
    query = "SELECT started_at, duration_seconds FROM job_executions WHERE job_id = $1"
    row = await db.fetchrow(query, job_id)
    assert (row["started_at"], row["duration_seconds"]) == (None, None), row
    started = datetime.now(UTC) - timedelta(seconds=3)
    start = JobStatusReport(job_id=job_id, attempt=1, worker_id="w", status="started",
                            ts=started)  # fmt: skip
    async with db.transaction():
        await write_batch(db, [], [start])
    row = await db.fetchrow(query, job_id)
    assert row["started_at"] == started and 2 < row["duration_seconds"] < 60, row


async def test_reports_no_dispatched_attempt_vouches_for_are_not_history(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing (a helper published them while the job ran): another worker's
    'completed' stood as the attempt's end with its forged result, and attempts 0 and 2,
    never dispatched, had executions, audit rows and log lines."""
    job_id = await dispatched_job(client, db, worker_id="real")

    def report(attempt: int, worker: str, status: str, **fields: object) -> JobStatusReport:
        return JobStatusReport(job_id=job_id, attempt=attempt, worker_id=worker,
                               status=status, **fields)  # type: ignore[arg-type]  # fmt: skip

    forged = [
        report(1, "other", "completed", result={"forged": True}),
        report(2, "real", "completed", result={"forged": True}),
        report(0, "real", "failed", error="forged"),
    ]
    async with db.transaction():  # in the same batch as the real start, first
        await write_batch(db, [], [*forged[:1], report(1, "real", "started"), *forged[1:]])
    async with db.transaction():
        await write_batch(db, [], [report(1, "real", "completed", result={"real": True})])
    async with db.transaction():  # and on their own, after it
        await write_batch(db, [], forged)
    lines = [JobLog(job_id=job_id, attempt=a, seq=1, level="info", message=f"attempt {a}")
             for a in (0, 1, 2)]  # fmt: skip
    async with db.transaction():
        await write_batch(db, lines, [])
    assert await db.fetchval("SELECT array_agg(attempt) FROM job_logs") == [1]
    rows = await db.fetch("SELECT attempt, worker_id, status, result FROM job_executions")
    assert [tuple(r) for r in rows] == [(1, "real", "completed", '{"real": true}')]
    audited = await db.fetch(
        "SELECT actor, attempt FROM audit_log WHERE job_id = $1 AND role = 'worker'", job_id
    )
    assert {tuple(r) for r in audited} == {("real", 1)}
