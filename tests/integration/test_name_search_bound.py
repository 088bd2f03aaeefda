"""A list page or bulk selection with a name prefix reads for at most
``SWITCHYARD_MAX_NAME_SEARCH_SECONDS``: a prefix and other filters that each match many
jobs and together few make PostgreSQL read every job one of them matches, and past the
limit the request is refused with a 422 that says what to narrow, having changed
nothing."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from shared.errors import SearchTooBroad
from shared.jobs.listing import JobSelection, select_ids
from shared.settings import Settings
from shared.states import JobStatus

# ``$1`` finished jobs of type ``$2`` named ``$3`` followed by a number.
CROWD = """
INSERT INTO jobs (id, type, name, status, priority, payload, cpu_units, memory_mb,
                  max_attempts, retry_initial_delay, retry_backoff, retry_max_delay, run_at,
                  created_at, updated_at, finished_at)
SELECT gen_random_uuid(), $2, $3 || g, 'failed', g % 4, '{}'::jsonb, 0.1, 16, 3, 1, 2,
       300, now(), now() - make_interval(secs => g), now(), now()
FROM generate_series(1, $1) AS g
"""
EACH = 100_000  # enough that no machine reads them in a millisecond

# Each filter matches 100,000 jobs, together the three oldest failed jobs (``FEW``).
FEW = 3
NARROW_PAIR = {"name": "report-", "type": "etl.load"}
BULK_RETRY = {"action": "retry", "filter": NARROW_PAIR}


@pytest.fixture
async def crowded(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.execute(CROWD, EACH, "etl.load", "nightly-etl-")
    await db.execute(CROWD, EACH, "report.pdf", "report-")
    await db.execute(
        "UPDATE jobs SET name = 'report-' || id WHERE id IN (SELECT id FROM jobs "
        "WHERE type = 'etl.load' ORDER BY created_at LIMIT $1)",
        FEW,
    )
    await db.execute("ANALYZE jobs")
    return db


@pytest.fixture
def name_limit() -> float:
    return float(Settings.model_fields["max_name_search_seconds"].default)


@pytest.fixture
def settings(settings: Settings, name_limit: float) -> Settings:
    """The test's settings with ``name_limit`` as SWITCHYARD_MAX_NAME_SEARCH_SECONDS (the
    ``app`` and ``client`` fixtures read these)."""
    return settings.model_copy(update={"max_name_search_seconds": name_limit})


async def statuses(db: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
    return [(r["status"], r["count"]) for r in rows]


@pytest.mark.parametrize("name_limit", [0.001])
async def test_a_name_search_past_its_limit_is_refused_and_changes_nothing(
    crowded: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    before = await statuses(crowded)
    page = await client.get("/jobs", params=NARROW_PAIR)
    assert page.status_code == 422, page.text
    detail = page.json()["detail"]
    assert "'report-'" in detail and "0.001 s" in detail and "created_after" in detail
    assert "database is busy" in detail  # a timeout may be the database's, too
    bulk = await client.post("/jobs/bulk", json=BULK_RETRY)
    assert bulk.status_code == 422, bulk.text
    assert "could not be read" in bulk.json()["detail"]
    assert await statuses(crowded) == before  # the few it selects were not retried
    # The pooled connections whose reads were cancelled serve the next requests.
    for _ in range(12):
        typed = await client.get("/jobs", params={"type": "etl.load", "limit": 3})
        assert typed.status_code == 200, typed.text
        assert len(typed.json()["items"]) == 3


@pytest.mark.parametrize("name_limit", [30])
async def test_the_same_search_is_answered_given_time(
    crowded: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    page = await client.get("/jobs", params=NARROW_PAIR)
    assert page.status_code == 200, page.text
    assert len(page.json()["items"]) == FEW
    dry = await client.post("/jobs/bulk", json={**BULK_RETRY, "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["matched"] == FEW
    named = await client.get("/jobs", params={"name": "report-12345"})
    assert [j["name"] for j in named.json()["items"]] == ["report-12345"]


async def test_a_raw_connection_is_left_usable(crowded: asyncpg.Connection) -> None:
    selection = JobSelection(name_prefix="report-", type="etl.load", status=[JobStatus.FAILED])
    with pytest.raises(SearchTooBroad):
        await select_ids(crowded, selection=selection, limit=10, name_search_seconds=0.001)
    assert not crowded.is_in_transaction()
    # Inside a caller's transaction, which the caller then rolls back.
    with pytest.raises(SearchTooBroad):
        async with crowded.transaction():
            await select_ids(crowded, selection=selection, limit=10, name_search_seconds=0.001)
    found = await select_ids(crowded, selection=selection, limit=10, name_search_seconds=30)
    assert len(found) == FEW
