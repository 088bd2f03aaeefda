"""Submission: validated jobs (``shared.jobs.prepare``) stored with their edges and
audit row, in the caller's transaction (``submit_jobs``) or, for a job with no parent and
no idempotency key, in one statement (``submit_one_fast``; several such submits that
arrive together share one, ``shared.jobs.grouped``), and for a batch none of whose jobs
has a parent or a key, in a transaction of its own, by parts (``submit_batch_fast``).

Each returns the ``job.state`` events to publish after the commit.
"""

from __future__ import annotations

import asyncio
import graphlib
from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.auth import Actor
from shared.catalog import TaskCatalog, TaskTypeInfo
from shared.db import json_text, pool_transaction
from shared.errors import InvalidJobRequest, UnknownDependency
from shared.jobs import reads, sql, transitions
from shared.jobs.events import submitted_event, utcnow
from shared.jobs.grouped import GroupedInserts
from shared.jobs.plain_batch import Created, PlainBatch
from shared.jobs.prepare import Limits, Prepared, prepare, resolve_batch_refs
from shared.jobs.prepare import task_type as lookup_task_type
from shared.jobs.rows import is_plain, job_row, plain_row, start_time, wire_columns, wire_row
from shared.messages import JobStateChanged
from shared.models import AuditEntry, JobDependency
from shared.schemas import BatchJobCreate, JobCreate
from shared.states import JobStatus, initial_status

S = JobStatus


@dataclass
class SubmitResult:
    jobs: list[Any]  # stored rows, read by attribute (ORM rows or the inserted values)
    created: list[bool]
    events: list[JobStateChanged]


class IdempotencyRace(Exception):
    """Internal: retry the submission (another request inserted the same key first)."""


# Idempotency keys that start with this are the scheduler's, one per fire of a schedule
# (``schedule_fire_key``). Clients may not use them: a job of theirs under a fire's key
# would be taken for that fire, or its different request would make the fire fail.
SCHEDULE_KEY_PREFIX = "schedule:"


def schedule_fire_key(schedule_id: UUID, fire: datetime) -> str:
    return f"{SCHEDULE_KEY_PREFIX}{schedule_id}:{fire.isoformat()}"


def _refuse_reserved_key(spec: JobCreate | BatchJobCreate, *, where: str) -> None:
    if spec.idempotency_key and spec.idempotency_key.startswith(SCHEDULE_KEY_PREFIX):
        raise InvalidJobRequest(
            f"{where}idempotency_key: keys starting with {SCHEDULE_KEY_PREFIX!r} are reserved "
            "for schedule fires; choose another key"
        )


async def submit_jobs(
    session: AsyncSession,
    *,
    catalog: TaskCatalog,
    specs: Sequence[JobCreate | BatchJobCreate],
    actor: Actor,
    limits: Limits,
    batch: bool,
    schedule_fire: bool = False,
) -> SubmitResult:
    """Validate, then insert jobs, edges and the audit row (caller commits).

    Only a ``schedule_fire`` may use a key of ``SCHEDULE_KEY_PREFIX``.
    Raises InvalidJobRequest / UnknownDependency / PermissionDenied and writes nothing
    in that case (the caller rolls back).
    """
    if not schedule_fire:
        for i, spec in enumerate(specs):
            _refuse_reserved_key(spec, where=f"jobs[{i}]." if batch else "")
    lookup = _session_lookup(session, catalog)
    items = await _prepare_all(lookup, specs, actor, limits, batch=batch)
    await _find_repeats(session, items)
    parents = await _lock_stored_parents(session, items)
    now = utcnow()
    rows, edges = _new_rows(items, parents, actor=actor, now=now)
    stored: dict[UUID, Any] = {it.existing.id: it.existing for it in items if it.existing}
    if rows:
        if await transitions.insert_jobs(session, wire_columns(rows)) != len(rows):
            # A concurrent request took one of our idempotency keys between our check
            # and our insert; the caller retries once and then sees the stored job.
            raise IdempotencyRace()
        # The stored rows are what we inserted plus the columns' defaults: nothing is
        # read back (see docs/performance-history.md).
        stored.update((row["id"], SimpleNamespace(**sql.INSERT_DEFAULTS, **row)) for row in rows)
    if edges:
        await session.execute(insert(JobDependency), edges)
    await _audit(session, items, actor=actor, batch=batch)
    jobs = [stored[it.existing.id if it.existing else it.id] for it in items]
    events = [
        submitted_event(job, ts=now)
        for job, it in zip(jobs, items, strict=True)
        if it.existing is None
    ]
    return SubmitResult(jobs=jobs, created=[it.existing is None for it in items], events=events)


# A task type by name, for the job at ``where`` (raises InvalidJobRequest naming it).
TypeLookup = Callable[[str, str], Awaitable[TaskTypeInfo]]


def _session_lookup(session: AsyncSession, catalog: TaskCatalog) -> TypeLookup:
    return lambda name, where: lookup_task_type(session, catalog, name, where=where)


async def _prepare_all(
    lookup: TypeLookup,
    specs: Sequence[JobCreate | BatchJobCreate],
    actor: Actor,
    limits: Limits,
    *,
    batch: bool,
) -> list[Prepared]:
    if batch:
        _refuse_too_many(specs, limits)
    tasks: dict[str, TaskTypeInfo] = {}  # each type looked up once per request
    items = []
    for i, spec in enumerate(specs):
        where = _batch_where(i) if batch else ""
        task = tasks.get(spec.type)
        if task is None:
            task = tasks[spec.type] = await lookup(spec.type, where)
        items.append(prepare(task, spec, actor, limits, where=where))
    if batch:
        resolve_batch_refs(items)
    else:
        for item in items:
            item.external_deps = list(dict.fromkeys(item.spec.depends_on))  # type: ignore[arg-type]
    return items


def _refuse_too_many(specs: Sized, limits: Limits) -> None:
    if len(specs) > limits.max_batch_jobs:
        raise InvalidJobRequest(
            f"jobs: the batch has {len(specs)} jobs; the limit is {limits.max_batch_jobs}"
        )


def _batch_where(i: int) -> str:
    """Where a batch job's errors say they are."""
    return f"jobs[{i}]."


async def _find_repeats(session: AsyncSession, items: list[Prepared]) -> None:
    """Idempotent repeats: same key and same request -> the stored job (``existing``).
    A batch job that is a repeat is a stored job: its children depend on it like on any
    stored parent (same lock, its real id)."""
    keys = [it.spec.idempotency_key for it in items if it.spec.idempotency_key]
    if len(set(keys)) != len(keys):
        raise InvalidJobRequest("idempotency_key: the same key is used twice in one request")
    if not keys:
        return
    found = await reads.jobs_by_idempotency_key(session, keys)
    for it in items:
        job = found.get(it.spec.idempotency_key) if it.spec.idempotency_key else None
        if job is None:
            continue
        if job.idempotency_fingerprint != it.fingerprint:
            raise InvalidJobRequest(
                f"idempotency_key {it.spec.idempotency_key!r} was already used for a "
                f"different request (job {job.id}); use a new key for a new job"
            )
        it.existing = job
    for it in items:
        for j in list(it.local_deps):
            parent = items[j].existing
            if parent is not None:
                it.local_deps.remove(j)
                if parent.id not in it.external_deps:
                    it.external_deps.append(parent.id)


async def _lock_stored_parents(session: AsyncSession, items: list[Prepared]) -> dict[UUID, str]:
    """Dependencies on stored jobs: they must exist; their status is kept still until we
    commit, so a parent finishing right now cannot miss our new edge."""
    external = {d for it in items for d in it.external_deps}
    if not external:
        return {}
    parents = await transitions.lock_parents(session, sorted(external))
    missing = sorted(str(d) for d in external - parents.keys())
    if missing:
        raise UnknownDependency(f"depends_on: no job with id {', '.join(missing)}")
    return parents


def _new_rows(
    items: list[Prepared], parents: dict[UUID, str], *, actor: Actor, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``jobs`` rows of the new items, parents first, each with its first status
    (``shared.states.initial_status``), and their dependency edges."""
    order: list[int] = list(range(len(items)))  # only a DAG needs sorting
    if any(it.local_deps for it in items):
        graph = {i: it.local_deps for i, it in enumerate(items)}
        order = list(graphlib.TopologicalSorter(graph).static_order())
    statuses: dict[int, str] = {}
    rows: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i in order:
        it = items[i]
        if it.existing is not None:
            statuses[i] = it.existing.status
            continue
        unmet, failed, dep_ids = 0, None, []
        if it.external_deps or it.local_deps:
            parent_statuses = [(d, parents[d]) for d in it.external_deps] + [
                (items[j].id, statuses[j]) for j in it.local_deps
            ]
            unmet = sum(1 for _, st in parent_statuses if st not in _DONE_OR_DEAD)
            failed = next(
                (f"dependency {d} {st}" for d, st in parent_statuses if st in _DEAD), None
            )
            dep_ids = list(
                dict.fromkeys([*it.external_deps, *(items[j].id for j in it.local_deps)])
            )
            edges.extend({"job_id": it.id, "depends_on_id": d} for d in dep_ids)
        run_at = start_time(it.spec.run_at, now)
        status = initial_status(
            unmet_dependencies=unmet, failed_dependency=failed is not None, delayed=run_at > now
        )
        statuses[i] = status
        rows.append(
            job_row(
                it, status=status, run_at=run_at, now=now, actor=actor, dep_ids=dep_ids,
                unmet=0 if failed else unmet, error=failed,
            )
        )  # fmt: skip
    return rows, edges


_DEAD = frozenset({S.FAILED, S.CANCELLED})
_DONE_OR_DEAD = _DEAD | {S.COMPLETED}


async def _audit(
    session: AsyncSession, items: list[Prepared], *, actor: Actor, batch: bool
) -> None:
    new_ids = [it.id for it in items if it.existing is None]
    first = items[0].existing.id if items[0].existing else items[0].id
    # A Core insert: no unit-of-work flush on the request path.
    row = _audit_row(actor, batch=batch, first=first, new_ids=new_ids)
    await session.execute(insert(AuditEntry).values(**row, status_code=None))


def _audit_row(
    actor: Actor, *, batch: bool, first: UUID, new_ids: Sequence[UUID]
) -> dict[str, Any]:
    """A submission's audit row (``sql.AUDIT_COLUMNS``): who, which action, its job (a
    single submit's), whether it made new jobs, and their ids (the first 1,000) and
    how many."""
    return {
        "actor": actor.key_id,
        "role": actor.role,
        "action": "job.batch_submit" if batch else "job.submit",
        "client": actor.client,
        "job_id": None if batch else first,
        "outcome": "ok" if new_ids else "idempotent_repeat",
        "detail": {"job_ids": [str(i) for i in new_ids[:1000]], "count": len(new_ids)},
    }


def _audit_parameters(row: dict[str, Any]) -> tuple[Any, ...]:
    """An audit row as the one-statement inserts take it: in ``sql.AUDIT_COLUMNS``
    order, the detail as JSON text."""
    return tuple(json_text(row[c]) if c == "detail" else row[c] for c in sql.AUDIT_COLUMNS)


def can_submit_fast(spec: JobCreate) -> bool:
    """The job and its audit row can go in as one statement (``rows.is_plain``)."""
    return is_plain(spec)


async def submit_one_fast(
    inserts: GroupedInserts,
    sessions: async_sessionmaker[AsyncSession],
    *,
    catalog: TaskCatalog,
    spec: JobCreate,
    actor: Actor,
    limits: Limits,
) -> tuple[Any, JobStateChanged]:
    """``POST /jobs`` for a job ``can_submit_fast`` accepts: validated exactly as
    ``submit_jobs`` does, then one round trip (no BEGIN / COMMIT, no ORM). Returns the
    stored row (attribute access, like a ``Job``) and its ``job.state`` event."""
    task = catalog.cached(spec.type)
    if task is None:  # a session (its setup and close) only when the catalog must read
        async with sessions() as session:
            task = await lookup_task_type(session, catalog, spec.type, where="")
    it = prepare(task, spec, actor, limits, where="")
    row = plain_row(it, now=utcnow(), actor=actor)
    audit = _audit_parameters(_audit_row(actor, batch=False, first=it.id, new_ids=[it.id]))
    job = SimpleNamespace(**dict(await inserts.insert(wire_row(row), audit)))
    return job, submitted_event(job)


def can_submit_batch_fast(specs: Sequence[BatchJobCreate]) -> bool:
    """Every job of the batch is plain (``rows.is_plain``): the batch and its audit row
    can go in by themselves (``submit_batch_fast``)."""
    return all(is_plain(spec) for spec in specs)


Built = TypeVar("Built")

# A plain batch goes in by parts of this many jobs, each part's statement sent as soon
# as its jobs are checked, so that PostgreSQL stores one part while the next is checked
# (both take some 5-15 µs a job here), all in one transaction.
BATCH_PART = 500


async def submit_batch_fast(
    pool: asyncpg.Pool,
    *,
    catalog: TaskCatalog,
    specs: Sequence[BatchJobCreate],
    actor: Actor,
    limits: Limits,
    meanwhile: Callable[[PlainBatch], Built],
) -> tuple[list[Created], list[JobStateChanged], Built] | None:
    """``POST /jobs/batch`` for a batch ``can_submit_batch_fast`` accepts (ValueError for
    any other, before a connection is taken): checked
    exactly as ``submit_jobs`` checks it, job by job in request order, and stored with
    its audit row in one transaction (all or nothing), by parts of ``BATCH_PART`` jobs:
    each part's statement goes out once its jobs are checked, and the database stores
    it while the next part is checked and the events and ``meanwhile(batch)`` (the
    answer) are built. Nothing is read back (``shared.jobs.plain_batch``). The first
    part is checked before a connection is taken. (A database failing under one part
    is answered before the parts after it are checked, where the session path checks
    every job first.)

    Returns the stored jobs, their events and what ``meanwhile`` returned; None, having
    written nothing, when a type of the batch is not in the catalog's cache (the caller
    submits through a session then, which reads it)."""
    if not specs:
        raise ValueError("a batch has at least one job")
    tasks: dict[str, TaskTypeInfo] = {}
    for spec in specs:
        if not is_plain(spec):  # checked here, in the pass over the types, and only here
            raise ValueError("a plain batch has no dependencies and no idempotency keys")
        if spec.type not in tasks:
            if (task := catalog.cached(spec.type)) is None:
                return None
            tasks[spec.type] = task
    _refuse_too_many(specs, limits)

    def checked(start: int) -> list[Prepared]:
        return [
            prepare(tasks[spec.type], spec, actor, limits, where=_batch_where(i))
            for i, spec in enumerate(specs[start : start + BATCH_PART], start)
        ]

    first = checked(0)
    batch = PlainBatch(actor=actor, now=utcnow())
    events: list[JobStateChanged] = []
    async with pool_transaction(pool) as conn:
        insert: asyncio.Task[int] | None = None  # the last part's statement
        sent = 0  # its jobs
        try:
            for start in range(0, len(specs), BATCH_PART):
                part = batch.add(first if start == 0 else checked(start))
                audit = None
                if part.stop == len(specs):  # the last part: the batch is checked whole
                    resolve_batch_refs(batch.items)  # (refs used twice: nothing depends)
                    ids = batch.ids
                    audit = _audit_parameters(
                        _audit_row(actor, batch=True, first=ids[0], new_ids=ids)
                    )
                if insert is not None:
                    await _all_stored(insert, sent)
                insert = asyncio.create_task(_insert_part(conn, batch.columns(part), audit))
                sent = len(part)
                # The statement goes out in the task's first step, which this yield
                # gives it (one not yet prepared on this connection sends its Parse
                # then, the rest once the loop comes back). What follows needs nothing
                # back from the database: it is done while the database works, instead
                # of after (docs/performance.md).
                await asyncio.sleep(0)
                events.extend(batch.events(part))
            built = meanwhile(batch)
        except BaseException:
            if insert is not None:  # the connection is free before it rolls back
                await asyncio.gather(insert, return_exceptions=True)
            raise
        assert insert is not None  # specs is not empty
        await _all_stored(insert, sent)
    return batch.created(), events, built


async def _insert_part(
    conn: asyncpg.Connection, columns: dict[str, list[Any]], audit: Sequence[Any] | None
) -> int:
    if audit is None:
        return await transitions.insert_jobs(conn, columns)
    return await transitions.insert_jobs_with_audit(conn, columns, audit)


async def _all_stored(insert: asyncio.Task[int], sent: int) -> None:
    inserted = await insert
    if inserted != sent:  # a status the insert's guard refused: a bug
        raise RuntimeError(f"{sent - inserted} of a batch's {sent} jobs were not stored; "
                           "none is")  # fmt: skip
