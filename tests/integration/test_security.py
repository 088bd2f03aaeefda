"""The route × role matrix of docs/security.md, cell by cell; keys; the audit log."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest

from services.api.app import create_app
from services.api.keys import hash_key
from shared.catalog import announce_task_types
from shared.settings import Settings
from shared.tasks import TaskContext, TaskRegistry
from tests.conftest import ADMIN_KEY, OTHER_SUBMITTER_KEY, ROOT, SUBMITTER_KEY, VIEWER_KEY, auth
from tests.integration.conftest import fail_queued_dependents

ROLES = ("none", "viewer", "submitter", "admin", "revoked")


def matrix() -> list[tuple[str, dict[str, str]]]:
    text = (ROOT / "docs" / "security.md").read_text()
    table = text.split("### Route × role matrix", 1)[1]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        rows.append((cells[0].replace("`", ""), dict(zip(ROLES, cells[1:], strict=True))))
    assert len(rows) >= 17, "the matrix in docs/security.md was not found"
    return rows


MATRIX = [row for row in matrix() if not row[0].startswith("WS ")]

admin_only = TaskRegistry()


@admin_only.task("ops.admin_only", roles={"admin"})
def drop_caches(ctx: TaskContext, payload: dict) -> None: ...


Request = Callable[[httpx.AsyncClient, dict[str, str], str], Awaitable[httpx.Response]]


async def new_job(client: httpx.AsyncClient, key: str = ADMIN_KEY) -> str:
    r = await client.post("/jobs", json={"type": "demo.echo"}, headers=auth(key))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def own_job_cancel(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    owner = {"submitter": SUBMITTER_KEY, "admin": ADMIN_KEY}.get(role, SUBMITTER_KEY)
    return await c.patch(f"/jobs/{await new_job(c, owner)}/cancel", headers=h)


async def others_job_cancel(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    return await c.patch(f"/jobs/{await new_job(c, OTHER_SUBMITTER_KEY)}/cancel", headers=h)


async def revoke_fresh_key(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    made = await c.post(
        "/api-keys", json={"role": "viewer", "label": "victim"}, headers=auth(ADMIN_KEY)
    )
    return await c.delete(f"/api-keys/{made.json()['id']}", headers=h)


async def own_job_retry(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    owner = {"submitter": SUBMITTER_KEY, "admin": ADMIN_KEY}.get(role, SUBMITTER_KEY)
    job = await new_job(c, owner)
    assert (await c.patch(f"/jobs/{job}/cancel", headers=auth(owner))).status_code == 200
    return await c.post(f"/jobs/{job}/retry", headers=h)


async def others_job_retry(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    job = await new_job(c, OTHER_SUBMITTER_KEY)
    assert (
        await c.patch(f"/jobs/{job}/cancel", headers=auth(OTHER_SUBMITTER_KEY))
    ).status_code == 200
    return await c.post(f"/jobs/{job}/retry", headers=h)


async def new_schedule(c: httpx.AsyncClient) -> str:
    r = await c.post(
        "/schedules",
        json={
            "name": f"s-{uuid.uuid4().hex[:8]}",
            "cron": "0 3 * * *",
            "job": {"type": "demo.echo"},
        },
        headers=auth(ADMIN_KEY),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def schedule_create(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    body = {
        "name": f"s-{uuid.uuid4().hex[:8]}",
        "cron": "*/5 * * * *",
        "job": {"type": "demo.echo"},
    }
    return await c.post("/schedules", json=body, headers=h)


async def schedule_patch(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    return await c.patch(f"/schedules/{await new_schedule(c)}", json={"paused": True}, headers=h)


async def schedule_delete(c: httpx.AsyncClient, h: dict[str, str], role: str) -> httpx.Response:
    return await c.delete(f"/schedules/{await new_schedule(c)}", headers=h)


REQUESTS: dict[str, Request] = {
    "POST /jobs/{id}/retry (own cancelled job)": own_job_retry,
    "POST /jobs/{id}/retry (another key's job)": others_job_retry,
    "POST /schedules": schedule_create,
    "GET /schedules": lambda c, h, r: c.get("/schedules", headers=h),
    "PATCH /schedules/{id}": schedule_patch,
    "DELETE /schedules/{id}": schedule_delete,
    "GET /healthz": lambda c, h, r: c.get("/healthz", headers=h),
    "GET /metrics": lambda c, h, r: c.get("/metrics", headers=h),
    "GET /jobs": lambda c, h, r: c.get("/jobs", headers=h),
    "GET /jobs/{id}": lambda c, h, r: _get_job(c, h, ""),
    "GET /jobs/{id}/logs": lambda c, h, r: _get_job(c, h, "/logs"),
    "GET /jobs/{id}/why": lambda c, h, r: _get_job(c, h, "/why"),
    "POST /jobs": lambda c, h, r: c.post("/jobs", json={"type": "demo.echo"}, headers=h),
    'POST /jobs (task with roles={"admin"})': lambda c, h, r: c.post(
        "/jobs", json={"type": "ops.admin_only"}, headers=h
    ),
    "POST /jobs/batch": lambda c, h, r: c.post(
        "/jobs/batch", json={"jobs": [{"ref": "a", "type": "demo.echo"}]}, headers=h
    ),
    "POST /jobs/bulk (dry run)": lambda c, h, r: c.post(
        "/jobs/bulk",
        json={"action": "cancel", "filter": {"ids": [str(uuid.uuid4())]}, "dry_run": True},
        headers=h,
    ),
    "PATCH /jobs/{id}/cancel (own job)": own_job_cancel,
    "PATCH /jobs/{id}/cancel (another key's job)": others_job_cancel,
    "GET /workers": lambda c, h, r: c.get("/workers", headers=h),
    "GET /stats": lambda c, h, r: c.get("/stats", headers=h),
    "POST /api-keys": lambda c, h, r: c.post(
        "/api-keys", json={"role": "viewer", "label": "new"}, headers=h
    ),
    "GET /api-keys": lambda c, h, r: c.get("/api-keys", headers=h),
    "GET /api-keys/me": lambda c, h, r: c.get("/api-keys/me", headers=h),
    "DELETE /api-keys/{id}": revoke_fresh_key,
    "GET /audit": lambda c, h, r: c.get("/audit", headers=h),
}


async def _get_job(c: httpx.AsyncClient, h: dict[str, str], suffix: str) -> httpx.Response:
    return await c.get(f"/jobs/{await new_job(c)}{suffix}", headers=h)


@pytest.mark.parametrize(("route", "expected"), MATRIX, ids=[r for r, _ in MATRIX])
async def test_route_role_cell(
    app: object,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    route: str,
    expected: dict[str, str],
) -> None:
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await announce_task_types(session, admin_only)
        await session.commit()
    made = await client.post("/api-keys", json={"role": "submitter", "label": "soon revoked"})
    revoked_key = made.json()["key"]
    assert (await client.delete(f"/api-keys/{made.json()['id']}")).status_code == 204
    keys = {
        "viewer": VIEWER_KEY,
        "submitter": SUBMITTER_KEY,
        "admin": ADMIN_KEY,
        "revoked": revoked_key,
    }
    send = REQUESTS[route]
    failures = []
    for role in ROLES:
        headers = auth(keys[role]) if role in keys else {"Authorization": ""}
        jobs_before = await db.fetchval("SELECT count(*) FROM jobs")
        response = await send(client, headers, role)
        if str(response.status_code) != expected[role]:
            failures.append(
                f"{role}: expected {expected[role]}, got {response.status_code} {response.text[:200]}"
            )
        if response.status_code in (401, 403) and route.split(" (")[0] in (
            "POST /jobs",
            "POST /jobs/batch",
        ):
            assert await db.fetchval("SELECT count(*) FROM jobs") == jobs_before, (
                f"{role} changed jobs"
            )
    assert not failures, f"{route}: " + "; ".join(failures)


async def test_keys_created_shown_once_listed_without_secret_revoked_at_once(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    r = await client.post("/api-keys", json={"role": "submitter", "label": "ci robot"})
    assert r.status_code == 201
    created = r.json()
    assert re.fullmatch(r"sy_[A-Za-z0-9_-]{43}", created["key"])
    stored = await db.fetchrow(
        "SELECT key_hash, role, label FROM api_keys WHERE id = $1", uuid.UUID(created["id"])
    )
    assert created["key"] not in str(dict(stored)) and len(stored["key_hash"]) == 64
    listed = (await client.get("/api-keys")).json()
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "key" not in mine and mine["label"] == "ci robot" and mine["source"] == "api"
    assert (
        await client.post("/jobs", json={"type": "demo.echo"}, headers=auth(created["key"]))
    ).status_code == 201
    assert (await client.delete(f"/api-keys/{created['id']}")).status_code == 204
    refused = await client.get("/jobs", headers=auth(created["key"]))
    assert refused.status_code == 401
    assert (await client.delete(f"/api-keys/{created['id']}")).status_code == 404
    assert (await client.post("/api-keys", json={"role": "root", "label": "x"})).status_code == 422
    assert (await client.post("/api-keys", json={"role": "viewer"})).status_code == 422
    assert created["id"] not in [k["id"] for k in (await client.get("/api-keys")).json()]
    assert created["id"] in [
        k["id"] for k in (await client.get("/api-keys", params={"include_revoked": True})).json()
    ]


async def test_audit_rows_equal_mutating_requests(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A scripted session: every mutating request leaves exactly one request row."""
    job = await new_job(client)
    script: list[tuple[str, str, dict | None, dict[str, str], int]] = [
        ("POST", "/jobs", {"type": "demo.echo"}, auth(SUBMITTER_KEY), 201),
        ("POST", "/jobs", {"type": "demo.echo"}, auth(VIEWER_KEY), 403),
        ("POST", "/jobs", {"type": "demo.echo"}, {"Authorization": ""}, 401),
        ("POST", "/jobs", {"type": "nope"}, auth(ADMIN_KEY), 422),
        (
            "POST",
            "/jobs",
            {"type": "demo.echo", "depends_on": [str(uuid.uuid4())]},
            auth(ADMIN_KEY),
            404,
        ),
        (
            "POST",
            "/jobs/batch",
            {"jobs": [{"ref": "a", "type": "demo.echo", "depends_on": ["@a"]}]},
            auth(ADMIN_KEY),
            422,
        ),
        ("PATCH", f"/jobs/{job}/cancel", None, auth(OTHER_SUBMITTER_KEY), 403),
        ("PATCH", f"/jobs/{job}/cancel", None, auth(ADMIN_KEY), 200),
        ("PATCH", f"/jobs/{job}/cancel", None, auth(ADMIN_KEY), 409),
        ("PATCH", f"/jobs/{uuid.uuid4()}/cancel", None, auth(ADMIN_KEY), 404),
        ("POST", "/api-keys", {"role": "viewer", "label": "x"}, auth(SUBMITTER_KEY), 403),
        ("POST", "/api-keys", {"role": "viewer", "label": "x"}, auth(ADMIN_KEY), 201),
        ("DELETE", f"/api-keys/{uuid.uuid4()}", None, auth(ADMIN_KEY), 404),
    ]
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    for method, path, body, headers, status in script:
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == status, (method, path, r.status_code, r.text)
    rows = await db.fetch(
        "SELECT action, outcome, status_code, actor, role, client, job_id FROM audit_log ORDER BY id OFFSET $1",
        before,
    )
    assert len(rows) == len(script)
    assert [r["status_code"] or 200 for r in rows] == [s if s >= 400 else 200 for *_, s in script]
    assert [r["action"] for r in rows][:6] == ["job.submit"] * 5 + ["job.batch_submit"]
    assert all(r["client"] for r in rows if r["actor"])  # the caller's address is kept
    assert rows[7]["job_id"] == uuid.UUID(job) and rows[7]["outcome"] == "ok"
    # GET /audit pages newest first and filters.
    page = (await client.get("/audit", params={"limit": 5})).json()
    assert len(page["items"]) == 5 and page["next_cursor"]
    ids = [i["id"] for i in page["items"]]
    assert ids == sorted(ids, reverse=True)
    nxt = (await client.get("/audit", params={"limit": 5, "cursor": page["next_cursor"]})).json()
    assert max(i["id"] for i in nxt["items"]) < min(ids)
    cancels = (await client.get("/audit", params={"action": "job.cancel", "job_id": job})).json()[
        "items"
    ]
    assert [c["outcome"] for c in cancels] == ["conflict", "ok", "denied"]


async def test_retry_with_dependents_touches_only_the_submitters_own_jobs(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A submitter's retry with dependents=true may not re-run another key's jobs: it
    is refused as a whole (403, naming the job) and changes nothing."""
    mine = auth(SUBMITTER_KEY)
    parent = (
        await client.post(
            "/jobs", json={"type": "demo.echo", "run_at": "2999-01-01T00:00:00Z"}, headers=mine
        )
    ).json()["id"]
    child = (
        await client.post(
            "/jobs",
            json={"type": "demo.echo", "depends_on": [parent]},
            headers=auth(OTHER_SUBMITTER_KEY),
        )
    ).json()["id"]
    assert (await client.patch(f"/jobs/{parent}/cancel", headers=mine)).status_code == 200
    before = await db.fetch("SELECT id, status, error FROM jobs ORDER BY id")
    assert {str(r["id"]): r["status"] for r in before} == {parent: "cancelled", child: "failed"}
    r = await client.post(f"/jobs/{parent}/retry?dependents=true", headers=mine)
    assert r.status_code == 403, r.text
    assert child in r.json()["detail"] and "submitted by another key" in r.json()["detail"]
    assert await db.fetch("SELECT id, status, error FROM jobs ORDER BY id") == before
    # Without dependents the submitter's own job is retried as before.
    r = await client.post(f"/jobs/{parent}/retry", headers=mine)
    assert r.status_code == 200 and r.json()["status"] == "ready"


async def test_a_key_learns_who_it_is_and_which_jobs_are_its_own(
    client: httpx.AsyncClient,
) -> None:
    me = await client.get("/api-keys/me", headers=auth(SUBMITTER_KEY))
    assert me.status_code == 200 and me.json()["role"] == "submitter"
    assert set(me.json()) == {"id", "role", "label"}, "never the secret or more"
    job = await client.post("/jobs", json={"type": "demo.echo"}, headers=auth(SUBMITTER_KEY))
    assert job.json()["created_by"] == me.json()["id"]
    viewer = await client.get("/api-keys/me", headers=auth(VIEWER_KEY))
    assert viewer.json()["role"] == "viewer" and viewer.json()["id"] != me.json()["id"]


async def test_metrics_need_a_valid_key_when_the_setting_asks_for_one(settings: Settings) -> None:
    locked = create_app(settings.model_copy(update={"metrics_require_key": True}))
    async with locked.router.lifespan_context(locked):
        transport = httpx.ASGITransport(app=locked)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/metrics")).status_code == 401
            bad = await c.get("/metrics", headers=auth("sy_not_a_key"))
            assert bad.status_code == 401
            ok = await c.get("/metrics", headers=auth(VIEWER_KEY))
            assert ok.status_code == 200
            assert "switchyard_" in ok.text


async def test_a_retry_with_more_dependents_than_a_call_may_requeue_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing without the bound: the whole chain was requeued in one transaction
    (a helper's 10,000-deep chain held it, and a parent's row lock, for 75 s)."""
    chain = [{"ref": "0", "type": "demo.echo", "run_at": "2999-01-01T00:00:00Z"}] + [
        {"ref": str(i), "type": "demo.echo", "depends_on": [f"@{i - 1}"]} for i in range(1, 1002)
    ]
    r = await client.post("/jobs/batch", json={"jobs": chain})
    assert r.status_code == 201, r.text
    root = r.json()["jobs"][0]["id"]
    assert (await client.patch(f"/jobs/{root}/cancel")).status_code == 200
    await fail_queued_dependents(db)  # the rest of the cascade, as the scheduler would
    before = await db.fetch("SELECT id, status FROM jobs ORDER BY id")
    assert sum(row["status"] == "failed" for row in before) == 1001
    r = await client.post(f"/jobs/{root}/retry?dependents=true")
    assert r.status_code == 422, r.text
    assert "more than 1000 jobs" in r.json()["detail"] and "POST /jobs/bulk" in r.json()["detail"]
    assert await db.fetch("SELECT id, status FROM jobs ORDER BY id") == before


async def test_the_last_active_admin_key_cannot_be_revoked(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing (an attacking helper): an admin revoked the only admin key, 204, and
    nobody could manage keys again but by hand in the database."""
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE role = 'admin' "
                     "AND key_hash <> $1", hash_key(ADMIN_KEY))  # fmt: skip
    first = (await client.get("/api-keys/me")).json()["id"]
    second = (await client.post("/api-keys", json={"role": "admin", "label": "b"})).json()
    as_second = {"Authorization": f"Bearer {second['key']}"}
    assert (await client.delete(f"/api-keys/{first}", headers=as_second)).status_code == 204
    refused = await client.delete(f"/api-keys/{second['id']}", headers=as_second)
    assert refused.status_code == 409 and "last active admin key" in refused.json()["detail"]
    assert (await client.get("/api-keys", headers=as_second)).status_code == 200  # still admin
