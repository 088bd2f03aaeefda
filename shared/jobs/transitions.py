"""How a job's status changes: the only code that writes ``jobs.status``.

Each function runs statements of ``shared.jobs.sql``, whose status guards come from
``shared.states`` (a write to a status the state machine does not allow from the row's
current one matches no row), fenced by the attempt number where an attempt is meant.
Every change returns its ``job.state`` events (``shared.jobs.events``) for the
caller to publish *after* its commit. Nothing here commits: a function given a session
or a connection works inside the caller's transaction; given the pool, its one statement
is its own transaction.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from shared.db import Db, fetch, json_text, pool_fetch
from shared.jobs import sql
from shared.jobs.events import state_event, stored_event, utcnow
from shared.jobs.outcomes import AttemptEnd, RunningJob, decide_end, run_seconds
from shared.messages import JobStateChanged, JobStatusReport
from shared.states import JobStatus, check_transition

S = JobStatus


def in_lock_order(ids: Iterable[UUID]) -> list[UUID]:
    """``ids`` in the order every writer locks job rows: PostgreSQL's uuid order, which
    is the order of the ids' 128-bit integers (``UUID.__lt__`` compares the same
    integers, but in Python per comparison: ~7x slower for a cycle's 500 ids)."""
    return sorted(ids, key=_as_int)


def _as_int(job_id: UUID) -> int:
    return job_id.int


def _row_event(row: Any, old: str | None, new: str, reason: str | None) -> JobStateChanged:
    """``state_event`` of a returned row (id, type, attempts, worker_id)."""
    return state_event(
        row["id"], row["type"], row["attempts"], old, new, reason, worker_id=row["worker_id"]
    )


# ------------------------------------------------------------------- new jobs


async def insert_jobs(db: Db, columns: dict[str, list[Any]]) -> int:
    """Insert new jobs (``columns``: each of ``sql.INSERT_COLUMNS`` as one list of values,
    JSON as text, uuid arrays as literals); how many went in (fewer when another request
    took one of their idempotency keys first)."""
    same, args = _batch_arguments(columns)
    keyed = any(key is not None for key in columns["idempotency_key"])
    return len(await fetch(db, _insert_statement(same, keyed=keyed, audited=False), *args))


async def insert_jobs_with_audit(
    conn: asyncpg.Connection, columns: dict[str, list[Any]], audit: Sequence[Any]
) -> int:
    """``insert_jobs`` for jobs none of which has an idempotency key, with the request's
    audit row (the values of ``sql.AUDIT_COLUMNS``), as one statement on ``conn``; how
    many jobs went in."""
    same, args = _batch_arguments(columns)
    statement = _insert_statement(same, keyed=False, audited=True)
    # The time a batch's statement gets in a session (the connections' command timeout),
    # not a single statement's: a batch of 10,000 jobs on a busy database needs it.
    return int(await conn.fetchval(statement, *args, *audit))


def _batch_arguments(columns: dict[str, list[Any]]) -> tuple[frozenset[str], list[Any]]:
    """The columns with one value for the whole batch (the type, the defaults, the
    times...: most of them), which travel once, not once per job; and the arguments."""
    same = frozenset(
        name
        for name, values in columns.items()
        if name != "id" and values.count(values[0]) == len(values)
    )
    return same, [values[0] if name in same else values for name, values in columns.items()]


_INSERT_STATEMENTS: dict[tuple[frozenset[str], bool, bool], str] = {}


def _insert_statement(same: frozenset[str], *, keyed: bool, audited: bool) -> str:
    statement = _INSERT_STATEMENTS.get((same, keyed, audited))
    if statement is None:
        if len(_INSERT_STATEMENTS) >= 256:  # bounded; in practice a handful of shapes
            _INSERT_STATEMENTS.clear()
        statement = (
            sql.insert_jobs_with_audit(same) if audited else sql.insert_jobs(same, keyed=keyed)
        )
        _INSERT_STATEMENTS[same, keyed, audited] = statement
    return statement


async def insert_one(pool: asyncpg.Pool, row: dict[str, Any], audit: Sequence[Any]) -> Any:
    """Insert one new job (``row``: the values of ``sql.INSERT_COLUMNS``) and its audit
    row in one statement, outside any transaction of the caller's; the stored row."""
    stored = await pool_fetch(pool, sql.INSERT_ONE_WITH_AUDIT, *row.values(), *audit)
    if not stored:
        raise not_stored(row["id"])
    return stored[0]


def not_stored(job_id: UUID) -> RuntimeError:
    """What a submit gets when the insert's status guard left its row out (not a new
    job's status): a bug, answered as one."""
    return RuntimeError(f"job {job_id} was not stored")


async def insert_several(
    pool: asyncpg.Pool, rows: Sequence[dict[str, Any]], audits: Sequence[Sequence[Any]]
) -> list[Any]:
    """``insert_one`` for several jobs in one statement (one round trip and one commit
    for all): the stored rows in the order of ``rows``, None for one the status guard
    left out (none: every new row has a new status). Committed when this returns."""
    columns = as_columns(rows)
    audit_columns = [[audit[i] for audit in audits] for i in range(len(sql.AUDIT_COLUMNS))]
    stored = {r["id"]: r for r in await pool_fetch(pool, sql.INSERT_SEVERAL_WITH_AUDIT,
                                                   *columns.values(), *audit_columns)}  # fmt: skip
    return [stored.get(row["id"]) for row in rows]


def as_columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The values of ``sql.INSERT_COLUMNS`` of each row (other keys are left out) as one
    list per column, in that order: what the insert statements take once each value is
    in its wire form."""
    return {name: [row[name] for row in rows] for name in sql.INSERT_COLUMNS}


# ------------------------------------------------------------------- placement


@dataclass
class Placed:
    """A job marked running on a worker: what its dispatch carries."""

    id: UUID
    type: str
    payload: dict[str, Any]
    cpu_units: float
    memory_mb: int
    timeout_seconds: float | None
    attempts: int
    worker_id: str
    waited_seconds: float


async def dispatch(
    db: Db, placements: list[tuple[UUID, str]], *, lease_seconds: float
) -> list[Placed]:
    """ready -> running on the chosen worker, with a new attempt number (the fence). A
    job no longer ready (cancelled since it was read) is skipped. On the pool (or a
    connection it keeps) the statement is committed when this returns, before any
    dispatch is published."""
    if not placements:
        return []
    rows = await fetch(
        db, sql.DISPATCH, [p[0] for p in placements], [p[1] for p in placements],
        float(lease_seconds),
    )  # fmt: skip
    return [
        Placed(
            r["id"], r["type"], r["payload"], r["cpu_units"], r["memory_mb"],
            r["timeout_seconds"], r["attempts"], r["worker_id"], max(0.0, r["waited"]),
        )
        for r in rows
    ]  # fmt: skip


def dispatched_events(placed: Iterable[Placed]) -> list[JobStateChanged]:
    return [
        stored_event(
            p.id, p.type, p.attempts, S.READY, S.RUNNING, "dispatched",
            worker_id=p.worker_id, wait_seconds=p.waited_seconds,
        )
        for p in placed
    ]  # fmt: skip


async def undo_dispatch(db: Db, placed: list[Placed]) -> list[JobStateChanged]:
    """The dispatch could not be published: the attempt goes back to ready (it never
    ran), or the job ends cancelled if a cancel came meanwhile."""
    rows = await fetch(db, sql.UNDO_DISPATCH, [p.id for p in placed], [p.attempts for p in placed])
    events = [_row_event(r, S.RUNNING, r["status"], "dispatch not delivered") for r in rows]
    cancelled = {r["id"]: S.CANCELLED for r in rows if r["status"] == S.CANCELLED}
    return events + (await fail_dependents(db, cancelled) if cancelled else [])


async def fail_undispatchable(db: Db, failures: list[tuple[Placed, str]]) -> list[JobStateChanged]:
    """running -> failed for attempts whose dispatch message could not be built (each
    with why): another attempt would build the same message, so the job ends now, and
    its unfinished dependents with it. Fenced by attempt (on the rows locked first)."""
    if not failures:
        return []
    why = {p.id: (p.attempts, error) for p, error in failures}
    rows = await fetch(db, sql.LOCK_FOR_REPORTS, in_lock_order(why))
    now = utcnow()
    ends = [
        AttemptEnd(job, S.FAILED, why[job.id][1], None, f"not dispatchable: {why[job.id][1]}")
        for job in (RunningJob(**dict(r)) for r in rows)
        if job.status == S.RUNNING and job.attempts == why[job.id][0]
    ]
    await _write_ends(db, ends, now)
    events = [_end_event(end, now) for end in ends]
    return events + await fail_dependents(db, dict.fromkeys((end.job.id for end in ends), S.FAILED))


# ------------------------------------------------------------------- reports


@dataclass
class ReportOutcome:
    """What applying a batch of reports changed."""

    events: list[JobStateChanged] = field(default_factory=list)
    freed: list[tuple[UUID, str]] = field(default_factory=list)  # (job, worker) no longer running
    ignored: int = 0


# What the fast path applies: a start, an end that went well.
_SUCCESS_STATUSES = frozenset({"started", "completed"})


def split_reports(
    reports: list[JobStatusReport],
) -> tuple[list[JobStatusReport], list[JobStatusReport]]:
    """The reports of jobs that only started or completed in this batch (the common
    case: ``apply_successes``), and those of the others (``apply_reports``)."""
    other = {r.job_id for r in reports if r.status not in _SUCCESS_STATUSES}
    if not other:
        return reports, []
    return [r for r in reports if r.job_id not in other], [r for r in reports if r.job_id in other]


_Attempt = tuple[UUID, int, str]  # job, attempt, worker


async def apply_successes(db: Db, reports: list[JobStatusReport]) -> ReportOutcome:
    """Starts and completions: the fence (running, that attempt, that worker) is in the
    statement, so nothing is read first; the completions and the children they unblock
    are one statement (on the pool or a connection it keeps: one transaction, one round
    trip)."""
    starts: dict[_Attempt, datetime] = {}
    ends: dict[_Attempt, Any] = {}
    now = utcnow()
    for r in reports:
        key = (r.job_id, r.attempt, r.worker_id)
        if (start := start_seen(r, now)) is not None:  # a start, or one folded into its end
            starts.setdefault(key, start)
        if r.status != "started":
            ends.setdefault(key, r.result)
    return await _apply_successes(db, starts, ends, now)


def start_seen(report: JobStatusReport, now: datetime) -> datetime | None:
    """When the report says its attempt started (the worker's clock), never after ``now``
    (the scheduler's): a start cannot be learnt of before it happened, so a later time is
    a worker clock running ahead, and written as it is the attempt would end (at the
    scheduler's ``now``) before it began."""
    start = report.start_time
    return None if start is None else min(start, now)


def _attempt_lock_order(attempt: _Attempt) -> tuple[int, int, str]:
    """Attempts ordered by their rows' lock order (``in_lock_order``)."""
    return (attempt[0].int, attempt[1], attempt[2])


async def _apply_successes(
    db: Db, starts: dict[_Attempt, datetime], ends: dict[_Attempt, Any], now: datetime
) -> ReportOutcome:
    out = ReportOutcome()
    keys = sorted(starts.keys() | ends.keys(), key=_attempt_lock_order)
    if not keys:
        return out
    result = await fetch(
        db, sql.APPLY_SUCCESSES,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        [json_text(ends[k]) if k in ends else None for k in keys],
        [starts.get(k) for k in keys], [k in ends for k in keys], now,
    )  # fmt: skip
    completed = [r for r in result if r["done"]]
    out.ignored = len(ends) - len(completed)
    for r in completed:
        out.events.append(
            stored_event(
                r["id"], r["type"], r["attempts"], S.RUNNING, S.COMPLETED, "completed",
                worker_id=r["worker_id"], duration_seconds=run_seconds(r["started_at"], now),
            )
        )  # fmt: skip
        out.freed.append((r["id"], r["worker_id"]))
    out.events.extend(_unblocked_events(r for r in result if r["done"] is None))
    return out


async def apply_reports(
    db: Db, reports: list[JobStatusReport], *, rng: random.Random | None = None
) -> ReportOutcome:
    """Apply workers' attempt reports in order, on the rows locked first; a report for a
    superseded attempt (or a job no longer running there) is ignored: the attempt fence.
    Starts and completions are written as ``apply_successes`` writes them, the other
    ends in one statement; failed and cancelled jobs fail their unfinished dependents."""
    out = ReportOutcome()
    ids = in_lock_order({r.job_id for r in reports})
    if not ids:
        return out
    rows = await fetch(db, sql.LOCK_FOR_REPORTS, ids)
    now = utcnow()
    decided = _decide(reports, {r["id"]: RunningJob(**dict(r)) for r in rows}, now, rng)
    succeeded = await _apply_successes(db, decided.starts, decided.successes, now)
    await _write_ends(db, list(decided.ends.values()), now)
    by_job = {e.job_id: e for e in succeeded.events if e.new_status == S.COMPLETED}
    by_job.update((job_id, _end_event(end, now)) for job_id, end in decided.ends.items())
    out.ignored = decided.ignored
    out.events = [by_job[j] for j in decided.order if j in by_job]
    out.events += [e for e in succeeded.events if e.new_status != S.COMPLETED]  # children
    ends = decided.ends.values()
    out.freed = succeeded.freed + [(e.job.id, e.job.worker_id or "") for e in ends]
    dead = {end.job.id: end.status for end in ends if end.status in (S.FAILED, S.CANCELLED)}
    if dead:
        out.events += await fail_dependents(db, dead)
    return out


@dataclass
class _Decisions:
    starts: dict[_Attempt, datetime] = field(default_factory=dict)
    successes: dict[_Attempt, Any] = field(default_factory=dict)  # attempt -> its result
    ends: dict[UUID, AttemptEnd] = field(default_factory=dict)
    order: list[UUID] = field(default_factory=list)  # jobs in the order their attempt ended
    ignored: int = 0


def _decide(
    reports: list[JobStatusReport],
    jobs: dict[UUID, RunningJob],
    now: datetime,
    rng: random.Random | None,
) -> _Decisions:
    """What the reports do to the locked rows, in order (each row follows along)."""
    out = _Decisions()
    for report in reports:
        job = jobs.get(report.job_id)
        if (
            job is None
            or job.status != S.RUNNING
            or job.attempts != report.attempt
            or job.worker_id != report.worker_id
        ):
            out.ignored += report.status != "lost"
            continue
        key = (job.id, job.attempts, report.worker_id)
        if (start := start_seen(report, now)) is not None and job.started_at is None:
            # A start report, or one folded into its end: applied first.
            out.starts[key] = job.started_at = start
        if report.status == "completed":
            out.successes[key] = report.result
            job.status = S.COMPLETED
            out.order.append(job.id)
        elif report.status not in ("started", "lost"):  # lost: written after it was applied
            end = decide_end(job, report, now, rng)
            check_transition(job.status, end.status)
            out.ends[job.id] = end
            job.status = end.status
            out.order.append(job.id)
    return out


async def _write_ends(db: Db, ends: list[AttemptEnd], now: datetime) -> None:
    if ends:
        await fetch(
            db, sql.APPLY_ENDS, [e.job.id for e in ends], [e.job.attempts for e in ends],
            [e.status.value for e in ends], [e.error for e in ends], [e.run_at for e in ends],
            now,
        )  # fmt: skip


def _end_event(end: AttemptEnd, now: datetime) -> JobStateChanged:
    job = end.job
    return state_event(
        job.id, job.type, job.attempts, S.RUNNING, end.status, end.reason,
        worker_id=job.worker_id,
        duration_seconds=None if end.status == S.READY else run_seconds(job.started_at, now),
    )  # fmt: skip


# ------------------------------------------------------------------- dependencies


def _unblocked_events(rows: Iterable[Any]) -> list[JobStateChanged]:
    """The events of the children that left ``blocked``."""
    return [
        stored_event(
            r["id"],
            r["type"],
            r["attempts"],
            S.BLOCKED,
            r["status"],
            "dependencies completed",
            worker_id=r["worker_id"],
        )
        for r in rows
        if r["status"] != S.BLOCKED
    ]


@dataclass(frozen=True)
class Slice:
    """How much of a cascade one transaction does: rows failed, levels walked."""

    rows: int
    levels: int


# Where a job ends (a report in the scheduler's cycle, a user's cancel in an API
# request): the dependents of a short chain or a small fan fail with it; a deep chain
# or a wide fan continues in the scheduler a slice per cycle. A bulk call (up to 200
# cancels in a transaction) leaves all of theirs to the scheduler.
AT_ONCE = Slice(rows=200, levels=20)
QUEUED_ONLY = Slice(rows=0, levels=0)
PER_CYCLE = Slice(rows=1000, levels=50)
# Queued jobs a slice starts from: each of a wide fan's is a range of its edges read
# whole (from its cursor) by every level that takes it.
QUEUED_PER_SLICE = 50

# A job whose dependents are to fail: how it ended, and the last of its children a
# slice already failed (None: from the first).
_Frontier = dict[UUID, tuple[str, UUID | None]]


async def fail_dependents(
    db: Db, parents: Mapping[UUID, JobStatus], slice_: Slice = AT_ONCE
) -> list[JobStateChanged]:
    """Fail the waiting descendants of ``parents`` (each failed or cancelled, as the
    mapping says), a slice of them: those left are the scheduler's
    (``fail_queued_dependents``). Each error names the job's parent and how that ended.

    Level by level, each level a statement of its own: a job's children are read only
    after the job itself is locked (updated), so a child committed concurrently by the
    API (which reads its parents FOR SHARE) is either seen here or sees its parent
    already failed. The caller has locked ``parents``.
    """
    frontier: _Frontier = {job_id: (str(how), None) for job_id, how in parents.items()}
    return await _fail_levels(db, frontier, slice_)


async def _fail_levels(db: Db, frontier: _Frontier, slice_: Slice) -> list[JobStateChanged]:
    events: list[JobStateChanged] = []
    rows_left = slice_.rows
    for _ in range(slice_.levels):
        if not frontier or not rows_left:
            break
        rows = await fetch(
            db, sql.FAIL_DEPENDENTS, list(frontier), [how for how, _ in frontier.values()],
            [after for _, after in frontier.values()], rows_left,
        )  # fmt: skip
        rows_left -= len(rows)
        events.extend(
            state_event(r["id"], r["type"], r["attempts"], r["old"], S.FAILED, r["error"])
            for r in rows
        )
        failed: _Frontier = {r["id"]: (S.FAILED.value, None) for r in rows}
        if rows_left:
            frontier = failed
            continue
        # Cut short: this level's children above the last one failed (children are
        # taken in id order) are still to fail, after the next level's.
        last = max(r["id"] for r in rows)
        frontier = {
            job_id: (how, last if after is None else max(after, last))
            for job_id, (how, after) in frontier.items()
        } | failed
    if frontier:
        await fetch(
            db, sql.QUEUE_DEPENDENTS_TO_FAIL, list(frontier),
            [after for _, after in frontier.values()],
        )  # fmt: skip
    return events


async def fail_queued_dependents(
    db: Db, slice_: Slice = PER_CYCLE
) -> tuple[list[JobStateChanged], bool]:
    """A slice of the dependents ``fail_dependents`` left; True if some are left still
    (False too when every queued job it found was held by another transaction).

    The queued jobs are locked FOR SHARE first (one a retry holds is skipped and stays
    queued), so a retry waits for the slice, and a slice never fails the dependents of
    a job retried meanwhile. A queued job gone (deleted by hand) or no longer failed
    is taken off the queue."""
    queued = {
        r["parent_id"]: r["after_child"]
        for r in await fetch(db, sql.QUEUED_DEPENDENTS_TO_FAIL, QUEUED_PER_SLICE)
    }
    events: list[JobStateChanged] = []
    if queued:
        ids = list(queued)
        locked = {r["id"]: r["status"] for r in await fetch(db, sql.LOCK_QUEUED_PARENTS, ids)}
        missing = [r["id"] for r in await fetch(db, sql.MISSING_JOBS, ids)]
        await fetch(db, sql.UNQUEUE_DEPENDENTS_TO_FAIL, [*locked, *missing])
        frontier = {
            job_id: (status, queued[job_id])
            for job_id, status in locked.items()
            if status in (S.FAILED, S.CANCELLED)
        }
        events = await _fail_levels(db, frontier, slice_)
        if not locked and not missing:
            return [], False  # every one held by a retry under way: not before the tick
    left = await fetch(db, sql.ANY_DEPENDENTS_TO_FAIL)
    return events, bool(left[0]["exists"])


# ------------------------------------------------------------------- time


async def promote_due(db: Db, *, limit: int) -> list[JobStateChanged]:
    """Delayed and backoff jobs whose time has come become ready."""
    rows = await fetch(db, sql.PROMOTE_DUE, limit)
    return [_row_event(r, r["old_status"], S.READY, "due") for r in rows]


# ------------------------------------------------------------------- users


async def cancel_waiting(
    db: Db, job_id: UUID, old: JobStatus, *, by: str, cascade: Slice = AT_ONCE
) -> list[JobStateChanged]:
    """A job no worker holds (``old``, locked by the caller) is cancelled at once; its
    unfinished dependents fail (``cascade`` of them now, the rest in the scheduler).
    No events if it had moved on meanwhile."""
    rows = await fetch(db, sql.CANCEL_WAITING, job_id, utcnow(), f"cancelled by {by}")
    if not rows:
        return []
    row = rows[0]
    events = [state_event(row["id"], row["type"], row["attempts"], old, S.CANCELLED,
                          "cancelled by user")]  # fmt: skip
    return events + await fail_dependents(db, {job_id: S.CANCELLED}, cascade)


async def request_cancel(db: Db, job_id: UUID) -> None:
    """A running attempt's cancel: flagged here; its worker ends it and reports."""
    await fetch(db, sql.REQUEST_CANCEL, job_id, utcnow())


async def lock_parents(db: Db, ids: Iterable[UUID]) -> dict[UUID, str]:
    """The status of each stored job of ``ids``, locked against a status change until
    the caller commits (a parent finishing now cannot miss a new edge)."""
    return {r["id"]: r["status"] for r in await fetch(db, sql.LOCK_PARENTS, list(ids))}


async def requeue(
    db: Db, job_id: UUID, old: JobStatus, *, unmet: int, by: str
) -> JobStateChanged | None:
    """failed/cancelled -> blocked (``unmet`` parents unfinished) or ready: same id,
    history kept, a fresh budget of runs. None if it had moved on meanwhile."""
    new = S.BLOCKED if unmet else S.READY
    rows = await fetch(db, sql.REQUEUE, job_id, new.value, unmet, utcnow())
    if not rows:
        return None
    return state_event(job_id, rows[0]["type"], rows[0]["attempts"], old, new, f"retried by {by}")
