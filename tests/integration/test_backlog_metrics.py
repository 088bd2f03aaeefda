"""GET /metrics reports the ready backlog by task type (parked ones labelled) and the
fleet's free capacity, and the backlog is counted from the ready jobs' own indexes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from services.api.metrics import READY_JOBS_BY_TYPE

# The count's time on a large table is bounded (under a second): alone, not beside
# another test's services.
pytestmark = pytest.mark.serial

KEDA_POSTGRESQL = (
    Path(__file__).resolve().parents[2]
    / "deploy/kubernetes/components/keda-postgresql/scaledobject.yaml"
)


def keda_postgresql_query() -> str:
    """The query KEDA's postgresql trigger runs (deploy/kubernetes)."""
    for o in yaml.safe_load_all(KEDA_POSTGRESQL.read_text()):
        if o["kind"] == "ScaledObject":
            (trigger,) = o["spec"]["triggers"]
            return str(trigger["metadata"]["query"])
    raise AssertionError("no ScaledObject in " + str(KEDA_POSTGRESQL))


def samples(text: str) -> dict[str, float]:
    """Exposition lines ``name{labels} value`` as ``{"name{labels}": value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def add_worker(
    db: asyncpg.Connection, worker_id: str, *, state: str, heartbeat_ago: float = 0
) -> None:
    await db.execute(
        """INSERT INTO workers (id, state, cpu_units, memory_mb, slots,
                                allocated_cpu_units, allocated_memory_mb, allocated_slots,
                                last_heartbeat_at)
           VALUES ($1, $2, 4, 4096, 8, 1.5, 1000, 3, now() - make_interval(secs => $3))""",
        worker_id, state, heartbeat_ago,
    )  # fmt: skip


async def test_ready_jobs_by_type_and_free_capacity(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    jobs = [{"type": "demo.echo", "payload": {"i": i}} for i in range(5)]
    jobs += [{"type": "demo.sleep", "payload": {"seconds": 0}} for _ in range(3)]
    jobs += [{"type": "demo.echo", "payload": {}, "run_at": "2999-01-01T00:00:00Z"}]  # pending
    r = await client.post("/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201, r.text
    # Two sleeps fit no live worker: the scheduler would park them (shared.jobs.parking).
    await db.execute(
        "UPDATE jobs SET parked = true WHERE id IN "
        "(SELECT id FROM jobs WHERE type = 'demo.sleep' ORDER BY id LIMIT 2)"
    )
    await add_worker(db, "w-alive-1", state="alive")
    await add_worker(db, "w-alive-2", state="alive")
    await add_worker(db, "w-draining", state="draining")  # takes no work: no free room
    await add_worker(db, "w-dead", state="alive", heartbeat_ago=3600)  # past its lease

    r = await client.get("/metrics")
    assert r.status_code == 200
    m = samples(r.text)
    assert m['switchyard_ready_jobs{parked="false",task_type="demo.echo"}'] == 5
    assert m['switchyard_ready_jobs{parked="false",task_type="demo.sleep"}'] == 1
    assert m['switchyard_ready_jobs{parked="true",task_type="demo.sleep"}'] == 2
    assert sum(v for k, v in m.items() if k.startswith("switchyard_ready_jobs{")) == 8
    assert m["switchyard_free_cpu_units"] == 2 * (4 - 1.5)
    assert m["switchyard_free_memory_mb"] == 2 * (4096 - 1000)
    assert m["switchyard_free_slots"] == 2 * (8 - 3)

    # A job that leaves ready leaves the gauge at the next scrape (no stale label).
    await db.execute("UPDATE jobs SET status = 'cancelled' WHERE type = 'demo.sleep'")
    m = samples((await client.get("/metrics")).text)
    assert not [k for k in m if "demo.sleep" in k and k.startswith("switchyard_ready_jobs")]
    assert m['switchyard_ready_jobs{parked="false",task_type="demo.echo"}'] == 5


async def test_backlog_count_reads_only_the_backlog_on_a_large_table(
    db: asyncpg.Connection,
) -> None:
    """200,000 jobs, 6,000 of them ready: the metric reads the ready queue and the partial
    index of the parked jobs, never the finished jobs (the route is scraped every 15 s)."""
    await db.execute(
        """
        INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb,
                          max_attempts, retry_initial_delay, retry_backoff, retry_max_delay,
                          run_at, parked, finished_at)
        SELECT gen_random_uuid(), 'type-' || (n % 7), s.status, n % 4, '{}'::jsonb, 1, 64,
               3, 1, 2, 300, now(), s.status = 'ready' AND n % 100 = 0,
               CASE WHEN s.status = 'completed' THEN now() END
        FROM generate_series(1, 200000) AS n,
             LATERAL (SELECT CASE WHEN n % 100 < 3 THEN 'ready' ELSE 'completed' END AS status) s
        """
    )
    await db.execute("VACUUM ANALYZE jobs, ready_jobs")
    (plan,) = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + READY_JOBS_BY_TYPE))

    def scans(node: dict) -> list[tuple[str, str | None, str | None]]:
        found = []
        if "Scan" in node["Node Type"]:
            found.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    # The claimable half reads the ready queue (the backlog alone), the parked half the
    # partial index of the parked jobs: neither reads the history in jobs.
    found = scans(plan["Plan"])
    assert ("Index Only Scan", "jobs", "jobs_parked_idx") in found
    assert [s for s in found if s[1] == "jobs"] == [("Index Only Scan", "jobs", "jobs_parked_idx")]
    assert [s[1] for s in found if s[1] != "jobs"] == ["ready_jobs"], found
    # KEDA's alternative trigger counts the same claimable jobs from the same queue.
    keda = keda_postgresql_query()
    (keda_plan,) = json.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + keda))
    assert [s[1] for s in scans(keda_plan["Plan"])] == ["ready_jobs"]
    assert await db.fetchval(keda) == 4000
    started = time.perf_counter()
    rows = await db.fetch(READY_JOBS_BY_TYPE)
    took = time.perf_counter() - started
    assert sum(r["n"] for r in rows) == 6000
    assert sum(r["n"] for r in rows if r["parked"]) == 2000
    print(f"ready backlog of 6,000 among 200,000 jobs counted in {took * 1000:.1f} ms")
    assert took < 1.0
