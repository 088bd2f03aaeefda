"""The state machine, exhaustively: every (old, new) pair against the table."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime

import pytest

from shared.errors import InvalidTransition
from shared.jobs.events import state_event, stored_event
from shared.jobs.outcomes import RunningJob, decide_end
from shared.messages import MAX_TEXT_CHARS, JobStateChanged, JobStatusReport
from shared.states import (
    CANCELLABLE_AT_ONCE,
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    can_transition,
    check_transition,
    initial_status,
    sources_for,
)

S = JobStatus
ALL: list[JobStatus | None] = [None, *JobStatus]

# The contract, written out independently of TRANSITIONS so a slip in either shows.
EXPECTED = {
    (None, S.PENDING), (None, S.BLOCKED), (None, S.READY), (None, S.FAILED),
    (S.PENDING, S.READY), (S.PENDING, S.BLOCKED), (S.PENDING, S.CANCELLED), (S.PENDING, S.FAILED),
    (S.BLOCKED, S.READY), (S.BLOCKED, S.PENDING), (S.BLOCKED, S.FAILED), (S.BLOCKED, S.CANCELLED),
    (S.READY, S.RUNNING), (S.READY, S.CANCELLED), (S.READY, S.FAILED),
    (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED), (S.RUNNING, S.RETRYING),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.READY),
    (S.RETRYING, S.READY), (S.RETRYING, S.CANCELLED), (S.RETRYING, S.FAILED),
    (S.FAILED, S.READY), (S.FAILED, S.BLOCKED), (S.FAILED, S.PENDING),
    (S.CANCELLED, S.READY), (S.CANCELLED, S.BLOCKED), (S.CANCELLED, S.PENDING),
}  # fmt: skip


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ALL, list(JobStatus))))
def test_every_pair(old: JobStatus | None, new: JobStatus) -> None:
    allowed = (old, new) in EXPECTED
    assert can_transition(old, new) is allowed
    if allowed:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(old, new)
        assert str(new) in str(info.value)


def test_table_has_every_status() -> None:
    assert set(TRANSITIONS) == set(ALL)


def test_completed_is_final_and_nothing_returns_to_running_but_ready() -> None:
    assert TRANSITIONS[S.COMPLETED] == frozenset()
    assert {old for old in ALL if can_transition(old, S.RUNNING)} == {S.READY}


def test_terminal_and_cancellable_sets() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    assert all(can_transition(s, S.CANCELLED) for s in CANCELLABLE_AT_ONCE)
    assert not (CANCELLABLE_AT_ONCE & TERMINAL)
    assert S.RUNNING not in CANCELLABLE_AT_ONCE


@pytest.mark.parametrize("new", list(JobStatus))
def test_sources_for_matches_table(new: JobStatus) -> None:
    expected = sorted(str(old) for old, n in EXPECTED if n == new and old is not None)
    assert sources_for(new) == expected


@pytest.mark.parametrize(
    ("unmet", "failed", "delayed", "expected"),
    [
        (0, False, False, S.READY),
        (0, False, True, S.PENDING),
        (2, False, False, S.BLOCKED),
        (2, False, True, S.BLOCKED),
        (1, True, False, S.FAILED),
        (0, True, True, S.FAILED),
    ],
)
def test_initial_status(unmet: int, failed: bool, delayed: bool, expected: JobStatus) -> None:
    assert (
        initial_status(unmet_dependencies=unmet, failed_dependency=failed, delayed=delayed)
        is expected
    )


def test_sql_guards_are_the_state_machine() -> None:
    """The status guard of each statement is rendered from the table above: an illegal
    source refuses to build, and the default is every status allowed to reach all targets."""
    from shared.jobs import sql

    assert sql.allowed_from(S.RUNNING) == "('ready')"
    assert sql.allowed_from(S.READY, S.CANCELLED, among={S.RUNNING}) == "('running')"
    assert sql.allowed_from(S.FAILED) == sql.status_list(
        {old for old in ALL if old is not None and can_transition(old, S.FAILED)}
    )
    with pytest.raises(AssertionError, match="completed -> ready"):
        sql.allowed_from(S.READY, among={S.COMPLETED})


def _running(*, attempts: int, runs: int, max_attempts: int = 4) -> RunningJob:
    return RunningJob(
        id=uuid.uuid4(), type="demo.fail", status="running", attempts=attempts, runs=runs,
        max_attempts=max_attempts, worker_id="w1", cancel_requested=False,
        retry_initial_delay=1.0, retry_backoff=2.0, retry_max_delay=300.0, started_at=None,
    )  # fmt: skip


def _failed(job: RunningJob) -> JobStatusReport:
    return JobStatusReport(
        job_id=job.id, attempt=job.attempts, worker_id="w1", status="failed", error="boom"
    )


def test_the_last_attempt_says_how_many_of_the_allowed_attempts_it_was() -> None:
    job = _running(attempts=4, runs=4)
    end = decide_end(job, _failed(job), datetime.now(UTC), random.Random(1))
    assert (end.status, end.error) == (S.FAILED, "attempt 4 of 4 failed: boom")


@pytest.mark.parametrize(
    ("attempts", "runs"),
    [(8, 4), (5, 4)],  # after a manual retry; after a hand-back (not counted)
)
def test_attempt_numbers_past_max_attempts_are_worded_truthfully(attempts: int, runs: int) -> None:
    job = _running(attempts=attempts, runs=runs)
    end = decide_end(job, _failed(job), datetime.now(UTC), random.Random(1))
    assert end.status == S.FAILED and end.error is not None
    assert f"of {job.max_attempts} failed" not in end.error  # never "attempt 8 of 4"
    assert end.error == (
        f"attempt {attempts} failed, {runs} of 4 allowed attempts used (attempt numbers go "
        "on across manual retries and handed-back attempts): boom"
    )


@pytest.mark.parametrize(
    ("status", "runs", "cancel"),
    [("failed", 1, False), ("failed", 4, False), ("failed", 1, True), ("handed_back", 1, False)],
)
def test_an_attempts_end_of_the_longest_error_makes_an_event(
    status: str, runs: int, cancel: bool
) -> None:
    """Seen failing: an error of MAX_TEXT_CHARS (the worker's bound) with the words
    before it ('attempts exhausted: ...') was over the event's bound; the report that
    applied it was dead-lettered, and the job ran again and again."""
    job = _running(attempts=runs, runs=runs)
    job.cancel_requested = cancel
    report = JobStatusReport(job_id=job.id, attempt=job.attempts, worker_id="w1",
                             status=status, error="E" * MAX_TEXT_CHARS)  # fmt: skip
    end = decide_end(job, report, datetime.now(UTC), random.Random(1))
    for build in (state_event, stored_event):
        event = build(job.id, job.type, job.attempts, S.RUNNING, end.status, end.reason,
                      worker_id="w1")  # fmt: skip
        validated = JobStateChanged.model_validate(event.model_dump())
        assert validated.reason is not None and len(validated.reason) <= MAX_TEXT_CHARS
        assert validated.reason.startswith(end.reason[:20])  # our words kept, the error cut
