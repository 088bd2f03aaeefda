"""The statements given the ids of their rows reach them by the primary key, whatever
the statistics of ``jobs`` say. Taken while nothing waited, the statistics count no
ready job and a handful running; a burst then fills the backlog, and the workers'
past jobs leave dead entries in the running index until the next vacuum. A plan made
on them read the rows from a status index instead: the whole backlog for a dispatch of
20 jobs, every entry its worker's jobs had left for a completion."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest

from shared.db import plan_as_the_scheduler
from shared.jobs import sql

FILL = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, ready_at,
                  unmet_dependencies)
SELECT gen_random_uuid(), 'demo.echo', $2, 1, '{}', 0.1, 64, 3, 1, 2, 60, now(), now(),
       CASE WHEN $2 = 'blocked' THEN 1 ELSE 0 END
FROM generate_series(1, $1)
RETURNING id
"""
# Forty jobs of the backlog to two workers, as a dispatch leaves them.
DISPATCH_40 = """
UPDATE jobs SET status = 'running', attempts = attempts + 1, runs = runs + 1,
       worker_id = CASE WHEN random() < 0.5 THEN 'w1' ELSE 'w2' END, dispatched_at = now()
WHERE id IN (SELECT id FROM jobs WHERE status = 'ready' ORDER BY id LIMIT 40)
"""
COMPLETE_RUNNING = """
UPDATE jobs SET status = 'completed', finished_at = now(), started_at = now()
WHERE status = 'running'
"""


async def _a_burst_after_a_quiet_analyze(db: asyncpg.Connection) -> None:
    await db.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
    await db.execute(FILL, 5040, "ready")
    await db.execute(
        "UPDATE jobs SET status = 'completed', finished_at = now()"
        " WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 5000)"
    )
    await db.execute(DISPATCH_40)
    await db.execute("VACUUM ANALYZE jobs")  # a yard with nothing waiting
    await db.execute(COMPLETE_RUNNING)
    await db.execute(FILL, 5000, "ready")  # the burst
    for _ in range(60):  # 2,400 jobs run since the vacuum
        await db.execute(DISPATCH_40)
        await db.execute(COMPLETE_RUNNING)
    await db.execute(DISPATCH_40)  # running now


def _arr(values: list[Any], pg_type: str) -> str:
    return "'{" + ",".join(str(v) for v in values) + "}'::" + pg_type + "[]"


async def _explained(db: asyncpg.Connection, query: str, *args: Any) -> dict[str, Any]:
    """The plan of ``query`` as run (``EXPLAIN ANALYZE``), its writes rolled back."""
    transaction = db.transaction()
    await transaction.start()
    try:
        explained = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *args)
    finally:
        await transaction.rollback()
    return json.loads(explained)[0]["Plan"]  # type: ignore[no-any-return]


async def _indexes(db: asyncpg.Connection, statement: str, args: list[str]) -> list[str]:
    """The indexes the statement's plan reads."""
    await db.execute(f"PREPARE looked_up AS {statement}")
    try:
        stack, names = [await _explained(db, f"EXECUTE looked_up({', '.join(args)})")], []
    finally:
        await db.execute("DEALLOCATE looked_up")
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        if node.get("Relation Name") == "jobs" and "Index Name" in node:
            names.append(node["Index Name"])
        if node["Node Type"] == "Bitmap Index Scan":  # names no relation
            names.append(node["Index Name"])
    return names


@pytest.mark.parametrize("plans", ["the scheduler's", "a session's"])
async def test_statements_given_ids_read_jobs_by_the_primary_key(
    db: asyncpg.Connection, plans: str
) -> None:
    await _a_burst_after_a_quiet_analyze(db)
    if plans == "the scheduler's":
        await plan_as_the_scheduler(db)
    ready = [r["id"] for r in await db.fetch("SELECT id FROM jobs WHERE status = 'ready' LIMIT 20")]
    running = await db.fetch(
        "SELECT id, attempts FROM jobs WHERE status = 'running' AND worker_id = 'w1'"
    )
    assert len(ready) == 20 and len(running) >= 5
    n = len(running)
    ids, attempts = (
        _arr([r["id"] for r in running], "uuid"),
        _arr([r["attempts"] for r in running], "int"),
    )
    statements = {
        "DISPATCH": (sql.DISPATCH, [_arr(ready, "uuid"), _arr(["w1"] * 20, "text"), "60"]),
        "APPLY_SUCCESSES": (
            sql.APPLY_SUCCESSES,
            [
                ids,
                attempts,
                _arr(["w1"] * n, "text"),
                _arr(['"{}"'] * n, "text"),
                _arr(["2026-01-01"] * n, "timestamptz"),
                _arr(["true"] * n, "bool"),
                "now()",
            ],
        ),
        "APPLY_ENDS": (
            sql.APPLY_ENDS,
            [
                ids,
                attempts,
                _arr(["failed"] * n, "text"),
                _arr(['"x"'] * n, "text"),
                _arr(["2026-01-01"] * n, "timestamptz"),
                "now()",
            ],
        ),
        "UNDO_DISPATCH": (sql.UNDO_DISPATCH, [ids, attempts]),
        "SET_WAITING_REASONS": (
            sql.SET_WAITING_REASONS,
            [_arr(ready, "uuid"), _arr(["x"] * 20, "text")],
        ),
        "CANCEL_WAITING": (sql.CANCEL_WAITING, [f"'{ready[0]}'::uuid", "now()", "'x'"]),
        "REQUEUE": (sql.REQUEUE, [f"'{ready[0]}'::uuid", "'ready'", "0", "now()"]),
    }
    read = {
        name: await _indexes(db, statement, args) for name, (statement, args) in statements.items()
    }
    # A session's plans may scan a table this small instead; the scheduler's may not.
    expected = [["jobs_pkey"]] if plans == "the scheduler's" else [["jobs_pkey"], []]
    assert {k: v for k, v in read.items() if sorted(set(v)) not in expected} == {}


async def test_unblocking_a_child_reads_it_by_the_primary_key(db: asyncpg.Connection) -> None:
    """``switchyard_unblock_children`` (run by every completion statement) behind 3,000
    blocked jobs the statistics never saw: its own plan read all of them for one child."""
    await db.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
    await db.execute(FILL, 3000, "completed")
    await db.execute("VACUUM ANALYZE jobs")  # a yard with nothing blocked
    parents = [r["id"] for r in await db.fetch(FILL, 10, "running")]
    children = [r["id"] for r in await db.fetch(FILL, 3000, "blocked")]
    await db.execute(
        "INSERT INTO job_dependencies (job_id, depends_on_id)"
        " SELECT child, $1 FROM unnest($2::uuid[]) AS child",
        parents[0],
        children[:-9],
    )
    await db.executemany(
        "INSERT INTO job_dependencies (job_id, depends_on_id) VALUES ($1, $2)",
        list(zip(children[-9:], parents[1:], strict=True)),
    )
    await plan_as_the_scheduler(db)  # the completion statement's connection
    buffers = []
    for parent in parents[1:]:  # past plpgsql's five custom plans: its generic one too
        plan = await _explained(
            db, "SELECT * FROM switchyard_unblock_children($1::uuid[])", [parent]
        )
        assert plan["Actual Rows"] == 1
        buffers.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
    assert max(buffers) < 1000, buffers  # 3,000 and more: every blocked job


# Given the ids of their rows. Those not planned above need data of their own (due,
# parked, failed jobs with dependents); each keeps the guard that no index matches.
GIVEN_IDS = {
    "DISPATCH": sql.DISPATCH,
    "UNDO_DISPATCH": sql.UNDO_DISPATCH,
    "APPLY_SUCCESSES": sql.APPLY_SUCCESSES,
    "APPLY_ENDS": sql.APPLY_ENDS,
    "FAIL_DEPENDENTS": sql.FAIL_DEPENDENTS,
    "PROMOTE_DUE": sql.PROMOTE_DUE,
    "CANCEL_WAITING": sql.CANCEL_WAITING,
    "REQUEUE": sql.REQUEUE,
    "SET_WAITING_REASONS": sql.SET_WAITING_REASONS,
    "PARK_UNFITTABLE": sql.PARK_UNFITTABLE,
    "UNPARK_FITTING": sql.UNPARK_FITTING,
}


@pytest.mark.parametrize("name", GIVEN_IDS)
def test_every_statement_given_ids_guards_its_status_unindexed(name: str) -> None:
    assert re.search(r"\((j\.)?status IN \([^)]*\)\) IS TRUE", GIVEN_IDS[name]), name
