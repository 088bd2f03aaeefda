"""REST wire schemas (separate Create / Read models; never the table on the wire)."""

from __future__ import annotations

import functools
import re
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from shared.jsonvalues import CLIENT_JSON, CLIENT_TIMES, JsonRules, check_json
from switchyard import models as _public
from switchyard.states import JobStatus

# What a client or task author sees lives in the public package; the API uses the same
# classes, so both sides read one definition.
ExecutionRead = _public.ExecutionRead
JobLogs = _public.JobLogs
JobRead = _public.JobRead
LogLine = _public.LogLine
Priority = _public.Priority
Resources = _public.Resources
RetryPolicy = _public.RetryPolicy


TaskName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$"),
]
# No NUL: PostgreSQL text cannot hold it; refusing it here gives a 422, not a 500.
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_time_range(value: datetime) -> datetime:
    """``value`` if it has an offset and lies in CLIENT_TIMES; else ValueError saying so."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a time zone offset (e.g. Z or +02:00)")
    return CLIENT_TIMES.check(value)


# RFC 3339 date-time: a date, ``T`` (or a space), a time, and an offset.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def refuse_non_rfc3339(value: Any) -> Any:
    """Only RFC 3339 text (or a datetime, from our own code) is a time. Pydantic's lax
    mode would read a number, or a string of digits, as a Unix timestamp
    (``created_before=10.0`` was 1970): a client that sends one meant something else."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.fullmatch(value.strip()):
        return value
    raise ValueError(
        "give an RFC 3339 time with an offset, e.g. 2026-01-31T12:00:00Z "
        "(numbers and Unix timestamps are not times here)"
    )


WireTime = Annotated[
    AwareDatetime, BeforeValidator(refuse_non_rfc3339), AfterValidator(check_time_range)
]
"""An RFC 3339 time with an offset, within CLIENT_TIMES: every time a client sends, in a
body or a query (refused otherwise with a 422 that says so)."""


class ResourcesIn(BaseModel):
    """Resources in a request: omitted fields take the task's defaults."""

    model_config = _STRICT

    cpu_units: float | None = Field(default=None, gt=0, le=4096)
    memory_mb: int | None = Field(default=None, gt=0, le=16_777_216)


class RetryIn(BaseModel):
    model_config = _STRICT

    max_attempts: int | None = Field(default=None, ge=1, le=100)
    initial_delay_seconds: float | None = Field(default=None, ge=0, le=86_400)
    backoff_multiplier: float | None = Field(default=None, ge=1, le=100)
    max_delay_seconds: float | None = Field(default=None, ge=0, le=604_800)

    _delays = field_validator("initial_delay_seconds", "max_delay_seconds")(_public.unsigned_zero)


class _JobFields(BaseModel):
    model_config = _STRICT

    type: TaskName = Field(description="a registered task name")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="validated against the task's parameter model"
    )
    priority: Priority = Priority.NORMAL
    resources: ResourcesIn | None = None
    retry: RetryIn | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=604_800)
    run_at: WireTime | None = Field(default=None, description="RFC 3339, with offset")
    idempotency_key: ShortText | None = None
    name: ShortText | None = None


class JobCreate(_JobFields):
    """Body of ``POST /jobs``."""

    depends_on: list[UUID] = Field(default_factory=list, max_length=1000)


class BatchJobCreate(_JobFields):
    """One job of ``POST /jobs/batch``: ``depends_on`` may name ``@ref`` of the same batch."""

    ref: ShortText | None = None
    depends_on: list[
        Annotated[str, StringConstraints(min_length=1, max_length=201, pattern=r"^[^\x00]+$")]
    ] = Field(default_factory=list, max_length=1000)


class BatchCreate(BaseModel):
    model_config = _STRICT

    jobs: list[BatchJobCreate] = Field(min_length=1)


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class BatchRead(BaseModel):
    jobs: list[JobRead]


class Capacity(BaseModel):
    cpu_units: float
    memory_mb: int
    slots: int


class AttemptUsageRead(BaseModel):
    job_id: UUID
    attempt: int
    isolation: str
    pid: int
    cpu_percent: float
    rss_mb: float
    peak_rss_mb: float = 0.0


class WorkerRead(BaseModel):
    id: str
    state: str = Field(description="alive, draining or dead")
    capacity: Capacity
    allocated: Capacity
    running: list[UUID]
    task_types: list[str]
    cpu_percent: float | None
    memory_percent: float | None
    started_at: datetime | None
    last_heartbeat_at: datetime
    attempts: list[AttemptUsageRead] | None = Field(
        default=None,
        description="per-attempt CPU % and RSS of process-isolated attempts (docs/isolation.md)",
    )


class Throughput(BaseModel):
    last_minute: int
    per_minute: float


class Durations(BaseModel):
    count: int
    mean_seconds: float
    p95_seconds: float


class StatsRead(BaseModel):
    by_status: dict[str, int]
    by_priority: dict[str, int]
    queue_depth: dict[str, int]
    throughput: dict[str, Throughput]
    durations: dict[str, Durations]
    window_seconds: float
    history_read_at: datetime = Field(
        description="when the finished jobs (completed, failed, cancelled) in by_status "
        "and by_priority, the throughput and the durations were read: for this answer, "
        "or, where reading them takes 50 ms or more, a minute or two before (docs/api.md)"
    )


class ApiKeyCreate(BaseModel):
    model_config = _STRICT

    role: Literal["viewer", "submitter", "admin"]
    label: ShortText


class ApiKeyRead(BaseModel):
    id: UUID
    role: str
    label: str | None
    source: str = Field(
        description="api (created with POST /api-keys) or env (SWITCHYARD_API_KEYS)"
    )
    created_at: datetime
    revoked_at: datetime | None


class KeyIdentity(BaseModel):
    """The key a request was made with: what a client (the dashboard) needs to know which
    actions it may offer. ``id`` is what ``created_by`` holds on the jobs it submitted."""

    id: str = Field(description="the key's id (`dev` in dev mode without keys)")
    role: str
    label: str | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="the secret: shown this once, stored only as a hash")


class AuditRead(BaseModel):
    id: int
    at: datetime
    actor: str | None
    role: str | None
    action: str
    job_id: UUID | None
    attempt: int | None
    outcome: str
    status_code: int | None
    client: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditRead]
    next_cursor: str | None


class ScheduleCreate(BaseModel):
    """``cron``: standard 5 fields (minute hour day month weekday), or 6 with a seconds
    field last (croniter's form, for sub-minute schedules)."""

    model_config = _STRICT

    name: ShortText
    cron: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    timezone: ShortText = "UTC"
    job: JobCreate
    paused: bool = False


class ScheduleUpdate(BaseModel):
    model_config = _STRICT

    paused: bool | None = None
    cron: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
        | None
    ) = None
    timezone: ShortText | None = None
    job: JobCreate | None = None


class ScheduleRead(BaseModel):
    id: UUID
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_job_id: UUID | None
    created_at: datetime


class ErrorBody(BaseModel):
    detail: Any


def check_json_value(value: Any, *, max_depth: int, where: str = "payload") -> None:
    """Refuse what a client's JSON value may not hold (``shared.jsonvalues.CLIENT_JSON``,
    nested at most ``max_depth`` levels: the API's own limit); the error names the path
    of the first fault."""
    check_json(value, _client_json(max_depth), where=where)


@functools.lru_cache(maxsize=8)
def _client_json(max_depth: int) -> JsonRules:
    """CLIENT_JSON at ``max_depth`` (one per configured depth, not one per job)."""
    return replace(CLIENT_JSON, max_depth=max_depth)


# ------------------------------------------------------------------- GET /jobs/{id}/why

WhyReason = Literal[
    "dependencies",
    "delayed",
    "due",
    "backoff",
    "no_worker",
    "no_worker_for_type",
    "too_large",
    "no_free_capacity",
    "priority",
    "placing",
    "running",
    "cancelling",
    "terminal",
]


class WhyDependency(BaseModel):
    id: UUID
    type: str | None = Field(description="null when the job was deleted by retention")
    name: str | None
    status: str = Field(description="its status, or `deleted` (retention removed it)")


class WhyResources(BaseModel):
    cpu_units: float
    memory_mb: int
    slots: int


class WhyWorker(BaseModel):
    id: str
    state: str = Field(description="alive or draining (a draining worker takes no new job)")
    has_task_type: bool
    capacity: WhyResources
    free: WhyResources = Field(description="capacity minus what it holds now")
    needed: WhyResources = Field(description="what the job needs (one slot)")
    fits_now: bool = Field(description="it could start the job now")
    fits_ever: bool = Field(description="it could start the job once empty")
    why_not: str | None = Field(description="what is missing; null when it fits now")


class WhyRead(BaseModel):
    """``GET /jobs/{id}/why``: why the job is where it is."""

    id: UUID
    status: str
    reason: WhyReason
    message: str = Field(description="the reason, for a person")
    waiting_reason: str | None = Field(description="what the scheduler last wrote")
    dependencies: list[WhyDependency]
    priority: Priority
    effective_priority: Priority = Field(
        description="the priority it is placed with: one level higher per "
        "SWITCHYARD_AGING_SECONDS spent ready (never above critical)"
    )
    waited_seconds: float | None = Field(description="time ready so far (null unless ready)")
    aging_seconds: float
    position: int | None = Field(
        description="ready jobs placed before it (claim order: priority, then age); "
        "null when it is not in the ready queue"
    )
    position_capped: bool = Field(
        description="true when there are more than `position` (counting stops there)"
    )
    workers: list[WhyWorker] = Field(description="every live worker, alive or draining")


# ------------------------------------------------------------------- POST /jobs/bulk

BULK_MAX_JOBS = 1_000
"""At most this many jobs are acted on by one ``POST /jobs/bulk``."""


class BulkFilter(BaseModel):
    """Which jobs: every criterion given must hold (at least one is required)."""

    model_config = _STRICT

    status: list[JobStatus] | None = Field(default=None, min_length=1, max_length=8)
    type: TaskName | None = None
    priority: Priority | None = None
    created_after: WireTime | None = None
    created_before: WireTime | None = None
    ids: list[UUID] | None = Field(default=None, min_length=1, max_length=BULK_MAX_JOBS)
    name: ShortText | None = Field(
        default=None, description="jobs whose name starts with this (as GET /jobs?name=)"
    )


class BulkAction(BaseModel):
    """Body of ``POST /jobs/bulk``."""

    model_config = _STRICT

    action: Literal["cancel", "retry"]
    filter: BulkFilter
    dry_run: bool = False
    limit: int = Field(
        default=BULK_MAX_JOBS,
        ge=1,
        le=BULK_MAX_JOBS,
        description=f"at most this many jobs (the oldest first); at most {BULK_MAX_JOBS}",
    )


class BulkError(BaseModel):
    id: UUID
    detail: str


class BulkResult(BaseModel):
    action: str
    dry_run: bool
    matched: int = Field(description="jobs the filter selected (at most `limit`)")
    changed: int = Field(description="jobs changed (with dry_run: would be changed)")
    skipped: int = Field(description="jobs the single-job rules refused (409 cases, others')")
    truncated: bool = Field(description="more jobs match than `limit`: run it again")
    errors: list[BulkError] = Field(description="a sample of why jobs were skipped")
