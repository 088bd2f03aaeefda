"""What an attempt's end leads to, decided on the locked row: plain functions over plain
data (no database), which ``shared.jobs.transitions`` then writes."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from shared.messages import JobStatusReport
from shared.states import JobStatus

S = JobStatus


@dataclass
class RunningJob:
    """The columns of a job that deciding on its reports needs (``sql.LOCK_FOR_REPORTS``)."""

    id: UUID
    type: str
    status: str
    attempts: int
    runs: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    retry_initial_delay: float
    retry_backoff: float
    retry_max_delay: float
    started_at: datetime | None


@dataclass
class AttemptEnd:
    """An attempt's end other than success, decided: a row of ``sql.APPLY_ENDS``."""

    job: RunningJob
    status: JobStatus
    error: str | None
    run_at: datetime | None  # retrying: not before this
    reason: str  # for the job.state event


def decide_end(
    job: RunningJob, report: JobStatusReport, now: datetime, rng: random.Random | None
) -> AttemptEnd:
    """The next status of a running job whose attempt ended other than by success."""
    cancelled = AttemptEnd(job, S.CANCELLED, "cancelled by request", None, "cancelled")
    match report.status:
        case "cancelled":
            return cancelled
        case "handed_back" if job.cancel_requested:
            return cancelled  # cancelled while on its way or draining: it must not run again
        case "handed_back":
            return AttemptEnd(job, S.READY, None, None, f"handed back: {report.error}")
    # failed (or timed out)
    error = report.error or "failed"
    if job.cancel_requested:
        return AttemptEnd(job, S.CANCELLED, f"cancelled by request ({error})", None, "cancelled")
    if job.runs < job.max_attempts:
        delay = retry_delay(
            job.runs,
            initial=job.retry_initial_delay,
            multiplier=job.retry_backoff,
            max_delay=job.retry_max_delay,
            rng=rng,
        )
        return AttemptEnd(
            job, S.RETRYING, error, now + timedelta(seconds=delay),
            f"attempt {job.attempts} failed: {error}; retry in {delay:.2f} s",
        )  # fmt: skip
    return AttemptEnd(job, S.FAILED, last_attempt_error(job, error), None,
                      f"attempts exhausted: {error}")  # fmt: skip


def last_attempt_error(job: RunningJob, error: str) -> str:
    """The error of a job whose last allowed attempt failed. Attempt numbers go on
    across manual retries (a fresh budget of ``runs``) and handed-back attempts (not
    counted), so the number may exceed ``max_attempts``: then both are said apart."""
    if job.attempts == job.runs:
        return f"attempt {job.attempts} of {job.max_attempts} failed: {error}"
    return (
        f"attempt {job.attempts} failed, {job.runs} of {job.max_attempts} allowed attempts "
        f"used (attempt numbers go on across manual retries and handed-back attempts): {error}"
    )


def retry_delay(
    failed_runs: int,
    *,
    initial: float,
    multiplier: float,
    max_delay: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before the attempt after ``failed_runs`` failures: initial × multiplier^(n-1),
    capped at ``max_delay``, with ±10 % jitter (the cap holds after jitter too)."""
    n = max(1, failed_runs)
    try:
        base = initial * multiplier ** (n - 1)
    except OverflowError:
        base = max_delay
    base = min(base, max_delay)
    jitter = (rng or random).uniform(-0.1, 0.1)
    return max(0.0, min(max_delay, base * (1 + jitter)))


def run_seconds(started: datetime | None, now: datetime) -> float | None:
    """How long an attempt ran, for its end's event (None if its start is unknown)."""
    return max(0.0, (now - started).total_seconds()) if started is not None else None
