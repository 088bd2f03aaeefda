"""Cancel or retry many jobs at once (``POST /jobs/bulk``), each by the single-job rules.

Every job goes through ``shared.jobs.commands`` (``cancel_job`` / ``retry_job``), the
same code as ``PATCH /jobs/{id}/cancel`` and ``POST /jobs/{id}/retry``: ownership, the
statuses it may leave, its audit row. A job those rules refuse (409, another key's job)
is counted as skipped, with a sample of why. Each job runs in a savepoint, so a refusal
halfway (a retry whose parent did not complete) undoes that job alone.

The work is bounded: at most ``BULK_MAX_JOBS`` jobs per call, committed ``CHUNK`` at a
time, so no transaction holds thousands of row locks while the scheduler waits for them.
A dry run does exactly the same, then rolls each chunk back: its counts are what a real
run would do now (but for jobs a later chunk's cascade would have changed first).

Whether it runs or not, one ``job.bulk`` audit row says who asked for what, and how it
went.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.errors import JobConflict, JobNotFound, PermissionDenied
from shared.jobs.commands import cancel_job, retry_job
from shared.jobs.listing import JobSelection, select_ids
from shared.models import AuditEntry
from shared.states import TERMINAL, JobStatus

S = JobStatus
CHUNK = 200
ERROR_SAMPLES = 20

BulkActionName = Literal["cancel", "retry"]
# What a single-job route would answer 4xx for: the job is skipped, the rest go on.
REFUSALS = (JobConflict, JobNotFound, PermissionDenied)
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
) -> BulkOutcome:
    """Act on up to ``limit`` selected jobs, oldest first; commits (or, dry, rolls back)
    chunk by chunk, calling ``on_changed(action, result)`` for each job changed once its
    chunk is committed (never on a dry run). ``request`` (the body, as JSON) goes into
    the ``job.bulk`` audit row."""
    chosen = selection_for(action, selection, actor=actor)
    ids = await select_ids(session, selection=chosen, limit=limit + 1)
    await session.rollback()  # the selection's snapshot is not held while acting
    outcome = BulkOutcome(matched=min(len(ids), limit), truncated=len(ids) > limit)
    ids = ids[:limit]
    for start in range(0, len(ids), CHUNK):
        done: list[Any] = []
        for job_id in ids[start : start + CHUNK]:
            try:
                async with session.begin_nested():
                    done.append(await _act(session, action, job_id, actor=actor))
            except REFUSALS as refusal:
                outcome.skipped += 1
                if len(outcome.errors) < ERROR_SAMPLES:
                    outcome.errors.append((job_id, str(refusal)))
        outcome.changed += len(done)
        if dry_run:
            await session.rollback()
            continue
        await session.commit()
        for result in done:
            on_changed(action, result)
    session.add(
        AuditEntry(
            actor=actor.key_id,
            role=actor.role,
            action="job.bulk",
            client=actor.client,
            outcome="dry_run" if dry_run else "ok",
            detail={
                "request": request,
                "matched": outcome.matched,
                "changed": outcome.changed,
                "skipped": outcome.skipped,
                "truncated": outcome.truncated,
            },
        )
    )
    await session.commit()
    return outcome


async def _act(session: AsyncSession, action: BulkActionName, job_id: UUID, *, actor: Actor) -> Any:
    if action == "cancel":
        return await cancel_job(session, job_id, actor=actor)
    return await retry_job(session, job_id, actor=actor, dependents=False)
