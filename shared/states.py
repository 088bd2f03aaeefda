"""The job state machine: every allowed status transition, in one place.

Only ``shared/jobs/transitions.py`` writes ``jobs.status``; each of its statements
(``shared/jobs/sql.py``) guards the write with the statuses this table allows it to
leave (``sql.allowed_from``, built on :func:`sources_for`), and every event it builds is
checked with :func:`check_transition`.
"""

from __future__ import annotations

from shared.errors import InvalidTransition
from switchyard.states import TERMINAL, JobStatus

__all__ = [
    "CANCELLABLE_AT_ONCE",
    "TERMINAL",
    "TRANSITIONS",
    "WAITING",
    "JobStatus",
    "can_transition",
    "check_transition",
    "initial_status",
    "sources_for",
]


S = JobStatus
# old status -> statuses it may move to. ``None`` is "the job does not exist yet".
TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset({S.PENDING, S.BLOCKED, S.READY, S.FAILED}),
    S.PENDING: frozenset({S.READY, S.BLOCKED, S.CANCELLED, S.FAILED}),
    S.BLOCKED: frozenset({S.READY, S.PENDING, S.FAILED, S.CANCELLED}),
    S.READY: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    # running -> ready: the worker handed the job back unstarted (drain), attempt kept.
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.RETRYING, S.CANCELLED, S.READY}),
    S.RETRYING: frozenset({S.READY, S.CANCELLED, S.FAILED}),
    S.COMPLETED: frozenset(),
    # failed/cancelled -> ready|blocked|pending: explicit retry (dead-letter requeue).
    S.FAILED: frozenset({S.READY, S.BLOCKED, S.PENDING}),
    S.CANCELLED: frozenset({S.READY, S.BLOCKED, S.PENDING}),
}

# A job that waits to run: neither running nor finished (TERMINAL).
WAITING: frozenset[JobStatus] = frozenset({S.PENDING, S.BLOCKED, S.READY, S.RETRYING})
# Statuses from which a user's cancel takes effect at once (no worker involved).
CANCELLABLE_AT_ONCE: frozenset[JobStatus] = WAITING


def can_transition(old: JobStatus | str | None, new: JobStatus | str) -> bool:
    old_status = None if old is None else JobStatus(old)
    return JobStatus(new) in TRANSITIONS[old_status]


# (old, new) pairs the machine allows, as plain strings: a StrEnum member hashes and
# compares as its value, so a lookup takes members and strings alike (twice per job).
_ALLOWED = frozenset(
    (None if old is None else str(old), str(new))
    for old, targets in TRANSITIONS.items()
    for new in targets
)


def check_transition(old: JobStatus | str | None, new: JobStatus | str) -> JobStatus:
    """Return ``new`` as a JobStatus, or raise InvalidTransition."""
    if (old, new) not in _ALLOWED and not can_transition(old, new):
        raise InvalidTransition(None if old is None else str(old), str(new))
    return JobStatus(new)


def sources_for(new: JobStatus | str) -> list[str]:
    """Statuses a job may be in for an UPDATE to ``new`` to be allowed (SQL guard)."""
    target = JobStatus(new)
    return sorted(
        str(old) for old, targets in TRANSITIONS.items() if old is not None and target in targets
    )


def initial_status(*, unmet_dependencies: int, failed_dependency: bool, delayed: bool) -> JobStatus:
    """Status of a job at submission, as design.md orders the rules."""
    if failed_dependency:
        return S.FAILED
    if unmet_dependencies > 0:
        return S.BLOCKED
    if delayed:
        return S.PENDING
    return S.READY
