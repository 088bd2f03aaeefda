"""What the list reads (``shared.jobs.listing``, migration 0013): a page of any
combination of status, type, priority and times reads about the rows it returns,
however many jobs match each filter alone — PostgreSQL never walks one filter's jobs
checking the others row by row — and returns them in list order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from shared.jobs.listing import JobSelection, ids_query, page_query
from shared.jobs.reads import encode_cursor
from shared.schemas import Priority
from shared.states import JobStatus

S = JobStatus
P = Priority
T0 = datetime(2026, 12, 1, tzinfo=UTC)  # the newest job's time, about

# ``$1`` jobs of type ``$2`` in status ``$3`` at priority rank ``$4``, one a second back
# from ``$5`` seconds before T0.
CROWD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_at,
                  updated_at)
SELECT gen_random_uuid(), $2, $3, $4, '{}'::jsonb, 0.1, 16, 3, 1, 2, 300, now(),
       $6::timestamptz - make_interval(secs => $5 + g), now()
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
    # A time no job of the type's history reaches, either end.
    ("a type in the last minute", JobSelection(type="crowd.busy", created_after=T0 - timedelta(minutes=1))),
    ("a status in the last minute", JobSelection(status=[S.COMPLETED], created_after=T0 - timedelta(minutes=1))),
    ("a type before it ran", JobSelection(type="crowd.busy", created_before=T0 - timedelta(days=30))),
    # Many match: a page.
    ("a type", JobSelection(type="crowd.busy")),
    ("a type that is not running", JobSelection(type="crowd.fails")),
    ("a type at its priority", JobSelection(type="crowd.busy", priority=P.NORMAL)),
    ("a type in an hour of its history", JobSelection(
        type="crowd.busy", created_after=T0 - timedelta(hours=2), created_before=T0 - timedelta(hours=1))),
    ("a status", JobSelection(status=[S.COMPLETED])),
    ("everything", JobSelection()),
]  # fmt: skip
FEW = [case for case in CASES if case[0] != "a type"][:10]  # at most a few hundred each


def matching(selection: JobSelection, *, newest_first: bool) -> tuple[str, list[Any]]:
    """The selection's jobs in list order, as plain SQL says it."""
    direction = "DESC" if newest_first else "ASC"
    return (
        "SELECT id FROM jobs WHERE ($1::text[] IS NULL OR status = ANY($1))"
        " AND ($2::text IS NULL OR type = $2) AND ($3::smallint IS NULL OR priority = $3)"
        " AND ($4::timestamptz IS NULL OR created_at >= $4)"
        " AND ($5::timestamptz IS NULL OR created_at < $5)"
        f" ORDER BY created_at {direction}, id {direction}",
        [
            [s.value for s in selection.status] if selection.status else None,
            selection.type,
            selection.priority.rank if selection.priority else None,
            selection.created_after,
            selection.created_before,
        ],
    )


@pytest.fixture
async def crowd(db: asyncpg.Connection) -> None:
    """60,000 jobs: a busy type that completes at normal priority, another that fails at
    high, a fleet's worth of the first running, and three of it failed at low
    priority, the newest."""
    for n, job_type, status, priority, back in [
        (50_000, "crowd.busy", S.COMPLETED, P.NORMAL, 100),
        (10_000, "crowd.fails", S.FAILED, P.HIGH, 100),
        (500, "crowd.busy", S.RUNNING, P.NORMAL, 10),
        (3, "crowd.busy", S.FAILED, P.LOW, 0),
    ]:
        await db.execute(CROWD, n, job_type, status.value, priority.rank, back, T0)
    await db.execute("VACUUM ANALYZE jobs")


def literal(value: object) -> str:
    """A test value as SQL text (the cases' types, times and ids only)."""
    if isinstance(value, list):
        assert all(isinstance(v, UUID) for v in value)
        return "'{" + ",".join(map(str, value)) + "}'"
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    assert isinstance(value, str | datetime | UUID) and "'" not in text
    return f"'{text}'"


async def work(
    db: asyncpg.Connection, statement: str, args: list[object], *, generic: bool
) -> tuple[int, int]:
    """What running the statement reads: the rows its scans read (those they returned
    and those their filters threw away), and the buffers it touched (which also count
    the index entries an index condition skipped without ending the scan).
    ``generic``: planned once for every value, as the routes run it (``plans_once``);
    else planned for these values."""
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"
    if generic:
        await db.execute(f"PREPARE listed AS {statement}")
        await db.execute("SET plan_cache_mode = force_generic_plan")
        try:
            values = ", ".join(literal(a) for a in args)
            explained = await db.fetchval(
                f"{explain} EXECUTE listed{f'({values})' if args else ''}"
            )
        finally:
            await db.execute("DEALLOCATE listed")
            await db.execute("RESET plan_cache_mode")
    else:
        explained = await db.fetchval(f"{explain} {statement}", *args)

    def read(node: dict[str, Any]) -> int:
        own = 0
        # A subquery scan reads its child's rows again, nothing of a table or index.
        if "Scan" in node["Node Type"] and node["Node Type"] != "Subquery Scan":
            own = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own += node.get("Rows Removed by Index Recheck", 0)
        return own + sum(read(child) for child in node.get("Plans", []))

    top = json.loads(explained)[0]["Plan"]
    return read(top), int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


PLANNING = pytest.mark.parametrize("generic", [True, False], ids=["planned once", "planned each time"])  # fmt: skip


@pytest.mark.usefixtures("crowd")
@PLANNING
@pytest.mark.parametrize(("case", "selection"), CASES, ids=[c for c, _ in CASES])
async def test_a_page_reads_what_it_returns(
    db: asyncpg.Connection, case: str, selection: JobSelection, generic: bool
) -> None:
    statement, sql_args = matching(selection, newest_first=True)
    expected = [r["id"] for r in await db.fetch(statement, *sql_args)]
    page, args = page_query(selection, limit=51, cursor=None)
    assert [r["id"] for r in await db.fetch(page, *args)] == expected[:51], case
    # Walking one filter's jobs would read thousands of rows or index entries; a page
    # of 51 reads the rows it returns and at most one more per status and priority,
    # and a few pages of each part's index.
    read, buffers = await work(db, page, args, generic=generic)
    assert read <= 51 + 32 and buffers < 200, f"{case}: {read} rows, {buffers} buffers"
    if len(expected) > 51:  # the next page, after the cursor
        last = await db.fetchrow("SELECT created_at, id FROM jobs WHERE id = $1", expected[50])
        after = encode_cursor(SimpleNamespace(**dict(last)))
        page, args = page_query(selection, limit=51, cursor=after)
        assert [r["id"] for r in await db.fetch(page, *args)] == expected[51:102], case
        read, buffers = await work(db, page, args, generic=generic)
        assert read <= 51 + 32 and buffers < 200, f"{case}, page 2: {read} rows, {buffers} buffers"


@pytest.mark.usefixtures("crowd")
@PLANNING
@pytest.mark.parametrize(("case", "selection"), FEW, ids=[c for c, _ in FEW])
async def test_a_bulk_selection_reads_what_it_selects(
    db: asyncpg.Connection, case: str, selection: JobSelection, generic: bool
) -> None:
    statement, sql_args = matching(selection, newest_first=False)
    expected = [r["id"] for r in await db.fetch(statement, *sql_args)]
    assert len(expected) < 1001, case
    chosen, args = ids_query(selection, limit=1001)
    assert [r["id"] for r in await db.fetch(chosen, *args)] == expected, case
    read, buffers = await work(db, chosen, args, generic=generic)
    assert read <= len(expected) + 32 and buffers < 200 + len(expected), (
        f"{case}: {read} rows, {buffers} buffers for {len(expected)}"
    )


@PLANNING
async def test_a_selection_by_ids_reads_them_by_key_whatever_the_statistics_say(
    db: asyncpg.Connection, generic: bool
) -> None:
    """A bulk retry by ids after a burst of failures the statistics never saw (taken
    while nothing had failed): the ids' rows, not every failed job, are what it reads."""
    await db.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
    await db.execute(CROWD, 5000, "crowd.busy", S.COMPLETED.value, P.NORMAL.rank, 100, T0)
    await db.execute("VACUUM ANALYZE jobs")
    await db.execute(CROWD, 5000, "crowd.fails", S.FAILED.value, P.NORMAL.rank, 10, T0)
    ids = [r["id"] for r in await db.fetch("SELECT id FROM jobs WHERE status = 'failed' LIMIT 20")]
    selection = JobSelection(ids=ids, status=[S.FAILED, S.CANCELLED])
    chosen, args = ids_query(selection, limit=1001)
    assert sorted(r["id"] for r in await db.fetch(chosen, *args)) == sorted(ids)
    read, buffers = await work(db, chosen, args, generic=generic)
    assert read <= 20 + 32 and buffers < 200, f"{read} rows, {buffers} buffers"
