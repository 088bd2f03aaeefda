"""Read-only views for dashboards: queue depth, workers, throughput and durations.

Every query here is an index scan or touches a small table, so they stay cheap with
millions of historical rows (see docs/database.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import fetch
from shared.jobs import sql
from shared.schemas import Priority

WAITING = ("pending", "blocked", "ready", "running", "retrying")
PRIORITY_NAMES = {p.rank: p.value for p in Priority}


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
    session: AsyncSession, *, window: timedelta = timedelta(minutes=15)
) -> dict[str, Any]:
    """Counts by status and priority, queue depth, throughput and durations per type."""
    by_status = {r["status"]: r["n"] for r in await fetch(session, sql.COUNT_BY_STATUS)}
    by_priority = {p.value: 0 for p in Priority}
    for r in await fetch(session, sql.COUNT_BY_PRIORITY):
        by_priority[PRIORITY_NAMES[r["priority"]]] = r["n"]
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
    }
