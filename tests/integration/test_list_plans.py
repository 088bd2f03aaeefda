"""What the list reads (``shared.jobs.listing``, migration 0013): a page of any
combination of status, type and priority touches about the pages it returns, however
many jobs match each filter alone — PostgreSQL never walks one filter's jobs checking
the others row by row."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from shared.jobs.listing import JobSelection, ids_query, page_query
from shared.schemas import Priority
from shared.states import JobStatus

S = JobStatus
P = Priority

# ``$1`` jobs of type ``$2`` in status ``$3`` at priority rank ``$4``, one a second back
# from ``$5`` seconds ago.
CROWD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_at,
                  updated_at)
SELECT gen_random_uuid(), $2, $3, $4, '{}'::jsonb, 0.1, 16, 3, 1, 2, 300, now(),
       now() - make_interval(secs => $5 + g), now()
FROM generate_series(1, $1) AS g
"""

CASES: list[tuple[str, JobSelection]] = [
    # Each filter matches thousands; together they match none or a few.
    ("a type never at that priority", JobSelection(type="crowd.busy", priority=P.CRITICAL)),
    ("a type's few failures", JobSelection(type="crowd.busy", status=[S.FAILED])),
    ("a status never at that priority", JobSelection(status=[S.FAILED], priority=P.NORMAL)),
    ("a type that never completes", JobSelection(type="crowd.fails", status=[S.COMPLETED])),
    (
        "all three, none together",
        JobSelection(type="crowd.fails", status=[S.FAILED, S.CANCELLED], priority=P.LOW),
    ),
    ("a priority only the few have", JobSelection(priority=P.LOW)),
    ("a status of the running jobs", JobSelection(type="crowd.fails", status=[S.RUNNING])),
    # Many match: a page.
    ("a type", JobSelection(type="crowd.busy")),
    ("a type at its priority", JobSelection(type="crowd.busy", priority=P.NORMAL)),
    ("a status", JobSelection(status=[S.COMPLETED])),
    ("everything", JobSelection()),
]


def matching(selection: JobSelection) -> tuple[str, list[Any]]:
    """The selection's jobs, as plain SQL says it."""
    return (
        "SELECT id FROM jobs WHERE ($1::text[] IS NULL OR status = ANY($1))"
        " AND ($2::text IS NULL OR type = $2) AND ($3::smallint IS NULL OR priority = $3)",
        [
            [s.value for s in selection.status] if selection.status else None,
            selection.type,
            selection.priority.rank if selection.priority else None,
        ],
    )


@pytest.fixture
async def crowd(db: asyncpg.Connection) -> int:
    """60,000 jobs: a busy type that completes at normal priority, another that fails at
    high, a fleet's worth running, and three of the busy type failed at low priority;
    the table's size in pages."""
    await db.execute(CROWD, 50_000, "crowd.busy", S.COMPLETED.value, P.NORMAL.rank, 100)
    await db.execute(CROWD, 10_000, "crowd.fails", S.FAILED.value, P.HIGH.rank, 100)
    await db.execute(CROWD, 50, "crowd.busy", S.RUNNING.value, P.NORMAL.rank, 10)
    await db.execute(CROWD, 3, "crowd.busy", S.FAILED.value, P.LOW.rank, 0)
    await db.execute("VACUUM ANALYZE jobs")
    pages: int = await db.fetchval("SELECT relpages FROM pg_class WHERE relname = 'jobs'")
    return pages


async def buffers(db: asyncpg.Connection, statement: str, args: list[object]) -> int:
    plan = json.loads(
        await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *args)
    )
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


@pytest.mark.parametrize(("case", "selection"), CASES, ids=[c for c, _ in CASES])
async def test_a_page_reads_what_it_returns(
    db: asyncpg.Connection, crowd: int, case: str, selection: JobSelection
) -> None:
    expected = {r["id"] for r in await db.fetch(*_flat(matching(selection)))}
    statement, args = page_query(selection, limit=51, cursor=None)
    got = [r["id"] for r in await db.fetch(statement, *args)]
    assert len(got) == min(51, len(expected)) and set(got) <= expected, case
    # Walking one filter's jobs would touch a page per job (tens of thousands); a page
    # of 51 reads an index range per status and priority and the rows it returns.
    used = await buffers(db, statement, args)
    assert used < 200 < crowd, f"{case}: {used} buffers (the table has {crowd} pages)"


@pytest.mark.parametrize(("case", "selection"), CASES[:5], ids=[c for c, _ in CASES[:5]])
async def test_a_bulk_selection_reads_what_it_selects(
    db: asyncpg.Connection, crowd: int, case: str, selection: JobSelection
) -> None:
    expected = {r["id"] for r in await db.fetch(*_flat(matching(selection)))}
    statement, args = ids_query(selection, limit=1001)
    assert {r["id"] for r in await db.fetch(statement, *args)} == expected, case
    used = await buffers(db, statement, args)
    assert used < 200 < crowd, f"{case}: {used} buffers (the table has {crowd} pages)"


def _flat(query: tuple[str, list[Any]]) -> list[Any]:
    statement, args = query
    return [statement, *args]
