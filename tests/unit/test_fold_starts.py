"""A worker's outbox folds each attempt's start report into the end report that follows
it in the same chunk (``fold_starts``): one report per short attempt, the start's time
carried on it; nothing else moves and no start is dropped."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.bodies import fold_starts
from shared.errors import DecodeError
from shared.messages import (
    Batch,
    JobLog,
    JobStatusReport,
    _Message,
    decode,
    decode_each,
    encode,
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


def test_a_start_on_a_report_that_is_no_end_is_refused() -> None:
    """``started_at`` rides only on an end report: on a start (or a ``lost``) it would be
    a second start, read differently by the two report paths. Such an item is rejected
    with why; the rest of its batch goes on."""
    a, b = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(ValidationError, match="started_at is for an end report"):
        report(a, "started", 1, started_at=T0)
    good = report(b, "completed", 2, started_at=T0)
    body = encode(Batch(of="job.status", items=[good, good]))
    body = body.replace(b'"status":"completed"', b'"status":"started"', 1)
    message, rejected = decode_each(body)
    assert isinstance(message, Batch) and message.items == [good]
    (refused,) = rejected
    assert "started_at is for an end report, not a 'started' one" in refused.reason
    for status in ("started", "lost"):
        with pytest.raises(DecodeError, match="started_at is for an end report"):
            decode(encode(report(a, "completed", 2, started_at=T0)).replace(
                b'"status":"completed"', f'"status":"{status}"'.encode()
            ))  # fmt: skip


def test_start_time_is_the_start_a_report_stands_for() -> None:
    a = uuid.uuid4()
    assert report(a, "started", 1).start_time == T0 + timedelta(seconds=1)
    assert report(a, "completed", 2).start_time is None
    assert report(a, "failed", 2, started_at=T0).start_time == T0
