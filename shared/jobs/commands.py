"""What a user asks of a stored job: cancel it, or run it again (the dead-letter retry).

Each checks who asks and what the job is now, changes it through
``shared.jobs.transitions``, writes its audit row, and never commits (the caller does,
then publishes the returned events).
"""

from __future__ import annotations

from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.errors import InvalidJobRequest, JobConflict, PermissionDenied
from shared.jobs import reads, transitions
from shared.messages import JobStateChanged
from shared.models import AuditEntry, Job
from shared.states import CANCELLABLE_AT_ONCE, TERMINAL, JobStatus

S = JobStatus
# The jobs one retry with dependents may requeue (as many as a bulk call acts on).
RETRY_DEPENDENTS_MAX = 1000


def _check_owner(job: Job, actor: Actor, *, verb: str, hint: str = "") -> None:
    if actor.role == "submitter" and job.created_by != actor.key_id:
        raise PermissionDenied(
            f"job {job.id} was submitted by another key; a submitter may {verb} only its "
            f"own jobs{hint}"
        )


async def cancel_job(
    session: AsyncSession,
    job_id: UUID,
    *,
    actor: Actor,
    cascade: transitions.Slice = transitions.AT_ONCE,
) -> tuple[Job, list[JobStateChanged], bool]:
    """Cancel at once if no worker holds it; if running, flag it (the worker is told).
    Its waiting dependents fail, ``cascade`` of them in this transaction, the rest in
    the scheduler.

    Returns (job, events, notify_worker: True when a running attempt must be told).
    """
    job = await reads.get_job(session, job_id, for_update=True)
    _check_owner(job, actor, verb="cancel", hint=" (ask an admin)")
    status = S(job.status)
    if status in TERMINAL:
        raise JobConflict(f"job {job_id} is already {status}; nothing to cancel")
    events: list[JobStateChanged] = []
    notify_worker = status not in CANCELLABLE_AT_ONCE
    if notify_worker:  # running: the worker ends the attempt and reports `cancelled`
        await transitions.request_cancel(session, job_id)
    else:
        events = await transitions.cancel_waiting(
            session, job_id, status, by=actor.label or actor.key_id, cascade=cascade
        )
        if not events:  # the row is locked by us: only a state machine change gets here
            raise JobConflict(f"job {job_id} is {status} and could not be cancelled")
    session.add(
        AuditEntry(
            actor=actor.key_id,
            role=actor.role,
            action="job.cancel",
            job_id=job.id,
            client=actor.client,
            outcome="requested" if notify_worker else "ok",
        )
    )
    await session.flush()
    await session.refresh(job)
    return job, events, notify_worker


async def retry_job(
    session: AsyncSession, job_id: UUID, *, actor: Actor, dependents: bool
) -> tuple[Job, list[JobStateChanged]]:
    """Re-run a failed or cancelled job: same id, history kept, attempt numbers go on
    (the fence stays sound), a fresh ``max_attempts`` budget. With ``dependents``, the
    jobs that failed because of it wait for it again."""
    job = await reads.get_job(session, job_id, for_update=True)
    _check_owner(job, actor, verb="retry")
    status = S(job.status)
    if status not in (S.FAILED, S.CANCELLED):
        raise JobConflict(f"job {job_id} is {status}; only failed or cancelled jobs can be retried")
    events = [await _requeue(session, job, actor=actor)]
    frontier = [job.id] if dependents else []
    while frontier:
        children = await reads.failed_by_dependency(session, frontier)
        if len(events) + len(children) > RETRY_DEPENDENTS_MAX:
            # One transaction holds every row it requeues, and the parents it locks
            # (another key's job among them), from the first to the commit.
            raise InvalidJobRequest(
                f"dependents: retrying job {job_id} with its dependents would requeue more "
                f"than {RETRY_DEPENDENTS_MAX} jobs; nothing was changed. Retry them with "
                "POST /jobs/bulk (action retry: parents before children, 1,000 a call)"
            )
        for child in children:
            # Every job it touches is the actor's to retry (nothing is kept on refusal).
            _check_owner(child, actor, verb="retry")
            events.append(await _requeue(session, child, actor=actor))
        frontier = [c.id for c in children]
    session.add(
        AuditEntry(actor=actor.key_id, role=actor.role, action="job.retry", job_id=job.id,
                   outcome="ok", client=actor.client, detail={"requeued": len(events)})
    )  # fmt: skip
    await session.flush()
    await session.refresh(job)
    return job, events


async def _requeue(session: AsyncSession, job: Job, *, actor: Actor) -> JobStateChanged:
    """failed/cancelled -> blocked (parents unfinished), or ready; refused if a parent
    is itself failed or cancelled (retry that one first)."""
    parents = await transitions.lock_parents(session, sorted(job.depends_on or []))
    gone = sorted(str(p) for p in set(job.depends_on or []) - set(parents))
    if gone:
        # Deleted by retention (SWITCHYARD_RETENTION_DAYS): whether it completed is no
        # longer known, so the dependency cannot be honoured.
        raise JobConflict(
            f"job {job.id} depends on {', '.join(gone)}, which no longer exists (deleted "
            "after SWITCHYARD_RETENTION_DAYS): submit a new job instead"
        )
    dead = sorted(str(p) for p, st in parents.items() if st in (S.FAILED, S.CANCELLED))
    if dead:
        raise JobConflict(
            f"job {job.id} depends on {', '.join(dead)}, which did not complete: retry "
            "that first (or retry it with dependents=true)"
        )
    unmet = sum(1 for st in parents.values() if st != S.COMPLETED)
    event = await transitions.requeue(
        session, job.id, S(job.status), unmet=unmet, by=actor.label or actor.key_id
    )
    if event is None:  # the row is locked by us: it cannot have moved on
        raise JobConflict(f"job {job.id} changed while being retried; try again")
    return event
