"""Job operations over the database: submit (single and DAG batch), read, list, cancel.

Functions take a keyword-only ``session`` and never commit: the caller owns the
transaction, so the job, its edges and its audit row commit together. Each mutating
function returns the ``JobStateChanged`` events to publish *after* the commit.
"""

from __future__ import annotations

import base64
import graphlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from sqlalchemy import select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from shared.auth import Actor
from shared.catalog import TaskCatalog, TaskTypeInfo
from shared.db import pool_fetchrow
from shared.errors import (
    InvalidJobRequest,
    JobConflict,
    JobNotFound,
    PermissionDenied,
    UnknownDependency,
)
from shared.messages import JobStateChanged
from shared.models import AuditEntry, Job, JobDependency, JobExecution, JobLogLine
from shared.schemas import (
    BatchJobCreate,
    ExecutionRead,
    JobCreate,
    JobLogs,
    LogLine,
    Priority,
    Resources,
    RetryPolicy,
    check_json_value,
)
from shared.settings import Settings
from shared.states import CANCELLABLE_AT_ONCE, TERMINAL, JobStatus, check_transition, sources_for

S = JobStatus


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 262_144
    max_json_depth: int = 32
    max_dependencies: int = 1_000
    max_batch_jobs: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            max_json_depth=settings.max_json_depth,
            max_dependencies=settings.max_dependencies,
            max_batch_jobs=settings.max_batch_jobs,
        )


@dataclass
class _Prepared:
    """A validated submission with defaults applied, ready to insert."""

    id: UUID
    spec: JobCreate | BatchJobCreate
    task: TaskTypeInfo
    resources: Resources
    retry: RetryPolicy
    timeout_seconds: float | None
    fingerprint: str
    payload_json: str  # the payload as JSON text (encoded once, for the size check)
    external_deps: list[UUID] = field(default_factory=list)
    local_deps: list[int] = field(default_factory=list)  # indexes into the batch
    existing: Job | None = None  # idempotent repeat: the job already stored


@dataclass
class SubmitResult:
    jobs: list[Job]
    created: list[bool]
    events: list[JobStateChanged]


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- validation


async def prepare_submission(
    session: AsyncSession,
    catalog: TaskCatalog,
    spec: JobCreate | BatchJobCreate,
    actor: Actor,
    limits: Limits,
    *,
    where: str,
) -> _Prepared:
    task = await task_type(session, catalog, spec.type, where=where)
    return prepare(task, spec, actor, limits, where=where)


async def task_type(
    session: AsyncSession, catalog: TaskCatalog, name: str, *, where: str
) -> TaskTypeInfo:
    task = await catalog.get(session, name)
    if task is None:
        known = await catalog.names(session)
        raise InvalidJobRequest(
            f"{where}type: unknown task type {name!r}; registered types: "
            + (", ".join(known) if known else "none (start a worker that registers tasks)")
        )
    return task


def prepare(
    task: TaskTypeInfo,
    spec: JobCreate | BatchJobCreate,
    actor: Actor,
    limits: Limits,
    *,
    where: str,
) -> _Prepared:
    """Validate ``spec`` against its task type and the limits; apply the defaults."""
    if task.roles and not actor.has_role("admin") and actor.role not in task.roles:
        raise PermissionDenied(
            f"task type {spec.type!r} may only be submitted by role(s) "
            f"{', '.join(sorted(task.roles | {'admin'}))}; your key has role {actor.role!r}"
        )
    try:
        check_json_value(spec.payload, max_depth=limits.max_json_depth, where=f"{where}payload")
    except ValueError as exc:
        raise InvalidJobRequest(str(exc)) from exc
    encoded = orjson.dumps(spec.payload)
    if len(encoded) > limits.max_payload_bytes:
        raise InvalidJobRequest(
            f"{where}payload is {len(encoded)} bytes; the limit is {limits.max_payload_bytes}"
        )
    errors = task.payload_errors(spec.payload)
    if errors:
        raise InvalidJobRequest("; ".join(f"{where}{e}" for e in errors))
    if len(spec.depends_on) > limits.max_dependencies:
        raise InvalidJobRequest(
            f"{where}depends_on lists {len(spec.depends_on)} jobs; "
            f"the limit is {limits.max_dependencies}"
        )
    # The task's defaults as they are when the request gives none (they are not mutated).
    resources = task.resources
    if spec.resources:
        resources = resources.model_copy(update=spec.resources.model_dump(exclude_none=True))
    retry = task.retry
    if spec.retry:
        retry = retry.model_copy(update=spec.retry.model_dump(exclude_none=True))
    timeout = spec.timeout_seconds if spec.timeout_seconds is not None else task.timeout_seconds
    # The fingerprint covers the request after defaults, so "same request" means the
    # same job would be built; run_at counts only when the client gave one. Only an
    # idempotency key needs it.
    fingerprint = ""
    if spec.idempotency_key:
        fingerprint = _fingerprint(spec, resources, retry, timeout)
    return _Prepared(
        id=uuid7(),
        spec=spec,
        task=task,
        resources=resources,
        retry=retry,
        timeout_seconds=timeout,
        fingerprint=fingerprint,
        payload_json=encoded.decode(),
    )


def _fingerprint(
    spec: JobCreate | BatchJobCreate,
    resources: Resources,
    retry: RetryPolicy,
    timeout: float | None,
) -> str:
    canonical = {
        "type": spec.type,
        "payload": spec.payload,
        "priority": spec.priority.value,
        "resources": resources.model_dump(),
        "retry": retry.model_dump(),
        "timeout_seconds": timeout,
        "run_at": spec.run_at.isoformat() if spec.run_at else None,
        "depends_on": sorted(str(d) for d in spec.depends_on),
        "name": spec.name,
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _resolve_batch_refs(items: list[_Prepared]) -> None:
    """Turn ``@ref`` / id strings into local indexes / external ids; refuse cycles."""
    refs: dict[str, int] = {}
    for i, item in enumerate(items):
        ref = getattr(item.spec, "ref", None)
        if ref is None:
            continue
        if ref in refs:
            raise InvalidJobRequest(f"jobs[{i}].ref: {ref!r} is used by jobs[{refs[ref]}] too")
        refs[ref] = i
    for i, item in enumerate(items):
        for dep in item.spec.depends_on:
            dep_s = str(dep)
            if dep_s.startswith("@"):
                index = refs.get(dep_s[1:])
                if index is None:
                    raise InvalidJobRequest(
                        f"jobs[{i}].depends_on: {dep_s!r} names no job of this batch "
                        f"(refs: {', '.join(sorted(refs)) or 'none'})"
                    )
                if index not in item.local_deps:
                    item.local_deps.append(index)
            else:
                try:
                    ext = UUID(dep_s)
                except ValueError:
                    raise InvalidJobRequest(
                        f"jobs[{i}].depends_on: {dep_s!r} is neither a job id nor '@ref'"
                    ) from None
                if ext not in item.external_deps:
                    item.external_deps.append(ext)
    if not any(item.local_deps for item in items):
        return  # no edges inside the batch: no cycle to look for
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter(
        {i: item.local_deps for i, item in enumerate(items)}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]

        def label(i: int) -> str:
            return getattr(items[i].spec, "ref", None) or f"jobs[{i}]"

        raise InvalidJobRequest(
            "depends_on forms a cycle: " + " -> ".join(label(i) for i in reversed(cycle))
        ) from None


# ---------------------------------------------------------------- submission


async def submit_jobs(
    session: AsyncSession,
    *,
    catalog: TaskCatalog,
    specs: Sequence[JobCreate | BatchJobCreate],
    actor: Actor,
    limits: Limits,
    batch: bool,
) -> SubmitResult:
    """Validate, then insert jobs, edges and the audit row (caller commits).

    Raises InvalidJobRequest / UnknownDependency / PermissionDenied and writes nothing
    in that case (the caller rolls back).
    """
    if batch and len(specs) > limits.max_batch_jobs:
        raise InvalidJobRequest(
            f"jobs: the batch has {len(specs)} jobs; the limit is {limits.max_batch_jobs}"
        )
    tasks: dict[str, TaskTypeInfo] = {}  # each type looked up once per request
    items = []
    for i, spec in enumerate(specs):
        where = f"jobs[{i}]." if batch else ""
        task = tasks.get(spec.type)
        if task is None:
            task = tasks[spec.type] = await task_type(session, catalog, spec.type, where=where)
        items.append(prepare(task, spec, actor, limits, where=where))
    if batch:
        _resolve_batch_refs(items)
    else:
        for item in items:
            item.external_deps = list(dict.fromkeys(item.spec.depends_on))  # type: ignore[arg-type]

    # Idempotent repeats: same key and same request -> the stored job.
    keys = [it.spec.idempotency_key for it in items if it.spec.idempotency_key]
    if len(set(keys)) != len(keys):
        raise InvalidJobRequest("idempotency_key: the same key is used twice in one request")
    if keys:
        found = {
            j.idempotency_key: j
            for j in (await session.scalars(select(Job).where(Job.idempotency_key.in_(keys))))
        }
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

    # Dependencies on stored jobs: they must exist. FOR SHARE keeps their status still
    # until we commit, so a parent finishing right now cannot miss our new edge.
    # A batch job that is an idempotent repeat is a stored job: its children depend on
    # it like on any stored parent (same lock, its real id).
    for it in items:
        for j in list(it.local_deps):
            parent = items[j].existing
            if parent is not None:
                it.local_deps.remove(j)
                if parent.id not in it.external_deps:
                    it.external_deps.append(parent.id)
    external = {d for it in items for d in it.external_deps}
    parents: dict[UUID, str] = {}
    if external:
        rows = await session.execute(
            select(Job.id, Job.status)
            .where(Job.id.in_(external))
            .order_by(Job.id)  # one lock order everywhere: no deadlocks
            .with_for_update(read=True)
        )
        parents = {row.id: row.status for row in rows}
        missing = sorted(str(d) for d in external - parents.keys())
        if missing:
            raise UnknownDependency(f"depends_on: no job with id {', '.join(missing)}")

    now = utcnow()
    order: list[int] = list(range(len(items)))  # parents first; only a DAG needs sorting
    if any(it.local_deps for it in items):
        graph = {i: it.local_deps for i, it in enumerate(items)}
        order = list(graphlib.TopologicalSorter(graph).static_order())
    statuses: dict[int, S] = {}
    rows_to_insert: list[dict[str, Any]] = []
    payloads: list[str] = []  # rows_to_insert's payloads as JSON text
    edges: list[dict[str, Any]] = []
    errors: dict[int, str | None] = {}
    for i in order:
        it = items[i]
        if it.existing is not None:
            statuses[i] = S(it.existing.status)
            continue
        unmet = 0
        failed_reason: str | None = None
        for dep in it.external_deps:
            status = parents[dep]
            if status in (S.FAILED, S.CANCELLED):
                failed_reason = failed_reason or f"dependency {dep} {status}"
            elif status != S.COMPLETED:
                unmet += 1
        for j in it.local_deps:
            parent_status = statuses[j]
            if parent_status in (S.FAILED, S.CANCELLED):
                failed_reason = failed_reason or f"dependency {items[j].id} {parent_status}"
            elif parent_status != S.COMPLETED:
                unmet += 1
        # In UTC, as the database answers it (the batch answer is built from this row).
        run_at = it.spec.run_at.astimezone(UTC) if it.spec.run_at else now
        status = check_transition(
            None,
            S.FAILED
            if failed_reason
            else S.BLOCKED
            if unmet
            else S.PENDING
            if run_at > now
            else S.READY,
        )
        statuses[i] = status
        errors[i] = failed_reason
        dep_ids: list[UUID] = []
        if it.external_deps or it.local_deps:
            local = [items[j].id for j in it.local_deps]
            dep_ids = list(dict.fromkeys([*it.external_deps, *local]))
            edges.extend({"job_id": it.id, "depends_on_id": d} for d in dep_ids)
        payloads.append(it.payload_json)
        rows_to_insert.append(
            _job_row(
                it, status=status, run_at=run_at, now=now, actor=actor, dep_ids=dep_ids,
                unmet=unmet if not failed_reason else 0, error=failed_reason,
            )
        )  # fmt: skip

    # Stored jobs (ORM rows) and inserted ones (Core rows): both read by attribute.
    stored: dict[UUID, Any] = {it.existing.id: it.existing for it in items if it.existing}
    if rows_to_insert:
        # One INSERT ... SELECT FROM unnest(one array per column) RETURNING the whole
        # rows: no read-back, and asyncpg encodes each column in one go (a multi-row
        # VALUES list cost SQLAlchemy a bind parameter per value).
        columns = {name: [r[name] for r in rows_to_insert] for name in _INSERT_TYPES}
        columns["payload"] = payloads
        columns["depends_on"] = [_uuid_array(d) for d in columns["depends_on"]]
        # A column with one value for the whole batch (the type, the defaults, the
        # times...: most of them) travels once, not once per job: asyncpg encoded 24
        # arrays of N values, and PostgreSQL unpacked them, for what is mostly 2.
        same = frozenset(
            name
            for name, values in columns.items()
            if name != "id" and values.count(values[0]) == len(values)
        )
        params = {name: values[0] if name in same else values for name, values in columns.items()}
        result = await session.execute(_insert_statement(same), params)
        if len(result.all()) != len(rows_to_insert):
            # A concurrent request took one of our idempotency keys between our check
            # and our insert; the caller retries once and then sees the stored job.
            raise IdempotencyRace()
        # The stored rows are what we inserted plus the columns' defaults: reading them
        # back (RETURNING *) cost a third of a large batch's time in decoding alone.
        # Plain objects: the answer, the events and the metrics read ~40 attributes.
        inserted = [SimpleNamespace(**INSERT_DEFAULTS, **row) for row in rows_to_insert]
        stored.update((job.id, job) for job in inserted)
    if edges:
        await session.execute(insert(JobDependency), edges)
    new_ids = [it.id for it in items if it.existing is None]
    # A Core insert: no unit-of-work flush on the request path.
    await session.execute(
        insert(AuditEntry).values(
            actor=actor.key_id,
            role=actor.role,
            action="job.batch_submit" if batch else "job.submit",
            client=actor.client,
            job_id=(items[0].existing.id if items[0].existing else items[0].id)
            if not batch
            else None,
            outcome="ok" if new_ids else "idempotent_repeat",
            status_code=None,
            detail={"job_ids": [str(i) for i in new_ids][:1000], "count": len(new_ids)},
        )
    )

    jobs = [stored[it.existing.id if it.existing else it.id] for it in items]
    events = [
        submitted_event(job, ts=now)
        for job, it in zip(jobs, items, strict=True)
        if it.existing is None
    ]
    return SubmitResult(jobs=jobs, created=[it.existing is None for it in items], events=events)


# Column -> the array type its values travel as (cast to the column type on insert).
_INSERT_TYPES = {
    "id": "uuid", "type": "text", "name": "text", "status": "text", "priority": "smallint",
    "payload": "text", "cpu_units": "float8", "memory_mb": "int", "timeout_seconds": "float8",
    "max_attempts": "int", "retry_initial_delay": "float8", "retry_backoff": "float8",
    "retry_max_delay": "float8", "run_at": "timestamptz", "depends_on": "text",
    "unmet_dependencies": "int", "error": "text", "idempotency_key": "text",
    "idempotency_fingerprint": "text", "created_by": "text", "created_at": "timestamptz",
    "updated_at": "timestamptz", "ready_at": "timestamptz", "finished_at": "timestamptz",
}  # fmt: skip
_CASTS = {"payload": "::jsonb", "depends_on": "::uuid[]"}
_INSERT_STATEMENTS: dict[frozenset[str], Any] = {}


def _insert_statement(same: frozenset[str]) -> Any:
    """``INSERT INTO jobs ... SELECT FROM unnest(one array per column)``, the columns in
    ``same`` as one value each, ``RETURNING id``; one statement per such set, kept."""
    stmt = _INSERT_STATEMENTS.get(same)
    if stmt is None:
        if len(_INSERT_STATEMENTS) >= 256:  # bounded; in practice a handful of shapes
            _INSERT_STATEMENTS.clear()
        varying = [c for c in _INSERT_TYPES if c not in same]
        values = [
            f"CAST(:{c} AS {t}){_CASTS.get(c, '')}" if c in same else f"u.{c}{_CASTS.get(c, '')}"
            for c, t in _INSERT_TYPES.items()
        ]
        arrays = ", ".join(f"CAST(:{c} AS {_INSERT_TYPES[c]}[])" for c in varying)
        stmt = _INSERT_STATEMENTS[same] = text(
            f"INSERT INTO jobs ({', '.join(_INSERT_TYPES)}) SELECT {', '.join(values)} "
            f"FROM unnest({arrays}) AS u({', '.join(varying)}) "
            "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
            "RETURNING id"
        )
    return stmt


# What a new row holds in the columns the insert does not give (their server defaults;
# tests/unit checks this covers every column of ``jobs``).
INSERT_DEFAULTS: dict[str, Any] = {
    "attempts": 0, "runs": 0, "worker_id": None, "lease_expires_at": None, "result": None,
    "progress": None, "cancel_requested": False, "waiting_reason": None,
    "dispatched_at": None, "started_at": None,
}  # fmt: skip


def _uuid_array(ids: Sequence[UUID]) -> str:
    """A uuid[] literal: a column of arrays cannot travel as one array of arrays."""
    return "{" + ",".join(str(i) for i in ids) + "}"


def _job_row(
    it: _Prepared,
    *,
    status: S,
    run_at: datetime,
    now: datetime,
    actor: Actor,
    dep_ids: list[UUID],
    unmet: int,
    error: str | None,
) -> dict[str, Any]:
    """The ``jobs`` row of a prepared submission."""
    spec = it.spec
    return {
        "id": it.id,
        "type": spec.type,
        "name": spec.name,
        "status": status.value,
        "priority": spec.priority.rank,
        "payload": spec.payload,
        "cpu_units": it.resources.cpu_units,
        "memory_mb": it.resources.memory_mb,
        "timeout_seconds": it.timeout_seconds,
        "max_attempts": it.retry.max_attempts,
        "retry_initial_delay": it.retry.initial_delay_seconds,
        "retry_backoff": it.retry.backoff_multiplier,
        "retry_max_delay": it.retry.max_delay_seconds,
        "run_at": run_at,
        "depends_on": dep_ids,
        "unmet_dependencies": unmet,
        "error": error,
        "idempotency_key": spec.idempotency_key,
        "idempotency_fingerprint": it.fingerprint if spec.idempotency_key else None,
        "created_by": actor.key_id,
        "created_at": now,
        "updated_at": now,
        "ready_at": now if status == S.READY else None,
        "finished_at": now if status == S.FAILED else None,
    }


_AUDIT_COLUMNS = ("actor", "role", "action", "client", "job_id", "outcome", "detail")
_FAST_SQL: dict[tuple[str, ...], str] = {}


def _fast_insert_sql(columns: tuple[str, ...]) -> str:
    """One statement that inserts the job and its audit row (atomic on its own)."""
    sql = _FAST_SQL.get(columns)
    if sql is None:
        n = len(columns)
        sql = (
            f"WITH j AS (INSERT INTO jobs ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'${i + 1}' for i in range(n))}) RETURNING *), "
            f"a AS (INSERT INTO audit_log ({', '.join(_AUDIT_COLUMNS)}) "
            f"VALUES ({', '.join(f'${n + i + 1}' for i in range(len(_AUDIT_COLUMNS)))})) "
            "SELECT * FROM j"
        )
        _FAST_SQL[columns] = sql
    return sql


def can_submit_fast(spec: JobCreate) -> bool:
    """No dependencies (no parent rows to lock) and no idempotency key (no lookup, no
    race): the job and its audit row can go in as one statement."""
    return not spec.depends_on and not spec.idempotency_key


async def submit_one_fast(
    pool: asyncpg.Pool,
    session: AsyncSession,
    *,
    catalog: TaskCatalog,
    spec: JobCreate,
    actor: Actor,
    limits: Limits,
) -> tuple[Any, JobStateChanged]:
    """``POST /jobs`` for a job ``can_submit_fast`` accepts: validated exactly as
    ``submit_jobs`` does, then one round trip (no BEGIN / COMMIT, no ORM). Returns the
    stored row (attribute access, like a ``Job``) and its ``job.state`` event."""
    it = await prepare_submission(session, catalog, spec, actor, limits, where="")
    now = utcnow()
    run_at = spec.run_at or now
    status = check_transition(None, S.PENDING if run_at > now else S.READY)
    row = _job_row(
        it, status=status, run_at=run_at, now=now, actor=actor, dep_ids=[], unmet=0, error=None
    )
    audit = (
        actor.key_id, actor.role, "job.submit", actor.client, it.id, "ok",
        {"job_ids": [str(it.id)], "count": 1},
    )  # fmt: skip
    record = await pool_fetchrow(pool, _fast_insert_sql(tuple(row)), *row.values(), *audit)
    job = SimpleNamespace(**dict(record))
    return job, submitted_event(job)


def submitted_event(job: Any, *, ts: datetime | None = None) -> JobStateChanged:
    """The ``job.state`` event of a newly stored job (None -> its first status)."""
    return JobStateChanged(
        ts=ts or utcnow(),
        job_id=job.id,
        type=job.type,
        old_status=None,
        new_status=job.status,
        attempt=0,
        reason=job.error or "submitted",
    )


class IdempotencyRace(Exception):
    """Internal: retry the submission (another request inserted the same key first)."""


async def get_job(session: AsyncSession, job_id: UUID, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update(key_share=True)
    job = await session.scalar(stmt)
    if job is None:
        raise JobNotFound(f"no job with id {job_id}")
    return job


@dataclass(frozen=True)
class JobFilter:
    status: list[S] | None = None
    type: str | None = None
    priority: Priority | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created), UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJobRequest(
            "cursor: not a cursor this API issued; pass next_cursor from the previous page"
        ) from None


async def list_jobs(
    session: AsyncSession, *, filters: JobFilter, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first, keyset-paginated on (created_at, id): each page is an index scan."""
    stmt = select(Job)
    if filters.status:
        stmt = stmt.where(Job.status.in_([s.value for s in filters.status]))
    if filters.type:
        stmt = stmt.where(Job.type == filters.type)
    if filters.priority:
        stmt = stmt.where(Job.priority == filters.priority.rank)
    if filters.created_after:
        stmt = stmt.where(Job.created_at >= filters.created_after)
    if filters.created_before:
        stmt = stmt.where(Job.created_at < filters.created_before)
    if cursor:
        created, job_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs: list[Job] = list(await session.scalars(stmt))
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


async def job_logs(session: AsyncSession, job_id: UUID) -> JobLogs:
    await get_job(session, job_id)
    executions = await session.scalars(
        select(JobExecution).where(JobExecution.job_id == job_id).order_by(JobExecution.attempt)
    )
    lines = await session.scalars(
        select(JobLogLine)
        .where(JobLogLine.job_id == job_id)
        .order_by(JobLogLine.attempt, JobLogLine.seq)
    )
    return JobLogs(
        executions=[
            ExecutionRead(
                attempt=e.attempt,
                worker_id=e.worker_id,
                started_at=e.started_at,
                finished_at=e.finished_at,
                duration_seconds=e.duration_seconds,
                status=e.status,
                error=e.error,
                result=e.result,
                resources=e.resources,
            )
            for e in executions
        ],
        lines=[
            LogLine(ts=ln.ts, attempt=ln.attempt, level=ln.level, message=ln.message)
            for ln in lines
        ],
    )


# ---------------------------------------------------------------- retry (dead letter)


async def retry_job(
    session: AsyncSession, job_id: UUID, *, actor: Actor, dependents: bool
) -> tuple[Job, list[JobStateChanged]]:
    """Re-run a failed or cancelled job: same id, history kept, attempt numbers go on
    (the fence stays sound), a fresh ``max_attempts`` budget. With ``dependents``, the
    jobs that failed because of it wait for it again."""
    job = await get_job(session, job_id, for_update=True)
    if actor.role == "submitter" and job.created_by != actor.key_id:
        raise PermissionDenied(
            f"job {job_id} was submitted by another key; a submitter may retry only its own jobs"
        )
    status = S(job.status)
    if status not in (S.FAILED, S.CANCELLED):
        raise JobConflict(f"job {job_id} is {status}; only failed or cancelled jobs can be retried")
    events = [await _requeue(session, job, actor=actor)]
    if dependents:
        frontier = [job.id]
        while frontier:
            children = list(
                await session.scalars(
                    select(Job)
                    .join(JobDependency, JobDependency.job_id == Job.id)
                    .where(
                        JobDependency.depends_on_id.in_(frontier),
                        Job.status == S.FAILED.value,
                        Job.error.like("dependency %"),
                    )
                    .order_by(Job.id)
                    .with_for_update(key_share=True)
                )
            )
            for child in children:
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
    parents = {
        row.id: row.status
        for row in await session.execute(
            select(Job.id, Job.status)
            .where(Job.id.in_(job.depends_on or []))
            .order_by(Job.id)
            .with_for_update(read=True)
        )
    }
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
    old = S(job.status)
    new = check_transition(old, S.BLOCKED if unmet else S.READY)
    now = utcnow()
    await session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            status=new.value, unmet_dependencies=unmet, runs=0, error=None, result=None,
            finished_at=None, started_at=None, cancel_requested=False, worker_id=None,
            run_at=now, ready_at=now if new == S.READY else None, updated_at=now,
        )
    )  # fmt: skip
    return JobStateChanged(
        job_id=job.id, type=job.type, old_status=old.value, new_status=new.value,
        attempt=job.attempts, reason=f"retried by {actor.label or actor.key_id}",
    )  # fmt: skip


# ---------------------------------------------------------------- cancel


async def fail_dependents(
    session: AsyncSession, parent_id: UUID, parent_status: str
) -> list[JobStateChanged]:
    """Fail every unfinished descendant of ``parent_id``; each error names its parent.

    Level by level, each level a statement of its own: a job's children are read only
    after the job itself is locked (updated), so a child committed concurrently by the
    API (which reads its parents FOR SHARE) is either seen here or sees its parent
    already failed. The caller has locked ``parent_id``.
    """
    # Only jobs still waiting can fail this way: descendants of an unfinished parent
    # are blocked (or pending) by construction.
    sources = [s for s in sources_for(S.FAILED) if s in (S.BLOCKED, S.PENDING)]
    events: list[JobStateChanged] = []
    frontier, status = [parent_id], parent_status
    while frontier:
        rows = (
            await session.execute(
                text(
                    """
                    UPDATE jobs j
                    SET status = 'failed', error = 'dependency ' || d.parent::text || ' ' || :how,
                        finished_at = now(), updated_at = now(), unmet_dependencies = 0
                    FROM (SELECT DISTINCT ON (job_id) job_id, depends_on_id AS parent
                          FROM job_dependencies WHERE depends_on_id = ANY(:frontier)
                          ORDER BY job_id, depends_on_id) d
                    WHERE j.id = d.job_id AND j.status = ANY(:sources)
                    RETURNING j.id, j.type, j.status, j.error, j.attempts
                    """
                ),
                {"frontier": frontier, "how": status, "sources": sources},
            )
        ).all()
        events.extend(
            JobStateChanged(
                job_id=r.id,
                type=r.type,
                old_status=S.BLOCKED.value,
                new_status=S.FAILED.value,
                attempt=r.attempts,
                reason=r.error,
            )
            for r in rows
        )
        frontier, status = [r.id for r in rows], S.FAILED.value
    return events


async def cancel_job(
    session: AsyncSession, job_id: UUID, *, actor: Actor
) -> tuple[Job, list[JobStateChanged], bool]:
    """Cancel at once if not running; if running, flag it (the worker is told).

    Returns (job, events, cancel_to_publish: True when a running attempt must be told).
    """
    job = await get_job(session, job_id, for_update=True)
    if actor.role == "submitter" and job.created_by != actor.key_id:
        raise PermissionDenied(
            f"job {job_id} was submitted by another key; a submitter may cancel only its "
            "own jobs (ask an admin)"
        )
    status = S(job.status)
    if status in TERMINAL:
        raise JobConflict(f"job {job_id} is already {status}; nothing to cancel")
    events: list[JobStateChanged] = []
    if status in CANCELLABLE_AT_ONCE:
        check_transition(status, S.CANCELLED)
        now = utcnow()
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=S.CANCELLED.value,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
                error=f"cancelled by {actor.label or actor.key_id}",
            )
        )
        events.append(
            JobStateChanged(
                job_id=job.id,
                type=job.type,
                old_status=status.value,
                new_status=S.CANCELLED.value,
                attempt=job.attempts,
                reason="cancelled by user",
            )
        )
        events.extend(await fail_dependents(session, job.id, S.CANCELLED.value))
        notify_worker = False
    else:  # running: the worker ends the attempt and reports `cancelled`
        await session.execute(
            update(Job).where(Job.id == job_id).values(cancel_requested=True, updated_at=utcnow())
        )
        notify_worker = True
    session.add(
        AuditEntry(
            actor=actor.key_id,
            role=actor.role,
            action="job.cancel",
            job_id=job.id,
            client=actor.client,
            outcome="ok" if not notify_worker else "requested",
        )
    )
    await session.flush()
    await session.refresh(job)
    return job, events, notify_worker
