"""Why a job is where it is (``GET /jobs/{id}/why``): a reason code, its dependencies,
its priority after aging and its place in the ready queue, and for each live worker
whether it could take the job.

It answers from the same facts the scheduler decides on (``services/scheduler``): the
job's row, the live workers' rows (``shared.stats.list_workers``) and the running jobs'
resources, with the scheduler's own placement rules (``shared.placement_rules``): a worker takes a
job when it is alive (not draining), runs its type, and has a slot and the job's CPU and
memory free; it *could ever* take it when that holds of it empty; a ready job's priority
ages as the scheduler ages it. A
worker's use is the larger of what it reports and what the database has running on it,
as the scheduler counts it.

Every read is bounded: one row, its dependencies (at most 1,000), the worker rows, the
running jobs (at most the fleet's slots) and a count of the ready jobs ahead that stops
at ``POSITION_COUNT_MAX`` (an index-only range scan of the ready queue's key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import fetch
from shared.jobs.reads import get_job
from shared.jobs.views import waiting_reason
from shared.models import Job
from shared.placement_rules import effective_rank, fits, shortfalls
from shared.schemas import Priority, WhyDependency, WhyRead, WhyResources, WhyWorker
from shared.states import TERMINAL, JobStatus
from shared.stats import list_workers

S = JobStatus
POSITION_COUNT_MAX = 10_000

_DEPENDENCIES = "SELECT id, type, name, status FROM jobs WHERE id = ANY($1::uuid[])"
# What the database has running on each worker (the partial index on running jobs).
_RUNNING_BY_WORKER = """
SELECT worker_id, sum(cpu_units)::float8 AS cpu_units, sum(memory_mb)::int AS memory_mb,
       count(*)::int AS slots
FROM jobs WHERE status = 'running' AND worker_id IS NOT NULL GROUP BY worker_id
"""
# The claimable ready jobs placed before ($1, $2, $3) in claim order, counted up to $4:
# a range of the ready queue's key (priority, run_at, id), read index-only.
_AHEAD_IN_CLAIM_ORDER = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM ready_jobs WHERE (priority, run_at, id) < ($1::smallint, $2, $3) LIMIT $4
) ahead
"""


@dataclass(frozen=True)
class _Need:
    type: str
    cpu_units: float
    memory_mb: int


def judge_worker(worker: dict[str, Any], used: dict[str, float], need: _Need) -> WhyWorker:
    """Whether ``worker`` (a row of ``list_workers``) could take the job now and ever."""
    capacity = worker["capacity"]
    free = WhyResources(
        cpu_units=round(capacity["cpu_units"] - used["cpu_units"], 6),
        memory_mb=int(capacity["memory_mb"] - used["memory_mb"]),
        slots=int(capacity["slots"] - used["slots"]),
    )
    has_type = need.type in worker["task_types"]
    accepting = worker["state"] == "alive"
    # The scheduler's rule (shared.placement_rules), given the whole capacity ("ever")
    # and the room free now; shortfalls only name what fails, for the message.
    whole = (capacity["slots"], capacity["cpu_units"], capacity["memory_mb"])
    room = (free.slots, free.cpu_units, free.memory_mb)
    fits_ever = fits(need.type, need.cpu_units, need.memory_mb, accepting, worker["task_types"],
                     *whole)  # fmt: skip
    fits_now = fits_ever and fits(need.type, need.cpu_units, need.memory_mb, accepting,
                                  worker["task_types"], *room)  # fmt: skip
    no_type, no_slots, small_cpu, small_memory = shortfalls(
        need.type, need.cpu_units, need.memory_mb, worker["task_types"], *whole
    )
    missing_ever = [
        text
        for short, text in (
            (no_type, f"does not run {need.type!r}"),
            (no_slots, "has no slots"),
            (small_cpu, f"has {capacity['cpu_units']:g} cpu units in all"),
            (small_memory, f"has {capacity['memory_mb']} MB in all"),
        )
        if short
    ]
    _, no_slot_free, cpu_busy, memory_busy = shortfalls(
        need.type, need.cpu_units, need.memory_mb, worker["task_types"], *room
    )
    missing_now = [
        text
        for short, text in (
            (no_slot_free, "no free slot"),
            (cpu_busy, f"{free.cpu_units:g} cpu units free"),
            (memory_busy, f"{free.memory_mb} MB free"),
        )
        if short
    ]
    why_not = None
    if not accepting:
        why_not = "draining: takes no new job"
    elif missing_ever:
        why_not = "; ".join(missing_ever)
    elif missing_now:
        why_not = "busy: " + ", ".join(missing_now)
    return WhyWorker(
        id=worker["id"],
        state=worker["state"],
        has_task_type=has_type,
        capacity=WhyResources(**capacity),
        free=free,
        needed=WhyResources(cpu_units=need.cpu_units, memory_mb=need.memory_mb, slots=1),
        fits_now=fits_now,
        fits_ever=fits_ever,
        why_not=why_not,
    )


async def explain_job(
    session: AsyncSession,
    job_id: Any,
    *,
    aging_seconds: float,
    lease_seconds: float,
    now: datetime | None = None,
) -> WhyRead:
    """Why ``job_id`` is where it is (JobNotFound when there is no such job)."""
    now = now or datetime.now(UTC)
    job = await get_job(session, job_id)
    status = S(job.status)
    dependencies = await _dependencies(session, job)
    workers = await _live_workers(session, job, lease_seconds=lease_seconds)
    waiting_since = job.ready_at or job.run_at
    ready = status is S.READY
    rank = (
        effective_rank(job.priority, waiting_since, now, aging_seconds) if ready else job.priority
    )
    position: int | None = None
    if ready and not job.parked:
        (row,) = await fetch(
            session, _AHEAD_IN_CLAIM_ORDER, job.priority, job.run_at, job.id,
            POSITION_COUNT_MAX,
        )  # fmt: skip
        position = int(row["n"])
    reason, message = _reason(job, status, dependencies, workers, position, now)
    return WhyRead(
        id=job.id,
        status=status.value,
        reason=reason,
        message=message,
        waiting_reason=waiting_reason(job),
        dependencies=dependencies,
        priority=Priority.from_rank(job.priority),
        effective_priority=Priority.from_rank(rank),
        waited_seconds=round((now - waiting_since).total_seconds(), 3) if ready else None,
        aging_seconds=aging_seconds,
        position=position,
        position_capped=position is not None and position >= POSITION_COUNT_MAX,
        workers=workers,
    )


async def _dependencies(session: AsyncSession, job: Job) -> list[WhyDependency]:
    wanted = list(job.depends_on or [])
    if not wanted:
        return []
    found = {r["id"]: r for r in await fetch(session, _DEPENDENCIES, wanted)}
    return [
        WhyDependency(id=d, type=found[d]["type"], name=found[d]["name"], status=found[d]["status"])
        if d in found
        else WhyDependency(id=d, type=None, name=None, status="deleted")
        for d in wanted
    ]


async def _live_workers(
    session: AsyncSession, job: Job, *, lease_seconds: float
) -> list[WhyWorker]:
    rows = await list_workers(session, lease_seconds=lease_seconds)
    live = [w for w in rows if w["state"] in ("alive", "draining")]
    if not live:
        return []
    running = {r["worker_id"]: r for r in await fetch(session, _RUNNING_BY_WORKER)}
    need = _Need(job.type, float(job.cpu_units), int(job.memory_mb))
    judged = []
    for w in live:
        held = running.get(w["id"])
        used = {
            key: max(float(w["allocated"][key]), float(held[key]) if held else 0.0)
            for key in ("cpu_units", "memory_mb", "slots")
        }
        judged.append(judge_worker(w, used, need))
    return judged


def _reason(
    job: Job,
    status: JobStatus,
    dependencies: list[WhyDependency],
    workers: list[WhyWorker],
    position: int | None,
    now: datetime,
) -> tuple[Any, str]:
    """The reason code and its message."""
    if status in TERMINAL:
        ended = f"it ended {status.value}"
        return "terminal", ended + (f": {job.error}" if job.error else "")
    if status is S.RUNNING:
        where = f"on worker {job.worker_id}, attempt {job.attempts}"
        if job.cancel_requested:
            return "cancelling", f"running {where}; a cancel was requested and the worker told"
        return "running", f"running {where}"
    if status is S.BLOCKED:
        unmet = [d for d in dependencies if d.status != S.COMPLETED.value]
        dead = [d for d in unmet if d.status in (S.FAILED.value, S.CANCELLED.value)]
        if dead:
            return "dependencies", (
                f"dependency {dead[0].id} {dead[0].status}: this job fails with it (the "
                "scheduler fails a long chain of dependents a slice per cycle)"
            )
        names = ", ".join(f"{d.id} ({d.status})" for d in unmet[:5])
        more = f" and {len(unmet) - 5} more" if len(unmet) > 5 else ""
        return "dependencies", f"waiting on {len(unmet)} unfinished dependencies: {names}{more}"
    if status is S.PENDING:
        if job.run_at > now:
            return "delayed", f"delayed: not before {job.run_at.isoformat()}"
        return "due", "its run_at has come: the scheduler makes it ready within a cycle"
    if status is S.RETRYING:
        return "backoff", (
            f"attempt {job.attempts} failed; attempt {job.attempts + 1} not before "
            f"{job.run_at.isoformat()} (backoff)"
        )
    need = (
        f"{float(job.cpu_units):g} cpu units, {job.memory_mb} MB and a slot on a worker "
        f"that runs {job.type!r}"
    )
    alive = [w for w in workers if w.state == "alive"]
    if not alive:
        return "no_worker", "no live worker takes jobs: start one (python -m services.worker)"
    if not any(w.has_task_type for w in alive):
        return "no_worker_for_type", (
            f"no live worker runs task type {job.type!r} (start one with --tasks)"
        )
    if not any(w.fits_ever for w in alive):
        typed = [w for w in alive if w.has_task_type]
        largest = max(typed, key=lambda w: (w.capacity.cpu_units, w.capacity.memory_mb))
        return "too_large", (
            f"fits no live worker even when empty: needs {need}; the largest running "
            f"{job.type!r} ({largest.id}) has {largest.capacity.cpu_units:g} cpu units and "
            f"{largest.capacity.memory_mb} MB"
        )
    if not any(w.fits_now for w in alive):
        return "no_free_capacity", (
            f"waiting for free capacity: needs {need}; "
            f"{sum(w.fits_ever for w in alive)} worker(s) could hold it once they free room"
        )
    if position:
        return "priority", (
            f"a worker has room now, but {position}"
            f"{'+' if position >= POSITION_COUNT_MAX else ''} ready job(s) go first "
            "(higher priority, or older at the same priority)"
        )
    return "placing", "first in line and a worker has room: placed at the scheduler's next cycle"
