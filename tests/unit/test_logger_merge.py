from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.logger.logger import merge_reports
from shared.messages import JobStatusReport

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def report(
    job: uuid.UUID, attempt: int, status: str, seconds: float, **kw: object
) -> JobStatusReport:
    return JobStatusReport(
        job_id=job,
        attempt=attempt,
        worker_id="w",
        status=status,
        ts=T0 + timedelta(seconds=seconds),
        **kw,
    )  # type: ignore[arg-type]


def test_one_row_per_attempt_whatever_the_order() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = merge_reports(
        [
            report(a, 1, "completed", 2, result={"x": 1}),
            report(a, 1, "started", 1),
            report(b, 1, "started", 0),
            report(b, 1, "failed", 3, error="ValueError: no", traceback="tb"),
            report(b, 2, "started", 5),
        ]
    )
    by_key = {(r.job_id, r.attempt): r for r in rows}
    assert len(rows) == 3
    ra = by_key[(a, 1)]
    assert (ra.status, ra.started_at, ra.finished_at, ra.result) == (
        "completed",
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
        '{"x":1}',
    )
    rb = by_key[(b, 1)]
    assert rb.status == "failed" and rb.error == "ValueError: no\ntb" and rb.result is None
    assert by_key[(b, 2)].status == "running" and by_key[(b, 2)].finished_at is None


def test_a_start_folded_into_the_end_is_the_rows_start() -> None:
    a = uuid.uuid4()
    (row,) = merge_reports(
        [report(a, 1, "completed", 2, result=None, started_at=T0 + timedelta(seconds=1))]
    )
    assert (row.status, row.started_at, row.finished_at) == (
        "completed", T0 + timedelta(seconds=1), T0 + timedelta(seconds=2),
    )  # fmt: skip
