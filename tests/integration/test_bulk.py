"""POST /jobs/bulk: cancel or retry by filter, each job by the single-job rules, audited
per job, bounded; a dry run changes nothing; bad input is a 422 that changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest

from shared.auth import Actor
from shared.jobs.bulk import APPLIES_TO, CHUNK, BulkActionName, selection_for
from shared.jobs.listing import JobSelection, ids_query
from shared.schemas import BULK_MAX_JOBS
from shared.states import JobStatus
from tests.conftest import OTHER_SUBMITTER_KEY, SUBMITTER_KEY, VIEWER_KEY, auth, wait_for

# Jobs that wait for their time: nothing runs them while a test looks.
LATER = "2999-01-01T00:00:00Z"


async def submit(client: httpx.AsyncClient, key: str | None = None, **body: object) -> dict:
    headers = auth(key) if key else None
    r = await client.post(
        "/jobs", json={"type": "demo.echo", "run_at": LATER, **body}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


async def bulk(
    client: httpx.AsyncClient, body: dict, key: str | None = None, code: int = 200
) -> dict:
    r = await client.post("/jobs/bulk", json=body, headers=auth(key) if key else None)
    assert r.status_code == code, r.text
    return r.json()


async def statuses(db: asyncpg.Connection) -> dict[str, str]:
    return {str(r["id"]): r["status"] for r in await db.fetch("SELECT id, status FROM jobs")}


async def audit(db: asyncpg.Connection, action: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT job_id, outcome, actor, detail FROM audit_log WHERE action = $1 ORDER BY id",
        action,
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"action": "cancel", "filter": {}}, "at least one of"),
        ({"action": "cancel", "filter": {"name": ""}}, "name"),
        ({"action": "cancel", "filter": {"status": []}}, "status"),
        ({"action": "cancel", "filter": {"status": ["sleeping"]}}, "status"),
        ({"action": "explode", "filter": {"type": "demo.echo"}}, "action"),
        ({"action": "cancel", "filter": {"type": "demo.echo", "owner": "x"}}, "owner"),
        ({"action": "cancel", "filter": {"created_before": 10.0}}, "RFC 3339"),
        ({"action": "cancel", "filter": {"ids": ["nope"]}}, "ids"),
        ({"action": "cancel", "filter": {"type": "demo.echo"}, "limit": BULK_MAX_JOBS + 1}, "limit"),
        ({"action": "cancel"}, "filter"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_422_that_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict, says: str
) -> None:
    job = await submit(client)
    answer = await bulk(client, body, code=422)
    assert says in str(answer["detail"])
    assert (await statuses(db))[job["id"]] == "pending"
    assert await audit(db, "job.cancel") == []


async def test_too_many_ids_are_refused_before_any_work(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    job = await submit(client)
    ids = [job["id"]] + [str(uuid.uuid4()) for _ in range(BULK_MAX_JOBS)]
    answer = await bulk(client, {"action": "cancel", "filter": {"ids": ids}}, code=422)
    assert "ids" in str(answer["detail"])
    assert (await statuses(db))[job["id"]] == "pending"


async def test_a_viewer_may_not(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    job = await submit(client)
    body = {"action": "cancel", "filter": {"ids": [job["id"]]}, "dry_run": True}
    answer = await bulk(client, body, key=VIEWER_KEY, code=403)
    assert "submitter" in answer["detail"]
    assert (await statuses(db))[job["id"]] == "pending"


async def test_dry_run_counts_and_changes_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    jobs = [await submit(client) for _ in range(3)]
    await submit(client, type="demo.sleep", payload={"seconds": 1})
    before = await statuses(db)
    answer = await bulk(
        client, {"action": "cancel", "filter": {"type": "demo.echo"}, "dry_run": True}
    )
    assert answer == {
        "action": "cancel", "dry_run": True, "matched": 3, "changed": 3, "skipped": 0,
        "truncated": False, "errors": [],
    }  # fmt: skip
    assert await statuses(db) == before
    assert await audit(db, "job.cancel") == []
    (row,) = await audit(db, "job.bulk")
    assert row["outcome"] == "dry_run"
    assert '"changed": 3' in row["detail"] and '"type": "demo.echo"' in row["detail"]
    assert {j["id"] for j in jobs} <= set(before)


async def test_cancel_by_filter_audits_each_job(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    high = [await submit(client, priority="high") for _ in range(3)]
    low = await submit(client, priority="low")
    answer = await bulk(client, {"action": "cancel", "filter": {"priority": "high"}})
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (3, 3, 0)
    now = await statuses(db)
    assert [now[j["id"]] for j in high] == ["cancelled"] * 3 and now[low["id"]] == "pending"
    rows = await audit(db, "job.cancel")
    assert sorted(str(r["job_id"]) for r in rows) == sorted(j["id"] for j in high)
    assert {r["outcome"] for r in rows} == {"ok"}
    (summary,) = await audit(db, "job.bulk")
    assert summary["outcome"] == "ok"
    # Again: the cancelled jobs are no longer what a cancel applies to.
    again = await bulk(client, {"action": "cancel", "filter": {"priority": "high"}})
    assert (again["matched"], again["changed"]) == (0, 0)


async def test_refused_jobs_are_skipped_with_why(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A status filter the action does not apply to: each job is refused as the
    single-job route would refuse it (409), counted, and the others go on."""
    waiting = await submit(client)
    done = await submit(client)
    await db.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", uuid.UUID(done["id"]))
    body = {"action": "cancel", "filter": {"status": ["pending", "completed"]}}
    answer = await bulk(client, body)
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (2, 1, 1)
    assert answer["errors"] == [
        {"id": done["id"], "detail": f"job {done['id']} is already completed; nothing to cancel"}
    ]
    assert (await statuses(db))[waiting["id"]] == "cancelled"


async def test_a_submitter_acts_only_on_its_own_jobs(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    mine = [await submit(client, SUBMITTER_KEY) for _ in range(2)]
    theirs = await submit(client, OTHER_SUBMITTER_KEY)
    ids = [j["id"] for j in [*mine, theirs]]
    dry = await bulk(
        client, {"action": "cancel", "filter": {"ids": ids}, "dry_run": True}, SUBMITTER_KEY
    )
    assert (dry["matched"], dry["changed"]) == (2, 2)
    answer = await bulk(
        client, {"action": "cancel", "filter": {"type": "demo.echo"}}, SUBMITTER_KEY
    )
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (2, 2, 0)
    now = await statuses(db)
    assert [now[j["id"]] for j in mine] == ["cancelled", "cancelled"]
    assert now[theirs["id"]] == "pending"
    # An admin acts on every job.
    answer = await bulk(client, {"action": "cancel", "filter": {"type": "demo.echo"}})
    assert answer["changed"] == 1 and (await statuses(db))[theirs["id"]] == "cancelled"


async def test_retry_by_filter_requeues_failed_and_cancelled(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    failed = await submit(client)
    cancelled = await submit(client)
    waiting = await submit(client)
    await db.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", uuid.UUID(failed["id"]))
    r = await client.patch(f"/jobs/{cancelled['id']}/cancel")
    assert r.status_code == 200, r.text
    answer = await bulk(client, {"action": "retry", "filter": {"type": "demo.echo"}})
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (2, 2, 0)
    now = await statuses(db)
    assert now[failed["id"]] == "ready" and now[cancelled["id"]] == "ready"
    assert now[waiting["id"]] == "pending"
    rows = await audit(db, "job.retry")
    assert sorted(str(r["job_id"]) for r in rows) == sorted([failed["id"], cancelled["id"]])


async def test_at_most_limit_jobs_oldest_first_and_truncated_says_more(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    jobs = [await submit(client) for _ in range(5)]
    answer = await bulk(client, {"action": "cancel", "filter": {"type": "demo.echo"}, "limit": 2})
    assert (answer["matched"], answer["changed"], answer["truncated"]) == (2, 2, True)
    now = await statuses(db)
    assert [now[j["id"]] for j in jobs] == ["cancelled"] * 2 + ["pending"] * 3


async def test_the_name_prefix_filters_as_the_list_does(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    nightly = [await submit(client, name=f"nightly-{i}") for i in range(2)]
    other = await submit(client, name="weekly-1")
    answer = await bulk(client, {"action": "cancel", "filter": {"name": "nightly-"}})
    assert (answer["matched"], answer["changed"]) == (2, 2)
    now = await statuses(db)
    assert [now[j["id"]] for j in nightly] == ["cancelled"] * 2 and now[other["id"]] == "pending"


async def test_a_chunk_that_deadlocks_stops_the_call_and_says_what_stays_done(
    client: httpx.AsyncClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A real deadlock in the second chunk (another transaction holds a job of it and
    then waits for one the bulk call already changed): that chunk is rolled back, the
    first stays committed, the answer and the job.bulk row say exactly so, and sending
    the request again does the rest."""
    r = await client.post(
        "/jobs/batch", json={"jobs": [{"type": "demo.echo", "run_at": LATER}] * (CHUNK + 50)}
    )
    assert r.status_code == 201, r.text
    order = [row["id"] for row in await db.fetch("SELECT id FROM jobs ORDER BY created_at, id")]
    first_of_chunk_1, held = order[CHUNK], order[CHUNK + 20]
    other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        # Only the bulk call's backend may detect the cycle (after its deadlock_timeout,
        # 1 s): this one's check would come much later, and it gives up on its own.
        await other.execute("SET deadlock_timeout = '60s'; SET lock_timeout = '20s'")
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held)
        call = asyncio.create_task(
            client.post("/jobs/bulk", json={"action": "cancel", "filter": {"type": "demo.echo"}})
        )

        async def bulk_waits_for_the_held_row() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> $1",
                    other.get_server_pid(),
                )
            )

        await wait_for(bulk_waits_for_the_held_row, timeout=30, interval=0.01,
                       what="the bulk call to wait for the held row")  # fmt: skip
        # The bulk call has changed first_of_chunk_1 (in its uncommitted chunk): wanting
        # it closes the cycle.
        closing = asyncio.create_task(
            other.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first_of_chunk_1)
        )
        answer = await asyncio.wait_for(call, timeout=30)
        await asyncio.wait_for(closing, timeout=30)
        await tx.rollback()
    finally:
        await other.close()
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"]
    body = answer.json()
    assert body["partial"] is True
    assert (body["matched"], body["changed"], body["skipped"]) == (CHUNK + 50, CHUNK, 0)
    assert (body["not_acted_on"], body["in_doubt"]) == (50, 0)
    assert f"{CHUNK} jobs were changed and committed" in body["detail"]
    assert "DeadlockDetectedError: deadlock detected" in body["detail"], body["detail"]
    now = await statuses(db)
    assert [now[str(i)] for i in order] == ["cancelled"] * CHUNK + ["pending"] * 50
    assert len(await audit(db, "job.cancel")) == CHUNK
    (summary,) = await audit(db, "job.bulk")
    assert summary["outcome"] == "partial"
    detail = json.loads(summary["detail"])
    assert (detail["changed"], detail["not_acted_on"]) == (CHUNK, 50)
    assert "Deadlock" in detail["error"]
    # The same request again acts on the rest only.
    again = await bulk(client, {"action": "cancel", "filter": {"type": "demo.echo"}})
    assert (again["matched"], again["changed"], again["skipped"]) == (50, 50, 0)
    assert set((await statuses(db)).values()) == {"cancelled"}


# ``$1`` jobs of other keys in the statuses ``$2``, oldest first.
CROWD = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_at,
                  updated_at, created_by)
SELECT gen_random_uuid(), 'demo.echo', ($2::text[])[1 + g % cardinality($2::text[])], g % 4,
       '{}'::jsonb, 0.1, 16, 3, 1, 2, 300, now(), now() - make_interval(secs => $1 - g), now(),
       'key-' || g % 7
FROM generate_series(1, $1) AS g
"""
# One job of ``$1`` in each status of ``$2``, then ``$3`` completed ones, newer than the crowd.
OWN = """
INSERT INTO jobs (id, type, status, priority, payload, cpu_units, memory_mb, max_attempts,
                  retry_initial_delay, retry_backoff, retry_max_delay, run_at, created_by)
SELECT gen_random_uuid(), 'demo.echo', s, 1, '{}'::jsonb, 0.1, 16, 3, 1, 2, 300, now(), $1
FROM unnest($2::text[] || array_fill('completed'::text, ARRAY[$3::int])) AS s
"""


@pytest.mark.parametrize(
    ("key", "action", "statuses"),
    [
        ("key-few", "cancel", None),  # the waiting statuses and running
        ("key-few", "retry", None),  # failed and cancelled
        ("key-few", "cancel", [JobStatus.COMPLETED]),  # a status it does not apply to
        ("key-busy", "retry", None),  # one failed job behind 20,000 completed ones
    ],
)
async def test_a_submitters_selection_reads_its_own_jobs_not_everyones(
    db: asyncpg.Connection, key: str, action: BulkActionName, statuses: list[JobStatus] | None
) -> None:
    """What a submitter's bulk action selects is read from its own jobs of the statuses
    it names, however many other keys or other statuses have: each request of a key with
    few such jobs (a dry run too) is a few pages, not a walk over every job of them."""
    every = [s.value for s in JobStatus]
    not_running = [s for s in every if s != JobStatus.RUNNING.value]
    await db.execute(CROWD, 60_000, not_running)
    await db.execute(CROWD, 200, [JobStatus.RUNNING.value])  # as many as a fleet's slots
    await db.execute(OWN, "key-few", every, 0)
    await db.execute(OWN, "key-busy", [JobStatus.FAILED.value], 20_000)
    await db.execute("ANALYZE jobs")
    chosen = selection_for(
        action, JobSelection(status=statuses), actor=Actor(key_id=key, role="submitter")
    )
    statement, args = ids_query(chosen, limit=1001)
    expected = await db.fetch(
        "SELECT id FROM jobs WHERE created_by = $1 AND status = ANY($2::text[])",
        key, [s.value for s in statuses or APPLIES_TO[action]],
    )  # fmt: skip
    assert {r["id"] for r in await db.fetch(statement, *args)} == {r["id"] for r in expected}
    assert expected  # the key has jobs of these statuses
    plan = json.loads(
        await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *args)
    )
    top = plan[0]["Plan"]
    used = int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
    pages = await db.fetchval("SELECT relpages FROM pg_class WHERE relname = 'jobs'")
    # Walking the statuses' ranges would touch a page per job of theirs (thousands).
    assert used < 100 < pages, f"{key} {action} {statuses}: {used} buffers of {pages} pages"


async def test_a_retry_reaches_a_parent_before_its_child_listed_first_in_its_batch(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Seen failing oldest first by (created_at, id) alone: the child, listed first in
    its batch, had the older id, was reached while its parent was still failed and was
    skipped (retried only by sending the request again)."""
    r = await client.post("/jobs/batch", json={"jobs": [
        {"ref": "b", "type": "demo.echo", "depends_on": ["@a"]},
        {"ref": "a", "type": "demo.echo"},
    ]})  # fmt: skip
    assert r.status_code == 201, r.text
    child, parent = (j["id"] for j in r.json()["jobs"])
    await db.execute(
        "UPDATE jobs SET status = 'failed' WHERE id = ANY($1::uuid[])",
        [uuid.UUID(child), uuid.UUID(parent)],
    )
    answer = await bulk(client, {"action": "retry", "filter": {"status": ["failed"]}})
    assert (answer["matched"], answer["changed"], answer["skipped"]) == (2, 2, 0), answer
    now = await statuses(db)
    assert now[parent] == "ready" and now[child] == "blocked"  # waits for its parent again
