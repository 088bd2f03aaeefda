"""A job retried by hand that fails for good again says so truthfully: its attempt
numbers go on past ``max_attempts`` (never ``attempt 4 of 2 failed``)."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from shared.jobs import transitions
from shared.messages import JobStatusReport


async def _fail_until_failed(app: object, db: asyncpg.Connection, job_id: uuid.UUID) -> str:
    """Run and fail attempts (as the scheduler applies a worker's reports) until the job
    is failed; its error."""
    for _ in range(10):
        async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            await db.execute(
                "UPDATE jobs SET run_at = now() - interval '1 s' WHERE id = $1", job_id
            )
            await transitions.promote_due(session, limit=10)
            [placed] = await transitions.dispatch(session, [(job_id, "w1")], lease_seconds=30)
            report = JobStatusReport(
                job_id=job_id, attempt=placed.attempts, worker_id="w1", status="failed",
                error="boom",
            )  # fmt: skip
            await transitions.apply_reports(session, [report])
            await session.commit()
        row = await db.fetchrow("SELECT status, error FROM jobs WHERE id = $1", job_id)
        if row["status"] == "failed":
            return str(row["error"])
    raise AssertionError("the job never failed for good")


async def test_the_error_after_a_manual_retry_is_truthful(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await client.post(
        "/jobs",
        json={"type": "demo.echo", "retry": {"max_attempts": 2, "initial_delay_seconds": 0.01}},
    )
    job_id = uuid.UUID(made.json()["id"])
    assert await _fail_until_failed(app, db, job_id) == "attempt 2 of 2 failed: boom"

    retried = await client.post(f"/jobs/{job_id}/retry")  # shared.jobs.commands.retry_job
    assert retried.status_code == 200, retried.text
    error = await _fail_until_failed(app, db, job_id)
    assert error == (
        "attempt 4 failed, 2 of 2 allowed attempts used (attempt numbers go on across manual "
        "retries and handed-back attempts): boom"
    )
    got = (await client.get(f"/jobs/{job_id}")).json()
    assert (got["status"], got["attempts"], got["error"]) == ("failed", 4, error)
