"""Cancel or retry many jobs at once (``POST /jobs/bulk``), each by the single-job rules.

Every job goes through ``shared.jobs.commands`` (``cancel_job`` / ``retry_job``), the
same code as ``PATCH /jobs/{id}/cancel`` and ``POST /jobs/{id}/retry``: ownership, the
statuses it may leave, its audit row. A job those rules refuse (409, another key's job)
is counted as skipped, with a sample of why. Each job runs in a savepoint, so a refusal
halfway (a retry whose parent did not complete) undoes that job alone.

The work is bounded: at most ``BULK_MAX_JOBS`` jobs per call, committed ``CHUNK`` at a
time, so no transaction holds thousands of row locks while the scheduler waits for them.
A dry run does exactly the same, then rolls each chunk back: its counts are what a real
run would do now (but for jobs a later chunk's cascade would have changed first, and a
retry whose parent an earlier chunk would have retried: it counts as skipped).

Whether it runs or not, one ``job.bulk`` audit row says who asked for what, and how it
went. A chunk that fails for another reason (a deadlock with the scheduler's claim, a
serialization failure, the database going away) is rolled back alone and the call stops
there: the chunks before it stay committed (their events published), the audit row says
``partial`` with the counts so far, and ``BulkInterrupted`` carries those counts to the
API, which states them in its answer. Repeating the request is safe: the jobs already
changed no longer match what the action applies to (a cancelled job is not cancelled
again, a retried one is ``ready``), so a repeat acts on the rest.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from uuid import UUID

import asyncpg
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.db import exception_chain, is_db_outage, is_transient_conflict
from shared.errors import JobConflict, JobNotFound, PermissionDenied, SwitchyardError
from shared.jobs import transitions
from shared.jobs.commands import cancel_job, retry_job
from shared.jobs.listing import JobSelection, select_ids
from shared.models import AuditEntry, Job
from shared.states import TERMINAL, JobStatus

log = logging.getLogger(__name__)

S = JobStatus
CHUNK = 200
ERROR_SAMPLES = 20

BulkActionName = Literal["cancel", "retry"]
# What a single-job route would answer 4xx for: the job is skipped, the rest go on.
REFUSALS = (JobConflict, JobNotFound, PermissionDenied)
# What stops the call part way (the database, not the job, failed): that chunk is rolled
# back, the ones before it stand. The same classes the API's generic handler answers.
CHUNK_FAILURES = (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                  TimeoutError)  # fmt: skip
# The statuses an action applies to: the selection when the filter names none.
APPLIES_TO: dict[str, list[JobStatus]] = {
    "cancel": sorted(set(S) - TERMINAL),
    "retry": [S.CANCELLED, S.FAILED],
}

# What the caller does with the events of one committed job: publish them.
OnChanged = Callable[[str, Any], None]


@dataclass
class BulkOutcome:
    matched: int = 0
    changed: int = 0
    skipped: int = 0
    truncated: bool = False
    errors: list[tuple[UUID, str]] = field(default_factory=list)
    # Jobs of the chunk whose COMMIT failed without an answer (the connection was lost):
    # the server may or may not have committed them. Not counted in ``changed``.
    in_doubt: int = 0
    # Jobs never acted on because an earlier chunk failed (the failed chunk's included).
    untouched: int = 0


class BulkInterrupted(SwitchyardError):
    """A chunk failed part way: ``outcome`` counts what was committed before it;
    ``cause`` is the database's error (the API chooses the answer from it)."""

    def __init__(self, outcome: BulkOutcome, cause: BaseException, *, dry_run: bool,
                 audited: bool) -> None:  # fmt: skip
        self.outcome = outcome
        self.cause = cause
        self.dry_run = dry_run
        self.audited = audited
        super().__init__(self.describe())

    def describe(self) -> str:
        o = self.outcome
        if self.dry_run:
            done = "this was a dry run: nothing was changed"
        elif o.changed:
            done = (
                f"{o.changed} jobs were changed and committed ({o.skipped} skipped) before "
                "it and stay so"
            )
        else:
            done = "nothing was changed"
        doubt = (
            f"; the commit of {o.in_doubt} more got no answer: they may or may not be changed"
            if o.in_doubt
            else ""
        )
        return (
            f"stopped part way: {o.untouched} of the {o.matched} jobs selected were not acted "
            f"on ({describe_cause(self.cause)}); {done}{doubt}. "
            "Sending the same request again is safe: the jobs already changed no longer "
            "match it, so it acts on the rest"
        )


def describe_cause(exc: BaseException) -> str:
    """The database's own error where there is one (``DeadlockDetectedError: deadlock
    detected``), not the wrapper SQLAlchemy puts round it with the whole statement."""
    cause = next((e for e in exception_chain(exc) if isinstance(e, asyncpg.PostgresError)), exc)
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else 'no message'}"


def selection_for(action: BulkActionName, selection: JobSelection, *, actor: Actor) -> JobSelection:
    """The jobs an action acts on: without a status filter, only those it applies to; a
    submitter's, only its own (as the single-job routes allow)."""
    status = selection.status or APPLIES_TO[action]
    owner = actor.key_id if actor.role == "submitter" else None
    return JobSelection(
        status=status, type=selection.type, priority=selection.priority,
        created_after=selection.created_after, created_before=selection.created_before,
        name_prefix=selection.name_prefix, ids=selection.ids, created_by=owner,
    )  # fmt: skip


async def run_bulk(
    session: AsyncSession,
    *,
    action: BulkActionName,
    selection: JobSelection,
    actor: Actor,
    limit: int,
    dry_run: bool,
    on_changed: OnChanged,
    request: dict[str, Any],
    name_search_seconds: float | None,
) -> BulkOutcome:
    """Act on up to ``limit`` selected jobs, oldest first (a retry: each after the ones
    it depends on); commits (or, dry, rolls back) chunk by chunk, calling
    ``on_changed(action, result)`` for each job changed once its chunk is committed
    (never on a dry run). ``request`` (the body, as JSON) goes into
    the ``job.bulk`` audit row. A selection with a name prefix is read for at most
    ``name_search_seconds`` (``SearchTooBroad`` past it, nothing done)."""
    chosen = selection_for(action, selection, actor=actor)
    ids = await select_ids(
        session, selection=chosen, limit=limit + 1, name_search_seconds=name_search_seconds
    )
    outcome = BulkOutcome(matched=min(len(ids), limit), truncated=len(ids) > limit)
    ids = ids[:limit]
    if action == "retry":
        ids = await _parents_first(session, ids)
    await session.rollback()  # the selection's snapshot is not held while acting
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        try:
            done = await _act_on_chunk(session, action, chunk, actor=actor, outcome=outcome)
        except CHUNK_FAILURES as failure:
            outcome.untouched = len(ids) - start
            await _stop(session, outcome, failure, dry_run=dry_run, actor=actor, request=request)
        if dry_run:
            outcome.changed += len(done)
            await session.rollback()
            continue
        try:
            await session.commit()
        except CHUNK_FAILURES as failure:
            # A COMMIT that failed with an error is rolled back; one that got no answer
            # (the connection went away) may have happened: say so rather than guess.
            outcome.untouched = len(ids) - start
            if is_db_outage(failure) and not is_transient_conflict(failure):
                outcome.in_doubt = len(done)
            await _stop(session, outcome, failure, dry_run=dry_run, actor=actor, request=request)
        outcome.changed += len(done)
        for result in done:
            on_changed(action, result)
    await _audit(session, outcome, "dry_run" if dry_run else "ok", actor=actor, request=request)
    await session.commit()
    return outcome


async def _parents_first(session: AsyncSession, ids: list[UUID]) -> list[UUID]:
    """``ids`` (oldest first) with each job after those of them it depends on: a retry
    refuses a job whose parent is still failed, and a batch's child listed before its
    parent has the older id. Otherwise in their order: each step takes the earliest
    job whose selected parents are placed (a heap of positions; linear in the edges)."""
    position = {job_id: i for i, job_id in enumerate(ids)}
    rows = await session.execute(select(Job.id, Job.depends_on).where(Job.id.in_(ids)))
    children: dict[UUID, list[UUID]] = {}
    waiting = dict.fromkeys(ids, 0)  # selected parents not yet placed
    for r in rows:
        for parent in set(r.depends_on or ()) & position.keys():
            children.setdefault(parent, []).append(r.id)
            waiting[r.id] += 1
    ready = [position[j] for j, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    ordered: list[UUID] = []
    while ready:
        job_id = ids[heapq.heappop(ready)]
        ordered.append(job_id)
        for child in children.get(job_id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, position[child])
    if len(ordered) < len(ids):  # a cycle, which submits refuse: the rest as they came
        placed = set(ordered)
        ordered += [j for j in ids if j not in placed]
    return ordered


async def _act_on_chunk(
    session: AsyncSession,
    action: BulkActionName,
    chunk: list[UUID],
    *,
    actor: Actor,
    outcome: BulkOutcome,
) -> list[Any]:
    """Act on each job of ``chunk`` in one transaction (not committed here); a refused
    job is counted in ``outcome`` and undone alone by its savepoint."""
    done: list[Any] = []
    skipped: list[tuple[UUID, str]] = []
    for job_id in chunk:
        try:
            async with session.begin_nested():
                done.append(await _act(session, action, job_id, actor=actor))
        except REFUSALS as refusal:
            skipped.append((job_id, str(refusal)))
    # Counted only once the chunk got this far: a chunk that fails counts for nothing.
    outcome.skipped += len(skipped)
    outcome.errors.extend(skipped[: ERROR_SAMPLES - len(outcome.errors)])
    return done


async def _stop(
    session: AsyncSession,
    outcome: BulkOutcome,
    failure: BaseException,
    *,
    dry_run: bool,
    actor: Actor,
    request: dict[str, Any],
) -> NoReturn:
    """Roll the failed chunk back, record how far the call got, and raise."""
    log.warning(
        "bulk %s stopped part way (%d changed, %d not acted on): %s",
        request.get("action"), outcome.changed, outcome.untouched, describe_cause(failure),
    )  # fmt: skip
    audited = True
    try:
        await session.rollback()
        await _audit(
            session,
            outcome,
            "partial" if outcome.changed or outcome.in_doubt else "error",
            actor=actor,
            request=request,
            error=describe_cause(failure),
        )
        await session.commit()
    except CHUNK_FAILURES:
        # The database that stopped the call may be gone: the per-job audit rows of the
        # committed chunks still say what was changed.
        log.exception("could not write the job.bulk audit row of a bulk call that stopped")
        audited = False
    raise BulkInterrupted(outcome, failure, dry_run=dry_run, audited=audited) from failure


async def _audit(
    session: AsyncSession,
    outcome: BulkOutcome,
    result: str,
    *,
    actor: Actor,
    request: dict[str, Any],
    error: str | None = None,
) -> None:
    detail: dict[str, Any] = {
        "request": request,
        "matched": outcome.matched,
        "changed": outcome.changed,
        "skipped": outcome.skipped,
        "truncated": outcome.truncated,
    }
    if error is not None:
        detail |= {"not_acted_on": outcome.untouched, "in_doubt": outcome.in_doubt,
                   "error": error}  # fmt: skip
    session.add(
        AuditEntry(
            actor=actor.key_id,
            role=actor.role,
            action="job.bulk",
            client=actor.client,
            outcome=result,
            detail=detail,
        )
    )


async def _act(session: AsyncSession, action: BulkActionName, job_id: UUID, *, actor: Actor) -> Any:
    if action == "cancel":
        # A chunk holds up to CHUNK cancels in one transaction: their dependents are
        # all failed by the scheduler, a slice per cycle, not in this request.
        return await cancel_job(session, job_id, actor=actor, cascade=transitions.QUEUED_ONLY)
    return await retry_job(session, job_id, actor=actor, dependents=False)
