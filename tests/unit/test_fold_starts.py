"""A worker's outbox folds each attempt's start report into the end report that follows
it in the same chunk (``fold_starts``): one report per short attempt, the start's time
carried on it; nothing else moves and no start is dropped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.messages import (
    JobLog,
    JobStatusReport,
    _Message,
    decode,
    encode,
    fold_starts,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def report(
    job: uuid.UUID, status: str, seconds: float, *, attempt: int = 1, worker: str = "w", **kw: Any
) -> JobStatusReport:
    return JobStatusReport(
        job_id=job, attempt=attempt, worker_id=worker, status=status,  # type: ignore[arg-type]
        ts=T0 + timedelta(seconds=seconds), **kw,
    )  # fmt: skip


def line(job: uuid.UUID, seq: int) -> JobLog:
    return JobLog(job_id=job, attempt=1, seq=seq, level="info", message=f"line {seq}")


def test_a_start_goes_inside_the_end_that_follows_it() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    log_a = line(a, 1)
    chunk: list[_Message] = [
        report(a, "started", 1),
        log_a,
        report(b, "started", 2),
        report(a, "completed", 3, result={"x": 1}),
        report(b, "failed", 4, error="boom"),
    ]
    out = fold_starts(chunk)
    assert [(type(m).__name__, getattr(m, "status", None)) for m in out] == [
        ("JobLog", None),
        ("JobStatusReport", "completed"),
        ("JobStatusReport", "failed"),
    ]
    assert out[0] is log_a
    done, failed = out[1], out[2]
    assert isinstance(done, JobStatusReport) and isinstance(failed, JobStatusReport)
    assert (done.job_id, done.started_at, done.ts, done.result) == (
        a, T0 + timedelta(seconds=1), T0 + timedelta(seconds=3), {"x": 1},
    )  # fmt: skip
    assert (failed.job_id, failed.started_at, failed.error) == (
        b, T0 + timedelta(seconds=2), "boom",
    )  # fmt: skip


def test_what_has_no_partner_in_the_chunk_is_left_alone() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    chunk: list[_Message] = [
        report(a, "started", 1),  # its end comes in a later chunk
        report(b, "completed", 2),  # its start went in an earlier one
        report(c, "started", 3, attempt=1),  # another attempt's end
        report(c, "completed", 4, attempt=2),
        report(c, "started", 5, attempt=3, worker="w1"),  # another worker's end
        report(c, "completed", 6, attempt=3, worker="w2"),
    ]
    out = fold_starts(chunk)
    assert out == chunk
    assert all(m.started_at is None for m in out if isinstance(m, JobStatusReport))


def test_a_start_after_its_end_is_kept() -> None:
    """Out of order (not what a worker emits): the start still travels, on its own."""
    a = uuid.uuid4()
    chunk: list[_Message] = [report(a, "completed", 2), report(a, "started", 1)]
    assert fold_starts(chunk) == chunk


def test_an_end_that_already_carries_a_start_takes_no_other() -> None:
    a = uuid.uuid4()
    carried = report(a, "completed", 3, started_at=T0)
    chunk: list[_Message] = [report(a, "started", 1), carried]
    assert fold_starts(chunk) == chunk


def test_a_chunk_without_reports_is_returned_as_it_is() -> None:
    chunk: list[_Message] = [line(uuid.uuid4(), 1)]
    assert fold_starts(chunk) is chunk


def test_a_folded_report_travels_with_its_start() -> None:
    a = uuid.uuid4()
    (folded,) = fold_starts([report(a, "started", 1), report(a, "completed", 2, result=[1])])
    decoded = decode(encode(folded))
    assert isinstance(decoded, JobStatusReport)
    assert (decoded.status, decoded.started_at, decoded.result) == (
        "completed", T0 + timedelta(seconds=1), [1],
    )  # fmt: skip
    # A report from a worker that does not fold has none.
    plain = decode(encode(report(a, "completed", 2)))
    assert isinstance(plain, JobStatusReport) and plain.started_at is None
