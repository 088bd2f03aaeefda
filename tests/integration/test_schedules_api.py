"""POST/GET/PATCH/DELETE /schedules: validation and effects."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"cron": "every day", "job": {"type": "demo.echo"}},
            "cron: 'every day' is not a cron expression",
        ),
        ({"cron": "61 * * * *", "job": {"type": "demo.echo"}}, "is not a cron expression"),
        ({"cron": "0 0 30 2 *", "job": {"type": "demo.echo"}}, "cron: '0 0 30 2 *' never fires"),
        (
            {"cron": "* * * * *", "timezone": "Mars/Olympus", "job": {"type": "demo.echo"}},
            "timezone: 'Mars/Olympus'",
        ),
        # The host's zone, whatever it is, and times croniter would pick by chance
        # (seen failing: both were stored).
        (
            {"cron": "* * * * *", "timezone": "localtime", "job": {"type": "demo.echo"}},
            "timezone: 'localtime' is not an IANA time zone",
        ),
        ({"cron": "R * * * *", "job": {"type": "demo.echo"}}, "leaves a time to chance"),
        ({"cron": "R(0-29) 3 * * *", "job": {"type": "demo.echo"}}, "leaves a time to chance"),
        ({"cron": "* * * * *", "job": {"type": "nope"}}, "job.type: unknown task type"),
        ({"cron": "* * * * *", "job": {"type": "demo.sleep", "payload": {}}}, "job.payload"),
        (
            {"cron": "* * * * *", "job": {"type": "demo.echo", "depends_on": [str(uuid.uuid4())]}},
            "cannot depend",
        ),
        ({"cron": "* * * * *"}, "job"),
    ],
)
async def test_bad_schedules_are_422_and_store_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict, message: str
) -> None:
    r = await client.post("/schedules", json={"name": "x", **body})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM schedules") == 0


async def test_day_and_month_names_are_not_taken_for_chance(client: httpx.AsyncClient) -> None:
    for name, cron in (("thursdays", "0 0 * * THU"), ("march", "30 6 * mar thu")):
        r = await client.post("/schedules", json={"name": name, "cron": cron,
                                                   "job": {"type": "demo.echo"}})  # fmt: skip
        assert r.status_code == 201, r.text


async def test_a_schedule_stored_before_a_rule_can_still_be_paused(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A rule added since ('localtime' refused) does not lock a stored schedule: only a
    changed cron or zone is checked again (seen failing: 422 on pausing it)."""
    r = await client.post("/schedules", json={"name": "old", "cron": "0 0 * * *",
                                              "job": {"type": "demo.echo"}})  # fmt: skip
    await db.execute("UPDATE schedules SET timezone = 'localtime' WHERE id = $1",
                     uuid.UUID(r.json()["id"]))  # fmt: skip
    paused = await client.patch(f"/schedules/{r.json()['id']}", json={"paused": True})
    assert paused.status_code == 200 and paused.json()["paused"] is True, paused.text
    moved = await client.patch(f"/schedules/{r.json()['id']}", json={"cron": "0 1 * * *"})
    assert moved.status_code == 422 and "localtime" in moved.json()["detail"]


async def test_schedule_lifecycle(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    r = await client.post(
        "/schedules",
        json={
            "name": "hourly",
            "cron": "0 * * * *",
            "timezone": "Europe/Paris",
            "job": {"type": "demo.echo", "payload": {"a": 1}},
        },
    )
    assert r.status_code == 201, r.text
    s = r.json()
    nxt = datetime.fromisoformat(s["next_run_at"])
    assert nxt > datetime.now(UTC) and nxt.minute == 0 and nxt.second == 0
    assert s["job"] == {"type": "demo.echo", "payload": {"a": 1}}
    assert (
        await client.post(
            "/schedules", json={"name": "hourly", "cron": "* * * * *", "job": {"type": "demo.echo"}}
        )
    ).status_code == 409
    assert [x["id"] for x in (await client.get("/schedules")).json()] == [s["id"]]
    assert (await client.get(f"/schedules/{s['id']}")).json()["name"] == "hourly"
    paused = await client.patch(
        f"/schedules/{s['id']}", json={"paused": True, "cron": "30 2 * * *"}
    )
    assert (
        paused.status_code == 200
        and paused.json()["paused"] is True
        and paused.json()["cron"] == "30 2 * * *"
    )
    assert (await client.patch(f"/schedules/{s['id']}", json={"cron": "nope"})).status_code == 422
    never = await client.patch(f"/schedules/{s['id']}", json={"cron": "0 0 31 4 *"})
    assert never.status_code == 422 and "never fires" in never.json()["detail"]
    assert (await client.delete(f"/schedules/{s['id']}")).status_code == 204
    assert (await client.get(f"/schedules/{s['id']}")).status_code == 404
    assert (await client.delete(f"/schedules/{s['id']}")).status_code == 404
    actions = [
        r["action"]
        for r in await db.fetch(
            "SELECT action FROM audit_log WHERE action LIKE 'schedule.%' AND outcome = 'ok' ORDER BY id"
        )
    ]
    assert actions == ["schedule.create", "schedule.update", "schedule.delete"]


async def test_one_name_created_at_once_by_many_is_one_schedule_and_409s(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing with the name checked, then inserted: requests that all found it free
    hit the unique constraint, answered 500."""
    body = {"name": "raced", "cron": "0 0 * * *", "job": {"type": "demo.echo"}}
    answers = await asyncio.gather(*(client.post("/schedules", json=body) for _ in range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [409] * 19, codes
    assert all("exists already" in r.json()["detail"] for r in answers if r.status_code == 409)
    assert await db.fetchval("SELECT count(*) FROM schedules WHERE name = 'raced'") == 1
