"""Job statuses as users see them. The transition table stays in ``shared/states.py``."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"  # accepted; waiting for run_at
    BLOCKED = "blocked"  # waiting on unmet dependencies
    READY = "ready"  # eligible, waiting for a worker with room
    RUNNING = "running"  # placed on a worker (dispatched or executing)
    RETRYING = "retrying"  # an attempt failed; waiting for the backoff delay
    COMPLETED = "completed"  # terminal: success
    FAILED = "failed"  # terminal: attempts exhausted, dependency failed, worker lost
    CANCELLED = "cancelled"  # terminal: cancelled by a user


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
