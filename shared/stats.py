"""Read-only views for dashboards: queue depth, workers, throughput and durations.

Every query here is an index scan or touches a small table, so they stay cheap with
millions of historical rows (see docs/database.md), except the counts of the finished
jobs and the window's throughput and run times, which read every finished job or every
job of the window: ``HistoryReads`` decides how often they run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.costly_reads import CostlyRead
from shared.db import Db, fetch
from shared.jobs import sql
from shared.schemas import Priority

WAITING = ("pending", "blocked", "ready", "running", "retrying")
PRIORITY_NAMES = {p.rank: p.value for p in Priority}


async def _by_status_and_priority(db: Db, statement: str) -> list[tuple[str, str, int]]:
    rows = await fetch(db, statement)
    return [(r["status"], PRIORITY_NAMES[r["priority"]], r["n"]) for r in rows]


async def count_finished(db: Db) -> list[tuple[str, str, int]]:
    """(status, priority, count) of the finished jobs: a scan of them all (about 150 ms
    per million here, on two cores)."""
    return await _by_status_and_priority(db, sql.FINISHED_BY_STATUS_AND_PRIORITY)


STATS_WINDOW = timedelta(minutes=15)


async def read_window(db: Db) -> dict[str, Any]:
    """Throughput per terminal status and run times per type over ``STATS_WINDOW``: a
    read of every job that finished in it (about 1.2 s for a million here)."""
    since = datetime.now(UTC) - STATS_WINDOW
    throughput = {
        s: {"last_minute": 0, "per_minute": 0.0} for s in ("completed", "failed", "cancelled")
    }
    minutes = STATS_WINDOW.total_seconds() / 60
    for r in await fetch(db, sql.FINISHED_SINCE, since):
        throughput[r["status"]] = {
            "last_minute": r["last_minute"],
            "per_minute": round(r["in_window"] / minutes, 3),
        }
    durations = {
        r["type"]: {
            "count": r["n"],
            "mean_seconds": float(r["mean"]),
            "p95_seconds": float(r["p95"]),
        }
        for r in await fetch(db, sql.DURATIONS_SINCE, since)
    }
    return {"throughput": throughput, "durations": durations}


class HistoryReads:
    """What ``GET /stats`` reads of the history (the finished jobs' counts, the
    window's throughput and run times), each made for every answer only while that is
    cheap (``CostlyRead``); one per API replica."""

    def __init__(self, **policy: float) -> None:
        self.finished = CostlyRead("the finished jobs' counts", count_finished, **policy)
        self.window = CostlyRead("the throughput and run times", read_window, **policy)

    async def close(self) -> None:
        await self.finished.close()
        await self.window.close()


async def depth_by_status_and_priority(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(status, priority, count) of unfinished jobs."""
    return await _by_status_and_priority(session, sql.UNFINISHED_BY_STATUS_AND_PRIORITY)


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
    session: AsyncSession, history: HistoryReads, pool: asyncpg.Pool | None
) -> dict[str, Any]:
    """Counts by status and priority, queue depth, throughput and durations per type:
    the unfinished jobs read for this answer, the history as ``history`` has it."""
    # The backlog first: the session's connection is then open, and a history read is
    # timed without its checkout.
    unfinished = await depth_by_status_and_priority(session)
    finished = await history.finished.get(session, pool)
    window = await history.window.get(session, pool)
    by_status: dict[str, int] = {}
    by_priority = {p.value: 0 for p in Priority}
    for status, priority, n in unfinished + finished.value:
        by_status[status] = by_status.get(status, 0) + n
        by_priority[priority] += n
    return {
        "by_status": by_status,
        "by_priority": by_priority,
        "queue_depth": {
            s: by_status.get(s, 0) for s in ("ready", "blocked", "retrying", "pending")
        },
        **window.value,
        "window_seconds": STATS_WINDOW.total_seconds(),
        "history_read_at": min(finished.at, window.at),
    }
