"""The wire models the SDK reads and the task options: what a client and a task author see.

The API uses the same classes (``shared/schemas.py`` re-exports them), so the two sides
cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from switchyard.states import JobStatus

#: Roles an API key can have, least to most powerful; a task may be limited to some.
ROLES = ("viewer", "submitter", "admin")

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def unsigned_zero(value: float | None) -> float | None:
    """-0.0 as 0.0 (anything else as it is): the two compare equal, so what groups equal
    values (a batch's shared columns, its shapes of job) would store or answer one for
    the other."""
    return None if value is None else value + 0.0


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


class Resources(BaseModel):
    """What one attempt reserves on a worker."""

    model_config = _STRICT

    cpu_units: float = Field(gt=0, le=4096, description="CPU cores (fractions allowed)")
    memory_mb: int = Field(gt=0, le=16_777_216, description="memory in MiB")


class RetryPolicy(BaseModel):
    """delay before attempt n+1 = initial_delay × multiplier^(n-1), ±10 % jitter, capped."""

    model_config = _STRICT

    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_delay_seconds: float = Field(default=1.0, ge=0, le=86_400)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=100)
    max_delay_seconds: float = Field(default=300.0, ge=0, le=604_800)

    _delays = field_validator("initial_delay_seconds", "max_delay_seconds")(unsigned_zero)


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


class Event(BaseModel):
    """One message of ``WS /jobs/stream``: ``event`` is ``state``, ``log``, ``progress`` or
    ``dropped``; ``data`` holds its fields (docs/api.md lists them per event)."""

    event: str
    job_id: UUID | None = None
    attempt: int | None = None
    ts: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)
