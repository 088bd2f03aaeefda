"""Periodic jobs: cron schedules the scheduler turns into jobs, once per fire time.

Exactly once: each occurrence is submitted with the idempotency key
``schedule:<id>:<fire time>`` in the same transaction that moves ``next_run_at`` on,
so neither a retry nor a scheduler failover can create it twice.

Missed fires (no active scheduler for a while): **run once** — the latest missed fire
time is submitted, the older ones are skipped, and the schedule continues from now.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import ValidationError
from sqlalchemy import Text, cast, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Actor
from shared.catalog import TaskCatalog
from shared.errors import InvalidJobRequest, JobConflict, JobNotFound
from shared.ids import uuid7
from shared.jobs.prepare import Limits, prepare_submission
from shared.jobs.submit import schedule_fire_key, submit_jobs
from shared.messages import JobStateChanged
from shared.models import ApiKey, AuditEntry, Schedule
from shared.schemas import JobCreate, ScheduleCreate, ScheduleUpdate

# croniter's own extensions: a random ('R') or hashed ('H') minute, hour, ...: a
# schedule whose fire times nobody chose (not a letter of a name such as THU).
CHOSEN_BY_CRONITER = re.compile(r"(?<![A-Za-z])[RrHh](?![A-Za-z])")
# A file of the zone database that is the host's own zone, whatever it is.
HOST_ZONES = frozenset({"localtime"})


def parse_cron(expr: str, tz_name: str) -> ZoneInfo:
    """Validate a cron expression and a time zone; raise InvalidJobRequest naming the fault."""
    fields = expr.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(expr):
        raise InvalidJobRequest(
            f"cron: {expr!r} is not a cron expression: give 5 fields (minute hour day month "
            "weekday), e.g. '*/5 * * * *', or 6 with seconds last"
        )
    if any(CHOSEN_BY_CRONITER.search(field) for field in fields):
        raise InvalidJobRequest(
            f"cron: {expr!r} leaves a time to chance ('R' picks a random one, 'H' a hashed "
            "one): give the minute and hour the job should fire at"
        )
    try:
        if tz_name in HOST_ZONES:
            raise ValueError(tz_name)
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidJobRequest(
            f"timezone: {tz_name!r} is not an IANA time zone (e.g. Europe/Paris)"
        ) from None
    check_cron_fires(expr, tz)
    return tz


def check_cron_fires(expr: str, tz: ZoneInfo) -> None:
    """Refuse a valid-looking cron that names no real time (the 30th of February):
    croniter can only give up on it, at creation or, worse, at every scheduler cycle."""
    try:
        next_fire(expr, tz, datetime.now(UTC))
    except (ValueError, OverflowError):  # CroniterBadDateError is a ValueError
        raise InvalidJobRequest(
            f"cron: {expr!r} never fires: its day and month never meet (e.g. 30 2 is the "
            "30th of February); check the day-of-month and month fields"
        ) from None


def _pause(session: AsyncSession, sched: Schedule, outcome: str, error: str) -> None:
    """Pause a due schedule instead of firing it, with the audit row that says why."""
    sched.paused = True
    by = f"schedule:{sched.id}"
    session.add(
        AuditEntry(
            actor=by,
            role="admin",
            action="schedule.pause",
            outcome=outcome,
            client=by,
            detail={"schedule_id": str(sched.id), "error": error},
        )
    )


async def _revoked_creators(session: AsyncSession, creators: set[str]) -> set[str]:
    """Which of these key ids (a schedule's ``created_by``) are revoked keys."""
    if not creators:
        return set()
    rows = await session.scalars(
        select(ApiKey.id).where(cast(ApiKey.id, Text).in_(creators), ApiKey.revoked_at.is_not(None))
    )
    return {str(key_id) for key_id in rows}


def latest_missed_fire(expr: str, tz: ZoneInfo, due: datetime, now: datetime) -> datetime:
    """The last fire time at or before ``now`` of a schedule due at ``due`` (<= ``now``).
    Looked for from a window before ``now`` that grows fourfold until it holds a fire,
    then walked: a few calls of ``next_fire`` however long the schedule was missed (a
    walk from ``due`` took 259,200 calls, 44 s of a stalled scheduler, for an
    every-second schedule missed for three days)."""
    fire = due
    lookback = timedelta(minutes=1)
    while (start := now - lookback) > fire:
        candidate = next_fire(expr, tz, start)
        if candidate <= now:
            fire = candidate
            break
        lookback *= 4
    while (following := next_fire(expr, tz, fire)) <= now:
        fire = following
    return fire


def next_fire(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first fire time after ``after`` (UTC), in the schedule's wall-clock time.

    Across daylight-saving changes (docs/api.md#schedules): an expression with fixed
    minutes and hours names times of day, and fires once per wall-clock time: a time the
    autumn change repeats fires at its first occurrence only, and a time the spring
    change skips fires once, right after the gap. One with ``*`` in its minute or hour
    field (``0 * * * *``, ``*/15 * * * *``) follows real time: it fires in both passes
    of a repeated hour and not in the hour that does not exist.
    """
    times_of_day = not any("*" in field for field in expr.split()[:2])
    fires = croniter(expr, after.astimezone(tz))
    while True:
        local: datetime = fires.get_next(datetime)
        if not (times_of_day and _repeated_later(local)):
            return local.astimezone(UTC)


def _repeated_later(local: datetime) -> bool:
    """A wall-clock time that occurs twice (the autumn change), at its second occurrence."""
    return local.utcoffset() != local.replace(fold=0).utcoffset()


async def _check_job(
    session: AsyncSession, catalog: TaskCatalog, job: JobCreate, actor: Actor, limits: Limits
) -> None:
    if job.depends_on:
        raise InvalidJobRequest("job.depends_on: a scheduled job cannot depend on other jobs")
    if job.idempotency_key or job.run_at:
        raise InvalidJobRequest("job: idempotency_key and run_at are set by the schedule itself")
    await prepare_submission(session, catalog, job, actor, limits, where="job.")


async def create_schedule(
    session: AsyncSession,
    body: ScheduleCreate,
    *,
    catalog: TaskCatalog,
    actor: Actor,
    limits: Limits,
) -> Schedule:
    tz = parse_cron(body.cron, body.timezone)
    await _check_job(session, catalog, body.job, actor, limits)
    row = Schedule(
        id=uuid7(),
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        job=body.job.model_dump(mode="json", exclude_defaults=True),
        paused=body.paused,
        next_run_at=next_fire(body.cron, tz, datetime.now(UTC)),
        created_by=actor.key_id,
    )
    try:
        async with session.begin_nested():  # a name taken (even meanwhile) undoes this alone
            session.add(row)
            session.add(_audit(actor, "schedule.create", row.id))
            await session.flush()
    except IntegrityError as exc:
        if "schedules_name_key" not in str(exc.orig):
            raise
        raise JobConflict(f"name: a schedule named {body.name!r} exists already") from None
    await session.refresh(row)
    return row


async def get_schedule(
    session: AsyncSession, schedule_id: UUID, *, for_update: bool = False
) -> Schedule:
    stmt = select(Schedule).where(Schedule.id == schedule_id)
    row = await session.scalar(stmt.with_for_update() if for_update else stmt)
    if row is None:
        raise JobNotFound(f"no schedule with id {schedule_id}")
    return row


async def update_schedule(
    session: AsyncSession, schedule_id: UUID, body: ScheduleUpdate, *, catalog: TaskCatalog,
    actor: Actor, limits: Limits,
) -> Schedule:  # fmt: skip
    row = await get_schedule(session, schedule_id, for_update=True)
    cron = body.cron if body.cron is not None else row.cron
    tz_name = body.timezone if body.timezone is not None else row.timezone
    if (cron, tz_name) != (row.cron, row.timezone):
        tz = parse_cron(cron, tz_name)
    else:  # as stored: a rule added since does not keep a schedule from being paused
        tz = ZoneInfo(tz_name)
    if body.job is not None:
        await _check_job(session, catalog, body.job, actor, limits)
        row.job = body.job.model_dump(mode="json", exclude_defaults=True)
    if body.paused is not None:
        row.paused = body.paused
    if (cron, tz_name) != (row.cron, row.timezone) or body.paused is False:
        row.next_run_at = next_fire(cron, tz, datetime.now(UTC))
    row.cron, row.timezone = cron, tz_name
    row.updated_at = datetime.now(UTC)
    session.add(
        _audit(
            actor, "schedule.update", row.id, detail=body.model_dump(mode="json", exclude_none=True)
        )
    )
    await session.flush()
    return row


async def delete_schedule(session: AsyncSession, schedule_id: UUID, *, actor: Actor) -> None:
    row = await get_schedule(session, schedule_id, for_update=True)
    await session.delete(row)
    session.add(_audit(actor, "schedule.delete", schedule_id))
    await session.flush()


def _audit(
    actor: Actor, action: str, schedule_id: UUID, detail: dict[str, Any] | None = None
) -> AuditEntry:
    return AuditEntry(
        actor=actor.key_id, role=actor.role, action=action, outcome="ok", client=actor.client,
        detail={"schedule_id": str(schedule_id), **(detail or {})},
    )  # fmt: skip


async def fire_due_schedules(
    session: AsyncSession, *, catalog: TaskCatalog, limits: Limits, limit: int = 100
) -> tuple[list[JobStateChanged], list[Any]]:
    """Submit one job for each due schedule (the latest missed fire time), move
    ``next_run_at`` past now. Returns the events and the new jobs (caller commits)."""
    now = datetime.now(UTC)
    due = list(
        await session.scalars(
            select(Schedule)
            .where(Schedule.paused.is_(False), Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    events: list[JobStateChanged] = []
    jobs: list[Any] = []
    revoked = await _revoked_creators(session, {s.created_by for s in due if s.created_by})
    for sched in due:
        if sched.created_by in revoked:
            # Its jobs would run as an admin whose key no longer acts (a revocation takes
            # effect at once). Resumed, it would pause again: it is still that key's.
            _pause(session, sched, "owner_revoked", "its creator's API key was revoked: "
                   "create it again with an active admin key")  # fmt: skip
            continue
        tz = ZoneInfo(sched.timezone)
        assert sched.next_run_at is not None
        fire = latest_missed_fire(sched.cron, tz, sched.next_run_at, now)  # run once
        # The job is its creator's (who may cancel or retry it like any own job); the
        # audit row's client says which schedule submitted it. Its key is in the
        # namespace clients may not use, so no job of theirs can stand in for it.
        actor = Actor(
            key_id=sched.created_by or f"schedule:{sched.id}", role="admin",
            label=f"schedule {sched.name}", client=f"schedule:{sched.id}",
        )  # fmt: skip
        try:
            spec = JobCreate.model_validate(
                {**sched.job, "idempotency_key": schedule_fire_key(sched.id, fire)}
            )
            async with session.begin_nested():
                result = await submit_jobs(
                    session, catalog=catalog, specs=[spec], actor=actor, limits=limits,
                    batch=False, schedule_fire=True,
                )  # fmt: skip
            events.extend(result.events)
            jobs.extend(
                j for j, created in zip(result.jobs, result.created, strict=True) if created
            )
            sched.last_job_id = result.jobs[0].id
        except (InvalidJobRequest, ValidationError) as exc:
            # The task type or its parameters changed since: pause rather than fail forever.
            error = exc.message if isinstance(exc, InvalidJobRequest) else str(exc)[:1000]
            _pause(session, sched, "invalid", error)
        sched.last_run_at = fire
        sched.next_run_at = next_fire(sched.cron, tz, now)
    await session.flush()
    return events, jobs
