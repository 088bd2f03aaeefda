"""Reads of jobs: one job, a page of the list, its logs, and what the scheduler reads.

Whole rows for the API come through the ORM model (``Job``); the list page and the
scheduler's reads are statements of ``shared.jobs.sql`` (the list page is the statement
``make bench`` measures).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Db, fetch
from shared.errors import InvalidJobRequest, JobNotFound
from shared.jobs import sql
from shared.jobs.parking import as_arrays
from shared.models import Job, JobDependency
from shared.schemas import check_time_range
from shared.states import JobStatus

S = JobStatus


async def get_job(session: AsyncSession, job_id: UUID, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update(key_share=True)
    job = await session.scalar(stmt)
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


Row = TypeVar("Row")


def within_budget(
    rows: Sequence[Row], limit: int, budget: int, weighed: Callable[[Row], int]
) -> tuple[list[Row], bool]:
    """A page read with one row past its ``limit`` and with the first row past its byte
    ``budget`` (``weighed``: what the page weighs up to and with a row): the rows within
    both (the first one always), and whether more follow."""
    page = [r for r in rows[:limit] if weighed(r) <= budget] or list(rows[:1])
    return page, len(rows) > len(page)


def encode_cursor(job: Any) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        # A crafted cursor is client input like any other: the same time range.
        return check_time_range(datetime.fromisoformat(created)), UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJobRequest(
            "cursor: not a cursor this API issued; pass next_cursor from the previous page"
        ) from None


async def jobs_by_idempotency_key(session: AsyncSession, keys: list[str]) -> dict[str, Job]:
    found = await session.scalars(select(Job).where(Job.idempotency_key.in_(keys)))
    return {job.idempotency_key: job for job in found if job.idempotency_key}


async def failed_by_dependency(session: AsyncSession, parents: list[UUID]) -> list[Job]:
    """The children of ``parents`` that failed because a dependency did, locked FOR NO
    KEY UPDATE (to requeue them). Each child is reached through its edges and its key:
    the status is checked in a form no index matches (``guards.unindexed_in``'s), so no
    plan reads every failed job of the history instead."""
    stmt = (
        select(Job)
        .join(JobDependency, JobDependency.job_id == Job.id)
        .where(
            JobDependency.depends_on_id.in_(parents),
            (Job.status == S.FAILED.value).is_(True),
            Job.error.like("dependency %"),
        )
        .order_by(Job.id)
        .with_for_update(key_share=True)
    )
    return list(await session.scalars(stmt))


# ------------------------------------------------------------------- the scheduler's


async def ready_heads(
    db: Db, *, per_priority: int, fitting: Iterable[tuple[str, float, int]] | None = None
) -> list[asyncpg.Record]:
    """The heads of the ready queue, ``per_priority`` of each priority (a plain read).
    With ``fitting`` (rows of a task type and the free CPU and memory of a worker with a
    free slot that runs it), also the heads of the jobs that fit one of those rows; a
    job may then come twice."""
    if fitting is None:
        return await fetch(db, sql.CLAIM_READY_HEADS, per_priority)
    return await fetch(db, sql.CLAIM_READY_HEADS_AND_FITTING, per_priority, *as_arrays(fitting))


async def running_jobs(db: Db) -> list[asyncpg.Record]:
    """Running jobs (id, worker_id, attempts, cpu_units, memory_mb)."""
    return await fetch(db, sql.RUNNING_JOBS)


async def running_cancel_requests(db: Db) -> list[tuple[UUID, int]]:
    """Running attempts whose cancel was requested: (job, attempt)."""
    return [(r["id"], r["attempts"]) for r in await fetch(db, sql.RUNNING_CANCEL_REQUESTS)]


async def current_attempts(db: Db, ids: list[UUID]) -> dict[UUID, int]:
    return {r["id"]: r["attempts"] for r in await fetch(db, sql.CURRENT_ATTEMPTS, ids)}
