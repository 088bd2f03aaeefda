"""POST /jobs and POST /jobs/batch over HTTP, on a real database and broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import httpx
import pytest

from tests.conftest import SUBMITTER_KEY, VIEWER_KEY, auth


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    edges = await db.fetchval("SELECT count(*) FROM job_dependencies")
    return jobs, edges


async def test_submit_and_read_back(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    r = await client.post(
        "/jobs",
        json={"type": "demo.sleep", "payload": {"seconds": 1}, "priority": "high", "name": "nap"},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "ready"
    assert job["priority"] == "high"
    assert job["resources"] == {"cpu_units": 0.1, "memory_mb": 16}  # the task's defaults
    assert job["retry"]["max_attempts"] == 3
    assert job["attempts"] == 0 and job["worker_id"] is None
    assert job["waiting_reason"].startswith("waiting for free capacity: needs")
    got = await client.get(f"/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json() == job
    row = await db.fetchrow(
        "SELECT status, priority, created_by FROM jobs WHERE id = $1", uuid.UUID(job["id"])
    )
    assert (row["status"], row["priority"]) == ("ready", 1)
    audit = await db.fetch("SELECT action, outcome, job_id FROM audit_log")
    assert [(a["action"], a["outcome"], str(a["job_id"])) for a in audit] == [
        ("job.submit", "ok", job["id"])
    ]


async def test_explicit_options_override_task_defaults(client: httpx.AsyncClient) -> None:
    run_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.post(
        "/jobs",
        json={
            "type": "demo.echo",
            "payload": {"anything": [1, "two"]},
            "resources": {"cpu_units": 1.5},
            "retry": {"max_attempts": 7, "initial_delay_seconds": 0.5},
            "timeout_seconds": 30,
            "run_at": run_at,
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "pending"
    assert job["resources"] == {"cpu_units": 1.5, "memory_mb": 16}
    assert job["retry"] == {
        "max_attempts": 7,
        "initial_delay_seconds": 0.5,
        "backoff_multiplier": 2.0,
        "max_delay_seconds": 300.0,
    }
    assert job["timeout_seconds"] == 30
    assert "delayed" in job["waiting_reason"]


async def test_idempotency_key(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = {"type": "demo.echo", "payload": {"a": 1}, "idempotency_key": "order-42"}
    first = await client.post("/jobs", json=body)
    assert first.status_code == 201
    again = await client.post("/jobs", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    # Defaults made explicit are the same request.
    explicit = {**body, "priority": "normal", "resources": {"cpu_units": 0.1, "memory_mb": 16}}
    assert (await client.post("/jobs", json=explicit)).status_code == 200
    different = await client.post("/jobs", json={**body, "payload": {"a": 2}})
    assert different.status_code == 422
    assert "order-42" in different.json()["detail"]
    assert await counts(db) == (1, 0)


BAD_SUBMISSIONS = [
    ({"type": "no.such.task"}, 422, "unknown task type 'no.such.task'"),
    ({"type": "demo.sleep", "payload": {"seconds": "long"}}, 422, "payload.seconds"),
    ({"type": "demo.sleep", "payload": {}}, 422, "'seconds' is a required property"),
    ({"type": "demo.sleep", "payload": {"seconds": 1, "extra": 1}}, 422, "extra"),
    ({"type": "demo.echo", "priority": "urgent"}, 422, "priority"),
    ({"type": "demo.echo", "resources": {"cpu_units": 0}}, 422, "resources.cpu_units"),
    ({"type": "demo.echo", "resources": {"memory_mb": -5}}, 422, "resources.memory_mb"),
    ({"type": "demo.echo", "retry": {"max_attempts": 0}}, 422, "retry.max_attempts"),
    ({"type": "demo.echo", "timeout_seconds": -1}, 422, "timeout_seconds"),
    ({"type": "demo.echo", "run_at": "2030-01-01T00:00:00"}, 422, "run_at"),
    ({"type": "demo.echo", "run_at": "tomorrow"}, 422, "run_at"),
    ({"type": "demo.echo", "depends_on": ["not-a-uuid"]}, 422, "depends_on"),
    ({"type": "demo.echo", "colour": "red"}, 422, "colour"),
    ({"type": "demo.echo", "payload": [1, 2]}, 422, "payload"),
    ({"payload": {}}, 422, "type"),
    ({"type": "demo.echo", "name": "x" * 201}, 422, "name"),
    ({"type": "demo.echo", "payload": {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, 422, "nested deeper"),
    ({"type": "demo.echo", "depends_on": [str(uuid.uuid4())]}, 404, "no job with id"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message"), BAD_SUBMISSIONS)
async def test_bad_submission_changes_no_job(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict, status: int, message: str
) -> None:
    before = await counts(db)
    r = await client.post("/jobs", json=body)
    assert r.status_code == status, r.text
    assert message in r.text
    assert isinstance(r.json()["detail"], str)
    assert await counts(db) == before
    # ... but it does leave its audit row.
    row = await db.fetchrow(
        "SELECT action, outcome, status_code FROM audit_log ORDER BY id DESC LIMIT 1"
    )
    assert (row["action"], row["status_code"]) == ("job.submit", status)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "demo.echo", "payload": {"x": NaN}}',
        b'{"type": "demo.echo", "payload": {"x": Infinity}}',
        b'{"type": "demo.sleep", "payload": {"seconds": NaN}}',
        b'{"type": "demo.echo", "timeout_seconds": Infinity}',
        b'{"type": "demo.echo"',
        b"",
    ],
)
async def test_non_json_numbers_and_broken_json(
    client: httpx.AsyncClient, db: asyncpg.Connection, raw: bytes
) -> None:
    r = await client.post("/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert await counts(db) == (0, 0)


async def test_auth_401_and_403(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = {"type": "demo.echo"}
    r = await client.post("/jobs", json=body, headers={"Authorization": ""})
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    r = await client.post("/jobs", json=body, headers=auth("wrong-key"))
    assert r.status_code == 401 and "invalid" in r.json()["detail"]
    r = await client.post("/jobs", json=body, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    r = await client.post("/jobs", json=body, headers=auth(VIEWER_KEY))
    assert r.status_code == 403 and "submitter" in r.json()["detail"]
    assert (await client.get("/jobs", headers=auth(VIEWER_KEY))).status_code == 200
    assert (await client.get("/jobs", headers={"Authorization": ""})).status_code == 401
    r = await client.post("/jobs", json=body, headers=auth(SUBMITTER_KEY))
    assert r.status_code == 201
    assert await counts(db) == (1, 0)
    outcomes = [r["outcome"] for r in await db.fetch("SELECT outcome FROM audit_log ORDER BY id")]
    assert outcomes == ["unauthenticated", "unauthenticated", "unauthenticated", "denied", "ok"]


async def test_task_role_requirement(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    from shared.catalog import announce_task_types
    from shared.tasks import TaskContext, TaskRegistry

    reg = TaskRegistry()

    @reg.task("ops.drop_cache", roles={"admin"})
    def drop(ctx: TaskContext, payload: dict) -> None: ...

    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await announce_task_types(session, reg)
        await session.commit()
    r = await client.post("/jobs", json={"type": "ops.drop_cache"}, headers=auth(SUBMITTER_KEY))
    assert r.status_code == 403
    assert "role(s) admin" in r.json()["detail"]
    assert await counts(db) == (0, 0)
    assert (await client.post("/jobs", json={"type": "ops.drop_cache"})).status_code == 201


@pytest.fixture
def small_body_settings(settings):  # type: ignore[no-untyped-def]
    settings.max_body_bytes = 2048
    return settings


async def test_body_too_large_413(small_body_settings, db: asyncpg.Connection) -> None:  # type: ignore[no-untyped-def]
    from services.api.app import create_app
    from tests.conftest import ADMIN_KEY

    app = create_app(small_body_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=auth(ADMIN_KEY)
        ) as c:
            big = {"type": "demo.echo", "payload": {"blob": "x" * 5000}}
            r = await c.post("/jobs", json=big)
            assert r.status_code == 413
            assert "2048" in r.json()["detail"]

            async def chunks():  # no Content-Length: the limit holds while reading
                yield b'{"type": "demo.echo", "payload": {"blob": "'
                for _ in range(10):
                    yield b"x" * 500
                yield b'"}}'

            r = await c.post(
                "/jobs", content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413
            assert (await c.post("/jobs", json={"type": "demo.echo"})).status_code == 201
    assert await counts(db) == (1, 0)
    statuses = [
        r["status_code"]
        for r in await db.fetch(
            "SELECT status_code FROM audit_log WHERE outcome <> 'ok' ORDER BY id"
        )
    ]
    assert statuses == [413, 413]


async def test_dependencies_set_initial_status(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    parent = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    done = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    await db.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", uuid.UUID(done["id"]))
    child = await client.post(
        "/jobs", json={"type": "demo.echo", "depends_on": [parent["id"], done["id"]]}
    )
    assert child.status_code == 201
    assert child.json()["status"] == "blocked"
    assert child.json()["depends_on"] == [parent["id"], done["id"]]
    assert child.json()["waiting_reason"] == "waiting on 1 unfinished dependency"
    only_done = await client.post("/jobs", json={"type": "demo.echo", "depends_on": [done["id"]]})
    assert only_done.json()["status"] == "ready"
    await client.patch(f"/jobs/{parent['id']}/cancel")
    after_cancel = await client.post(
        "/jobs", json={"type": "demo.echo", "depends_on": [parent["id"]]}
    )
    assert after_cancel.status_code == 201
    assert after_cancel.json()["status"] == "failed"
    assert after_cancel.json()["error"] == f"dependency {parent['id']} cancelled"
    unmet = await db.fetchval(
        "SELECT unmet_dependencies FROM jobs WHERE id = $1", uuid.UUID(child.json()["id"])
    )
    assert unmet == 0  # it failed when its parent was cancelled
    edges = await db.fetch("SELECT job_id, depends_on_id FROM job_dependencies")
    assert len(edges) == 4


async def test_batch_dag(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    stored = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    r = await client.post(
        "/jobs/batch",
        json={
            "jobs": [
                {"ref": "report", "type": "demo.echo", "depends_on": ["@train", "@score"]},
                {"ref": "load", "type": "demo.echo"},
                {"ref": "train", "type": "demo.echo", "depends_on": ["@load", stored["id"]]},
                {
                    "ref": "score",
                    "type": "demo.mean",
                    "payload": {"values": [1, 2]},
                    "depends_on": ["@load"],
                },
                {"type": "demo.echo", "run_at": "2999-01-01T00:00:00Z"},
            ]
        },
    )
    assert r.status_code == 201, r.text
    jobs = r.json()["jobs"]
    assert [j["type"] for j in jobs] == [
        "demo.echo",
        "demo.echo",
        "demo.echo",
        "demo.mean",
        "demo.echo",
    ]
    assert [j["status"] for j in jobs] == ["blocked", "ready", "blocked", "blocked", "pending"]
    ids = [j["id"] for j in jobs]
    assert jobs[0]["depends_on"] == [ids[2], ids[3]]
    assert jobs[2]["depends_on"] == [stored["id"], ids[1]]
    unmet = {
        str(r["id"]): r["unmet_dependencies"]
        for r in await db.fetch("SELECT id, unmet_dependencies FROM jobs")
    }
    assert [unmet[i] for i in ids] == [2, 0, 2, 1, 0]
    assert await counts(db) == (6, 5)


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([{"ref": "a", "type": "demo.echo", "depends_on": ["@b"]},
          {"ref": "b", "type": "demo.echo", "depends_on": ["@c"]},
          {"ref": "c", "type": "demo.echo", "depends_on": ["@a"]}], "cycle"),
        ([{"ref": "a", "type": "demo.echo", "depends_on": ["@a"]}], "cycle: a -> a"),
        ([{"ref": "a", "type": "demo.echo", "depends_on": ["@nope"]}], "'@nope' names no job"),
        ([{"ref": "a", "type": "demo.echo"}, {"ref": "a", "type": "demo.echo"}], "'a' is used by"),
        ([{"ref": "a", "type": "demo.echo"}, {"type": "demo.sleep", "payload": {}}], "jobs[1].payload"),
        ([{"ref": "a", "type": "demo.echo"}, {"type": "nope"}], "jobs[1].type"),
        ([{"type": "demo.echo", "depends_on": ["garbage"]}], "neither a job id nor '@ref'"),
        ([], "jobs"),
    ],
)  # fmt: skip
async def test_batch_refused_whole(
    client: httpx.AsyncClient, db: asyncpg.Connection, jobs: list, message: str
) -> None:
    r = await client.post("/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert await counts(db) == (0, 0)


async def test_batch_cycle_names_every_member(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/jobs/batch",
        json={"jobs": [
            {"ref": "ok", "type": "demo.echo"},
            {"ref": "x", "type": "demo.echo", "depends_on": ["@ok", "@y"]},
            {"ref": "y", "type": "demo.echo", "depends_on": ["@x"]},
        ]},
    )  # fmt: skip
    detail = r.json()["detail"]
    assert r.status_code == 422
    assert detail in (
        "depends_on forms a cycle: x -> y -> x",
        "depends_on forms a cycle: y -> x -> y",
    )


async def test_batch_unknown_stored_dependency_404(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    r = await client.post(
        "/jobs/batch",
        json={
            "jobs": [
                {"ref": "a", "type": "demo.echo"},
                {"type": "demo.echo", "depends_on": ["@a", str(uuid.uuid4())]},
            ]
        },
    )
    assert r.status_code == 404
    assert await counts(db) == (0, 0)


async def test_absurdly_nested_body_is_422(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = b'{"type": "demo.echo", "payload": {"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    r = await client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "nested too deeply" in r.json()["detail"]
    assert await counts(db) == (0, 0)


async def test_batch_reuses_an_idempotent_parent(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await client.post(
        "/jobs/batch", json={"jobs": [{"ref": "a", "type": "demo.echo", "idempotency_key": "k1"}]}
    )
    stored = first.json()["jobs"][0]
    again = await client.post(
        "/jobs/batch",
        json={"jobs": [{"ref": "a", "type": "demo.echo", "idempotency_key": "k1"},
                       {"ref": "b", "type": "demo.echo", "depends_on": ["@a"]}]},
    )  # fmt: skip
    assert again.status_code == 201, again.text
    a, b = again.json()["jobs"]
    assert a["id"] == stored["id"]
    assert b["depends_on"] == [stored["id"]] and b["status"] == "blocked"
    assert await counts(db) == (2, 1)


async def test_batch_answer_is_what_the_job_reads_back(client: httpx.AsyncClient) -> None:
    """The batch path inserts with unnest and answers from the rows it built (no
    read-back): each job it answers must be the job GET /jobs/{id} reads from the
    database (a run_at given with an offset comes back in UTC in both)."""
    plus_two = timezone(timedelta(hours=2))
    run_at = (datetime.now(UTC) + timedelta(hours=1)).astimezone(plus_two).isoformat()
    jobs = [
        {"type": "demo.echo", "payload": {"i": 1, "nested": {"ü": [1.5, None, True]}}, "ref": "a"},
        {"type": "demo.echo", "payload": {}, "name": "second", "priority": "low",
         "resources": {"cpu_units": 1.5}, "retry": {"max_attempts": 7}, "timeout_seconds": 30,
         "run_at": run_at, "idempotency_key": "batch-read-back"},
        {"type": "demo.echo", "payload": {"x": "y"}, "depends_on": ["@a"]},
    ]  # fmt: skip
    r = await client.post("/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201, r.text
    answered = r.json()["jobs"]
    assert [j["payload"] for j in answered] == [j["payload"] for j in jobs]
    assert answered[2]["depends_on"] == [answered[0]["id"]]
    assert answered[1]["idempotency_key"] == "batch-read-back"
    for job in answered:
        stored = await client.get(f"/jobs/{job['id']}")
        assert stored.status_code == 200
        assert stored.json() == job


async def test_a_run_at_in_the_past_does_not_jump_the_queue(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Jobs of one priority are taken in run_at order: a time in the past means "now"
    (stored as the submission time), so it cannot go ahead of jobs submitted before it,
    on the single path or in a batch."""
    from shared.jobs import sql

    first = (await client.post("/jobs", json={"type": "demo.echo"})).json()
    past = "2000-01-01T00:00:00Z"
    single = (await client.post("/jobs", json={"type": "demo.echo", "run_at": past})).json()
    r = await client.post(
        "/jobs/batch", json={"jobs": [{"type": "demo.echo", "run_at": "0001-01-02T00:00:00Z"}]}
    )
    batched = r.json()["jobs"][0]
    for job in (single, batched):
        assert job["status"] == "ready"
        assert job["run_at"] >= job["created_at"] >= first["created_at"]
    heads = [str(r["id"]) for r in await db.fetch(sql.CLAIM_READY_HEADS, 10)]
    assert heads == [first["id"], single["id"], batched["id"]]
