"""One job whose dispatch cannot be built (a stored payload the message schema refuses)
fails alone, with why; the other jobs placed in the same cycle are dispatched. The
scheduler's real placement (``Dispatcher.place``) against the real database and broker."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from shared.jsonvalues import MAX_JSON_DEPTH
from tests.integration.conftest import Placement


async def test_an_undispatchable_job_fails_alone_and_the_rest_of_its_cycle_goes_out(
    client: httpx.AsyncClient, db: asyncpg.Connection, placement: Placement
) -> None:
    r = await client.post("/jobs/batch", json={"jobs": [{"type": "demo.echo"}] * 5})
    assert r.status_code == 201, r.text
    ids = [uuid.UUID(j["id"]) for j in r.json()["jobs"]]
    child = await client.post("/jobs", json={"type": "demo.echo", "depends_on": [str(ids[2])]})
    assert child.status_code == 201, child.text
    # A payload no dispatch can carry, as a row written by hand or by another version
    # could hold (jsonb takes any nesting; the message schema takes MAX_JSON_DEPTH).
    deep = '{"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    await db.execute("UPDATE jobs SET payload = $2::jsonb WHERE id = $1", ids[2], deep)
    placement.worker("w1", cpu=16, memory_mb=65536, types=["demo.echo"], slots=16)

    await placement.dispatcher.place()

    rows = {
        r["id"]: r
        for r in await db.fetch("SELECT id, status, error FROM jobs WHERE id = ANY($1)", ids)
    }
    assert rows[ids[2]]["status"] == "failed"
    assert "dispatch cannot be built" in rows[ids[2]]["error"]
    assert "nested deeper than" in rows[ids[2]]["error"]
    assert {rows[i]["status"] for i in ids if i != ids[2]} == {"running"}
    child_row = await db.fetchrow(
        "SELECT status, error FROM jobs WHERE id = $1", uuid.UUID(child.json()["id"])
    )
    assert child_row["status"] == "failed" and str(ids[2]) in child_row["error"]
    # The failed one holds no room on the worker; the others do.
    assert set(placement.fleet.assignments) == {i for i in ids if i != ids[2]}
