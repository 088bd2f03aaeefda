"""``/jobs``: submit, batch submit, read, list, cancel, retry, logs, why, bulk.

The routes that answer with jobs declare their schema (``response_model``: ``JobRead``,
``BatchRead``, ``JobPage``) for the OpenAPI document, and answer with the bytes of the
one job encoder (``shared.jobs.views``), which writes exactly those schemas.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request, Response

from services.api.deps import SessionDep, SubmitterDep, ViewerDep, error_responses
from services.api.events import publish_after_commit
from shared.jobs.bulk import run_bulk
from shared.jobs.commands import cancel_job, retry_job
from shared.jobs.listing import JobSelection, list_page
from shared.jobs.logs import LOG_PAGE_DEFAULT, LOG_PAGE_MAX, InvalidLogCursor, job_log_page
from shared.jobs.plain_batch import PlainBatch
from shared.jobs.reads import get_job
from shared.jobs.submit import (
    IdempotencyRace,
    SubmitResult,
    can_submit_batch_fast,
    can_submit_fast,
    submit_batch_fast,
    submit_jobs,
    submit_one_fast,
)
from shared.jobs.views import batch_json, job_json, page_json
from shared.jobs.why import explain_job
from shared.messages import JobCancel, JobStateChanged, JobSubmitted, _Message
from shared.schemas import (
    BatchCreate,
    BatchRead,
    BulkAction,
    BulkError,
    BulkResult,
    JobCreate,
    JobLogs,
    JobPage,
    JobRead,
    Priority,
    WhyRead,
    WireTime,
)
from shared.states import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _json(body: bytes, *, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")


async def _submit(
    request: Request,
    session: SessionDep,
    actor: Any,
    specs: list[Any],
    *,
    batch: bool,
) -> SubmitResult:
    state = request.app.state
    for attempt in (1, 2):
        try:
            result = await submit_jobs(
                session,
                catalog=state.catalog,
                specs=specs,
                actor=actor,
                limits=state.limits,
                batch=batch,
            )
            await session.commit()
            break
        except IdempotencyRace:
            await session.rollback()
            if attempt == 2:
                raise
        except BaseException:
            await session.rollback()
            raise
    created = [job for job, new in zip(result.jobs, result.created, strict=True) if new]
    _announce(state, result.events, created)
    return result


def _announce(state: Any, events: list[JobStateChanged], created: list[Any]) -> None:
    """After the commit: the state events, one wake-up hint per request (it only tells
    the scheduler to look now) for the first job it has something to do with, and the
    submitted counter."""
    messages: list[_Message] = list(events)
    hinted = next((j for j in created if j.status in (JobStatus.READY, JobStatus.PENDING)), None)
    if hinted is not None:
        priority = Priority.from_rank(hinted.priority)
        messages.append(JobSubmitted(job_id=hinted.id, type=hinted.type, priority=priority))
    publish_after_commit(state, messages)
    counts = Counter((job.type, job.priority) for job in created)
    for (job_type, rank), n in counts.items():
        state.metrics.submitted.labels(job_type, Priority.from_rank(rank).value).inc(n)


@router.post(
    "",
    name="job.submit",
    status_code=201,
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 413, 422, 503)
    | {200: {"model": JobRead, "description": "idempotent repeat: the stored job"}},
)
async def submit_job(body: JobCreate, request: Request, actor: SubmitterDep) -> Response:
    """Submit one job. With an ``idempotency_key`` already used for the same request,
    answers 200 with the stored job and runs nothing new."""
    state = request.app.state
    # No session is opened for the common submit: it needs one only when the task
    # catalog has to read a type, and a session costs its setup and close even unused
    # (a generator dependency would cost an exit stack more; docs/performance-history.md).
    if can_submit_fast(body) and state.inserts is not None:
        return _json(await submit_fast(state, body, actor), status_code=201)
    async with state.sessionmaker() as session:
        result = await _submit(request, session, actor, [body], batch=False)
    return _json(job_json(result.jobs[0]), status_code=201 if result.created[0] else 200)


SUBMIT_ROUTE = next(r for r in router.routes if getattr(r, "name", None) == "job.submit")


async def submit_fast(state: Any, spec: JobCreate, actor: Any) -> bytes:
    """A job ``can_submit_fast`` accepts, stored and announced: the answer's body. The
    route above and ``services/api/fast_submit.py`` (which answers most such requests
    before FastAPI's layers) both submit through here."""
    job, event = await submit_one_fast(
        state.inserts, state.sessionmaker, catalog=state.catalog, spec=spec, actor=actor,
        limits=state.limits,
    )  # fmt: skip
    _announce(state, [event], [job])
    return job_json(job)


@router.post(
    "/batch",
    name="job.batch_submit",
    status_code=201,
    response_model=BatchRead,
    responses=error_responses(401, 403, 404, 413, 422, 503),
)
async def submit_batch(body: BatchCreate, request: Request, actor: SubmitterDep) -> Response:
    """Submit a DAG at once: ``depends_on`` may name ``@ref`` of any job of the same
    request, or ids of stored jobs. All or nothing; a cycle is refused naming it."""
    state = request.app.state
    slots = state.batch_connections
    if can_submit_batch_fast(body.jobs) and slots is not None and not slots.locked():
        async with slots:
            fast = await submit_batch_fast(
                state.pool, catalog=state.catalog, specs=body.jobs, actor=actor,
                limits=state.limits, meanwhile=PlainBatch.answer,
            )  # fmt: skip
        if fast is not None:
            jobs, events, answer = fast
            _announce(state, events, jobs)
            return _json(answer, status_code=201)
    async with state.sessionmaker() as session:
        result = await _submit(request, session, actor, body.jobs, batch=True)
    return _json(batch_json(result.jobs), status_code=201)


@router.get(
    "",
    name="jobs.list",
    response_model=JobPage,
    responses=error_responses(401, 403, 422, 503),
)
async def list_jobs_route(
    request: Request,
    session: SessionDep,
    actor: ViewerDep,
    status: Annotated[list[JobStatus] | None, Query(description="repeat to OR")] = None,
    type: Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]+$")] = None,
    priority: Priority | None = None,
    created_after: WireTime | None = None,
    created_before: WireTime | None = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"^[^\x00]+$",
            description="jobs whose name starts with this (case-sensitive prefix)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500, pattern=r"^[A-Za-z0-9_=-]+$")] = None,
) -> Response:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    selection = JobSelection(
        status=status,
        type=type,
        priority=priority,
        created_after=created_after,
        created_before=created_before,
        name_prefix=name,
    )
    jobs, next_cursor = await list_page(
        session, selection=selection, limit=limit, cursor=cursor,
        name_search_seconds=request.app.state.settings.max_name_search_seconds,
    )  # fmt: skip
    return _json(page_json(jobs, next_cursor))


@router.post(
    "/bulk",
    name="job.bulk",
    response_model=BulkResult,
    responses=error_responses(401, 403, 413, 422, 503),
)
async def bulk_route(
    body: BulkAction, request: Request, session: SessionDep, actor: SubmitterDep
) -> BulkResult:
    """Cancel or retry every job a filter selects, each by the rules of the single-job
    route (a job they refuse is counted in ``skipped``); at most ``limit`` (at most
    1,000) jobs, oldest first (``truncated`` says more matched). Without a
    ``status`` filter, only the jobs the action applies to are selected; a submitter's
    filter selects only its own jobs. ``dry_run``: nothing changes, the counts are what
    would happen now. A chunk the database fails (a deadlock, an outage) stops the call:
    503 (500 for anything else) with ``partial: true`` and the counts of what stays done;
    sending it again is safe and acts on the rest."""
    criteria = body.filter
    selection = JobSelection(
        status=criteria.status,
        type=criteria.type,
        priority=criteria.priority,
        created_after=criteria.created_after,
        created_before=criteria.created_before,
        ids=criteria.ids,
        name_prefix=criteria.name,
    )
    if selection.is_empty():
        # An empty filter would be every job: never by accident.
        raise HTTPException(
            422,
            "filter: give at least one of status, type, priority, created_after, "
            "created_before, ids, name (an empty filter would select every job)",
        )
    state = request.app.state

    def on_changed(action: str, result: Any) -> None:
        if action == "cancel":
            publish_after_commit(state, _cancel_messages(*result))
        else:
            publish_after_commit(state, _retry_messages(result[1]))

    outcome = await run_bulk(
        session,
        action=body.action,
        selection=selection,
        actor=actor,
        limit=body.limit,
        dry_run=body.dry_run,
        on_changed=on_changed,
        request=_bulk_request_detail(body),
        name_search_seconds=state.settings.max_name_search_seconds,
    )
    return BulkResult(
        action=body.action,
        dry_run=body.dry_run,
        matched=outcome.matched,
        changed=outcome.changed,
        skipped=outcome.skipped,
        truncated=outcome.truncated,
        errors=[BulkError(id=i, detail=d) for i, d in outcome.errors],
    )


def _bulk_request_detail(body: BulkAction) -> dict[str, Any]:
    """The request as its audit row keeps it: the ids given are counted, not listed."""
    detail = body.model_dump(mode="json", exclude_none=True)
    if body.filter.ids:
        detail["filter"]["ids"] = f"{len(body.filter.ids)} ids"
    return detail


@router.get(
    "/{job_id}",
    name="jobs.get",
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_job_route(job_id: UUID, session: SessionDep, actor: ViewerDep) -> Response:
    return _json(job_json(await get_job(session, job_id)))


@router.patch(
    "/{job_id}/cancel",
    name="job.cancel",
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def cancel_job_route(
    job_id: UUID, request: Request, session: SessionDep, actor: SubmitterDep
) -> Response:
    """Not yet running: cancelled at once (its dependents fail). Running: the worker is
    told, the answer shows ``cancel_requested: true``, the job ends ``cancelled`` soon."""
    try:
        job, events, notify_worker = await cancel_job(session, job_id, actor=actor)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    publish_after_commit(request.app.state, _cancel_messages(job, events, notify_worker))
    return _json(job_json(job))


def _cancel_messages(
    job: Any, events: list[JobStateChanged], notify_worker: bool
) -> list[_Message]:
    """What a committed cancel announces: its state events; a running job's worker told."""
    messages: list[_Message] = list(events)
    if notify_worker:
        messages.append(JobCancel(job_id=job.id, attempt=job.attempts))
    return messages


@router.post(
    "/{job_id}/retry",
    name="job.retry",
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def retry_job_route(
    job_id: UUID,
    request: Request,
    session: SessionDep,
    actor: SubmitterDep,
    dependents: Annotated[
        bool, Query(description="also re-run the jobs that failed because of it")
    ] = False,
) -> Response:
    """Dead-letter requeue: re-run a failed or cancelled job. Same id, its history kept,
    attempt numbers continue, and ``max_attempts`` more attempts are allowed."""
    try:
        job, events = await retry_job(session, job_id, actor=actor, dependents=dependents)
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    publish_after_commit(request.app.state, _retry_messages(events))
    return _json(job_json(job))


def _retry_messages(events: list[JobStateChanged]) -> list[_Message]:
    """What a committed retry announces: its state events, a wake-up for each ready job."""
    messages: list[_Message] = list(events)
    messages.extend(
        JobSubmitted(job_id=e.job_id, type=e.type, priority="retry")
        for e in events
        if e.new_status == "ready"
    )
    return messages


@router.get(
    "/{job_id}/logs",
    name="jobs.logs",
    response_model=JobLogs,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def job_logs_route(
    job_id: UUID,
    session: SessionDep,
    actor: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=LOG_PAGE_MAX)] = LOG_PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobLogs:
    """Every attempt (``executions``) and exactly the lines the task logged, in order,
    ``limit`` at a time: pass ``next_cursor`` back as ``cursor`` for the next page."""
    try:
        return await job_log_page(session, job_id, limit=limit, cursor=cursor)
    except InvalidLogCursor as exc:
        raise HTTPException(422, str(exc)) from None


@router.get(
    "/{job_id}/why",
    name="jobs.why",
    response_model=WhyRead,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def why_route(
    job_id: UUID, request: Request, session: SessionDep, actor: ViewerDep
) -> WhyRead:
    """Why the job is where it is: a reason code and message, its dependencies with
    their statuses, its priority after aging and how many ready jobs go before it, and
    for each live worker whether it could take it (free vs needed CPU, memory, slots,
    task type)."""
    settings = request.app.state.settings
    return await explain_job(
        session,
        job_id,
        aging_seconds=settings.aging_seconds,
        lease_seconds=settings.worker_lease_seconds,
    )
