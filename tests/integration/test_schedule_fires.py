"""A schedule's fire always creates its own job, owned by the schedule's creator: no
client can pre-empt, hijack or pause a fire through the idempotency key it will use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from shared.catalog import TaskCatalog
from shared.jobs.prepare import Limits
from shared.schedules import fire_due_schedules
from shared.settings import Settings
from tests.conftest import SUBMITTER_KEY, auth

YEARLY = "0 0 1 1 *"


async def _yearly_schedule(client: httpx.AsyncClient, db: asyncpg.Connection) -> tuple[str, str]:
    """An admin's schedule whose fire is due now, for this year's 1 January (UTC); its
    id and the idempotency key that fire uses."""
    made = await client.post(
        "/schedules",
        json={"name": "new-year", "cron": YEARLY, "timezone": "UTC",
              "job": {"type": "demo.echo", "payload": {"greeting": "happy new year"}}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    schedule_id = made.json()["id"]
    fire = datetime(datetime.now(UTC).year, 1, 1, tzinfo=UTC)
    await db.execute(
        "UPDATE schedules SET next_run_at = $2 WHERE id = $1", uuid.UUID(schedule_id), fire
    )
    return schedule_id, f"schedule:{schedule_id}:{fire.isoformat()}"


async def _fire(app: object, settings: Settings) -> None:
    async with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        await fire_due_schedules(
            session, catalog=TaskCatalog(), limits=Limits.from_settings(settings)
        )
        await session.commit()


@pytest.mark.parametrize(
    "payload",
    [{"greeting": "happy new year"}, {"greeting": "mine now"}],
    ids=["same request: would be reused", "other request: would pause the schedule"],
)
async def test_a_submitter_cannot_preempt_or_pause_a_fire_with_its_key(
    app: object,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    settings: Settings,
    payload: dict,
) -> None:
    schedule_id, fire_key = await _yearly_schedule(client, db)
    squat = await client.post(
        "/jobs",
        json={"type": "demo.echo", "payload": payload, "idempotency_key": fire_key},
        headers=auth(SUBMITTER_KEY),
    )
    assert squat.status_code == 422, squat.text
    assert "reserved for schedule fires" in squat.json()["detail"]
    batch = await client.post(
        "/jobs/batch",
        json={"jobs": [{"ref": "a", "type": "demo.echo", "idempotency_key": fire_key}]},
        headers=auth(SUBMITTER_KEY),
    )
    assert batch.status_code == 422, batch.text
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0

    await _fire(app, settings)
    schedule = await db.fetchrow(
        "SELECT paused, last_job_id, created_by FROM schedules WHERE id = $1",
        uuid.UUID(schedule_id),
    )
    assert schedule["paused"] is False
    fired = await db.fetchrow("SELECT * FROM jobs WHERE idempotency_key = $1", fire_key)
    assert fired is not None and fired["id"] == schedule["last_job_id"]
    assert fired["created_by"] == schedule["created_by"]  # the admin who made the schedule
    assert fired["payload"] == '{"greeting": "happy new year"}'


async def test_the_fire_is_owned_by_the_schedules_creator(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    schedule_id, fire_key = await _yearly_schedule(client, db)
    await _fire(app, settings)
    fired = await db.fetchrow(
        "SELECT id, created_by FROM jobs WHERE idempotency_key = $1", fire_key
    )
    creator = await db.fetchval(
        "SELECT created_by FROM schedules WHERE id = $1", uuid.UUID(schedule_id)
    )
    assert fired["created_by"] == creator and creator != f"schedule:{schedule_id}"
    audit = await db.fetchrow(
        "SELECT actor, client FROM audit_log WHERE action = 'job.submit' AND job_id = $1",
        fired["id"],
    )
    assert (audit["actor"], audit["client"]) == (creator, f"schedule:{schedule_id}")
    # Its creator (an admin) can cancel it like any of its own jobs; a submitter cannot.
    other = await client.patch(f"/jobs/{fired['id']}/cancel", headers=auth(SUBMITTER_KEY))
    assert other.status_code == 403, other.text


async def test_a_submitter_can_neither_pause_resume_nor_delete_a_schedule(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    schedule_id, _ = await _yearly_schedule(client, db)
    before = await db.fetchrow("SELECT * FROM schedules WHERE id = $1", uuid.UUID(schedule_id))
    as_submitter = auth(SUBMITTER_KEY)
    for paused in (True, False):
        r = await client.patch(
            f"/schedules/{schedule_id}", json={"paused": paused}, headers=as_submitter
        )
        assert r.status_code == 403, r.text
    r = await client.delete(f"/schedules/{schedule_id}", headers=as_submitter)
    assert r.status_code == 403, r.text
    assert (
        await db.fetchrow("SELECT * FROM schedules WHERE id = $1", uuid.UUID(schedule_id)) == before
    )


async def test_a_schedule_whose_creators_key_was_revoked_is_paused_not_fired(
    app: object, client: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    """Seen failing (an attacking helper): a revoked admin key's schedule kept firing
    jobs as that key, with an admin's rights."""
    temp = (await client.post("/api-keys", json={"role": "admin", "label": "temp"})).json()
    as_temp = {"Authorization": f"Bearer {temp['key']}"}
    made = await client.post("/schedules", headers=as_temp, json={
        "name": "orphan", "cron": YEARLY, "job": {"type": "demo.echo"}})  # fmt: skip
    assert made.status_code == 201, made.text
    await db.execute("UPDATE schedules SET next_run_at = now() - interval '1 minute'")
    assert (await client.delete(f"/api-keys/{temp['id']}")).status_code == 204
    await _fire(app, settings)
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT paused FROM schedules") is True
    assert (
        await db.fetchval("SELECT outcome FROM audit_log WHERE action = 'schedule.pause'")
        == "owner_revoked"
    )
