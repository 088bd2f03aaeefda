"""``GET /audit`` pages: every filter and pair of filters gives the log's rows newest
first, page after page; each is read as a bounded range however long the log is."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.dialects import postgresql

from shared.audit_pages import ACTIONS_OF, MAX_ACTIONS, audit_statement

JOB = uuid.UUID("00000000-0000-4000-8000-000000000001")

# Rows g = 1..n as a yard writes them: a key submits, cancels and retries, a worker
# starts and ends executions, refusals have no actor; every seventh row is of job JOB.
# "key-rare" has one job.cancel and "worker-1" one apikey.create, early in the log.
SEED = """
INSERT INTO audit_log (at, actor, role, action, job_id, outcome)
SELECT now() - make_interval(secs => $1 - g),
       (ARRAY['key-a', 'worker-1', NULL])[1 + g % 3],
       'admin',
       CASE g % 3 WHEN 0 THEN (ARRAY['job.submit', 'job.cancel', 'job.retry'])[1 + g % 4 % 3]
                  WHEN 1 THEN (ARRAY['execution.start', 'execution.end'])[1 + g % 2]
                  ELSE 'auth.refuse' END,
       CASE WHEN g % 7 = 0 THEN $2::uuid END,
       'ok'
FROM generate_series(1, $1) AS g
"""
RARE = (
    "INSERT INTO audit_log (at, actor, role, action, outcome) "
    "VALUES (now() - interval '1 day', 'key-rare', 'admin', 'job.cancel', 'ok'),"
    " (now() - interval '1 day', 'worker-1', 'worker', 'apikey.create', 'ok')"
)

SELECTIONS: list[dict[str, str]] = [
    {},
    {"actor": "key-a"},
    {"actor": "worker-1"},
    {"actor": "nobody"},
    {"action": "job.cancel"},
    {"actor": "key-a", "action": "job.retry"},
    {"actor": "key-a", "action": "execution.end"},
    {"actor": "key-rare", "action": "job.cancel"},
    {"actor": "key-rare", "action": "job.submit"},
    {"actor": "worker-1", "action": "apikey.create"},
    {"job_id": str(JOB)},
    {"actor": "worker-1", "job_id": str(JOB)},
    {"actor": "key-a", "action": "job.cancel", "job_id": str(JOB)},
]


async def _expected(db: asyncpg.Connection, selection: dict[str, str]) -> list[int]:
    where, args = ["true"], []
    for column, value in selection.items():
        args.append(uuid.UUID(value) if column == "job_id" else value)
        where.append(f"{column} = ${len(args)}")
    rows = await db.fetch(f"SELECT id FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC",
                          *args)  # fmt: skip
    return [r["id"] for r in rows]


async def _paged(client: httpx.AsyncClient, selection: dict[str, str], limit: int) -> list[int]:
    ids: list[int] = []
    params: dict[str, Any] = {**selection, "limit": limit}
    while True:
        r = await client.get("/audit", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            return ids
        params["cursor"] = body["next_cursor"]


@pytest.mark.parametrize("limit", [7, 1000])
async def test_every_filter_pages_through_its_rows_newest_first(
    client: httpx.AsyncClient, db: asyncpg.Connection, limit: int
) -> None:
    await db.execute(RARE)
    await db.execute(SEED, 600, JOB)
    for selection in SELECTIONS:
        assert await _paged(client, selection, limit) == await _expected(db, selection), selection


async def _buffers(db: asyncpg.Connection, selection: dict[str, Any]) -> int:
    """Buffers the page's own statements touch, as PostgreSQL plans them."""
    actor, action = selection.get("actor"), selection.get("action")
    used, actions = 0, [action] if action else None
    if actor and not action:
        found = ACTIONS_OF.bindparams(actor=actor)
        used += await _explained(db, found)
        actions = [r["action"] for r in await db.fetch(_literal(found))]
    statement = audit_statement(
        actor=actor, actions=actions, job_id=selection.get("job_id"), before=None, limit=101
    )
    return used + await _explained(db, statement)


def _literal(statement: Any) -> str:
    compiled = statement.compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


async def _explained(db: asyncpg.Connection, statement: Any) -> int:
    plan = json.loads(
        await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_literal(statement)}")
    )
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


async def test_a_rare_pair_or_an_actor_alone_reads_a_few_pages_of_a_long_log(
    db: asyncpg.Connection,
) -> None:
    await db.execute(RARE)
    await db.execute(SEED, 60_000, JOB)
    await db.execute("ANALYZE audit_log")
    whole = await db.fetchval(
        "SELECT relpages FROM pg_class WHERE relname = 'audit_log'"
    )  # about 600 pages
    for selection in (
        {"actor": "worker-1", "action": "apikey.create"},  # one row among 20,000 of its actor
        {"actor": "key-a", "action": "execution.end"},  # none, of two common values
        {"actor": "key-rare", "action": "job.cancel"},
        {"actor": "key-rare"},
        {"actor": "worker-1"},  # 20,000 rows: its newest 101
        {"actor": "key-a", "action": "job.retry"},
    ):
        used = await _buffers(db, selection)
        # A walk of the primary key through the log would touch every page.
        assert used < 150 < whole, f"{selection}: {used} buffers of a {whole}-page log"


async def test_an_actor_with_more_actions_than_parts_is_paged_all_the_same(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO audit_log (at, actor, role, action, outcome) "
        "SELECT now(), 'many', 'admin', 'action.' || (g % $1), 'ok' FROM generate_series(1, 300) g",
        MAX_ACTIONS + 6,
    )
    await db.execute(SEED, 100, JOB)
    assert await _paged(client, {"actor": "many"}, 7) == await _expected(db, {"actor": "many"})
