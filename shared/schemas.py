"""REST wire schemas (separate Create / Read models; never the table on the wire)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.states import JobStatus


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 = most urgent; the claim index orders by this."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {Priority.CRITICAL: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}
_RANK_PRIORITY = {rank: p for p, rank in _PRIORITY_RANK.items()}

TaskName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$"),
]
# No NUL: PostgreSQL text cannot hold it; refusing it here gives a 422, not a 500.
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

# Every time a client sends (a body field, a query parameter, a cursor, a WebSocket
# parameter) lies well inside what datetime and PostgreSQL can compute with, so that
# converting its offset to UTC, adding a retry delay or comparing it never overflows.
# The lower bound still lets "the distant past" mean "now" (run_at).
EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)


def check_time_range(value: datetime) -> datetime:
    """``value`` if it has an offset and lies in [EARLIEST_TIME, LATEST_TIME); else
    ValueError saying so."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a time zone offset (e.g. Z or +02:00)")
    try:
        in_range = EARLIEST_TIME <= value.astimezone(UTC) < LATEST_TIME
    except OverflowError:  # the offset pushes it past datetime's own range
        in_range = False
    if not in_range:
        raise ValueError(
            f"times must lie between {EARLIEST_TIME:%Y-%m-%dT%H:%M:%SZ} and "
            f"{LATEST_TIME:%Y-%m-%dT%H:%M:%SZ} (UTC)"
        )
    return value


WireTime = Annotated[AwareDatetime, AfterValidator(check_time_range)]
"""An RFC 3339 time with an offset, within the range above: every time a client sends."""


class Resources(BaseModel):
    """What one attempt reserves on a worker."""

    model_config = _STRICT

    cpu_units: float = Field(gt=0, le=4096, description="CPU cores (fractions allowed)")
    memory_mb: int = Field(gt=0, le=16_777_216, description="memory in MiB")


class ResourcesIn(BaseModel):
    """Resources in a request: omitted fields take the task's defaults."""

    model_config = _STRICT

    cpu_units: float | None = Field(default=None, gt=0, le=4096)
    memory_mb: int | None = Field(default=None, gt=0, le=16_777_216)


class RetryPolicy(BaseModel):
    """delay before attempt n+1 = initial_delay × multiplier^(n-1), ±10 % jitter, capped."""

    model_config = _STRICT

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_delay_seconds: float = Field(default=1.0, ge=0, le=86_400)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=100)
    max_delay_seconds: float = Field(default=300.0, ge=0, le=604_800)


class RetryIn(BaseModel):
    model_config = _STRICT

    max_attempts: int | None = Field(default=None, ge=1, le=100)
    initial_delay_seconds: float | None = Field(default=None, ge=0, le=86_400)
    backoff_multiplier: float | None = Field(default=None, ge=1, le=100)
    max_delay_seconds: float | None = Field(default=None, ge=0, le=604_800)


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


class JobRead(BaseModel):
    id: UUID
    type: str
    name: str | None
    status: JobStatus
    priority: Priority
    payload: dict[str, Any]
    resources: Resources
    depends_on: list[UUID]
    retry: RetryPolicy
    timeout_seconds: float | None
    attempts: int
    worker_id: str | None
    result: Any = None
    error: str | None
    progress: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_at: datetime
    created_by: str | None
    idempotency_key: str | None
    cancel_requested: bool
    waiting_reason: str | None


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class BatchRead(BaseModel):
    jobs: list[JobRead]


class ExecutionRead(BaseModel):
    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    status: str
    error: str | None
    result: Any = None
    resources: dict[str, Any] | None


class LogLine(BaseModel):
    ts: datetime
    attempt: int
    level: str
    message: str


class JobLogs(BaseModel):
    """One page of a job's log lines (in order: attempt, then line), and every attempt."""

    executions: list[ExecutionRead]
    lines: list[LogLine]
    next_cursor: str | None = Field(
        default=None, description="pass as cursor for the next page; null: no more lines"
    )


class Capacity(BaseModel):
    cpu_units: float
    memory_mb: int
    slots: int


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


# What a JSON value from a client may hold, so that it can be stored (jsonb), encoded
# (orjson) and read back unchanged: one rule for every payload-like field.
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with what UTF-8 and PostgreSQL text cannot carry (lone surrogates, NUL)
    written as escapes: for messages that quote client input."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _bad_text(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def check_json_value(value: Any, *, max_depth: int, where: str = "payload") -> None:
    """Refuse what JSON/JSONB cannot hold faithfully: NaN/Infinity, integers beyond 64
    bits, NUL or lone surrogates in strings or keys, and absurd nesting. The error names
    the path of the first fault."""
    if not _json_suspect(value, max_depth):
        return  # the common case: one walk, no path strings built
    _explain_json_value(value, max_depth=max_depth, where=where)
    raise ValueError(f"{where}: not a valid JSON value")  # (the walk above names it)


def _json_suspect(value: Any, max_depth: int) -> bool:
    """True when ``check_json_value`` has something to refuse (found without paths)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if _bad_text(item):
                return True
        elif kind is int:
            if not JSON_INT_MIN <= item <= JSON_INT_MAX:
                return True
        elif kind is float:
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            if depth > max_depth:
                return True
            for k, v in item.items():
                if not isinstance(k, str) or _bad_text(k):
                    return True
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                return True
            stack.extend((v, depth + 1) for v in item)
        elif item is None or kind is bool:
            pass
        else:  # a subclass or a type JSON has not: look closer
            return True
    return False


def _explain_json_value(value: Any, *, max_depth: int, where: str) -> None:
    """Raise ValueError naming where ``value`` holds what JSON cannot."""
    stack: list[tuple[Any, int, str]] = [(value, 1, where)]
    while stack:
        item, depth, path = stack.pop()
        if depth > max_depth and isinstance(item, dict | list):
            raise ValueError(f"{path}: nested deeper than {max_depth} levels")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path}: NaN and Infinity are not valid JSON numbers")
        if isinstance(item, int) and not isinstance(item, bool):
            if not JSON_INT_MIN <= item <= JSON_INT_MAX:
                raise ValueError(
                    f"{path}: integers must fit in 64 bits ({JSON_INT_MIN} to "
                    f"{JSON_INT_MAX}); send larger numbers as strings"
                )
        elif isinstance(item, str):
            _explain_text(item, path, "strings")
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path}: keys must be strings")
                _explain_text(k, path, "keys")
                stack.append((v, depth + 1, f"{path}.{k}"))
        elif isinstance(item, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(item))
        elif item is not None and not isinstance(item, bool | float):
            raise ValueError(f"{path}: {type(item).__name__} is not a JSON value")


def _explain_text(text: str, path: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{path}: {what} may not contain the NUL character")
    if not text.isascii() and _SURROGATE.search(text):
        raise ValueError(
            f"{path}: {what} may not contain lone surrogates ('{printable(text)[:80]}' is "
            "not valid Unicode); send text as UTF-8"
        )
