"""Faults that need no network tricks: killed, frozen and restarted processes,
duplicate messages, a lost publish. Each asserts exact counts."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from shared.broker import Broker
from shared.messages import JobDispatch, JobStatusReport, ResourceSpec, dispatch_key
from tests.e2e.conftest import Stack

# Wall-clock bounds (CPU-bound pairs, start and takeover times, a rate limit's pace)
# that another test's services on the same two cores would stretch.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def executions(stack: Stack, job_ids: list[str]) -> list[dict]:
    return [dict(r) for r in stack.sql(
        "SELECT job_id::text, attempt, worker_id, status FROM job_executions"
        " WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, attempt", job_ids)]  # fmt: skip


def test_sigkill_worker_holding_20_running_jobs(stack: Stack) -> None:
    victim = stack.worker("victim", "--threads", "24", "--cpu-units", "24")
    jobs = [stack.submit({"type": "demo.sleep", "payload": {"seconds": 3}}) for _ in range(24)]
    ids = [j["id"] for j in jobs]
    stack.wait_for(lambda: len(stack.sql("SELECT id FROM jobs WHERE status = 'running' AND worker_id = 'victim'")) >= 20,
                   what="20 jobs running on the victim")  # fmt: skip
    running_on_victim = {
        str(r["id"])
        for r in stack.sql("SELECT id FROM jobs WHERE status = 'running' AND worker_id = 'victim'")
    }
    # Killed before the rescuer starts: starting a worker can outlast the jobs' 3 s on a
    # slow machine, and then the victim would finish them itself before the kill.
    victim.signal(signal.SIGKILL)
    stack.worker("rescuer", "--threads", "24", "--cpu-units", "24")
    for job_id in ids:
        done = stack.wait_status(job_id, "completed", timeout=40)
        assert done["worker_id"] == "rescuer" or job_id not in running_on_victim
    assert not stack.sql("SELECT id FROM jobs WHERE status = 'running'")
    stack.wait_for(
        lambda: all(e["status"] != "running" for e in executions(stack, ids)),
        what="history settled",
    )
    rows = executions(stack, ids)
    for job_id in running_on_victim:
        mine = [(e["attempt"], e["worker_id"], e["status"]) for e in rows if e["job_id"] == job_id]
        assert mine == [(1, "victim", "lost"), (2, "rescuer", "completed")], (job_id, mine)
    # One execution per attempt, never two runs of one attempt.
    assert len({(e["job_id"], e["attempt"]) for e in rows}) == len(rows)


def test_zombie_worker_results_are_fenced(stack: Stack) -> None:
    zombie = stack.worker("zombie")
    job = stack.submit({"type": "demo.sleep", "payload": {"seconds": 4}})
    assert stack.wait_status(job["id"], "running")["worker_id"] == "zombie"
    zombie.signal(signal.SIGSTOP)
    stack.worker("healthy")
    done = stack.wait_status(job["id"], "completed", timeout=40)
    assert done["worker_id"] == "healthy" and done["attempts"] == 2
    zombie.signal(signal.SIGCONT)
    # The zombie wakes, finishes (or is told to stop) attempt 1; its report is fenced out.
    stack.wait_for(lambda: stack.worker_alive("zombie"), timeout=20, what="zombie heartbeats again")
    time_limit = time.monotonic() + 8
    while time.monotonic() < time_limit:
        assert stack.job(job["id"])["status"] == "completed"
        assert stack.job(job["id"])["attempts"] == 2
        time.sleep(0.5)
    rows = executions(stack, [job["id"]])
    assert [(e["attempt"], e["worker_id"], e["status"]) for e in rows] == [
        (1, "zombie", "lost"),
        (2, "healthy", "completed"),
    ]


def test_duplicate_dispatch_and_status_run_and_count_once(stack: Stack, settings: object) -> None:
    stack.worker("w1")
    job = stack.submit({"type": "demo.log", "payload": {"lines": 3}})
    done = stack.wait_status(job["id"], "completed")
    # Replay the attempt's messages as a broker would on redelivery.
    job_id = uuid.UUID(job["id"])

    async def duplicate() -> None:
        broker = Broker(settings.amqp_url, settings.namespace, name="test-dup")  # type: ignore[attr-defined]
        await broker.connect()
        try:
            dispatch = JobDispatch(
                job_id=job_id, attempt=1, type="demo.log", payload={"lines": 3},
                resources=ResourceSpec(cpu_units=0.1, memory_mb=16), timeout_seconds=None,
                lease_expires_at=done["finished_at"],
            )  # fmt: skip
            await broker.publish(dispatch, dispatch_key("w1", job_id))
            report = JobStatusReport(
                job_id=job_id, attempt=1, worker_id="w1", status="completed", result={"lines": 3}
            )
            await broker.publish_many([(report, None), (report, None)])
        finally:
            await broker.close()

    asyncio.run(duplicate())
    time_limit = time.monotonic() + 4  # let the duplicates be consumed
    while time.monotonic() < time_limit:
        time.sleep(0.5)
    assert stack.job(job["id"])["attempts"] == 1
    assert [(e["attempt"], e["status"]) for e in executions(stack, [job["id"]])] == [
        (1, "completed")
    ]
    assert len(stack.logs(job["id"])["lines"]) == 3
    starts = stack.sql(
        "SELECT count(*) AS n FROM audit_log WHERE job_id = $1 AND action = 'execution.start'",
        job_id,
    )
    assert starts[0]["n"] == 1
    finished = stack.sql(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'job.submit' AND job_id = $1", job_id
    )
    assert finished[0]["n"] == 1


def test_commit_without_publish_still_runs_once(stack: Stack, settings: object) -> None:
    """The API crashed after its commit, before its publish: no job.submitted hint."""
    from services.api.app import create_app
    from shared.auth import Actor
    from shared.jobs.prepare import Limits
    from shared.jobs.submit import submit_jobs
    from shared.schemas import JobCreate

    stack.worker("w1")

    async def commit_only() -> str:
        app = create_app(settings)  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            async with app.state.sessionmaker() as session:
                result = await submit_jobs(
                    session, catalog=app.state.catalog, specs=[JobCreate(type="demo.echo", payload={"x": 1})],
                    actor=Actor(key_id="test", role="admin"), limits=Limits(), batch=False,
                )  # fmt: skip
                await session.commit()  # ... and no publish
            return str(result.jobs[0].id)

    job_id = asyncio.run(commit_only())
    done = stack.wait_status(job_id, "completed", timeout=15)
    assert done["attempts"] == 1


@pytest.mark.slow_fault
def test_logger_down_for_60_seconds_loses_no_line(stack: Stack) -> None:
    stack.worker("w1", "--threads", "8")
    stack.logger.signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert stack.logger.wait(timeout=20) == 0  # type: ignore[attr-defined]
    down_at = time.monotonic()
    jobs = [stack.submit({"type": "demo.log", "payload": {"lines": 200}}) for _ in range(10)]
    for j in jobs:
        stack.wait_status(j["id"], "completed")
    assert stack.sql("SELECT count(*) AS n FROM job_logs")[0]["n"] == 0
    time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))  # the outage itself lasts 60 s
    stack.start("logger")
    stack.wait_for(
        lambda: stack.sql("SELECT count(*) AS n FROM job_logs")[0]["n"] == 2000,
        timeout=30,
        what="every line written",
    )
    dupes = stack.sql(
        "SELECT count(*) AS n FROM (SELECT 1 FROM job_logs GROUP BY job_id, attempt, seq HAVING count(*) > 1) d"
    )
    assert dupes[0]["n"] == 0
    for j in jobs:
        assert [ln["message"] for ln in stack.logs(j["id"])["lines"]] == [
            f"line {i} of 200" for i in range(1, 201)
        ]


def test_scheduler_failover_under_load(stack: Stack) -> None:
    second = stack.start("scheduler")
    pair = [stack.scheduler, second]  # type: ignore[attr-defined]
    stack.wait_for(
        lambda: sum("active scheduler" in p.output() for p in pair) == 1, what="one active"
    )
    stack.worker("w1", "--threads", "8")
    stack.worker("w2", "--threads", "8")
    jobs = [stack.submit({"type": "demo.sleep", "payload": {"seconds": 0.2}}) for _ in range(150)]
    stack.wait_for(
        lambda: (
            stack.sql("SELECT count(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"] >= 30
        ),
        what="flowing",
    )
    active = next(p for p in pair if "active scheduler" in p.output())
    standby = next(p for p in pair if p is not active)
    active.signal(signal.SIGKILL)
    killed = time.monotonic()
    stack.wait_for(
        lambda: "active scheduler" in standby.output(), timeout=15, what="standby takes over"
    )
    assert time.monotonic() - killed < 5
    for j in jobs:
        stack.wait_status(j["id"], "completed", timeout=60)
    # A dispatch the killed scheduler committed but never published is put back by
    # the new one (a new attempt number); what must never happen is a job running twice.
    twice = stack.sql(
        "SELECT job_id FROM job_executions WHERE started_at IS NOT NULL GROUP BY job_id HAVING count(*) > 1"
    )
    assert twice == []
    stack.wait_for(lambda: stack.sql("SELECT count(*) AS n FROM job_executions WHERE status = 'completed'")[0]["n"] == 150,
                   what="one completed execution per job")  # fmt: skip
