"""What the list reads (``shared.jobs.listing``, migration 0013): a page of any
combination of status, type and priority reads about the rows it returns, however many
jobs match each filter alone — PostgreSQL never walks one filter's jobs checking the
others row by row."""

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
    ("a type none of whose jobs run", JobSelection(type="crowd.fails", status=[S.RUNNING])),
    # Many match: a page.
    ("a type", JobSelection(type="crowd.busy")),
    ("a type that is not running", JobSelection(type="crowd.fails")),
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
async def crowd(db: asyncpg.Connection) -> None:
    """60,000 jobs: a busy type that completes at normal priority, another that fails at
    high, a fleet's worth of the first running, and three of it failed at low
    priority."""
    await db.execute(CROWD, 50_000, "crowd.busy", S.COMPLETED.value, P.NORMAL.rank, 100)
    await db.execute(CROWD, 10_000, "crowd.fails", S.FAILED.value, P.HIGH.rank, 100)
    await db.execute(CROWD, 500, "crowd.busy", S.RUNNING.value, P.NORMAL.rank, 10)
    await db.execute(CROWD, 3, "crowd.busy", S.FAILED.value, P.LOW.rank, 0)
    await db.execute("VACUUM ANALYZE jobs")


async def rows_read(
    db: asyncpg.Connection, statement: str, args: list[object], *, generic: bool
) -> int:
    """The rows the statement's scans read: those they returned and those their
    filters threw away. ``generic``: planned once for every value, as the routes run
    it (``plans_once``); else planned for these values."""
    if generic:
        assert all(isinstance(a, str) and "'" not in a for a in args)  # the cases' types
        await db.execute(f"PREPARE listed AS {statement}")
        await db.execute("SET plan_cache_mode = force_generic_plan")
        try:
            values = ", ".join(f"'{a}'" for a in args)
            explained = await db.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE listed{f'({values})' if args else ''}"
            )
        finally:
            await db.execute("DEALLOCATE listed")
            await db.execute("RESET plan_cache_mode")
    else:
        explained = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *args)

    def read(node: dict[str, Any]) -> int:
        own = 0
        if "Scan" in node["Node Type"]:
            own = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own += node.get("Rows Removed by Index Recheck", 0)
        return own + sum(read(child) for child in node.get("Plans", []))

    return read(json.loads(explained)[0]["Plan"])


@pytest.mark.usefixtures("crowd")
@pytest.mark.parametrize("generic", [True, False], ids=["planned once", "planned each time"])
@pytest.mark.parametrize(("case", "selection"), CASES, ids=[c for c, _ in CASES])
async def test_a_page_reads_what_it_returns(
    db: asyncpg.Connection, case: str, selection: JobSelection, generic: bool
) -> None:
    expected = {r["id"] for r in await db.fetch(*_flat(matching(selection)))}
    statement, args = page_query(selection, limit=51, cursor=None)
    got = [r["id"] for r in await db.fetch(statement, *args)]
    assert len(got) == min(51, len(expected)) and set(got) <= expected, case
    # Walking one filter's jobs would read thousands of rows; a page of 51 reads the
    # rows it returns and at most one more per status and priority.
    read = await rows_read(db, statement, args, generic=generic)
    assert read <= 51 + 32, f"{case}: {read} rows read for a page of 51"


@pytest.mark.usefixtures("crowd")
@pytest.mark.parametrize("generic", [True, False], ids=["planned once", "planned each time"])
@pytest.mark.parametrize(("case", "selection"), CASES[:5], ids=[c for c, _ in CASES[:5]])
async def test_a_bulk_selection_reads_what_it_selects(
    db: asyncpg.Connection, case: str, selection: JobSelection, generic: bool
) -> None:
    expected = {r["id"] for r in await db.fetch(*_flat(matching(selection)))}
    statement, args = ids_query(selection, limit=1001)
    assert {r["id"] for r in await db.fetch(statement, *args)} == expected, case
    read = await rows_read(db, statement, args, generic=generic)
    assert read <= len(expected) + 32, f"{case}: {read} rows read for {len(expected)}"


def _flat(query: tuple[str, list[Any]]) -> list[Any]:
    statement, args = query
    return [statement, *args]
