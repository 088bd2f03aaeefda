"""A committed transition as its ``job.state`` event: every event is built here, and
the state machine (``shared.states``) checks each one. ``transitions.py`` builds them
for the changes it makes; a submission for the jobs it stores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shared.messages import MAX_TEXT_CHARS, JobStateChanged, message_text
from shared.prechecked import prechecked
from shared.states import check_transition


def utcnow() -> datetime:
    return datetime.now(UTC)


def fitting(reason: str | None) -> str | None:
    """A reason as an event carries it. Reasons quote a task's error (itself up to
    MAX_TEXT_CHARS) after words of our own: one over the bound made the event, and so the
    report it applied, fail (dead-lettered: the attempt's end was lost and the job ran
    again and again)."""
    if reason is None or len(reason) <= MAX_TEXT_CHARS:
        return reason
    return message_text(reason)


def state_event(
    job_id: UUID,
    type: str,
    attempt: int,
    old: str | None,
    new: str,
    reason: str | None,
    *,
    worker_id: str | None = None,
    ts: datetime | None = None,
    duration_seconds: float | None = None,
    wait_seconds: float | None = None,
) -> JobStateChanged:
    """The ``job.state`` event of one committed transition (every one is built here)."""
    check_transition(old, new)
    return JobStateChanged(
        ts=ts or utcnow(), job_id=job_id, type=type,
        old_status=None if old is None else str(old), new_status=str(new),
        attempt=attempt, worker_id=worker_id, reason=fitting(reason),
        duration_seconds=duration_seconds, wait_seconds=wait_seconds,
    )  # fmt: skip


def stored_event(
    job_id: UUID,
    type: str,
    attempt: int,
    old: str | None,
    new: str,
    reason: str,
    *,
    worker_id: str | None,
    duration_seconds: float | None = None,
    wait_seconds: float | None = None,
    ts: datetime | None = None,
) -> JobStateChanged:
    """``state_event`` for the hot paths (a submit, a dispatch, a completion, an
    unblocked child): the id, type, attempt and worker as the database just returned
    them or as a checked request gave them, a reason of our own, a time of our clock.
    Built without checking them again (``prechecked``): 2.7 against 5.1 µs for the
    validated ``state_event``, three times per job."""
    check_transition(old, new)
    return prechecked(
        JobStateChanged, ts=ts or utcnow(), job_id=job_id, type=type,
        old_status=None if old is None else str(old), new_status=str(new), attempt=attempt,
        worker_id=worker_id, reason=fitting(reason),
        duration_seconds=duration_seconds, wait_seconds=wait_seconds,
    )  # fmt: skip


def submitted_event(job: Any, *, ts: datetime | None = None) -> JobStateChanged:
    """The event of a newly stored job (None -> its first status), from the values of
    its checked request."""
    reason = job.error or "submitted"
    return stored_event(job.id, job.type, 0, None, job.status, reason, worker_id=None, ts=ts)
