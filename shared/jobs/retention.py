"""Retention: finished jobs deleted after ``SWITCHYARD_RETENTION_DAYS``, with what
cascades from them (log lines, executions, dependency edges)."""

from __future__ import annotations

from datetime import datetime

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
        n = int(status.split()[-1])  # "DELETE n"
        deleted += n
        if n < batch:
            break
    return deleted
