"""``POST /jobs/batch`` for a plain batch (``shared.jobs.submit.submit_batch_fast``: a
transaction of its own, by parts): the same answers, jobs and audit rows as the session
path for every batch it takes, the session path for the others, all or nothing, its
answer built while the database stores the batch, and a refusal that costs no pooled
connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from services.api.routers import jobs as jobs_router
from shared.auth import Actor
from shared.catalog import TaskCatalog
from shared.jobs import submit
from shared.jobs.plain_batch import PlainBatch
from shared.jobs.submit import submit_batch_fast
from shared.schemas import BatchJobCreate
from tests.conftest import ADMIN_KEY, SUBMITTER_KEY, VIEWER_KEY, auth, wait_for
from tests.integration.test_fast_submit import ALL_OPTIONS

VOLATILE = {"id", "created_at", "updated_at", "run_at", "job_ids", "idempotency_key"}


def _normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: len(v) if k == "depends_on" else _normalized(v)  # the parents' ids differ
            for k, v in value.items()
            if k not in VOLATILE
        }
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


ECHO = {"type": "demo.echo", "payload": {"a": 1}}
SLEEP = ALL_OPTIONS
LATER = {"type": "demo.echo", "run_at": "2999-01-01T00:00:00Z"}

# (what, jobs, key, what the one-statement path does with it: "answered" it, "raised"
# the refusal itself, "declined" it (a type not cached: the session path answers), or
# None: it never saw it)
ANSWERED, RAISED, DECLINED = "answered", "raised", "declined"
CASES: list[tuple[str, list[dict[str, Any]], str, str | None]] = [
    (
        "plain",
        [ECHO, ECHO, {"type": "demo.echo", "payload": {"b": [1, 2]}}],
        SUBMITTER_KEY,
        ANSWERED,
    ),
    ("mixed types and options", [SLEEP, ECHO, SLEEP], ADMIN_KEY, ANSWERED),
    ("delayed", [LATER, ECHO], SUBMITTER_KEY, ANSWERED),
    (
        "refs but no dependencies",
        [{**ECHO, "ref": "a"}, {**ECHO, "ref": "b"}],
        SUBMITTER_KEY,
        ANSWERED,
    ),
    ("one job", [ECHO], SUBMITTER_KEY, ANSWERED),
    ("a ref used twice", [{**ECHO, "ref": "a"}, {**ECHO, "ref": "a"}], SUBMITTER_KEY, RAISED),
    (
        "a bad payload in the middle",
        [ECHO, {"type": "demo.sleep", "payload": {"seconds": "x"}}, ECHO],
        SUBMITTER_KEY,
        RAISED,
    ),
    (
        "a payload over its limit",
        [ECHO, {"type": "demo.echo", "payload": {"x": "y" * 300_000}}],
        SUBMITTER_KEY,
        RAISED,
    ),
    ("too many jobs", [ECHO] * 10_001, SUBMITTER_KEY, RAISED),
    ("an unknown type", [ECHO, {"type": "no.such.task"}], SUBMITTER_KEY, DECLINED),
    ("a dependency", [{**ECHO, "ref": "a"}, {**ECHO, "depends_on": ["@a"]}], SUBMITTER_KEY, None),
    ("an idempotency key", [ECHO, {**ECHO, "idempotency_key": "k-{unique}"}], SUBMITTER_KEY, None),
    ("a reserved key", [{**ECHO, "idempotency_key": "schedule:x"}], SUBMITTER_KEY, None),
    ("a viewer", [ECHO], VIEWER_KEY, None),
    # Parts of PART jobs: the first parts are stored before the last is checked.
    ("several parts", [ECHO, SLEEP, ECHO, ECHO, LATER], ADMIN_KEY, ANSWERED),
    (
        "a bad payload in the last part",
        [ECHO, ECHO, ECHO, ECHO, {"type": "demo.sleep", "payload": {"seconds": "x"}}],
        SUBMITTER_KEY,
        RAISED,
    ),
    (
        "a ref used twice in different parts",
        [{**ECHO, "ref": "a"}, ECHO, ECHO, {**ECHO, "ref": "a"}, ECHO],
        SUBMITTER_KEY,
        RAISED,
    ),
]
# The part size the comparisons run with (``submit.BATCH_PART``): small, so that the
# batches above go in by several parts.
PART = 2


async def _audit_since(db: asyncpg.Connection, after: int) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT actor, role, action, outcome, status_code, client, detail, job_id IS NULL"
        " AS no_job FROM audit_log WHERE id > $1 ORDER BY id",
        after,
    )
    return [
        (
            r["actor"],
            r["role"],
            r["action"],
            r["outcome"],
            r["status_code"],
            r["client"],
            _normalized(json.loads(r["detail"])) if r["detail"] else None,
            r["no_job"],
        )
        for r in rows
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_one_statement_answers_as_the_session_path(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, list[dict[str, Any]], str, str | None],
) -> None:
    _, jobs, key, expected = case
    seen: list[str] = []  # what the one-statement path did with each batch it saw

    async def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            out = await submit_batch_fast(*args, **kwargs)
        except Exception:
            seen.append(RAISED)
            raise
        seen.append(DECLINED if out is None else ANSWERED)
        return out

    monkeypatch.setattr(jobs_router, "submit_batch_fast", watched)
    monkeypatch.setattr(submit, "BATCH_PART", PART)
    # The task types in the catalog's cache, as on a replica that has seen them.
    assert (await client.post("/jobs/batch", json={"jobs": [ECHO, SLEEP]})).status_code == 201
    seen.clear()
    answers = []
    for path in ("one statement", "session"):
        if path == "session":
            monkeypatch.setattr(jobs_router, "can_submit_batch_fast", lambda specs: False)
        before = await db.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")
        jobs_before = await db.fetchval("SELECT count(*) FROM jobs")
        unique = json.loads(json.dumps({"jobs": jobs}).replace("{unique}", path.replace(" ", "")))
        r = await client.post("/jobs/batch", json=unique, headers=auth(key))
        stored = []
        if r.status_code == 201:
            for job in r.json()["jobs"]:
                read = await client.get(f"/jobs/{job['id']}")
                stored.append(read.json())
                assert _normalized(read.json()) == _normalized(job)
        if r.status_code == 201:  # the audit row names the jobs the answer names
            detail = await db.fetchval(
                "SELECT detail FROM audit_log WHERE id > $1 AND action = 'job.batch_submit'",
                before,
            )
            assert json.loads(detail)["job_ids"] == [job["id"] for job in r.json()["jobs"]]
        new_rows = await db.fetchval("SELECT count(*) FROM jobs") - jobs_before
        answers.append(
            (
                r.status_code,
                _normalized(r.json()),
                _normalized(stored),
                new_rows,
                await _audit_since(db, before),
            )
        )
    assert answers[0] == answers[1]
    assert seen == ([expected] if expected else [])  # the session leg never takes it
    status, _, _, new_rows, audit = answers[0]
    assert new_rows == (len(jobs) if status == 201 else 0)
    if status == 201:
        assert [a[2] for a in audit] == ["job.batch_submit"]


async def test_batches_in_one_statement_hold_at_most_half_the_pool(
    app: Any, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each holds a pooled connection while its statement runs: once half the pool is
    held so, a batch goes through a session, and single submits keep the other half."""
    calls: list[int] = []

    async def watched(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await submit_batch_fast(*args, **kwargs)

    monkeypatch.setattr(jobs_router, "submit_batch_fast", watched)
    slots = app.state.batch_connections
    half = app.state.pool.get_max_size() // 2
    for _ in range(half):
        await asyncio.wait_for(slots.acquire(), 1)  # as many batches in flight
    assert slots.locked()
    try:
        r = await client.post("/jobs/batch", json={"jobs": [ECHO, ECHO]})
        assert r.status_code == 201 and calls == []
        assert (await client.post("/jobs", json=ECHO)).status_code == 201
    finally:
        for _ in range(half):
            slots.release()
    assert (await client.post("/jobs/batch", json={"jobs": [ECHO]})).status_code == 201
    assert calls == [1]


async def _echo_batch(app: Any, n: int, meanwhile: Callable[[PlainBatch], Any]) -> Any:
    """``submit_batch_fast`` on the app's pool: ``n`` demo.echo jobs (their type cached)."""
    state = app.state
    async with state.sessionmaker() as session:
        await state.catalog.get(session, "demo.echo")  # in the cache, as the route finds it
    return await submit_batch_fast(
        state.pool,
        catalog=state.catalog,
        specs=[BatchJobCreate.model_validate(ECHO) for _ in range(n)],
        actor=Actor(key_id="k-test", role="submitter", client="test"),
        limits=state.limits,
        meanwhile=meanwhile,
    )


async def _rows(db: asyncpg.Connection) -> tuple[int, int]:
    """How many jobs and audit rows are stored."""
    return (
        await db.fetchval("SELECT count(*) FROM jobs"),
        await db.fetchval("SELECT count(*) FROM audit_log"),
    )


async def test_a_batch_is_all_or_nothing(app: Any, db: asyncpg.Connection) -> None:
    """What fails while the statement is in flight (here the answer being built) takes
    the whole batch and its audit row back, and leaves no connection held."""
    before = await _rows(db)

    def broken(batch: PlainBatch) -> bytes:
        raise ValueError("the answer could not be built")

    with pytest.raises(ValueError, match="could not be built"):
        await _echo_batch(app, 50, broken)
    assert await _rows(db) == before
    assert app.state.pool.get_idle_size() == app.state.pool.get_size()
    done = await _echo_batch(app, 50, PlainBatch.answer)
    assert done is not None and len(done[0]) == 50
    assert await _rows(db) == (before[0] + 50, before[1] + 1)


async def test_the_answer_is_built_while_the_database_stores_the_batch(
    app: Any, db: asyncpg.Connection, database_url: str
) -> None:
    """The batch's statement is made to wait on a lock; the answer must be built by the
    time the statement is seen waiting (built after it, the batch would take the sum of
    the two times, not the longer)."""
    built: list[int] = []

    def answer(batch: PlainBatch) -> bytes:
        built.append(len(batch))
        return batch.answer()

    blocker = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await blocker.execute("BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE")
        submit = asyncio.create_task(_echo_batch(app, 20, answer))

        async def statement_waits() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'WITH j AS (INSERT INTO jobs%'"
                )
            )

        await wait_for(statement_waits, timeout=10)
        assert built == [20], "the answer was not built while the statement waited"
        assert not submit.done()
        await blocker.execute("COMMIT")
        jobs, events, body = await asyncio.wait_for(submit, 10)
    finally:
        await blocker.close()
    assert len(json.loads(body)["jobs"]) == 20 == len(events)
    stored = await db.fetchval(
        "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[])", [j.id for j in jobs]
    )
    assert stored == 20


async def test_a_batch_of_several_parts_goes_in_whole(app: Any, db: asyncpg.Connection) -> None:
    """At the default part size: every job stored once, answered, announced and given
    its event in request order, one audit row naming them."""
    n = 2 * submit.BATCH_PART + 1
    before = await _rows(db)
    done = await _echo_batch(app, n, PlainBatch.answer)
    assert done is not None
    created, events, body = done
    answered = [job["id"] for job in json.loads(body)["jobs"]]
    assert answered == [str(job.id) for job in created] == [str(e.job_id) for e in events]
    assert len(set(answered)) == n
    assert await _rows(db) == (before[0] + n, before[1] + 1)
    stored = await db.fetch("SELECT id::text FROM jobs WHERE id = ANY($1::uuid[])", answered)
    assert sorted(r["id"] for r in stored) == sorted(answered)
    detail = json.loads(await db.fetchval("SELECT detail FROM audit_log ORDER BY id DESC LIMIT 1"))
    assert detail == {"job_ids": answered[:1000], "count": n}


async def _backends(pool: asyncpg.Pool) -> set[int]:
    """The server process of each of the pool's connections, all of them opened."""
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        return {await conn.fetchval("SELECT pg_backend_pid()") for conn in held}
    finally:
        for conn in held:
            await pool.release(conn)


async def test_a_refused_batch_costs_no_pooled_connection(
    app: Any, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 422 in the first part (checked before a connection is taken) or in a later one
    (inside the transaction, after earlier parts went in) leaves every connection of
    the pool as it was: none is terminated and opened again."""
    monkeypatch.setattr(submit, "BATCH_PART", PART)
    bad = {"type": "demo.sleep", "payload": {"seconds": "x"}}
    assert (await client.post("/jobs/batch", json={"jobs": [ECHO]})).status_code == 201
    before = await _backends(app.state.pool)
    for jobs in ([bad, ECHO], [ECHO, ECHO, ECHO, ECHO, bad]):
        r = await client.post("/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 422 and "payload.seconds" in r.text, r.text
    assert await _backends(app.state.pool) == before


async def test_negative_zero_is_zero_in_answers_and_rows(
    client: httpx.AsyncClient, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """-0.0 and 0 compare equal, so a batch's shared columns and its shapes of job took
    one for the other (an attacking helper: one job answered 0.0 and stored 0 for the
    -0.0 it sent, or the reverse). Delays of -0.0 are 0.0, on every path."""
    zero = {**ECHO, "retry": {"initial_delay_seconds": 0, "max_delay_seconds": 0}}
    signed = {**ECHO, "retry": {"initial_delay_seconds": -0.0, "max_delay_seconds": -0.0}}
    for jobs in ([zero, signed], [signed, zero], [signed, {**zero, "idempotency_key": "z"}]):
        r = await client.post("/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 201, r.text
        assert "-0.0" not in r.text
        ids = [job["id"] for job in r.json()["jobs"]]
        stored = await db.fetch(
            "SELECT retry_initial_delay::text AS a, retry_max_delay::text AS b FROM jobs"
            " WHERE id = ANY($1::uuid[])",
            ids,
        )
        assert {(row["a"], row["b"]) for row in stored} == {("0", "0")}
    single = await client.post("/jobs", json=signed)
    assert single.status_code == 201 and "-0.0" not in single.text


@pytest.mark.parametrize(
    "odd", [{"depends_on": ["@first"]}, {"idempotency_key": "k-1"}], ids=["parent", "key"]
)
async def test_a_batch_that_is_not_plain_is_refused_before_anything_is_taken(
    odd: dict[str, Any],
) -> None:
    """A caller that hands the plain path a job with a parent or a key (the route never
    does) gets an error, not a batch stored without them, before a connection is taken
    (none is given here)."""
    specs = [BatchJobCreate(type="demo.echo", **odd), BatchJobCreate(type="demo.echo", ref="first")]
    with pytest.raises(ValueError, match="no dependencies and no idempotency keys"):
        await submit_batch_fast(
            None,  # type: ignore[arg-type]
            catalog=TaskCatalog(), specs=specs, actor=Actor("k", "admin"),
            limits=submit.Limits(), meanwhile=PlainBatch.answer,
        )  # fmt: skip
