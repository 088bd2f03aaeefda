"""The scheduler's database operations. Each takes a session and never commits.

Every status write goes through the state machine: Python checks with
``check_transition``; SQL guards with ``WHERE status = ANY(sources_for(new))`` or the
exact expected old status, so a concurrent cancel from the API is never overwritten.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import queries
from shared.db import pool_fetch, pool_transaction
from shared.jobs.legacy import fail_dependents
from shared.messages import JobStateChanged, JobStatusReport, WorkerHeartbeat
from shared.scheduling import Candidate, retry_delay
from shared.states import JobStatus, check_transition

S = JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReportOutcome:
    """What applying a batch of reports changed."""

    events: list[JobStateChanged] = field(default_factory=list)
    freed: list[tuple[UUID, str]] = field(default_factory=list)  # (job, worker) no longer running
    ignored: int = 0


def _event(
    row: Any, old: str, new: str, reason: str | None, worker: str | None = None
) -> JobStateChanged:
    return JobStateChanged(
        job_id=row.id,
        type=row.type,
        old_status=old,
        new_status=new,
        attempt=row.attempts,
        worker_id=worker if worker is not None else row.worker_id,
        reason=reason,
    )


@dataclass
class JobState:
    """The columns of a job that deciding on a report needs."""

    id: UUID
    type: str
    status: str
    attempts: int
    runs: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    retry_initial_delay: float
    retry_backoff: float
    retry_max_delay: float
    started_at: datetime | None


async def apply_reports(
    session: AsyncSession, reports: list[JobStatusReport], *, rng: random.Random | None = None
) -> ReportOutcome:
    """Apply workers' attempt reports in order; reports for a superseded attempt (or a
    job no longer running there) are ignored: that is the attempt fence."""
    out = ReportOutcome()
    ids = list({r.job_id for r in reports})
    if not ids:
        return out
    # FOR NO KEY UPDATE, not FOR UPDATE: the logger's inserts into job_executions,
    # job_logs and audit_log take FOR KEY SHARE on these rows (their foreign keys), and
    # FOR UPDATE would make the two services queue behind each other's transactions.
    result = await session.execute(
        text(
            "SELECT id, type, status, attempts, runs, max_attempts, worker_id, cancel_requested,"
            " retry_initial_delay, retry_backoff, retry_max_delay, started_at"
            " FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"
        ),
        {"ids": ids},
    )
    jobs = {r.id: JobState(**r._mapping) for r in result}
    now = utcnow()
    completed: list[UUID] = []
    failed_roots: list[tuple[UUID, str]] = []
    # The common cases are written in one statement each after the loop (decisions
    # are made on the locked rows in memory); the rarer ones row by row.
    started: dict[UUID, datetime] = {}
    # (job, expected attempt, result json, started_at when its start came in this batch)
    successes: list[tuple[UUID, int, str, datetime | None]] = []
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
        if report.status == "started":
            if job.started_at is None:
                started[job.id] = report.ts
                job.started_at = report.ts
            continue
        if report.status == "lost":
            continue  # the scheduler wrote this itself after applying the loss
        new, values, reason = _decide(job, report, now, rng)
        check_transition(job.status, new)
        if new == S.COMPLETED:
            # Started and completed in one batch (short jobs): one row update, not two.
            successes.append((job.id, job.attempts, values["result"], started.pop(job.id, None)))
        else:
            sets = ", ".join(f"{k} = :{k}" for k in values)
            await session.execute(
                text(
                    f"UPDATE jobs SET status = :new, {sets}, updated_at = now() "
                    "WHERE id = :id AND status = 'running' AND attempts = :expected"
                ),
                {**values, "id": job.id, "expected": job.attempts, "new": new.value},
            )
        event = _event(job, job.status, new.value, reason, worker=report.worker_id)
        if job.started_at is not None and new != S.READY:
            event = event.model_copy(
                update={"duration_seconds": max(0.0, (now - job.started_at).total_seconds())}
            )
        out.events.append(event)
        out.freed.append((job.id, report.worker_id))
        job.status = new.value
        if new == S.COMPLETED:
            completed.append(job.id)
        elif new in (S.FAILED, S.CANCELLED):
            failed_roots.append((job.id, new.value))
    if started:
        await session.execute(
            text(
                """
                UPDATE jobs j SET started_at = u.ts, updated_at = now()
                FROM unnest(CAST(:ids AS uuid[]), CAST(:ts AS timestamptz[])) AS u(id, ts)
                WHERE j.id = u.id AND j.started_at IS NULL
                """
            ),
            {"ids": list(started), "ts": list(started.values())},
        )
    if successes:
        await session.execute(
            text(
                """
                UPDATE jobs j SET status = 'completed', result = CAST(u.result AS jsonb),
                    error = NULL, finished_at = :now, lease_expires_at = NULL, updated_at = now(),
                    started_at = COALESCE(j.started_at, u.started)
                FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]),
                            CAST(:results AS text[]), CAST(:started AS timestamptz[]))
                     AS u(id, attempt, result, started)
                WHERE j.id = u.id AND j.status = 'running' AND j.attempts = u.attempt
                """
            ),
            {
                "ids": [x[0] for x in successes],
                "attempts": [x[1] for x in successes],
                "results": [x[2] for x in successes],
                "started": [x[3] for x in successes],
                "now": now,
            },
        )
    if completed:
        out.events.extend(await unblock_children(session, completed))
    for job_id, status in failed_roots:
        out.events.extend(await fail_dependents(session, job_id, status))
    return out


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


async def apply_successes(pool: asyncpg.Pool, reports: list[JobStatusReport]) -> ReportOutcome:
    """Starts and completions on the raw pool: the fence (running, that attempt, that
    worker) is in the statement's WHERE, so nothing is read first. The completions and
    the children they unblock are one statement (one transaction, one round trip)."""
    out = ReportOutcome()
    if not reports:
        return out
    check_transition(S.RUNNING, S.COMPLETED)
    starts: dict[tuple[UUID, int, str], datetime] = {}
    ends: dict[tuple[UUID, int, str], JobStatusReport] = {}
    for r in reports:
        key = (r.job_id, r.attempt, r.worker_id)
        if r.status == "started":
            starts.setdefault(key, r.ts)
        else:
            ends.setdefault(key, r)
    keys = sorted(starts.keys() | ends.keys())  # rows locked in id order, as everyone does
    now = utcnow()
    # One statement, one round trip (its own transaction): see queries.APPLY_SUCCESSES.
    result = await pool_fetch(
        pool,
        queries.APPLY_SUCCESSES,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        [_json(ends[k].result) if k in ends else None for k in keys],
        [starts.get(k) for k in keys], [k in ends for k in keys], now,
    )  # fmt: skip
    rows = [r for r in result if r["done"]]
    unblocked = [r for r in result if r["done"] is None]
    out.ignored = len(ends) - len(rows)
    for r in rows:
        started = r["started_at"]
        out.events.append(
            JobStateChanged(
                job_id=r["id"], type=r["type"], old_status=S.RUNNING.value,
                new_status=S.COMPLETED.value, attempt=r["attempts"], worker_id=r["worker_id"],
                reason="completed",
                duration_seconds=(
                    max(0.0, (now - started).total_seconds()) if started is not None else None
                ),
            )
        )  # fmt: skip
        out.freed.append((r["id"], r["worker_id"]))
    out.events.extend(_unblocked_events(SimpleNamespace(**r) for r in unblocked))
    return out


def _decide(
    row: JobState, report: JobStatusReport, now: datetime, rng: random.Random | None
) -> tuple[JobStatus, dict[str, Any], str | None]:
    """The next status of a running job given its worker's report, and the columns to set."""
    done = {"finished_at": now, "lease_expires_at": None}
    match report.status:
        case "completed":
            return (
                S.COMPLETED,
                {**done, "result": _json(report.result), "error": None},
                "completed",
            )
        case "cancelled":
            return S.CANCELLED, {**done, "error": "cancelled by request"}, "cancelled"
        case "handed_back" if row.cancel_requested:
            # Cancelled while on its way or draining: it must not run again.
            return S.CANCELLED, {**done, "error": "cancelled by request"}, "cancelled"
        case "handed_back":
            return (
                S.READY,
                {
                    "runs": row.runs - 1,
                    "worker_id": None,
                    "lease_expires_at": None,
                    "ready_at": now,
                },
                f"handed back: {report.error}",
            )
    # failed (or timed out)
    error = report.error or "failed"
    if row.cancel_requested:
        return S.CANCELLED, {**done, "error": f"cancelled by request ({error})"}, "cancelled"
    if row.runs < row.max_attempts:
        delay = retry_delay(
            row.runs,
            initial=row.retry_initial_delay,
            multiplier=row.retry_backoff,
            max_delay=row.retry_max_delay,
            rng=rng,
        )
        return (
            S.RETRYING,
            {"run_at": now + timedelta(seconds=delay), "error": error, "lease_expires_at": None},
            f"attempt {row.attempts} failed: {error}; retry in {delay:.2f} s",
        )
    return (
        S.FAILED,
        {**done, "error": f"attempt {row.attempts} of {row.max_attempts} failed: {error}"},
        f"attempts exhausted: {error}",
    )


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def unblock_children(session: AsyncSession, parents: list[UUID]) -> list[JobStateChanged]:
    """Completed parents: decrement their children's unmet counts; those reaching zero
    become ready (or pending while their run_at is ahead)."""
    rows = await session.execute(
        text(queries.UNBLOCK_CHILDREN.replace("$1::uuid[]", "CAST(:parents AS uuid[])")),
        {"parents": parents},
    )
    return _unblocked_events(rows)


def _unblocked_events(rows: Iterable[Any]) -> list[JobStateChanged]:
    """The events of the children that left ``blocked`` (rows read by attribute)."""
    events = []
    for row in rows:
        if row.status != S.BLOCKED:
            check_transition(S.BLOCKED, row.status)
            events.append(_event(row, S.BLOCKED.value, row.status, "dependencies completed"))
    return events


async def promote_due(session: AsyncSession, *, limit: int) -> list[JobStateChanged]:
    """Delayed and backoff jobs whose time has come become ready."""
    rows = await session.execute(
        text(
            f"""
            WITH due AS ({
                queries.DUE_JOBS.replace("SELECT id FROM", "SELECT id, status FROM").replace(
                    "$1", ":limit"
                )
            } FOR NO KEY UPDATE SKIP LOCKED)
            UPDATE jobs j SET status = 'ready', ready_at = now(), updated_at = now()
            FROM due WHERE j.id = due.id
            RETURNING j.id, j.type, due.status AS old, j.attempts, j.worker_id
            """
        ),
        {"limit": limit},
    )
    return [_event(r, r.old, S.READY.value, "due") for r in rows]


async def ready_candidates(pool: asyncpg.Pool, *, per_priority: int) -> list[Candidate]:
    """The heads of the ready queue, ``per_priority`` of each priority (a plain read)."""
    rows = await pool_fetch(pool, queries.CLAIM_READY_HEADS, per_priority)
    return [
        Candidate(
            r["id"],
            r["type"],
            r["priority"],
            r["cpu_units"],
            r["memory_mb"],
            r["run_at"],
            r["ready_at"],
        )
        for r in rows
    ]


@dataclass
class Placed:
    id: UUID
    type: str
    payload: dict[str, Any]
    cpu_units: float
    memory_mb: int
    timeout_seconds: float | None
    attempts: int
    worker_id: str
    waited_seconds: float


_MARK_DISPATCHED = """
UPDATE jobs j
SET status = 'running', attempts = j.attempts + 1, runs = j.runs + 1,
    worker_id = p.worker_id, dispatched_at = now(),
    lease_expires_at = now() + make_interval(secs => $3),
    waiting_reason = NULL, error = NULL, started_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::text[]) AS p(id, worker_id)
WHERE j.id = p.id AND j.status = 'ready'
RETURNING j.id, j.type, j.payload, j.cpu_units, j.memory_mb, j.timeout_seconds,
          j.attempts, j.worker_id,
          EXTRACT(EPOCH FROM now() - COALESCE(j.ready_at, j.run_at))::float8 AS waited
"""


async def mark_dispatched(
    pool: asyncpg.Pool, placements: list[tuple[UUID, str]], *, lease_seconds: float
) -> list[Placed]:
    """ready -> running on the chosen worker; a new attempt number (the fence).

    One statement, its own transaction: the WHERE re-checks ``ready`` (a job cancelled
    since the candidates were read is skipped), and it is committed when it returns,
    before any dispatch is published."""
    if not placements:
        return []
    check_transition(S.READY, S.RUNNING)
    rows = await pool_fetch(
        pool,
        _MARK_DISPATCHED,
        [p[0] for p in placements],
        [p[1] for p in placements],
        float(lease_seconds),
    )
    return [
        Placed(
            r["id"], r["type"], r["payload"], r["cpu_units"], r["memory_mb"],
            r["timeout_seconds"], r["attempts"], r["worker_id"], max(0.0, r["waited"]),
        )
        for r in rows
    ]  # fmt: skip


async def undo_dispatch(session: AsyncSession, placed: list[Placed]) -> list[JobStateChanged]:
    """The dispatch could not be published: put the attempt back (it never ran), or
    end the job if it was cancelled meanwhile."""
    check_transition(S.RUNNING, S.READY)
    rows = await session.execute(
        text(
            """
            UPDATE jobs j
            SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'ready' END,
                finished_at = CASE WHEN j.cancel_requested THEN now() END,
                error = CASE WHEN j.cancel_requested THEN 'cancelled by request' END,
                runs = j.runs - 1, worker_id = NULL,
                lease_expires_at = NULL, ready_at = now(), updated_at = now()
            FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS p(id, attempt)
            WHERE j.id = p.id AND j.status = 'running' AND j.attempts = p.attempt
            RETURNING j.id, j.type, j.attempts, j.worker_id, j.status
            """
        ),
        {"ids": [p.id for p in placed], "attempts": [p.attempts for p in placed]},
    )
    check_transition(S.RUNNING, S.CANCELLED)
    return [_event(r, S.RUNNING.value, r.status, "dispatch not delivered") for r in rows]


async def set_waiting_reasons(pool: asyncpg.Pool, reasons: dict[UUID, str]) -> set[UUID]:
    """Write the reasons that changed; the ids of the jobs still ready (whose reason is
    now the one given)."""
    if not reasons:
        return set()
    rows = await pool_fetch(
        pool, queries.SET_WAITING_REASONS, list(reasons), list(reasons.values())
    )
    return {r["id"] for r in rows}


async def save_progress(
    session: AsyncSession, updates: dict[tuple[UUID, int], dict[str, Any]]
) -> None:
    if not updates:
        return
    updates = dict(sorted(updates.items()))  # lock rows in id order, as everyone does
    await session.execute(
        text(
            """
            UPDATE jobs j SET progress = CAST(u.progress AS jsonb)
            FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]), CAST(:progress AS text[]))
                 AS u(id, attempt, progress)
            WHERE j.id = u.id AND j.attempts = u.attempt
            """
        ),
        {
            "ids": [k[0] for k in updates],
            "attempts": [k[1] for k in updates],
            "progress": [_json(v) for v in updates.values()],
        },
    )


async def save_workers(session: AsyncSession, beats: list[WorkerHeartbeat]) -> None:
    for hb in beats:
        await session.execute(
            text(
                """
                INSERT INTO workers (id, state, cpu_units, memory_mb, slots, allocated_cpu_units,
                    allocated_memory_mb, allocated_slots, running, task_types, cpu_percent,
                    memory_percent, started_at, last_heartbeat_at)
                VALUES (:id, :state, :cpu, :mem, :slots, :acpu, :amem, :aslots,
                    CAST(:running AS uuid[]), CAST(:types AS text[]), :cpup, :memp, :started, :ts)
                ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                    cpu_units = excluded.cpu_units, memory_mb = excluded.memory_mb,
                    slots = excluded.slots, allocated_cpu_units = excluded.allocated_cpu_units,
                    allocated_memory_mb = excluded.allocated_memory_mb,
                    allocated_slots = excluded.allocated_slots, running = excluded.running,
                    task_types = excluded.task_types, cpu_percent = excluded.cpu_percent,
                    memory_percent = excluded.memory_percent, started_at = excluded.started_at,
                    last_heartbeat_at = excluded.last_heartbeat_at
                """
            ),
            {
                "id": hb.worker_id,
                "state": hb.state if hb.state != "stopped" else "dead",
                "cpu": hb.capacity.cpu_units,
                "mem": hb.capacity.memory_mb,
                "slots": hb.capacity.slots,
                "acpu": hb.allocated.cpu_units,
                "amem": hb.allocated.memory_mb,
                "aslots": hb.allocated.slots,
                "running": [str(r) for r in hb.running],
                "types": hb.task_types,
                "cpup": hb.cpu_percent,
                "memp": hb.memory_percent,
                "started": hb.started_at,
                "ts": hb.ts,
            },
        )


async def mark_worker_dead(session: AsyncSession, worker_id: str) -> None:
    await session.execute(
        text("UPDATE workers SET state = 'dead', running = '{}' WHERE id = :id"), {"id": worker_id}
    )


async def load_running(session: AsyncSession) -> list[Any]:
    """Running jobs, to rebuild the allocation picture on takeover."""
    return list(
        await session.execute(
            text(
                "SELECT id, worker_id, attempts, cpu_units, memory_mb"
                " FROM jobs WHERE status = 'running'"
            )
        )
    )


async def load_live_workers(session: AsyncSession) -> list[Any]:
    return list(
        await session.execute(
            text(
                "SELECT id, state, cpu_units, memory_mb, slots, task_types FROM workers"
                " WHERE state IN ('alive', 'draining')"
            )
        )
    )


async def running_cancel_requests(session: AsyncSession) -> list[tuple[UUID, int]]:
    """Running attempts whose cancel was requested: the scheduler re-sends job.cancel."""
    rows = await session.execute(
        text("SELECT id, attempts FROM jobs WHERE status = 'running' AND cancel_requested")
    )
    return [(r.id, r.attempts) for r in rows]


async def current_attempts(session: AsyncSession, ids: list[UUID]) -> dict[UUID, int]:
    rows = await session.execute(
        text("SELECT id, attempts FROM jobs WHERE id = ANY(:ids)"), {"ids": ids}
    )
    return {r.id: r.attempts for r in rows}


async def prune_finished(
    pool: asyncpg.Pool, *, older_than: datetime, batch: int = 1000, limit: int = 100_000
) -> int:
    """Delete jobs that finished before ``older_than`` (retention), ``batch`` at a time
    (each its own transaction), at most ``limit`` per call. Returns how many.

    A batch that times out (jobs with very many log lines) is retried smaller, down to
    one job, so a sweep never gets stuck on the same oldest rows."""
    deleted = 0
    while deleted < limit:
        try:
            async with pool_transaction(pool) as conn:
                status = await conn.execute(queries.PRUNE_FINISHED, older_than, batch, timeout=60)
        except TimeoutError:
            if batch == 1:
                raise
            batch = max(1, batch // 10)
            continue
        n = int(status.split()[-1])  # "DELETE n"
        deleted += n
        if n < batch:
            break
    return deleted
