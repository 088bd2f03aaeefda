"""Read-only views for dashboards: queue depth, workers, throughput and durations.

Every query here is an index scan or touches a small table, so they stay cheap with
millions of historical rows (see docs/database.md), except the count of the finished
jobs, which is a scan of them all: ``FinishedCounts`` decides how often it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Db, fetch
from shared.jobs import sql
from shared.schemas import Priority

log = logging.getLogger(__name__)

WAITING = ("pending", "blocked", "ready", "running", "retrying")
PRIORITY_NAMES = {p.rank: p.value for p in Priority}

# Counting the finished jobs reads every one of them (about 150 ms per million here,
# on two cores). A count that took less than COUNT_EVERY_CALL_BELOW seconds is made
# again for every answer, so it is exact as of the answer; a slower one is reused for
# REUSE_FACTOR times as long as it took (at most MAX_REUSE_SECONDS) and made again in
# the background meanwhile: each API replica's counting then takes a fiftieth of the
# database's time however many dashboards ask (less past counts of 1.2 s), where a
# count for every answer of one dashboard (one every 2 s) took half of it at 5M jobs.
COUNT_EVERY_CALL_BELOW = 0.05
REUSE_FACTOR = 50
MAX_REUSE_SECONDS = 60.0


@dataclass(frozen=True)
class FinishedCount:
    rows: list[tuple[str, str, int]]  # (status, priority, jobs)
    at: datetime  # when the count began
    took: float  # seconds
    began: float  # time.monotonic() when it began


async def count_finished(db: Db) -> FinishedCount:
    at, began = datetime.now(UTC), time.monotonic()
    rows = await fetch(db, sql.FINISHED_BY_STATUS_AND_PRIORITY)
    took = time.monotonic() - began
    counts = [(r["status"], PRIORITY_NAMES[r["priority"]], r["n"]) for r in rows]
    return FinishedCount(counts, at, took, began)


class FinishedCounts:
    """The finished jobs by status and priority, counted as often as that is cheap
    (see COUNT_EVERY_CALL_BELOW); one per API replica."""

    def __init__(
        self,
        *,
        every_call_below: float = COUNT_EVERY_CALL_BELOW,
        reuse_factor: float = REUSE_FACTOR,
        max_reuse_seconds: float = MAX_REUSE_SECONDS,
    ) -> None:
        self._every_call_below = every_call_below
        self._reuse_factor = reuse_factor
        self._max_reuse_seconds = max_reuse_seconds
        self._last: FinishedCount | None = None
        self._counting: asyncio.Task[FinishedCount] | None = None

    async def read(self, db: Db, pool: asyncpg.Pool | None) -> FinishedCount:
        """The counts: made now on ``db`` when they are cheap, else the last ones while
        they are fresh enough, a new count being made on ``pool`` meanwhile once they
        are not (without ``pool``, always made now)."""
        last = self._last
        if pool is None or (last is not None and last.took < self._every_call_below):
            return self._keep(await count_finished(db))
        if last is None:  # the first: every caller waits for the same count
            return await asyncio.shield(self._count_apart(pool))
        age = time.monotonic() - last.began
        if age > min(self._max_reuse_seconds, self._reuse_factor * last.took):
            self._count_apart(pool)
        return last

    def _keep(self, counted: FinishedCount) -> FinishedCount:
        if self._last is None or counted.began >= self._last.began:
            self._last = counted
        return counted

    def _count_apart(self, pool: asyncpg.Pool) -> asyncio.Task[FinishedCount]:
        """The count under way, or a new one (one at a time)."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.create_task(self._count(pool), name="finished-counts")
        return self._counting

    async def _count(self, pool: asyncpg.Pool) -> FinishedCount:
        try:
            return self._keep(await count_finished(pool))
        except Exception as exc:
            # The last counts stay in use; the next answer that finds them old tries again.
            log.warning("counting the finished jobs failed: %r", exc)
            raise

    async def close(self) -> None:
        if self._counting is not None and not self._counting.done():
            self._counting.cancel()
            await asyncio.gather(self._counting, return_exceptions=True)


async def depth_by_status_and_priority(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(status, priority, count) of unfinished jobs."""
    rows = await fetch(session, sql.UNFINISHED_BY_STATUS_AND_PRIORITY)
    return [(r["status"], PRIORITY_NAMES[r["priority"]], r["n"]) for r in rows]


async def queue_depth(session: AsyncSession) -> tuple[dict[str, int], dict[str, int]]:
    """Unfinished jobs by status, and the waiting ones (ready, retrying, pending) by priority."""
    by_status: dict[str, int] = dict.fromkeys(WAITING, 0)
    by_priority: dict[str, int] = {p.value: 0 for p in Priority}
    for status, priority, n in await depth_by_status_and_priority(session):
        by_status[status] += n
        if status in ("ready", "retrying", "pending"):
            by_priority[priority] += n
    return by_status, by_priority


async def list_workers(
    session: AsyncSession, *, lease_seconds: float, dead_for: timedelta = timedelta(hours=1)
) -> list[dict[str, Any]]:
    """Live workers and those dead for less than ``dead_for``.

    A worker is ``alive`` while its last heartbeat is younger than the lease (the
    scheduler marks it dead in the table when it notices; this read does not wait).
    ``attempts`` is the usage of each process-isolated attempt it runs, as its last
    heartbeat reported it (``shared.messages.AttemptUsage``).
    """
    now = datetime.now(UTC)
    rows = await session.execute(
        text("SELECT * FROM workers WHERE last_heartbeat_at > :since ORDER BY id"),
        {"since": now - dead_for},
    )
    out = []
    for w in rows:
        fresh = (now - w.last_heartbeat_at).total_seconds() <= lease_seconds
        state = w.state if w.state in ("alive", "draining") and fresh else "dead"
        out.append(
            {
                "id": w.id,
                "state": state,
                "capacity": {"cpu_units": w.cpu_units, "memory_mb": w.memory_mb, "slots": w.slots},
                "allocated": {
                    "cpu_units": w.allocated_cpu_units,
                    "memory_mb": w.allocated_memory_mb,
                    "slots": w.allocated_slots,
                },
                "running": [str(j) for j in (w.running or [])] if state != "dead" else [],
                "task_types": list(w.task_types or []),
                "cpu_percent": w.cpu_percent,
                "memory_percent": w.memory_percent,
                "started_at": w.started_at,
                "last_heartbeat_at": w.last_heartbeat_at,
                # As of the last heartbeat; a dead worker's figures describe nothing
                # that still runs.
                "attempts": list(w.attempts or []) if state != "dead" else [],
            }
        )
    return out


async def job_stats(
    session: AsyncSession,
    finished_counts: FinishedCounts,
    pool: asyncpg.Pool | None,
    *,
    window: timedelta = timedelta(minutes=15),
) -> dict[str, Any]:
    """Counts by status and priority (the finished jobs' as ``finished_counts`` has them),
    queue depth, throughput and durations per type."""
    counted = await finished_counts.read(session, pool)
    by_status: dict[str, int] = {}
    by_priority = {p.value: 0 for p in Priority}
    for status, priority, n in await depth_by_status_and_priority(session) + counted.rows:
        by_status[status] = by_status.get(status, 0) + n
        by_priority[priority] += n
    since = datetime.now(UTC) - window
    finished = await fetch(session, sql.FINISHED_SINCE, since)
    throughput = {
        s: {"last_minute": 0, "per_minute": 0.0} for s in ("completed", "failed", "cancelled")
    }
    minutes = window.total_seconds() / 60
    for r in finished:
        throughput[r["status"]] = {
            "last_minute": r["last_minute"],
            "per_minute": round(r["in_window"] / minutes, 3),
        }
    durations = await fetch(session, sql.DURATIONS_SINCE, since)
    return {
        "by_status": by_status,
        "by_priority": by_priority,
        "queue_depth": {
            s: by_status.get(s, 0) for s in ("ready", "blocked", "retrying", "pending")
        },
        "throughput": throughput,
        "durations": {
            r["type"]: {
                "count": r["n"],
                "mean_seconds": float(r["mean"]),
                "p95_seconds": float(r["p95"]),
            }
            for r in durations
        },
        "window_seconds": window.total_seconds(),
        "finished_counted_at": counted.at,
    }
