"""A job's last progress is stored before its completion is committed: a client that
sees the job completed sees its final progress too (the worker sends the progress
first; the scheduler often gets both in one inbox). The scheduler's real ``_apply``
against the real database; a trigger of this test's own database records the order in
which the row's progress and status were written."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from services.scheduler.cycle import Received, Scheduler
from shared.messages import JobProgress, JobStatusReport
from shared.settings import Settings

WRITES_IN_ORDER = """
CREATE TABLE test_write_order (seq serial PRIMARY KEY, what text NOT NULL);
CREATE FUNCTION test_record_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.progress IS DISTINCT FROM OLD.progress THEN
        INSERT INTO test_write_order (what) VALUES ('progress');
    END IF;
    IF NEW.status = 'completed' AND OLD.status <> 'completed' THEN
        INSERT INTO test_write_order (what) VALUES ('completed');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_record_write AFTER UPDATE ON jobs
FOR EACH ROW EXECUTE FUNCTION test_record_write();
"""


async def test_the_last_progress_is_written_before_the_completion(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, runs = 1, worker_id = 'w1'"
        " WHERE id = $1",
        job_id,
    )
    await db.execute(WRITES_IN_ORDER)
    # In the order the worker publishes them: the last progress, then the end report.
    inbox = [
        JobProgress(job_id=job_id, attempt=1, done=3, total=3),
        JobStatusReport(job_id=job_id, attempt=1, worker_id="w1", status="started"),
        JobStatusReport(job_id=job_id, attempt=1, worker_id="w1", status="completed"),
    ]
    scheduler = Scheduler(settings)
    async with scheduler.db.open():
        await scheduler._apply(Received.sort(inbox), [])
    row = await db.fetchrow("SELECT status, progress FROM jobs WHERE id = $1", job_id)
    assert row["status"] == "completed" and '"done": 3' in row["progress"]
    order = await db.fetch("SELECT what FROM test_write_order ORDER BY seq")
    assert [r["what"] for r in order] == ["progress", "completed"]
