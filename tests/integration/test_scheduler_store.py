"""The scheduler's report handling against the real database (fencing, cancels)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from shared.auth import Actor
from shared.jobs import retention, transitions
from shared.jobs.annotations import set_waiting_reasons
from shared.jobs.submit import submit_jobs
from shared.messages import JobStatusReport
from shared.schemas import JobCreate
from tests.conftest import wait_for


async def running_job(
    client: httpx.AsyncClient, db: asyncpg.Connection, *, cancel: bool
) -> uuid.UUID:
    job_id = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 2, runs = 2, worker_id = 'w1',"
        " cancel_requested = $2 WHERE id = $1",
        job_id,
        cancel,
    )
    return job_id


async def raw_pool(database_url: str) -> asyncpg.Pool:
    """A one-connection asyncpg pool on the test's database, as the scheduler uses."""
    return await asyncpg.create_pool(
        database_url.replace("postgresql+asyncpg://", "postgresql://"), min_size=1, max_size=1
    )


def report(
    job_id: uuid.UUID, status: str, *, attempt: int = 2, worker: str = "w1"
) -> JobStatusReport:
    return JobStatusReport(job_id=job_id, attempt=attempt, worker_id=worker, status=status)  # type: ignore[arg-type]


async def test_fence_ignores_other_attempts_and_workers(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await running_job(client, db, cancel=False)
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        out = await transitions.apply_reports(
            session,
            [report(job_id, "completed", attempt=1), report(job_id, "completed", worker="w2")],
        )
        await session.commit()
    assert out.ignored == 2 and out.events == []
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "running"
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        out = await transitions.apply_reports(
            session, [report(job_id, "completed"), report(job_id, "completed")]
        )
        await session.commit()
    assert [e.new_status for e in out.events] == [
        "completed"
    ] and out.ignored == 1  # duplicate: once


async def test_hand_back_after_cancel_ends_cancelled(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await running_job(client, db, cancel=True)
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        out = await transitions.apply_reports(session, [report(job_id, "handed_back")])
        await session.commit()
    assert [e.new_status for e in out.events] == ["cancelled"]
    row = await db.fetchrow("SELECT status, runs FROM jobs WHERE id = $1", job_id)
    assert row["status"] == "cancelled"


async def test_hand_back_gives_the_run_back(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job_id = await running_job(client, db, cancel=False)
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await transitions.apply_reports(session, [report(job_id, "handed_back")])
        await session.commit()
    row = await db.fetchrow(
        "SELECT status, runs, attempts, worker_id FROM jobs WHERE id = $1", job_id
    )
    assert (row["status"], row["runs"], row["attempts"], row["worker_id"]) == ("ready", 1, 2, None)


async def test_fast_path_fences_like_the_general_one(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """apply_successes: wrong attempt / worker ignored, a duplicate applied once, a start
    alone recorded, a start and its end in one batch written as one completed row."""
    done = await running_job(client, db, cancel=False)
    starting = await running_job(client, db, cancel=False)
    pool = await raw_pool(database_url)
    try:
        out = await transitions.apply_successes(
            pool,
            [
                report(done, "completed", attempt=1),
                report(done, "completed", worker="w2"),
                report(starting, "started", worker="w2"),
            ],
        )
        assert out.ignored == 2 and out.events == [] and out.freed == []
        rows = await db.fetch(
            "SELECT status, started_at FROM jobs WHERE id = ANY($1)", [done, starting]
        )
        assert [(r["status"], r["started_at"]) for r in rows] == [("running", None)] * 2

        out = await transitions.apply_successes(
            pool,
            [
                report(done, "started"),
                report(done, "completed"),
                report(done, "completed"),
                report(starting, "started"),
            ],
        )
    finally:
        await pool.close()
    assert [(e.job_id, e.new_status, e.attempt) for e in out.events] == [(done, "completed", 2)]
    assert out.freed == [(done, "w1")] and out.ignored == 0
    assert out.events[0].duration_seconds is not None
    row = await db.fetchrow("SELECT status, started_at, finished_at FROM jobs WHERE id = $1", done)
    assert row["status"] == "completed" and row["started_at"] <= row["finished_at"]
    row = await db.fetchrow("SELECT status, started_at FROM jobs WHERE id = $1", starting)
    assert row["status"] == "running" and row["started_at"] is not None


async def test_a_start_folded_into_its_end_is_written_on_either_path(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """An end report that carries its attempt's start (a worker's fold_starts): the job's
    started_at is that start, on the fast path (completed) and on the general one
    (failed, with its retry), as if the start had come on its own."""
    completed = await running_job(client, db, cancel=False)
    failed = await running_job(client, db, cancel=False)
    await db.execute("UPDATE jobs SET max_attempts = 5 WHERE id = $1", failed)
    started = datetime(2026, 1, 1, tzinfo=UTC)

    def folded(job_id: uuid.UUID, status: str, **kw: Any) -> JobStatusReport:
        return JobStatusReport(
            job_id=job_id, attempt=2, worker_id="w1", status=status,  # type: ignore[arg-type]
            started_at=started, **kw,
        )  # fmt: skip

    pool = await raw_pool(database_url)
    try:
        out = await transitions.apply_successes(pool, [folded(completed, "completed")])
    finally:
        await pool.close()
    assert [(e.job_id, e.new_status) for e in out.events] == [(completed, "completed")]
    row = await db.fetchrow("SELECT status, started_at FROM jobs WHERE id = $1", completed)
    assert (row["status"], row["started_at"]) == ("completed", started)

    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        out = await transitions.apply_reports(session, [folded(failed, "failed", error="boom")])
        await session.commit()
    assert [(e.job_id, e.new_status) for e in out.events] == [(failed, "retrying")]
    row = await db.fetchrow("SELECT status, started_at, error FROM jobs WHERE id = $1", failed)
    assert (row["status"], row["started_at"], row["error"]) == ("retrying", started, "boom")


def test_split_reports_keeps_a_jobs_reports_together() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    reports = [
        report(a, "started"),
        report(b, "started"),
        report(a, "completed"),
        report(b, "failed"),
    ]
    fast, slow = transitions.split_reports(reports)
    assert [(r.job_id, r.status) for r in fast] == [(a, "started"), (a, "completed")]
    assert [(r.job_id, r.status) for r in slow] == [(b, "started"), (b, "failed")]


async def test_retention_deletes_only_what_finished_before_the_cutoff(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """prune_finished: finished jobs older than the cutoff go with their log lines,
    executions and edges; recent finished jobs and unfinished old ones stay; a child
    whose parent was deleted cannot be retried."""
    ids = [
        uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
        for _ in range(4)
    ]
    old_done, old_failed, recent_done, old_running = ids
    child = uuid.UUID(
        (
            await client.post("/jobs", json={"type": "demo.echo", "depends_on": [str(old_done)]})
        ).json()["id"]
    )
    for job_id, status, age in (
        (old_done, "completed", "40 days"),
        (old_failed, "failed", "31 days"),
        (recent_done, "completed", "29 days"),
    ):
        await db.execute(
            f"UPDATE jobs SET status = $2, finished_at = now() - interval '{age}' WHERE id = $1",
            job_id,
            status,
        )
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, worker_id = 'w',"
        " ready_at = now() - interval '40 days' WHERE id = $1",
        old_running,
    )
    for job_id in ids:
        await db.execute(
            "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message)"
            " VALUES ($1, 1, 1, now(), 'info', 'x')",
            job_id,
        )
        await db.execute(
            "INSERT INTO job_executions (job_id, attempt, status) VALUES ($1, 1, 'completed')",
            job_id,
        )
    pool = await raw_pool(database_url)
    try:
        cutoff = await db.fetchval("SELECT now() - interval '30 days'")
        assert await retention.prune_finished(pool, older_than=cutoff, batch=1) == 2
        assert await retention.prune_finished(pool, older_than=cutoff) == 0
    finally:
        await pool.close()
    left = {r["id"] for r in await db.fetch("SELECT id FROM jobs")}
    assert left == {recent_done, old_running, child}
    for table in ("job_logs", "job_executions"):
        kept = {r["job_id"] for r in await db.fetch(f"SELECT job_id FROM {table}")}
        assert kept == {recent_done, old_running}, table
    assert await db.fetchval("SELECT count(*) FROM job_dependencies") == 0
    # The child outlived its parent: retrying it cannot honour the dependency.
    await db.execute("UPDATE jobs SET status = 'failed', finished_at = now() WHERE id = $1", child)
    r = await client.post(f"/jobs/{child}/retry")
    assert r.status_code == 409 and "no longer exists" in r.text, r.text
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", child) == "failed"


async def test_fast_path_unblocks_children(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    parent = await running_job(client, db, cancel=False)
    child = uuid.UUID(
        (
            await client.post("/jobs", json={"type": "demo.echo", "depends_on": [str(parent)]})
        ).json()["id"]
    )
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", child) == "blocked"
    pool = await raw_pool(database_url)
    try:
        out = await transitions.apply_successes(pool, [report(parent, "completed")])
    finally:
        await pool.close()
    assert [(e.job_id, e.old_status, e.new_status) for e in out.events] == [
        (parent, "running", "completed"),
        (child, "blocked", "ready"),
    ]
    row = await db.fetchrow("SELECT status, unmet_dependencies FROM jobs WHERE id = $1", child)
    assert (row["status"], row["unmet_dependencies"]) == ("ready", 0)


async def test_completion_sees_a_child_whose_submit_it_waited_for(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """The race the one-statement completion must survive: a child's submit holds its
    running parent FOR SHARE (it counted the parent as unmet) when the completion comes.
    The completion waits for that lock; once the child commits, the completion must
    unblock it, although the child was not committed when the statement began."""
    parent = await running_job(client, db, cancel=False)
    pool = await raw_pool(database_url)
    state = app.state  # type: ignore[attr-defined]
    try:
        async with state.sessionmaker() as session:
            result = await submit_jobs(
                session, catalog=state.catalog, limits=state.limits, batch=False,
                specs=[JobCreate(type="demo.echo", depends_on=[parent])],
                actor=Actor(key_id="test", role="admin"),
            )  # fmt: skip
            child = result.jobs[0].id
            assert result.jobs[0].status == "blocked"
            completion = asyncio.create_task(
                transitions.apply_successes(pool, [report(parent, "completed")])
            )

            async def waits_for_the_lock() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%WITH done AS%' AND datname = current_database()"
                    )
                )

            await wait_for(waits_for_the_lock, timeout=10, what="the completion waits on the lock")
            assert not completion.done()
            await session.commit()
        out = await asyncio.wait_for(completion, timeout=10)
    finally:
        await pool.close()
    assert [(e.job_id, e.new_status) for e in out.events] == [
        (parent, "completed"),
        (child, "ready"),
    ]
    row = await db.fetchrow("SELECT status, unmet_dependencies FROM jobs WHERE id = $1", child)
    assert (row["status"], row["unmet_dependencies"]) == ("ready", 0)


async def test_waiting_reasons_answer_the_jobs_still_ready(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    ready = uuid.UUID((await client.post("/jobs", json={"type": "demo.echo"})).json()["id"])
    running = await running_job(client, db, cancel=False)
    pool = await raw_pool(database_url)
    try:
        why: dict[uuid.UUID, str | None] = {
            ready: "waiting for free capacity",
            running: "waiting for free capacity",
        }
        assert await set_waiting_reasons(pool, why) == {ready}
        assert await set_waiting_reasons(pool, why) == {ready}  # unchanged: still ready
    finally:
        await pool.close()
    rows = await db.fetch(
        "SELECT id, waiting_reason FROM jobs WHERE id = ANY($1)", [ready, running]
    )
    assert {r["id"]: r["waiting_reason"] for r in rows} == {
        ready: "waiting for free capacity",
        running: None,
    }


async def test_a_batch_of_reports_publishes_its_events_in_report_order(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Completions and other ends interleave as the reports came (they are written by
    two statements, but their events keep the reports' order); whose children follow."""
    failing = await running_job(client, db, cancel=False)
    done = await running_job(client, db, cancel=False)
    cancelled = await running_job(client, db, cancel=True)
    reports = [
        report(failing, "failed"),
        report(done, "completed"),
        report(cancelled, "failed"),
    ]
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        out = await transitions.apply_reports(session, reports)
        await session.commit()
    assert [(e.job_id, e.new_status) for e in out.events] == [
        (failing, "retrying"),
        (done, "completed"),
        (cancelled, "cancelled"),
    ]
    assert all(e.worker_id == "w1" for e in out.events)


async def test_a_cancel_event_names_no_worker_even_after_an_attempt_ran(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A job waiting to retry keeps its last worker in the row; cancelling it is not
    that worker's doing, and the job.state event says so (worker_id null)."""
    from shared.auth import Actor
    from shared.jobs.commands import cancel_job

    job_id = await running_job(client, db, cancel=False)
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await transitions.apply_reports(session, [report(job_id, "failed")])
        await session.commit()
    assert await db.fetchval("SELECT worker_id FROM jobs WHERE id = $1", job_id) == "w1"
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        _, events, notify = await cancel_job(session, job_id, actor=Actor("k", "admin"))
        await session.commit()
    assert not notify
    assert [(e.old_status, e.new_status, e.worker_id) for e in events] == [
        ("retrying", "cancelled", None)
    ]


async def test_a_worker_clock_ahead_never_starts_an_attempt_after_it_ended(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A worker whose clock runs an hour ahead reports starts in the future: the
    scheduler writes them as no later than it learnt of them, on the fast path (a start
    alone, then its completion) and on the general one (a failure carrying its start),
    so no job ends before it began and /stats' run times are not negative."""
    from shared.stats import read_window

    before = datetime.now(UTC)
    ahead = before + timedelta(hours=1)
    completed = await running_job(client, db, cancel=False)
    failed = await running_job(client, db, cancel=False)
    pool = await raw_pool(database_url)
    try:
        start = JobStatusReport(job_id=completed, attempt=2, worker_id="w1", status="started",
                                ts=ahead)  # fmt: skip
        await transitions.apply_successes(pool, [start])
        await transitions.apply_successes(pool, [report(completed, "completed")])
        async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            failure = JobStatusReport(job_id=failed, attempt=2, worker_id="w1",
                                      status="failed", error="boom", started_at=ahead)  # fmt: skip
            await transitions.apply_reports(session, [failure])
            await session.commit()
        rows = await db.fetch(
            "SELECT id, started_at, finished_at FROM jobs WHERE id = ANY($1)", [completed, failed]
        )
        assert len(rows) == 2
        for row in rows:  # the scheduler's time when it applied the start
            assert before <= row["started_at"] <= datetime.now(UTC), row
        done = next(r for r in rows if r["id"] == completed)
        assert done["started_at"] <= done["finished_at"], done
        # A row written before this rule (its start after its end) reads as 0 s.
        await db.execute(
            "UPDATE jobs SET started_at = finished_at + interval '1 hour' WHERE id = $1", completed
        )
        window = await read_window(pool)
    finally:
        await pool.close()
    assert window["durations"]["demo.echo"]["mean_seconds"] == 0, window


async def test_lock_order_is_postgresqls_uuid_order(db: asyncpg.Connection) -> None:
    """Writers lock job rows in one order or deadlock each other: the ids' order in
    Python must be PostgreSQL's, for Python's UUIDs and for those asyncpg returns."""
    ours = [uuid.uuid4() for _ in range(500)] + [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    fetched = [
        r["id"]
        for r in await db.fetch("SELECT gen_random_uuid() AS id FROM generate_series(1, 500)")
    ]
    ids = ours + fetched
    in_pg = await db.fetch("SELECT u FROM unnest($1::uuid[]) AS u ORDER BY u", ids)
    assert transitions.in_lock_order(ids) == [r["u"] for r in in_pg]
