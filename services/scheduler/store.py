"""The scheduler's rows of the ``workers`` table (heartbeats, deaths, the live fleet)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.messages import WorkerHeartbeat


async def save_workers(session: AsyncSession, beats: list[WorkerHeartbeat]) -> None:
    for hb in beats:
        await session.execute(
            text(
                """
                INSERT INTO workers (id, state, cpu_units, memory_mb, slots, allocated_cpu_units,
                    allocated_memory_mb, allocated_slots, running, task_types, cpu_percent,
                    memory_percent, started_at, last_heartbeat_at)
                VALUES (:id, :state, :cpu, :mem, :slots, :acpu, :amem, :aslots,
                    CAST(:running AS uuid[]), CAST(:types AS text[]), :cpup, :memp, :started, :ts)
                ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                    cpu_units = excluded.cpu_units, memory_mb = excluded.memory_mb,
                    slots = excluded.slots, allocated_cpu_units = excluded.allocated_cpu_units,
                    allocated_memory_mb = excluded.allocated_memory_mb,
                    allocated_slots = excluded.allocated_slots, running = excluded.running,
                    task_types = excluded.task_types, cpu_percent = excluded.cpu_percent,
                    memory_percent = excluded.memory_percent, started_at = excluded.started_at,
                    last_heartbeat_at = excluded.last_heartbeat_at
                """
            ),
            {
                "id": hb.worker_id,
                "state": hb.state if hb.state != "stopped" else "dead",
                "cpu": hb.capacity.cpu_units,
                "mem": hb.capacity.memory_mb,
                "slots": hb.capacity.slots,
                "acpu": hb.allocated.cpu_units,
                "amem": hb.allocated.memory_mb,
                "aslots": hb.allocated.slots,
                "running": [str(r) for r in hb.running],
                "types": hb.task_types,
                "cpup": hb.cpu_percent,
                "memp": hb.memory_percent,
                "started": hb.started_at,
                "ts": hb.ts,
            },
        )


async def mark_worker_dead(session: AsyncSession, worker_id: str) -> None:
    await session.execute(
        text("UPDATE workers SET state = 'dead', running = '{}' WHERE id = :id"), {"id": worker_id}
    )


async def load_live_workers(session: AsyncSession) -> list[Any]:
    return list(
        await session.execute(
            text(
                "SELECT id, state, cpu_units, memory_mb, slots, task_types FROM workers"
                " WHERE state IN ('alive', 'draining')"
            )
        )
    )
