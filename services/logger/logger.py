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
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import create_engine, create_sessionmaker, is_db_outage
from shared.messages import JobLog, JobStatusReport
from shared.messaging import Broker, Delivery, Topology, ack_all
from shared.settings import Settings

log = logging.getLogger("switchyard.logger")

BATCH_SIZE = 1000
FLUSH_SECONDS = 0.05

INSERT_LINES = text(
    """
    INSERT INTO job_logs (job_id, attempt, seq, ts, level, message)
    SELECT u.job_id, u.attempt, u.seq, u.ts, u.level, u.message
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:seqs AS int[]),
                CAST(:ts AS timestamptz[]), CAST(:levels AS text[]), CAST(:messages AS text[]))
         AS u(job_id, attempt, seq, ts, level, message)
    WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id)
    ON CONFLICT (job_id, attempt, seq) DO NOTHING
    """
)

UPSERT_EXECUTIONS = text(
    """
    INSERT INTO job_executions (job_id, attempt, worker_id, status, started_at, finished_at,
                                duration_seconds, error, result, resources)
    SELECT u.job_id, u.attempt, u.worker_id, u.status, u.started_at, u.finished_at,
           EXTRACT(EPOCH FROM (u.finished_at - u.started_at)), u.error,
           CAST(u.result AS jsonb),
           jsonb_build_object('cpu_units', j.cpu_units, 'memory_mb', j.memory_mb)
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:workers AS text[]),
                CAST(:statuses AS text[]), CAST(:started AS timestamptz[]),
                CAST(:finished AS timestamptz[]), CAST(:errors AS text[]),
                CAST(:results AS text[]))
         AS u(job_id, attempt, worker_id, status, started_at, finished_at, error, result)
    JOIN jobs j ON j.id = u.job_id
    ON CONFLICT (job_id, attempt) DO UPDATE SET
        worker_id = COALESCE(job_executions.worker_id, excluded.worker_id),
        started_at = COALESCE(job_executions.started_at, excluded.started_at),
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
            COALESCE(job_executions.finished_at, excluded.finished_at)
            - COALESCE(job_executions.started_at, excluded.started_at)))
    """
)


# Executions are audited too (issue: every submission, cancel, retry and execution):
# one row when an attempt starts, one when it ends, written with the history in the
# same transaction and idempotent on redelivery (unique per job, attempt and action).
INSERT_EXECUTION_AUDIT = text(
    """
    INSERT INTO audit_log (actor, role, action, job_id, attempt, outcome, at, detail)
    SELECT u.worker_id, 'worker', u.action, u.job_id, u.attempt, u.outcome, u.at,
           CASE WHEN u.error IS NULL THEN NULL ELSE jsonb_build_object('error', u.error) END
    FROM unnest(CAST(:workers AS text[]), CAST(:actions AS text[]), CAST(:job_ids AS uuid[]),
                CAST(:attempts AS int[]), CAST(:outcomes AS text[]),
                CAST(:ats AS timestamptz[]), CAST(:errors AS text[]))
         AS u(worker_id, action, job_id, attempt, outcome, at, error)
    WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id)
    ON CONFLICT (job_id, attempt, action) WHERE attempt IS NOT NULL DO NOTHING
    """
)


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
        row.worker_id = row.worker_id or r.worker_id
        if r.status == "started":
            row.started_at = row.started_at or r.ts
            continue
        row.status = r.status
        row.finished_at = r.ts
        row.error = r.error if not r.traceback else f"{r.error}\n{r.traceback}"
        row.result = orjson.dumps(r.result).decode() if r.status == "completed" else None
    return list(rows.values())


async def write_batch(
    session: AsyncSession, lines: list[JobLog], reports: list[JobStatusReport]
) -> None:
    if lines:
        await session.execute(
            INSERT_LINES,
            {
                "job_ids": [ln.job_id for ln in lines],
                "attempts": [ln.attempt for ln in lines],
                "seqs": [ln.seq for ln in lines],
                "ts": [ln.ts for ln in lines],
                "levels": [ln.level for ln in lines],
                "messages": [ln.message for ln in lines],
            },
        )
    if reports:
        await session.execute(
            INSERT_EXECUTION_AUDIT,
            {
                "workers": [r.worker_id for r in reports],
                "actions": [
                    "execution.start" if r.status == "started" else "execution.end" for r in reports
                ],
                "job_ids": [r.job_id for r in reports],
                "attempts": [r.attempt for r in reports],
                "outcomes": [r.status for r in reports],
                "ats": [r.ts for r in reports],
                "errors": [(r.error or "")[:2000] or None for r in reports],
            },
        )
    executions = merge_reports(reports)
    if executions:
        await session.execute(
            UPSERT_EXECUTIONS,
            {
                "job_ids": [e.job_id for e in executions],
                "attempts": [e.attempt for e in executions],
                "workers": [e.worker_id for e in executions],
                "statuses": [e.status for e in executions],
                "started": [e.started_at for e in executions],
                "finished": [e.finished_at for e in executions],
                "errors": [e.error for e in executions],
                "results": [e.result for e in executions],
            },
        )


class HistoryLogger:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker = Broker(
            settings.amqp_url, settings.namespace, name="switchyard-logger",
            publish_timeout=settings.publish_timeout_seconds,
        )  # fmt: skip
        self.buffer: list[Delivery] = []
        self.arrived = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        engine = create_engine(self.settings, pool_size=2)
        sessionmaker = create_sessionmaker(engine)
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
                    await self._flush(sessionmaker)
                await consumer.cancel()
                await self._flush(sessionmaker)
        finally:
            await engine.dispose()

    async def _on_delivery(self, delivery: Delivery) -> None:
        self.buffer.append(delivery)
        self.arrived.set()

    async def _flush(self, sessionmaker: Any) -> None:
        while self.buffer:
            batch, self.buffer = self.buffer[:BATCH_SIZE], self.buffer[BATCH_SIZE:]
            try:
                await self._write(sessionmaker, batch)
            except Exception as exc:
                # Not an outage: some message in the batch cannot be stored. Write them one
                # by one; the ones that still fail go to the dead-letter queue, loudly.
                log.error("batch of %d failed (%s); writing one by one", len(batch), exc)
                for delivery in batch:
                    try:
                        await self._write(sessionmaker, [delivery])
                    except Exception as one:
                        log.error("dead-lettering %s: %s", delivery.routing_key, one)
                        await delivery.reject(requeue=False)
                    else:
                        await delivery.ack()
                continue
            await ack_all(batch)

    async def _write(self, sessionmaker: Any, batch: list[Delivery]) -> None:
        """Write one batch, retrying through database outages (the batch stays unacked)."""
        messages = [m for d in batch for m in d.messages]
        lines = [m for m in messages if isinstance(m, JobLog)]
        reports = [m for m in messages if isinstance(m, JobStatusReport)]
        while True:
            try:
                async with sessionmaker() as session:
                    await write_batch(session, lines, reports)
                    await session.commit()
                return
            except Exception as exc:
                if not is_db_outage(exc):
                    raise
                log.warning("database unavailable (%s); retrying the batch of %d", exc, len(batch))
                await asyncio.sleep(1.0)
