"""GET /jobs/{id}/why: each reason code, the workers' fit, aging and the place in line.

Workers are rows of ``workers`` as their heartbeats leave them (the API reads only the
database); a job is put in a status the API alone cannot reach (running, retrying) by
writing its row, as the scheduler would.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from services.scheduler.placement import Candidate, WorkerView, effective_priority, plan_placements
from shared.jobs.why import _Need, judge_worker
from shared.placement_rules import effective_rank
from tests.conftest import VIEWER_KEY, auth


async def submit(client: httpx.AsyncClient, **body: object) -> dict:
    r = await client.post("/jobs", json={"type": "demo.echo", **body})
    assert r.status_code == 201, r.text
    return r.json()


async def add_worker(
    db: asyncpg.Connection,
    worker_id: str,
    *,
    cpu: float = 4,
    memory_mb: int = 4096,
    slots: int = 4,
    used: tuple[float, int, int] = (0, 0, 0),
    types: tuple[str, ...] = ("demo.echo", "demo.sleep"),
    state: str = "alive",
) -> None:
    await db.execute(
        """INSERT INTO workers (id, state, cpu_units, memory_mb, slots, allocated_cpu_units,
               allocated_memory_mb, allocated_slots, task_types, last_heartbeat_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())""",
        worker_id, state, cpu, memory_mb, slots, *used, list(types),
    )  # fmt: skip


async def why(client: httpx.AsyncClient, job_id: str) -> dict:
    r = await client.get(f"/jobs/{job_id}/why")
    assert r.status_code == 200, r.text
    return r.json()


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/jobs/{uuid.uuid4()}/why")
    assert r.status_code == 404 and "no job with id" in r.json()["detail"]
    assert (await client.get("/jobs/not-a-uuid/why")).status_code == 422


async def test_a_viewer_may_ask_and_no_key_may_not(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    assert (await client.get(f"/jobs/{job['id']}/why", headers=auth(VIEWER_KEY))).status_code == 200
    anonymous = await client.get(f"/jobs/{job['id']}/why", headers={"Authorization": ""})
    assert anonymous.status_code == 401


async def test_dependencies_are_listed_with_their_status(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    parent = await submit(client, name="parent", run_at="2999-01-01T00:00:00Z")
    done = await submit(client)
    await db.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", uuid.UUID(done["id"]))
    child = await submit(client, depends_on=[parent["id"], done["id"]])
    answer = await why(client, child["id"])
    assert answer["status"] == "blocked" and answer["reason"] == "dependencies"
    assert [(d["id"], d["name"], d["status"]) for d in answer["dependencies"]] == [
        (parent["id"], "parent", "pending"),
        (done["id"], None, "completed"),
    ]
    assert "1 unfinished" in answer["message"] and parent["id"] in answer["message"]
    assert answer["position"] is None
    # The parent itself waits for its time.
    assert (await why(client, parent["id"]))["reason"] == "delayed"


async def test_backoff_running_cancelling_terminal(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await submit(client)
    job_id = uuid.UUID(job["id"])
    await db.execute(
        "UPDATE jobs SET status = 'retrying', attempts = 1, run_at = now() + interval '1 hour' "
        "WHERE id = $1",
        job_id,
    )
    answer = await why(client, job["id"])
    assert answer["reason"] == "backoff" and "attempt 2 not before" in answer["message"]
    await db.execute(
        "UPDATE jobs SET status = 'running', worker_id = 'w-run', attempts = 2 WHERE id = $1",
        job_id,
    )
    answer = await why(client, job["id"])
    assert answer["reason"] == "running" and "w-run" in answer["message"]
    await db.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
    assert (await why(client, job["id"]))["reason"] == "cancelling"
    await db.execute("UPDATE jobs SET status = 'failed', error = 'boom' WHERE id = $1", job_id)
    answer = await why(client, job["id"])
    assert answer["reason"] == "terminal" and answer["message"] == "it ended failed: boom"


async def test_no_worker_then_no_worker_for_its_type(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await submit(client)
    answer = await why(client, job["id"])
    assert (answer["reason"], answer["workers"]) == ("no_worker", [])
    await add_worker(db, "w-other", types=("demo.sleep",))
    await add_worker(db, "w-dead", cpu=64)
    await db.execute(
        "UPDATE workers SET last_heartbeat_at = now() - interval '5 minutes' WHERE id = 'w-dead'"
    )
    answer = await why(client, job["id"])
    assert answer["reason"] == "no_worker_for_type"
    (worker,) = answer["workers"]  # the dead one is not listed
    assert worker["id"] == "w-other" and worker["has_task_type"] is False
    assert (worker["fits_now"], worker["fits_ever"]) == (False, False)
    assert "does not run 'demo.echo'" in worker["why_not"]


async def test_too_large_names_each_workers_free_and_needed(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_worker(db, "w-small", cpu=2, memory_mb=1024, used=(0.5, 256, 1))
    await add_worker(db, "w-draining", cpu=64, memory_mb=65536, state="draining")
    job = await submit(client, resources={"cpu_units": 8, "memory_mb": 2048})
    answer = await why(client, job["id"])
    assert answer["reason"] == "too_large"
    assert "w-small" in answer["message"] and "2 cpu units" in answer["message"]
    small, draining = sorted(answer["workers"], key=lambda w: w["id"] != "w-small")
    assert small["needed"] == {"cpu_units": 8.0, "memory_mb": 2048, "slots": 1}
    assert small["free"] == {"cpu_units": 1.5, "memory_mb": 768, "slots": 3}
    assert small["capacity"] == {"cpu_units": 2.0, "memory_mb": 1024, "slots": 4}
    assert (small["fits_now"], small["fits_ever"]) == (False, False)
    assert "2 cpu units in all" in small["why_not"] and "1024 MB in all" in small["why_not"]
    # A draining worker big enough takes nothing new: it does not count as a fit.
    assert draining["state"] == "draining" and draining["fits_ever"] is False
    assert draining["why_not"].startswith("draining")


async def test_no_free_capacity_counts_running_jobs_and_reported_use(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_worker(db, "w-busy", cpu=2, memory_mb=1024, slots=2)
    running = await submit(client, resources={"cpu_units": 1.5, "memory_mb": 100})
    await db.execute(
        "UPDATE jobs SET status = 'running', worker_id = 'w-busy', attempts = 1 WHERE id = $1",
        uuid.UUID(running["id"]),
    )
    job = await submit(client, resources={"cpu_units": 1, "memory_mb": 100})
    answer = await why(client, job["id"])
    assert answer["reason"] == "no_free_capacity"
    (worker,) = answer["workers"]
    assert worker["free"] == {"cpu_units": 0.5, "memory_mb": 924, "slots": 1}
    assert (worker["fits_now"], worker["fits_ever"]) == (False, True)
    assert worker["why_not"] == "busy: 0.5 cpu units free"
    assert answer["position"] == 0  # a running job is not in line


async def test_priority_then_placing_and_the_place_in_line(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_worker(db, "w-free")
    first = await submit(client, priority="high")
    second = await submit(client, priority="high")
    low = await submit(client, priority="low")
    answer = await why(client, low["id"])
    assert (answer["reason"], answer["position"], answer["position_capped"]) == (
        "priority",
        2,
        False,
    )
    assert "2 ready job(s) go first" in answer["message"]
    assert (await why(client, second["id"]))["position"] == 1
    answer = await why(client, first["id"])
    assert (answer["reason"], answer["position"]) == ("placing", 0)
    assert answer["workers"][0]["fits_now"] is True and answer["workers"][0]["why_not"] is None


async def test_effective_priority_ages_as_the_scheduler_ages(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await submit(client, priority="low")
    await db.execute(
        "UPDATE jobs SET ready_at = now() - interval '650 seconds' WHERE id = $1",
        uuid.UUID(job["id"]),
    )
    answer = await why(client, job["id"])  # aging_seconds defaults to 300: two levels up
    assert (answer["priority"], answer["effective_priority"]) == ("low", "high")
    assert answer["aging_seconds"] == 300 and answer["waited_seconds"] >= 650


@pytest.mark.parametrize("waited", [0, 299, 300, 301, 899, 900, 5000])
@pytest.mark.parametrize("aging", [0, 300, 1])
def test_effective_rank_is_placements_rule(waited: int, aging: float) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    since = now - timedelta(seconds=waited)
    for rank in range(4):
        job = Candidate(uuid.uuid4(), "t", rank, 1, 1, since, since)
        assert effective_rank(rank, since, now, aging) == effective_priority(job, now, aging)


@pytest.mark.parametrize("state", ["alive", "draining"])
@pytest.mark.parametrize("kind", ["t", "other"])
def test_a_workers_fit_is_what_the_scheduler_places_by(state: str, kind: str) -> None:
    """For needs around a worker's capacity and room (0.1 + 0.2 cpu units among them),
    the why panel's fits_now / fits_ever are the scheduler's: the job is placed on the
    worker exactly when fits_now, and only fits_ever workers are candidates at all."""
    capacity = {"cpu_units": 1.0, "memory_mb": 1024, "slots": 2}
    for used_cpu, used_memory, used_slots in [(0.0, 0, 0), (0.7, 512, 1), (0.1 + 0.2, 0, 2)]:
        row = {"id": "w", "state": state, "task_types": ["t"], "capacity": capacity}
        used = {"cpu_units": used_cpu, "memory_mb": used_memory, "slots": used_slots}
        for cpu in (0.3, 0.7, 1.0, 1.5):
            for memory in (512, 1024, 2048):
                judged = judge_worker(row, used, _Need(kind, cpu, memory))
                view = WorkerView("w", 1.0, 1024, 2, frozenset({"t"}), used_cpu, used_memory,
                                  used_slots, accepting=state == "alive")  # fmt: skip
                job = Candidate(uuid.uuid4(), kind, 2, cpu, memory, datetime.now(UTC))
                assert judged.fits_ever == view.fits_when_empty(job), (used, cpu, memory)
                assert judged.fits_now == view.fits_now(job), (used, cpu, memory)
                plan = plan_placements([job], [view], now=datetime.now(UTC), aging_seconds=300)
                assert bool(plan.placements) == judged.fits_now, (used, cpu, memory)
                assert (job.id in plan.unfittable) == (not judged.fits_ever)
