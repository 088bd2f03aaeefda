"""Consumes ``job.logs.#`` and ``job.status.#`` and writes job_logs / job_executions.

Deliveries are buffered and written in one transaction per batch (up to
``BATCH_SIZE`` messages or ``FLUSH_SECONDS`` after the first); they are acked only
after the commit, so a crash or restart loses nothing (unacked messages are
redelivered). Writes are idempotent: a line is unique per (job, attempt, seq) and an
execution per (job, attempt), so a redelivered batch changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from shared.broker import Broker, Delivery, Topology, ack_all
from shared.db import create_pool, is_db_outage, pool_transaction
from shared.isolation import Backoff, apply_isolating
from shared.messages import JobLog, JobStatusReport
from shared.settings import Settings

log = logging.getLogger("switchyard.logger")

BATCH_SIZE = 1000
FLUSH_SECONDS = 0.05

INSERT_LINES = """
    INSERT INTO job_logs (job_id, attempt, seq, ts, level, message)
    SELECT u.job_id, u.attempt, u.seq, u.ts, u.level, u.message
    FROM unnest($1::uuid[], $2::int[], $3::int[], $4::timestamptz[], $5::text[], $6::text[])
         AS u(job_id, attempt, seq, ts, level, message)
    -- Lines of an attempt the job was dispatched (none of a job gone, of an attempt 0
    -- or of one to come).
    WHERE EXISTS (SELECT 1 FROM jobs j
                  WHERE j.id = u.job_id AND u.attempt BETWEEN 1 AND j.attempts)
    ON CONFLICT (job_id, attempt, seq) DO NOTHING
    """

# An attempt's start is the worker's clock and its end may be the scheduler's (a lost
# attempt's): a start after the end is written as the end, so a run time is never
# negative. Not least()/greatest(): they skip NULLs, and an attempt with no start known
# must keep none (and no run time).
_START = "CASE WHEN {s} > {f} THEN {f} ELSE {s} END"
_START_NEW = _START.format(s="u.started_at", f="u.finished_at")
_START_KEPT = _START.format(
    s="COALESCE(job_executions.started_at, excluded.started_at)",
    f="COALESCE(job_executions.finished_at, excluded.finished_at)",
)
UPSERT_EXECUTIONS = f"""
    INSERT INTO job_executions (job_id, attempt, worker_id, status, started_at, finished_at,
                                duration_seconds, error, result, resources)
    SELECT u.job_id, u.attempt, u.worker_id, u.status, {_START_NEW}, u.finished_at,
           EXTRACT(EPOCH FROM (u.finished_at - {_START_NEW})), u.error,
           CAST(u.result AS jsonb),
           jsonb_build_object('cpu_units', j.cpu_units, 'memory_mb', j.memory_mb)
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[],
                $6::timestamptz[], $7::text[], $8::text[])
         AS u(job_id, attempt, worker_id, status, started_at, finished_at, error, result)
    JOIN jobs j ON j.id = u.job_id
    ON CONFLICT (job_id, attempt) DO UPDATE SET
        worker_id = COALESCE(job_executions.worker_id, excluded.worker_id),
        started_at = {_START_KEPT},
        -- The first end recorded stands (a late report from a worker the scheduler had
        -- already declared lost does not rewrite history).
        status = CASE WHEN job_executions.finished_at IS NULL AND excluded.finished_at IS NOT NULL
                      THEN excluded.status ELSE job_executions.status END,
        finished_at = COALESCE(job_executions.finished_at, excluded.finished_at),
        error = CASE WHEN job_executions.finished_at IS NULL
                     THEN COALESCE(excluded.error, job_executions.error)
                     ELSE job_executions.error END,
        result = CASE WHEN job_executions.finished_at IS NULL
                      THEN COALESCE(excluded.result, job_executions.result)
                      ELSE job_executions.result END,
        duration_seconds = EXTRACT(EPOCH FROM (
            COALESCE(job_executions.finished_at, excluded.finished_at) - {_START_KEPT}))
    -- An attempt's row is its worker's: another's report (an earlier attempt's cannot be
    -- checked against the job) changes nothing.
    WHERE job_executions.worker_id IS NULL OR job_executions.worker_id = excluded.worker_id
    """


# Executions are audited too (issue: every submission, cancel, retry and execution):
# one row when an attempt starts, one when it ends, written with the history in the
# same transaction and idempotent on redelivery (unique per job, attempt and action).
INSERT_EXECUTION_AUDIT = """
    INSERT INTO audit_log (actor, role, action, job_id, attempt, outcome, at, detail)
    SELECT u.worker_id, 'worker', u.action, u.job_id, u.attempt, u.outcome, u.at,
           CASE WHEN u.error IS NULL THEN NULL ELSE jsonb_build_object('error', u.error) END
    FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int[], $5::text[],
                $6::timestamptz[], $7::text[])
         AS u(worker_id, action, job_id, attempt, outcome, at, error)
    WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id)
    ON CONFLICT (job_id, attempt, action) WHERE attempt IS NOT NULL DO NOTHING
    """


@dataclass
class _Execution:
    job_id: UUID
    attempt: int
    worker_id: str | None = None
    status: str = "running"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: str | None = None


def merge_reports(reports: list[JobStatusReport]) -> list[_Execution]:
    """One row per (job, attempt) from a batch's reports, in any arrival order."""
    rows: dict[tuple[UUID, int], _Execution] = {}
    for r in reports:
        row = rows.setdefault((r.job_id, r.attempt), _Execution(r.job_id, r.attempt))
        if row.worker_id is not None and r.worker_id != row.worker_id:
            continue  # another worker's report of the same attempt: the row is the first's
        row.worker_id = r.worker_id
        row.started_at = row.started_at or r.start_time
        if r.status == "started":
            continue
        row.status = r.status
        row.finished_at = r.ts
        row.error = r.error if not r.traceback else f"{r.error}\n{r.traceback}"
        row.result = orjson.dumps(r.result).decode() if r.status == "completed" else None
    return list(rows.values())


def execution_audit(reports: list[JobStatusReport]) -> list[list[Any]]:
    """INSERT_EXECUTION_AUDIT's arrays: a row per start (a start report, or one folded
    into its end report) and per end."""
    rows: list[tuple[str, str, UUID, int, str, datetime | None, str | None]] = []
    for r in reports:  # in report order: the log's ids follow what happened
        if (start := r.start_time) is not None:
            rows.append((r.worker_id, "execution.start", r.job_id, r.attempt, "started",
                         start, None))  # fmt: skip
        if r.status != "started":
            rows.append((r.worker_id, "execution.end", r.job_id, r.attempt, r.status, r.ts,
                         (r.error or "")[:2000] or None))  # fmt: skip
    return [list(column) for column in zip(*rows, strict=True)]


# What each reported job's row vouches for: the attempts it was dispatched, and to
# which worker the latest one went (NULL once it was handed back, undone or retried).
JOBS_OF_REPORTS = "SELECT id, attempts, worker_id FROM jobs WHERE id = ANY($1::uuid[])"


def vouched(report: JobStatusReport, attempts: int, worker_id: str | None) -> bool:
    """A report the job's row can have come from: an attempt it was dispatched, and for
    its latest attempt, from the worker it went to. The scheduler ignores the others (a
    forged or confused report); written, they made up executions (an attempt 0, one
    never dispatched, another worker's 'completed' standing as the attempt's end) and
    their audit rows."""
    if not 1 <= report.attempt <= attempts:
        return False
    return report.attempt < attempts or worker_id is None or report.worker_id == worker_id


async def credible(
    conn: asyncpg.Connection, reports: list[JobStatusReport]
) -> list[JobStatusReport]:
    """``reports`` but those their jobs do not vouch for (``vouched``; a job gone: none)."""
    rows = await conn.fetch(JOBS_OF_REPORTS, list({r.job_id for r in reports}), timeout=30)
    jobs = {r["id"]: r for r in rows}
    kept: list[JobStatusReport] = []
    odd: list[str] = []
    for r in reports:
        job = jobs.get(r.job_id)
        if job is not None and vouched(r, job["attempts"], job["worker_id"]):
            kept.append(r)
        elif job is not None and len(odd) < 5:
            odd.append(f"{r.job_id} attempt {r.attempt} from {r.worker_id}")
    if len(kept) < len(reports):
        log.warning("%d report(s) of no dispatched attempt not written (of jobs gone, or "
                    "e.g. %s)", len(reports) - len(kept), "; ".join(odd) or "none")  # fmt: skip
    return kept


async def write_batch(
    conn: asyncpg.Connection, lines: list[JobLog], reports: list[JobStatusReport]
) -> None:
    """Write one batch on ``conn`` (the caller holds the transaction)."""
    if reports:
        reports = await credible(conn, reports)
    if lines:
        await conn.execute(
            INSERT_LINES,
            [ln.job_id for ln in lines], [ln.attempt for ln in lines], [ln.seq for ln in lines],
            [ln.ts for ln in lines], [ln.level for ln in lines], [ln.message for ln in lines],
            timeout=30,
        )  # fmt: skip
    if reports:
        await conn.execute(INSERT_EXECUTION_AUDIT, *execution_audit(reports), timeout=30)
    executions = merge_reports(reports)
    if executions:
        await conn.execute(
            UPSERT_EXECUTIONS,
            [e.job_id for e in executions], [e.attempt for e in executions],
            [e.worker_id for e in executions], [e.status for e in executions],
            [e.started_at for e in executions], [e.finished_at for e in executions],
            [e.error for e in executions], [e.result for e in executions],
            timeout=30,
        )  # fmt: skip


class HistoryLogger:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = Broker(
            settings.amqp_url, settings.namespace, name="switchyard-logger",
            publish_timeout=settings.publish_timeout_seconds,
        )  # fmt: skip
        self.buffer: list[Delivery] = []
        self.arrived = asyncio.Event()
        # Between tries of a batch that could not be settled (see _flush).
        self.held_back = Backoff()

    async def run(self, stop: asyncio.Event) -> None:
        # Plain asyncpg: the batch is four statements in one transaction, and the ORM's
        # per-statement work would be most of the logger's CPU for short batches.
        pool = await create_pool(self.settings, min_size=0, max_size=2)
        try:
            async with self.broker:
                consumer = await self.broker.consume(
                    self.broker.topology.logger_queue,
                    Topology.LOGGER_BINDINGS,
                    self._on_delivery,
                    prefetch=BATCH_SIZE * 2,
                )
                log.info("logger consuming %s", self.broker.topology.logger_queue)
                while not stop.is_set():
                    stop_task = asyncio.ensure_future(stop.wait())
                    arrived_task = asyncio.ensure_future(self.arrived.wait())
                    await asyncio.wait(
                        {stop_task, arrived_task}, return_when=asyncio.FIRST_COMPLETED
                    )
                    stop_task.cancel()
                    arrived_task.cancel()
                    await asyncio.sleep(FLUSH_SECONDS)  # let a batch gather
                    self.arrived.clear()
                    await self._flush(pool)
                await consumer.cancel()
                await self._flush(pool)
        finally:
            await pool.close()

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.buffer.append(delivery)
        self.arrived.set()

    async def _flush(self, pool: asyncpg.Pool) -> None:
        while self.buffer:
            batch, self.buffer = self.buffer[:BATCH_SIZE], self.buffer[BATCH_SIZE:]
            messages = [m for d in batch for m in d.messages]

            async def write(some: Sequence[Any]) -> None:
                await self._write(pool, some)

            try:
                # A message the database refuses for its values while the rest is
                # written is found by halving, tried alone and dead-lettered. Outages
                # _write waits out.
                await apply_isolating(
                    messages, write, dead_letter=self._dead_letter, what="history messages"
                )
            except Exception:
                # A deadlock, an error no single message explains (held back: a read-only
                # database, a missing column), or a dead letter the broker did not
                # confirm: keep the batch, unacked, and try it again after a pause that
                # grows while it lasts (the writes are idempotent).
                log.warning("batch of %d not settled; keeping it", len(batch), exc_info=True)
                self.buffer[:0] = batch
                await asyncio.sleep(self.held_back.next())
                self.arrived.set()  # tried again even if nothing new arrives
                return
            self.held_back.reset()
            await ack_all(batch)

    async def _dead_letter(self, message: Any, reason: str) -> None:
        await self.broker.dead_letter_message(
            message, reason=reason, queue=self.broker.topology.logger_queue
        )

    async def _write(self, pool: asyncpg.Pool, messages: Sequence[Any]) -> None:
        """Write these messages in one transaction, waiting out database outages."""
        lines = [m for m in messages if isinstance(m, JobLog)]
        reports = [m for m in messages if isinstance(m, JobStatusReport)]
        while True:
            try:
                async with pool_transaction(pool) as conn:
                    await write_batch(conn, lines, reports)
                return
            except Exception as exc:
                if not is_db_outage(exc):
                    raise
                log.warning(
                    "database unavailable (%s); retrying the batch of %d", exc, len(messages)
                )
                await asyncio.sleep(1.0)
