"""The list read in parts (``shared.jobs.listing``, migrations 0010 and 0013): every
selection pages in the order of ``jobs`` itself, the halves of the created_at and owner
indexes hold every status but ``running`` between them, and the type index's every
status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from shared.jobs.listing import JobSelection, select_ids
from shared.schemas import Priority
from shared.states import TERMINAL, WAITING, JobStatus

STATUSES = [s.value for s in JobStatus]
TYPES = ["etl.load", "ml.train", "report.pdf"]
PRIORITIES = ["critical", "high", "normal", "low"]  # rank 0 .. 3
T0 = datetime(2026, 12, 1, tzinfo=UTC)

# 160 jobs over 9 distinct creation times (ties broken by id), every status, type,
# priority and name mixed, written by plain SQL as a hand or another version would.
INSERT_MIXED = f"""
INSERT INTO jobs (id, type, name, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_at, created_by)
SELECT gen_random_uuid(), (ARRAY{TYPES})[1 + g % 3], (ARRAY[NULL, 'etl-a', 'etl-b', 'nightly'])[1 + g % 4],
       (ARRAY{STATUSES})[1 + g % 8], (g % 7) % 4, '{{}}', 1, 64, 3, 1, 2, 60,
       $1::timestamptz, $1::timestamptz + (g % 9) * interval '1 minute', 'key-' || g % 2
FROM generate_series(1, 160) g
"""


def matches(job: asyncpg.Record, params: dict[str, Any]) -> bool:
    statuses = params.get("status")
    return (
        (statuses is None or job["status"] in ([statuses] if isinstance(statuses, str) else statuses))
        and job["type"] == params.get("type", job["type"])
        and job["created_by"] == params.get("created_by", job["created_by"])
        and (params.get("priority") is None or job["priority"] == PRIORITIES.index(params["priority"]))
        and (job["name"] or "").startswith(params.get("name", ""))
        and ("name" not in params or job["name"] is not None)
        and ("created_after" not in params or job["created_at"] >= params["created_after"])
        and ("created_before" not in params or job["created_at"] < params["created_before"])
    )  # fmt: skip


async def mixed_jobs(db: asyncpg.Connection) -> list[asyncpg.Record]:
    await db.execute(INSERT_MIXED, T0)
    return await db.fetch(
        "SELECT id, created_at, status, type, priority, name, created_by FROM jobs"
    )


def newest_first(jobs: list[asyncpg.Record]) -> list[str]:
    return [
        str(j["id"]) for j in sorted(jobs, key=lambda j: (j["created_at"], j["id"]), reverse=True)
    ]


async def paged(client: httpx.AsyncClient, params: dict[str, Any], limit: int = 7) -> list[str]:
    query = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()}
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        r = await client.get(
            "/jobs", params={**query, "limit": limit, **({"cursor": cursor} if cursor else {})}
        )
        assert r.status_code == 200, r.text
        ids += [j["id"] for j in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the pages never ended")


SELECTIONS: list[dict[str, Any]] = [
    {},
    {"status": "failed"},
    {"status": ["failed", "cancelled", "failed"]},  # several, one repeated
    {"status": ["ready", "running"], "type": "ml.train"},
    {"type": "etl.load"},
    {"priority": "high"},
    {"type": "report.pdf", "priority": "low"},
    {"type": "etl.load", "status": "completed"},
    {"name": "etl"},
    {"name": "etl-b", "status": ["pending", "failed"]},
    {"created_after": T0 + timedelta(minutes=2), "created_before": T0 + timedelta(minutes=6)},
    {"status": "running", "created_before": T0 + timedelta(minutes=5)},
    {"priority": "critical", "created_after": T0 + timedelta(minutes=4)},
    {"type": "ml.train", "priority": "normal", "status": ["running", "completed", "pending"]},
    {"type": "etl.load", "name": "etl", "created_before": T0 + timedelta(minutes=7)},
]


async def test_every_selection_pages_in_the_order_of_the_jobs_table(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    jobs = await mixed_jobs(db)
    assert len(jobs) == 160
    for params in SELECTIONS:
        expected = newest_first([j for j in jobs if matches(j, params)])
        assert expected, params  # each selection selects something
        assert await paged(client, params) == expected, params
        # A page as large as the whole selection, and one row per page.
        assert await paged(client, params, limit=1000) == expected, params
    assert await paged(client, {"type": "etl.load"}, limit=1) == newest_first(
        [j for j in jobs if j["type"] == "etl.load"]
    )


async def test_the_bulk_selection_is_oldest_first(db: asyncpg.Connection) -> None:
    jobs = await mixed_jobs(db)
    cases: list[tuple[JobSelection, dict[str, Any]]] = [
        (JobSelection(type="ml.train"), {"type": "ml.train"}),
        (JobSelection(status=[JobStatus.FAILED, JobStatus.CANCELLED]), {"status": ["failed", "cancelled"]}),
        (JobSelection(status=[JobStatus.READY]), {"status": "ready"}),
        (JobSelection(type="report.pdf", priority=Priority.CRITICAL,
                      status=[JobStatus.RUNNING, JobStatus.PENDING, JobStatus.FAILED]),
         {"type": "report.pdf", "priority": "critical", "status": ["running", "pending", "failed"]}),
        # A submitter's own jobs (its running ones are read apart), with a type, after a time.
        (JobSelection(created_by="key-1", status=[JobStatus.RUNNING, JobStatus.FAILED, JobStatus.PENDING]),
         {"created_by": "key-1", "status": ["running", "failed", "pending"]}),
        (JobSelection(created_by="key-0", type="etl.load", created_after=T0 + timedelta(minutes=3)),
         {"created_by": "key-0", "type": "etl.load", "created_after": T0 + timedelta(minutes=3)}),
    ]  # fmt: skip
    for selection, params in cases:
        oldest = list(reversed(newest_first([j for j in jobs if matches(j, params)])))
        assert len(oldest) > 3, params  # each case selects several
        async with db.transaction():  # as the bulk route's session holds one
            got = await select_ids(db, selection=selection, limit=1000, name_search_seconds=None)
            first = await select_ids(db, selection=selection, limit=3, name_search_seconds=None)
        assert [str(i) for i in got] == oldest
        assert [str(i) for i in first] == oldest[:3]


async def test_the_halves_hold_every_status_but_running(db: asyncpg.Connection) -> None:
    """The partial indexes' predicates, as PostgreSQL stores them, against the states."""
    rows = await db.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_expr(indpred, indrelid) AS pred "
        "FROM pg_index WHERE indrelid = 'jobs'::regclass AND indpred IS NOT NULL"
    )
    predicates = {r["name"]: r["pred"] for r in rows}

    def statuses(index: str) -> set[str]:
        return {s.value for s in JobStatus if f"'{s.value}'" in predicates[index]}

    finished = {s.value for s in TERMINAL}
    waiting = {s.value for s in WAITING}
    assert waiting | finished | {"running"} == {s.value for s in JobStatus}
    for key in ("created", "status_owner"):
        assert statuses(f"jobs_{key}_waiting_idx") == waiting
        assert statuses(f"jobs_{key}_finished_idx") == finished
    assert statuses("jobs_status_type_unfinished_idx") == waiting | {"running"}
    assert statuses("jobs_status_type_finished_idx") == finished


async def test_a_page_of_heavy_jobs_is_bounded_in_bytes_and_the_rest_follows(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing with the row count alone bounding a page: 100 jobs of ~200 KiB of
    payload and result came in one answer of ~20 MiB (1,000 jobs of the largest
    payload and result: gigabytes). Half compress (stored smaller than they are), half
    do not (stored out of line uncompressed)."""
    await db.execute(INSERT_MIXED, T0)
    await db.execute(
        "UPDATE jobs SET"
        " payload = jsonb_build_object('x', CASE WHEN g.n % 2 = 0 THEN repeat('y', 100000)"
        "   ELSE (SELECT string_agg(md5(g.n::text || i), '') FROM generate_series(1, 3200) i) END),"
        " result = jsonb_build_object('r', repeat('z', 100000))"
        " FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs LIMIT 100) g"
        " WHERE jobs.id = g.id"
    )
    heavy = await db.fetchval("SELECT count(*) FROM jobs WHERE result IS NOT NULL")
    assert heavy == 100
    expected = [
        str(r["id"])
        for r in await db.fetch("SELECT id FROM jobs ORDER BY created_at DESC, id DESC")
    ]
    seen: list[str] = []
    params: dict[str, object] = {"limit": 1000}
    pages = 0
    while True:
        r = await client.get("/jobs", params=params)
        assert r.status_code == 200, r.text
        assert len(r.content) < 18 * 1024 * 1024, len(r.content)
        page = r.json()
        assert page["items"], "a page without a job would never end"
        seen += [j["id"] for j in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected and pages >= 2


async def test_long_errors_count_toward_a_pages_bytes(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing with only payloads and results weighed: 160 failed jobs' errors of
    150,000 characters came in one answer of ~24 MiB."""
    await db.execute(INSERT_MIXED, T0)
    await db.execute("UPDATE jobs SET error = repeat('e', 150000)")
    pages, seen = 0, 0
    params: dict[str, object] = {"limit": 1000}
    while True:
        r = await client.get("/jobs", params=params)
        assert r.status_code == 200 and len(r.content) < 18 * 1024 * 1024, len(r.content)
        seen += len(r.json()["items"])
        pages += 1
        if r.json()["next_cursor"] is None:
            break
        params["cursor"] = r.json()["next_cursor"]
    assert seen == 160 and pages >= 2
