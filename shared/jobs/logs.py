"""A job's log lines, a page at a time, and its executions (``GET /jobs/{id}/logs``).

Pages are keyset-paginated on ``(attempt, seq)`` (the unique index of ``job_logs``):
each page is one index range scan, however many lines the job has. The cursor is
opaque to clients; :func:`decode_log_cursor` is the one place that reads it.
"""

from __future__ import annotations

import base64
from uuid import UUID

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from shared.jobs.reads import get_job, within_budget
from shared.models import JobExecution, JobLogLine
from shared.schemas import ExecutionRead, JobLogs, LogLine

LOG_PAGE_DEFAULT = 1000
LOG_PAGE_MAX = 10_000
# A page's lines, in bytes of their text: 10,000 lines of 64 Ki characters would be
# gigabytes in one answer. The lines past it come on the next page.
LOG_PAGE_BYTES = 8 * 1024 * 1024
_INT4_MAX = 2**31 - 1


class InvalidLogCursor(ValueError):
    """A cursor this API did not issue."""


def encode_log_cursor(job_id: UUID, attempt: int, seq: int) -> str:
    raw = f"L{attempt}.{seq}.{job_id.hex}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_log_cursor(cursor: str, job_id: UUID) -> tuple[int, int]:
    """(attempt, seq) of the last line of ``job_id``'s previous page; InvalidLogCursor
    for anything else (a cursor of another job's logs would skip lines unseen). A cursor
    without its job (an older API's, during a rolling upgrade) is taken as it was."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        attempt_text, seq_text, *job = raw.removeprefix("L").split(".")
        attempt, seq = int(attempt_text), int(seq_text)
        if not raw.startswith("L") or not (0 <= attempt <= _INT4_MAX and 0 <= seq <= _INT4_MAX):
            raise ValueError(raw)
        if job not in ([], [job_id.hex]):
            raise ValueError(raw)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidLogCursor(
            "cursor: not a cursor of this job's logs; pass next_cursor from the previous page"
        ) from None
    return attempt, seq


async def job_log_page(
    session: AsyncSession, job_id: UUID, *, limit: int = LOG_PAGE_DEFAULT, cursor: str | None
) -> JobLogs:
    """Every execution, and up to ``limit`` lines after ``cursor`` (from the first without),
    as many as fit ``LOG_PAGE_BYTES``."""
    after = decode_log_cursor(cursor, job_id) if cursor else None
    await get_job(session, job_id)
    executions = await session.scalars(
        select(JobExecution).where(JobExecution.job_id == job_id).order_by(JobExecution.attempt)
    )
    where = [JobLogLine.job_id == job_id]
    if after is not None:
        where.append(tuple_(JobLogLine.attempt, JobLogLine.seq) > after)
    order = (JobLogLine.attempt, JobLogLine.seq)
    size = func.octet_length(JobLogLine.message)  # read from the TOAST header: no detoasting
    # Each line with the bytes of the page up to it (the index order, so the sum streams
    # beside the range scan); only lines that start within the budget leave the database,
    # and the second line whatever the first weighs: a line past the page says there is
    # a next one.
    sized = (
        select(JobLogLine.ts, *order, JobLogLine.level, JobLogLine.message,
               func.sum(size).over(order_by=order).label("through"), size.label("size"),
               func.row_number().over(order_by=order).label("n"))
        .where(*where).order_by(*order).limit(limit + 1).subquery()
    )  # fmt: skip
    rows = list(
        await session.execute(
            select(sized)
            .where(or_(sized.c.through - sized.c.size <= LOG_PAGE_BYTES, sized.c.n <= 2))
            .order_by(sized.c.attempt, sized.c.seq)
        )
    )
    page, more = within_budget(rows, limit, LOG_PAGE_BYTES, lambda row: row.through)
    return JobLogs(
        executions=[
            ExecutionRead(
                attempt=e.attempt,
                worker_id=e.worker_id,
                started_at=e.started_at,
                finished_at=e.finished_at,
                duration_seconds=e.duration_seconds,
                status=e.status,
                error=e.error,
                result=e.result,
                resources=e.resources,
            )
            for e in executions
        ],
        lines=[
            LogLine(ts=ln.ts, attempt=ln.attempt, level=ln.level, message=ln.message) for ln in page
        ],
        next_cursor=encode_log_cursor(job_id, page[-1].attempt, page[-1].seq) if more else None,
    )
