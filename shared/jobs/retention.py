"""Retention: finished jobs deleted after ``SWITCHYARD_RETENTION_DAYS``, with what
cascades from them (log lines, executions, dependency edges); audit rows after
``SWITCHYARD_AUDIT_RETENTION_DAYS``; the rows of workers gone for a week, always."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from shared.db import pool_transaction
from shared.jobs import sql


async def prune_finished(
    pool: asyncpg.Pool, *, older_than: datetime, batch: int = 1000, limit: int = 100_000
) -> int:
    """Delete jobs that finished before ``older_than``, ``batch`` at a time (each its own
    transaction), at most ``limit`` per call. Returns how many.

    A batch that times out (jobs with very many log lines) is retried smaller, down to
    one job, so a sweep never gets stuck on the same oldest rows."""
    deleted = 0
    while deleted < limit:
        try:
            async with pool_transaction(pool) as conn:
                status = await conn.execute(sql.PRUNE_FINISHED, older_than, batch, timeout=60)
        except TimeoutError:
            if batch == 1:
                raise
            batch = max(1, batch // 10)
            continue
        n = _deleted(status)
        deleted += n
        if n < batch:
            break
    return deleted


# The audit log's guard (migration 0006) lets only a transaction that sets this delete.
# Old rows have the low ids: the boundary is the first row young enough to keep, found
# once per sweep walking the primary key from the start (over the rows about to go, no
# further); each batch then starts after the last id the one before it deleted, so a
# sweep reads each old row once (a boundary per batch walked them all again each time).
AUDIT_BOUNDARY = """
SELECT coalesce(
    (SELECT id FROM audit_log WHERE at >= $1 ORDER BY id LIMIT 1),
    (SELECT max(id) + 1 FROM audit_log),
    0
)
"""
PRUNE_AUDIT = """
WITH gone AS (
    DELETE FROM audit_log
    WHERE id IN (SELECT id FROM audit_log WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3)
    RETURNING id
)
SELECT count(*) AS n, max(id) AS last FROM gone
"""


async def prune_audit(
    pool: asyncpg.Pool, *, older_than: datetime, batch: int = 5000, limit: int = 1_000_000
) -> int:
    """Delete audit rows written before ``older_than``, ``batch`` at a time (each its
    own transaction), at most ``limit`` per call. Returns how many."""
    boundary = await pool.fetchval(AUDIT_BOUNDARY, older_than)
    deleted, after = 0, -(2**63)  # below every bigint id
    while deleted < limit:
        async with pool_transaction(pool) as conn:
            await conn.execute("SET LOCAL switchyard.audit_retention = 'on'")
            gone = await conn.fetchrow(PRUNE_AUDIT, after, boundary, batch, timeout=60)
        deleted += gone["n"]
        if gone["n"] < batch:
            break
        after = gone["last"]
    return deleted


# Every worker process is a row (its id is host and pid by default), and every read of
# the fleet (GET /workers, /metrics, a job's "why", each poll of the dashboard) scans
# the table: a fleet that scales up and down leaves thousands of rows a month. Nothing
# shows a worker dead for more than an hour; its jobs keep its id. A worker still
# marked as running a job keeps its row until that job is dealt with.
WORKERS_KEPT = timedelta(days=7)
PRUNE_WORKERS = """
DELETE FROM workers w
WHERE w.last_heartbeat_at < $1
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'running' AND j.worker_id = w.id)
"""


async def prune_workers(pool: asyncpg.Pool, *, older_than: datetime) -> int:
    """Delete the rows of workers last heard of before ``older_than`` that run nothing."""
    return _deleted(await pool.execute(PRUNE_WORKERS, older_than, timeout=60))


def _deleted(status: str) -> int:
    return int(status.split()[-1])  # "DELETE n"
