"""The worker fleet as the active scheduler knows it: who is alive, what each one holds.

Heartbeats say what a worker offers and runs; ``assignments`` say which attempt the
database has running where. From the two come the views placement decides on, the
losses (a worker silent for the lease, an attempt a live worker never started), and
the cancels (requested by users, or for attempts a worker runs that were superseded).
Everything here is rebuilt from the database when an instance takes over.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.database import Database
from services.scheduler.placement import WorkerView
from shared.db import json_text
from shared.jobs import reads, transitions
from shared.jobs.transitions import Placed
from shared.messages import (
    JobCancel,
    JobStateChanged,
    JobStatusReport,
    WorkerCapacity,
    WorkerHeartbeat,
)
from shared.outbox import Outbox
from shared.settings import Settings

log = logging.getLogger("switchyard.scheduler")


@dataclass
class WorkerInfo:
    id: str
    cpu_units: float
    memory_mb: int
    slots: int
    task_types: frozenset[str]
    state: str = "alive"
    last_seen: float = field(default_factory=time.monotonic)
    running: frozenset[UUID] = frozenset()
    allocated: WorkerCapacity = field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )
    stuck: WorkerCapacity = field(
        default_factory=lambda: WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    )


@dataclass
class Assignment:
    job_id: UUID
    worker_id: str
    attempt: int
    cpu_units: float
    memory_mb: int
    dispatched: float = field(default_factory=time.monotonic)


@dataclass
class Losses:
    """What one look at the fleet found lost: attempts to end, workers newly dead."""

    reports: list[JobStatusReport] = field(default_factory=list)
    newly_dead: list[str] = field(default_factory=list)


class Fleet:
    def __init__(
        self, settings: Settings, db: Database, outbox: Outbox, *, rng: random.Random
    ) -> None:
        self._settings = settings
        self._db = db
        self._outbox = outbox
        self._rng = rng
        self.workers: dict[str, WorkerInfo] = {}
        self.assignments: dict[UUID, Assignment] = {}
        # (job, worker) pairs a heartbeat showed running where the database has no such
        # assignment, and the cancels to send with the next sweep.
        self._zombies: set[tuple[UUID, str]] = set()
        self._cancels: list[JobCancel] = []
        self._last_cancel_sweep = 0.0

    # ------------------------------------------------------------ taking over, standing by

    async def load(self) -> None:
        """Take over: workers and allocations as the database has them."""
        async with self._db.session() as session:
            for w in await load_live_workers(session):
                self.workers[w.id] = WorkerInfo(
                    id=w.id,
                    cpu_units=w.cpu_units,
                    memory_mb=w.memory_mb,
                    slots=w.slots,
                    task_types=frozenset(w.task_types or ()),
                    state=w.state,
                )
            for r in await reads.running_jobs(session):
                self.assignments[r["id"]] = Assignment(
                    r["id"], r["worker_id"], r["attempts"], r["cpu_units"], r["memory_mb"]
                )

    def forget(self) -> None:
        """Leadership lost: whoever leads next rebuilds all of it from the database."""
        self.workers.clear()
        self.assignments.clear()
        self._zombies.clear()
        self._cancels.clear()

    # ------------------------------------------------------------ heartbeats and assignments

    def register_heartbeat(self, hb: WorkerHeartbeat) -> None:
        info = self.workers.get(hb.worker_id)
        if info is None:
            info = WorkerInfo(
                id=hb.worker_id,
                cpu_units=hb.capacity.cpu_units,
                memory_mb=hb.capacity.memory_mb,
                slots=hb.capacity.slots,
                task_types=frozenset(hb.task_types),
            )
            self.workers[hb.worker_id] = info
            log.info(
                "worker %s joined (%g cpu, %d MB, %d slots)",
                hb.worker_id,
                info.cpu_units,
                info.memory_mb,
                info.slots,
            )
        info.cpu_units, info.memory_mb, info.slots = (
            hb.capacity.cpu_units,
            hb.capacity.memory_mb,
            hb.capacity.slots,
        )
        info.task_types = frozenset(hb.task_types)
        info.state = "dead" if hb.state == "stopped" else hb.state
        info.last_seen = time.monotonic()
        info.running = frozenset(hb.running)
        info.allocated = hb.allocated
        info.stuck = hb.stuck
        # Attempts it runs that the database has moved on from (it was declared lost and
        # came back, or missed a cancel): tell it to stop them.
        for job_id in info.running:
            a = self.assignments.get(job_id)
            if a is None or a.worker_id != info.id:
                self._zombies.add((job_id, info.id))

    def assign(self, placed: list[Placed]) -> None:
        for p in placed:
            self.assignments[p.id] = Assignment(
                p.id, p.worker_id, p.attempts, p.cpu_units, p.memory_mb
            )

    def free(self, freed: list[tuple[UUID, str]]) -> None:
        """Forget the attempts that stopped running (fenced by worker)."""
        for job_id, worker_id in freed:
            a = self.assignments.get(job_id)
            if a is not None and a.worker_id == worker_id:
                del self.assignments[job_id]

    def release(self, undone: list[Placed]) -> None:
        """Forget dispatches that were put back (fenced by attempt)."""
        for p in undone:
            held = self.assignments.get(p.id)
            if held is not None and held.attempt == p.attempts:
                del self.assignments[p.id]

    def views(self) -> list[WorkerView]:
        """Each worker's capacity and use, as placement sees it."""
        views = {
            w.id: WorkerView(
                id=w.id,
                cpu_units=w.cpu_units,
                memory_mb=w.memory_mb,
                slots=w.slots,
                task_types=w.task_types,
                used_cpu=w.stuck.cpu_units,
                used_memory=w.stuck.memory_mb,
                used_slots=w.stuck.slots,
                accepting=w.state == "alive",
            )
            for w in self.workers.values()
        }
        for a in self.assignments.values():
            v = views.get(a.worker_id)
            if v is not None:
                v.used_cpu += a.cpu_units
                v.used_memory += a.memory_mb
                v.used_slots += 1
        # What the worker itself says it holds can be more (attempts the database has
        # moved on from still running there): count whichever is larger.
        for w in self.workers.values():
            v = views[w.id]
            v.used_cpu = max(v.used_cpu, w.allocated.cpu_units)
            v.used_memory = max(v.used_memory, w.allocated.memory_mb)
            v.used_slots = max(v.used_slots, w.allocated.slots)
        return list(views.values())

    # ------------------------------------------------------------ losses

    def find_losses(self, now: float) -> Losses:
        """Declare dead the workers silent for the lease, and find the attempts lost with
        them or never started by a live worker (whose cancel is queued here)."""
        lease = self._settings.worker_lease_seconds
        found = Losses()
        for info in self.workers.values():
            silent = now - info.last_seen
            if info.state != "dead" and silent > lease:
                info.state = "dead"
                found.newly_dead.append(info.id)
                log.warning("worker %s lost: no heartbeat for %.1f s", info.id, silent)
        for a in list(self.assignments.values()):
            holder = self.workers.get(a.worker_id)
            if holder is None or holder.state == "dead":
                reason = f"worker {a.worker_id} lost (no heartbeat for over {lease:g} s)"
                found.reports.append(_lost(a, "failed", reason))
            elif a.job_id not in holder.running and holder.last_seen - a.dispatched > lease:
                # Never reached the worker (or was dropped there): not a failed run, so
                # it gives its run back like a hand-back; the worker is told to drop it
                # should it turn up after all.
                reason = f"worker {a.worker_id} never started the attempt within {lease:g} s"
                found.reports.append(_lost(a, "handed_back", reason))
                self._cancels.append(JobCancel(job_id=a.job_id, attempt=a.attempt))
        return found

    async def handle_losses(self) -> list[JobStateChanged]:
        """End the lost attempts like failed ones (retried or failed) and record the dead
        workers; returns the committed events."""
        lost = self.find_losses(time.monotonic())
        if not lost.reports and not lost.newly_dead:
            return []
        async with self._db.session() as session:
            outcome = await transitions.apply_reports(session, lost.reports, rng=self._rng)
            for worker_id in lost.newly_dead:
                await mark_worker_dead(session, worker_id)
            await session.commit()
        self.free(outcome.freed)
        self._prune_dead_workers()
        # Tell the logger (its executions row) what happened to each lost attempt.
        applied = {job_id for job_id, _ in outcome.freed}
        self._outbox.put(
            [
                JobStatusReport(
                    job_id=r.job_id,
                    attempt=r.attempt,
                    worker_id=r.worker_id,
                    status="lost",
                    error=r.error,
                )
                for r in lost.reports
                if r.job_id in applied
            ]
        )
        for r in lost.reports:  # reports the fence refused: stale memory, drop it
            if r.job_id not in applied:
                self.assignments.pop(r.job_id, None)
        return outcome.events

    def _prune_dead_workers(self) -> None:
        """Forget dead workers that hold nothing (a worker id may come back later)."""
        holding = {a.worker_id for a in self.assignments.values()}
        for worker_id in [w.id for w in self.workers.values() if w.state == "dead"]:
            if worker_id not in holding:
                del self.workers[worker_id]

    # ------------------------------------------------------------ cancels

    async def send_cancels(self) -> None:
        """Re-send job.cancel for running jobs whose cancel was requested (the API's one
        publish is best effort), and stop attempts a worker runs that were superseded.
        The sweep reads the database once per heartbeat interval; cancels queued since
        (a lost attempt's) go out every cycle."""
        now = time.monotonic()
        if now - self._last_cancel_sweep < max(1.0, self._settings.heartbeat_seconds):
            if not self._cancels:
                return
        else:
            self._last_cancel_sweep = now
            await self._sweep_cancels()
        cancels, self._cancels = self._cancels, []
        # Committed already; these are notifications: the outbox publishes them in order
        # without holding up the cycle, and says what it could not send.
        self._outbox.put(list(cancels))

    async def _sweep_cancels(self) -> None:
        async with self._db.session() as session:
            for job_id, attempt in await reads.running_cancel_requests(session):
                self._cancels.append(JobCancel(job_id=job_id, attempt=attempt))
            zombies, self._zombies = self._zombies, set()
            current = await reads.current_attempts(session, [j for j, _ in zombies])
        for job_id, worker_id in zombies:
            a = self.assignments.get(job_id)
            # Running elsewhere as attempt N: stop attempts up to N-1 only.
            attempt = a.attempt - 1 if a is not None else current.get(job_id, 0)
            if attempt > 0:
                log.info(
                    "telling worker %s to stop job %s (attempt <= %d)", worker_id, job_id, attempt
                )
                self._cancels.append(JobCancel(job_id=job_id, attempt=attempt))


def _lost(a: Assignment, status: Literal["failed", "handed_back"], reason: str) -> JobStatusReport:
    fields: dict[str, Any] = {
        "job_id": a.job_id, "attempt": a.attempt, "worker_id": a.worker_id,
        "status": status, "error": reason,
    }  # fmt: skip
    try:
        return JobStatusReport(**fields)
    except ValidationError:
        # A worker stored before its id had to fit a routing key (WORKER_ID_PATTERN):
        # its attempts are lost all the same; a loss that raised held every cycle.
        log.warning("worker id %.120r is not one a worker takes now; reporting its "
                    "attempt of job %s lost all the same", a.worker_id, a.job_id)  # fmt: skip
        return JobStatusReport.model_construct(**fields)


# ------------------------------------------------------------ the workers table


async def save_workers(session: AsyncSession, beats: list[WorkerHeartbeat]) -> None:
    """Upsert each worker's row as its latest heartbeat has it (the caller commits)."""
    for hb in beats:
        await session.execute(
            text(
                """
                INSERT INTO workers (id, state, cpu_units, memory_mb, slots, allocated_cpu_units,
                    allocated_memory_mb, allocated_slots, running, task_types, cpu_percent,
                    memory_percent, started_at, last_heartbeat_at, attempts)
                VALUES (:id, :state, :cpu, :mem, :slots, :acpu, :amem, :aslots,
                    CAST(:running AS uuid[]), CAST(:types AS text[]), :cpup, :memp, :started, :ts,
                    CAST(CAST(:attempts AS text) AS jsonb))
                ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                    cpu_units = excluded.cpu_units, memory_mb = excluded.memory_mb,
                    slots = excluded.slots, allocated_cpu_units = excluded.allocated_cpu_units,
                    allocated_memory_mb = excluded.allocated_memory_mb,
                    allocated_slots = excluded.allocated_slots, running = excluded.running,
                    task_types = excluded.task_types, cpu_percent = excluded.cpu_percent,
                    memory_percent = excluded.memory_percent, started_at = excluded.started_at,
                    last_heartbeat_at = excluded.last_heartbeat_at, attempts = excluded.attempts
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
                # Replaced whole: an attempt that ended is gone with the next heartbeat.
                "attempts": json_text([a.model_dump(mode="json") for a in hb.attempts]),
            },
        )


async def mark_worker_dead(session: AsyncSession, worker_id: str) -> None:
    await session.execute(
        text("UPDATE workers SET state = 'dead', running = '{}', attempts = '[]' WHERE id = :id"),
        {"id": worker_id},
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
