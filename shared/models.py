"""SQLAlchemy 2.0 table models. The migration in ``shared/migrations`` builds exactly these,
plus what SQLAlchemy cannot express (the audit-log trigger).

Index choices (see docs/database.md for the plans on 1M rows):

* claim: the claimable jobs (ready, not parked) are rows of ``ready_jobs`` as well, kept
  by triggers on ``jobs`` (migration 0015), keyed ``(priority, run_at, id) INCLUDE (type,
  cpu_units, memory_mb, ready_at, attempts)``: the scheduler reads the head of that key.
  It only ever holds the ready jobs some live worker could run, and stays small (the
  scheduler vacuums it every few seconds), so the dead entries of dispatched jobs ahead
  of the head are a few seconds' worth, however large history grows.
* parked: ``(id) INCLUDE (type, cpu_units, memory_mb) WHERE status = 'ready' AND parked``
  — the ready jobs that fit no live worker, read in id chunks when the fleet grows.
* due: ``(run_at) WHERE status IN ('pending', 'retrying')`` — delayed jobs and backoffs.
* running: ``(worker_id) WHERE status = 'running'`` — lease checks per worker.
* list: ``(created_at, id)``, ``(status, priority, created_at, id)``, and
  ``(status, priority, type | created_by, created_at, id)`` — keyset pagination newest
  first, one range per status and priority, filtered or not.
* idempotency: unique ``(idempotency_key) WHERE idempotency_key IS NOT NULL``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    Text,
    TextClause,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.states import TERMINAL, WAITING, JobStatus

STATUSES_SQL = ", ".join(f"'{s.value}'" for s in JobStatus)


def _status_in(statuses: frozenset[JobStatus]) -> TextClause:
    """``status IN (…)`` of ``statuses``, in the enum's order."""
    listed = ", ".join(f"'{s.value}'" for s in JobStatus if s in statuses)
    return text(f"status IN ({listed})")


# The halves of the list's created_at, owner and type indexes (migrations 0010, 0013),
# and their keys: each range of the list is equal in status and priority.
WAITING_ROWS = _status_in(WAITING)
UNFINISHED_ROWS = _status_in(WAITING | {JobStatus.RUNNING})
FINISHED_ROWS = _status_in(TERMINAL)
STATUS_PRIORITY = ("status", "priority")
OWNER_RANGE = (*STATUS_PRIORITY, "created_by", "created_at", "id")
TYPE_RANGE = (*STATUS_PRIORITY, "type", "created_at", "id")
TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(SmallInteger)  # 0 critical .. 3 low
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    cpu_units: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    max_attempts: Mapped[int] = mapped_column(Integer)
    retry_initial_delay: Mapped[float] = mapped_column(Float)
    retry_backoff: Mapped[float] = mapped_column(Float)
    retry_max_delay: Mapped[float] = mapped_column(Float)
    # Number of the latest attempt handed to a worker (0 = never). Fences stale reports.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Attempts that count against max_attempts: dispatches not handed back unstarted.
    runs: Mapped[int] = mapped_column(Integer, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    # Not before this time; the submission time when the client gave none.
    run_at: Mapped[datetime] = mapped_column(TZ)
    depends_on: Mapped[list[UUID]] = mapped_column(
        ARRAY(PG_UUID(as_uuid=True)), server_default="{}"
    )
    unmet_dependencies: Mapped[int] = mapped_column(Integer, server_default="0")
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default="false")
    waiting_reason: Mapped[str | None] = mapped_column(Text)
    # Ready, but no live worker could run it even when empty: out of ready_jobs
    # (shared.jobs.parking). Cleared by a trigger whenever the status changes.
    parked: Mapped[bool] = mapped_column(Boolean, server_default="false")
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    idempotency_fingerprint: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    ready_at: Mapped[datetime | None] = mapped_column(TZ)
    dispatched_at: Mapped[datetime | None] = mapped_column(TZ)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)

    __table_args__ = (
        CheckConstraint(f"status IN ({STATUSES_SQL})", name="jobs_status_valid"),
        CheckConstraint("priority BETWEEN 0 AND 3", name="jobs_priority_valid"),
        CheckConstraint("cpu_units > 0 AND memory_mb > 0", name="jobs_resources_positive"),
        CheckConstraint("unmet_dependencies >= 0", name="jobs_unmet_nonnegative"),
        Index(
            "jobs_parked_idx",
            "id",
            postgresql_include=["type", "cpu_units", "memory_mb"],
            postgresql_where=text("status = 'ready' AND parked"),
        ),
        # The few ready jobs with a reason written (a reservation): read by a new leader.
        Index(
            "jobs_written_reason_idx",
            "id",
            postgresql_where=text("status = 'ready' AND NOT parked AND waiting_reason IS NOT NULL"),
        ),
        Index("jobs_due_idx", "run_at", postgresql_where=text("status IN ('pending', 'retrying')")),
        Index("jobs_running_idx", "worker_id", postgresql_where=text("status = 'running'")),
        # The list reads one range per status and priority, in list order
        # (shared/jobs/listing.py, migration 0013).
        Index("jobs_status_priority_idx", *STATUS_PRIORITY, "created_at", "id"),
        # Its order alone, and the same ranges of one key's own jobs (a submitter's
        # POST /jobs/bulk), in two halves that no status change of the hot path writes: a
        # job enters the waiting half when submitted (or retried) and the finished half
        # when it ends, and neither while it runs (migration 0010).
        Index("jobs_created_waiting_idx", "created_at", "id", postgresql_where=WAITING_ROWS),
        Index("jobs_created_finished_idx", "created_at", "id", postgresql_where=FINISHED_ROWS),
        Index("jobs_status_owner_waiting_idx", *OWNER_RANGE, postgresql_where=WAITING_ROWS),
        Index("jobs_status_owner_finished_idx", *OWNER_RANGE, postgresql_where=FINISHED_ROWS),
        # The same ranges of one type, the running jobs among them: a typed page's
        # running part is one range too, for one more entry a job, at its dispatch.
        Index("jobs_status_type_unfinished_idx", *TYPE_RANGE, postgresql_where=UNFINISHED_ROWS),
        Index("jobs_status_type_finished_idx", *TYPE_RANGE, postgresql_where=FINISHED_ROWS),
        # The name prefix search of the list (byte order; only named jobs).
        Index(
            "jobs_name_prefix_idx",
            "name",
            postgresql_ops={"name": "text_pattern_ops"},
            postgresql_where=text("name IS NOT NULL"),
        ),
        # Throughput and durations over the last minutes (GET /stats), retention.
        Index("jobs_finished_idx", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
        Index(
            "jobs_idempotency_key_idx",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class ReadyJob(Base):
    """A claimable job (ready, not parked), in claim order: written only by the triggers
    on ``jobs`` (migration 0015), read by the claim. The key's index carries the other
    columns (``INCLUDE``, which SQLAlchemy cannot declare: the migration adds it)."""

    __tablename__ = "ready_jobs"

    priority: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    run_at: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    cpu_units: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    ready_at: Mapped[datetime | None] = mapped_column(TZ)
    attempts: Mapped[int] = mapped_column(Integer)


class JobDependency(Base):
    """Edge ``job_id`` depends on ``depends_on_id``; indexed both ways."""

    __tablename__ = "job_dependencies"

    job_id: Mapped[UUID] = mapped_column(
        PG_UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    depends_on_id: Mapped[UUID] = mapped_column(
        PG_UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("job_dependencies_parent_idx", "depends_on_id", "job_id"),)


class DependentsToFail(Base):
    """A failed or cancelled job whose waiting dependents are not all failed yet: the
    scheduler fails them a slice per cycle (``shared.jobs.transitions``)."""

    __tablename__ = "dependents_to_fail"

    parent_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    # The last child a slice cut short failed: the next slice goes on after it.
    after_child: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True))
    queued_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class JobExecution(Base):
    """One row per attempt."""

    __tablename__ = "job_executions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[UUID] = mapped_column(
        PG_UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)  # running, completed, failed, cancelled, lost
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JSONB)
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (UniqueConstraint("job_id", "attempt", name="job_executions_attempt_key"),)


class JobLogLine(Base):
    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[UUID] = mapped_column(
        PG_UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(TZ)
    level: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)

    # Unique per line of an attempt, so a redelivered batch inserts nothing twice.
    __table_args__ = (UniqueConstraint("job_id", "attempt", "seq", name="job_logs_line_key"),)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(Text)  # alive, draining, dead
    hostname: Mapped[str | None] = mapped_column(Text)
    cpu_units: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    slots: Mapped[int] = mapped_column(Integer)
    allocated_cpu_units: Mapped[float] = mapped_column(Float, server_default="0")
    allocated_memory_mb: Mapped[int] = mapped_column(Integer, server_default="0")
    allocated_slots: Mapped[int] = mapped_column(Integer, server_default="0")
    running: Mapped[list[UUID]] = mapped_column(ARRAY(PG_UUID(as_uuid=True)), server_default="{}")
    task_types: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_percent: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    last_heartbeat_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    # Per-attempt usage of its process-isolated attempts, as of its last heartbeat.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")


class TaskType(Base):
    """The task registry as announced by workers (and by the API for the demo tasks)."""

    __tablename__ = "task_types"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    parameters_schema: Mapped[dict[str, Any]] = mapped_column(JSONB)
    cpu_units: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    max_attempts: Mapped[int] = mapped_column(Integer)
    retry_initial_delay: Mapped[float] = mapped_column(Float)
    retry_backoff: Mapped[float] = mapped_column(Float)
    retry_max_delay: Mapped[float] = mapped_column(Float)
    roles: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)  # sha256 hex of the key
    role: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, server_default="api")  # api | env
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)
    revoked_reason: Mapped[str | None] = mapped_column(Text)  # 'admin' or 'env-removed'

    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'submitter', 'admin')", name="api_keys_role_valid"),
    )


class AuditEntry(Base):
    """Append-only: a trigger refuses UPDATE and DELETE (see the migration)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    actor: Mapped[str | None] = mapped_column(Text)  # api key id, or 'dev', or a service
    role: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    job_id: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True))
    outcome: Mapped[str] = mapped_column(Text)  # ok, denied, invalid, not_found, conflict...
    status_code: Mapped[int | None] = mapped_column(Integer)
    client: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(Integer)  # execution rows
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    # Newest first is ``ORDER BY id DESC``; each filter has its own (filter, id) index.
    __table_args__ = (
        Index("audit_log_job_idx", "job_id", "id", postgresql_where=text("job_id IS NOT NULL")),
        Index("audit_log_actor_action_idx", "actor", "action", "id"),
        Index("audit_log_action_idx", "action", "id"),
        # One row per execution event, however often the logger sees the report.
        Index(
            "audit_log_execution_key",
            "job_id",
            "attempt",
            "action",
            unique=True,
            postgresql_where=text("attempt IS NOT NULL"),
        ),
    )


class Schedule(Base):
    """A periodic job: the scheduler submits ``job`` at each fire time of ``cron``."""

    __tablename__ = "schedules"

    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    cron: Mapped[str] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text)
    job: Mapped[dict[str, Any]] = mapped_column(JSONB)  # a POST /jobs body
    paused: Mapped[bool] = mapped_column(Boolean, server_default="false")
    next_run_at: Mapped[datetime | None] = mapped_column(TZ)
    last_run_at: Mapped[datetime | None] = mapped_column(TZ)
    last_job_id: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True))
    created_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))

    __table_args__ = (
        Index("schedules_due_idx", "next_run_at", postgresql_where=text("NOT paused")),
    )
