"""GET /jobs, GET /jobs/{id}, PATCH /jobs/{id}/cancel, GET /jobs/{id}/logs, /healthz."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from shared.broker import Broker, Delivery
from shared.messages import JobCancel, JobStateChanged, JobSubmitted
from shared.settings import Settings
from tests.conftest import OTHER_SUBMITTER_KEY, SUBMITTER_KEY, VIEWER_KEY, auth, wait_for


async def submit(client: httpx.AsyncClient, **body: object) -> dict:
    r = await client.post("/jobs", json={"type": "demo.echo", **body})
    assert r.status_code == 201, r.text
    return r.json()


async def test_get_unknown_and_malformed_id(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/jobs/{uuid.uuid4()}")
    assert r.status_code == 404 and "no job with id" in r.json()["detail"]
    assert (await client.get("/jobs/not-a-uuid")).status_code == 422


async def test_list_filters_and_keyset_pagination(client: httpx.AsyncClient) -> None:
    made = [await submit(client, priority=p) for p in ("low", "high", "low", "normal", "low")]
    await submit(client, type="demo.sleep", payload={"seconds": 1})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "type": "demo.echo"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/jobs", params=params)).json()
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [j["id"] for j in reversed(made)]  # newest first, each once
    low = (await client.get("/jobs", params={"priority": "low"})).json()["items"]
    assert {j["id"] for j in low} == {made[0]["id"], made[2]["id"], made[4]["id"]}
    ready = (await client.get("/jobs", params={"status": ["ready", "blocked"]})).json()["items"]
    assert len(ready) == 6
    assert (await client.get("/jobs", params={"status": "failed"})).json()["items"] == []
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert (await client.get("/jobs", params={"created_after": future})).json()["items"] == []
    assert len((await client.get("/jobs", params={"created_before": future})).json()["items"]) == 6


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"status": "sleeping"}, {"priority": "urgent"},
     {"cursor": "garbage!!"}, {"created_after": "yesterday"}],
)  # fmt: skip
async def test_list_bad_query_422(client: httpx.AsyncClient, params: dict) -> None:
    r = await client.get("/jobs", params=params)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str)


async def test_cancel_waiting_job_fails_its_dependents(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    root = await submit(client)
    child = await submit(client, depends_on=[root["id"]])
    grandchild = await submit(client, depends_on=[child["id"]])
    bystander = await submit(client)
    r = await client.patch(f"/jobs/{root['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    c = (await client.get(f"/jobs/{child['id']}")).json()
    g = (await client.get(f"/jobs/{grandchild['id']}")).json()
    assert (c["status"], c["error"]) == ("failed", f"dependency {root['id']} cancelled")
    assert (g["status"], g["error"]) == ("failed", f"dependency {child['id']} failed")
    assert (await client.get(f"/jobs/{bystander['id']}")).json()["status"] == "ready"
    again = await client.patch(f"/jobs/{root['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert (await client.patch(f"/jobs/{uuid.uuid4()}/cancel")).status_code == 404


async def test_cancel_running_job_flags_it(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await submit(client)
    await db.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, worker_id = 'w1' WHERE id = $1",
        uuid.UUID(job["id"]),
    )
    r = await client.patch(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)


async def test_cancel_roles(client: httpx.AsyncClient) -> None:
    mine = await submit(client, name="mine")
    r = await client.post("/jobs", json={"type": "demo.echo"}, headers=auth(SUBMITTER_KEY))
    theirs = r.json()
    denied = await client.patch(f"/jobs/{theirs['id']}/cancel", headers=auth(OTHER_SUBMITTER_KEY))
    assert denied.status_code == 403 and "own jobs" in denied.json()["detail"]
    assert (
        await client.patch(f"/jobs/{theirs['id']}/cancel", headers=auth(VIEWER_KEY))
    ).status_code == 403
    assert (await client.get(f"/jobs/{theirs['id']}")).json()["status"] == "ready"
    own = await client.patch(f"/jobs/{theirs['id']}/cancel", headers=auth(SUBMITTER_KEY))
    assert own.status_code == 200
    assert (await client.patch(f"/jobs/{mine['id']}/cancel")).status_code == 200  # admin


async def test_logs(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job = await submit(client)
    job_id = uuid.UUID(job["id"])
    empty = await client.get(f"/jobs/{job['id']}/logs")
    assert empty.status_code == 200 and empty.json() == {
        "executions": [],
        "lines": [],
        "next_cursor": None,
    }
    await db.execute(
        "INSERT INTO job_executions (job_id, attempt, worker_id, status, started_at, finished_at,"
        " duration_seconds, error) VALUES ($1, 1, 'w1', 'failed', now(), now(), 0.5, 'boom')",
        job_id,
    )
    await db.executemany(
        "INSERT INTO job_logs (job_id, attempt, seq, ts, level, message) VALUES ($1, $2, $3, now(), 'info', $4)",
        [(job_id, 2, 1, "second attempt"), (job_id, 1, 2, "b"), (job_id, 1, 1, "a")],
    )
    logs = (await client.get(f"/jobs/{job['id']}/logs")).json()
    assert [m["message"] for m in logs["lines"]] == ["a", "b", "second attempt"]
    assert [(e["attempt"], e["status"], e["error"]) for e in logs["executions"]] == [
        (1, "failed", "boom")
    ]
    assert (await client.get(f"/jobs/{uuid.uuid4()}/logs")).status_code == 404


async def test_healthz_needs_no_key_and_reports_broker(app: object) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:  # type: ignore[arg-type]
        r = await c.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}
        await app.state.broker.close()  # type: ignore[attr-defined]
        r = await c.get("/healthz")
        assert r.status_code == 503 and r.json()["broker"] == "unavailable"


async def test_database_outage_is_503_not_a_stack_trace(
    client: httpx.AsyncClient, database_url: str
) -> None:
    await submit(client)
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        # Take the database away under the running API (its pooled connections die).
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        r = await client.post("/jobs", json={"type": "demo.echo"})
        assert r.status_code == 503, r.text
        assert "database is unavailable" in r.json()["detail"]
        r = await client.get("/jobs")
        assert r.status_code == 503
        health = await client.get("/healthz")
        assert health.status_code == 503 and health.json()["database"].startswith("unavailable")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    # ...and it recovers by itself.
    r = await client.post("/jobs", json={"type": "demo.echo"})
    assert r.status_code == 201


async def test_committed_changes_are_published(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    received: list[tuple[str, object]] = []
    got = asyncio.Event()

    async def collect(delivery: Delivery) -> None:
        received.append((delivery.routing_key, delivery.message))
        await delivery.ack()
        got.set()

    broker = Broker(settings.amqp_url, settings.namespace, name="test-listener")
    await broker.connect()
    try:
        await broker.consume(
            f"{settings.namespace}.test-listener",
            ["job.state.#", "job.submitted.#", "job.cancel.#"],
            collect,
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        job = await submit(client, priority="critical")
        running = await submit(client)
        await client.patch(f"/jobs/{job['id']}/cancel")

        async def all_there() -> bool:
            return len(received) >= 5

        await wait_for(all_there, timeout=10, what="5 published messages")
        by_key = {key: msg for key, msg in received}
        submitted = by_key[f"job.submitted.{job['id']}"]
        assert isinstance(submitted, JobSubmitted) and submitted.priority == "critical"
        states = [
            m for k, m in received if isinstance(m, JobStateChanged) and str(m.job_id) == job["id"]
        ]
        assert [(s.old_status, s.new_status) for s in states] == [
            (None, "ready"),
            ("ready", "cancelled"),
        ]
        assert f"job.state.{running['id']}" in by_key
        assert not any(
            isinstance(m, JobCancel) for m in by_key.values()
        )  # not running: no worker told
    finally:
        await broker.close()
