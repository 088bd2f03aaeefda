"""Scheduling policy as plain functions over plain data (no broker, no database).

Placement, each cycle:

1. Candidates are the heads of the ready queue, one window per priority level.
2. Effective priority = priority − ⌊waited / aging_seconds⌋ (never above critical):
   a job rises one level per ``SWITCHYARD_AGING_SECONDS`` spent ready, slowly enough
   that fresh priority still wins.
3. In (effective priority, run_at, id) order, each job goes to the live worker that
   runs its type and has the free cpu, memory and a slot, choosing the *best fit*
   (least cpu + memory left over, as fractions of that worker's capacity).
4. A job that fits nowhere right now does not stop the jobs behind it (backfill) —
   unless it has waited ``aging_seconds`` already: then it *reserves* one worker it
   fits when empty (the one with the largest free share now, so it fits soonest), and
   nothing else is placed there until it runs. That is the anti-starvation rule:
   small jobs cannot keep a large one out forever.
5. A job larger than every live worker (or whose type no live worker runs) waits,
   reserving nothing, and its ``waiting_reason`` says why. The plan lists it as
   ``unfittable``: the dispatcher parks it (``shared.jobs.parking``), so that however
   many such jobs there are they do not fill the heads of step 1.

What the database is asked for travels as rows ``(type, cpu_units, memory_mb)``: each
live worker's whole capacity per task type it runs (``capacities``: what parking tests
against), or its room now (``room``: what the heads are widened with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from shared.placement_rules import effective_rank, fits


@dataclass
class Candidate:
    id: UUID
    type: str
    priority: int  # 0 critical .. 3 low
    cpu_units: float
    memory_mb: int
    run_at: datetime  # not before this time: orders jobs within a priority (older first)
    ready_since: datetime | None = None  # when it last became ready: aging counts from here

    @property
    def waiting_since(self) -> datetime:
        return self.ready_since or self.run_at


@dataclass
class WorkerView:
    id: str
    cpu_units: float
    memory_mb: int
    slots: int
    task_types: frozenset[str]
    used_cpu: float = 0.0
    used_memory: int = 0
    used_slots: int = 0
    accepting: bool = True  # alive and not draining

    @property
    def free_cpu(self) -> float:
        return self.cpu_units - self.used_cpu

    @property
    def free_memory(self) -> int:
        return self.memory_mb - self.used_memory

    @property
    def free_slots(self) -> int:
        return self.slots - self.used_slots

    # The rule is shared.placement_rules.fits (GET /jobs/{id}/why explains by it too).
    def fits_now(self, job: Candidate) -> bool:
        return fits(
            job.type, job.cpu_units, job.memory_mb, self.accepting, self.task_types,
            self.slots - self.used_slots, self.cpu_units - self.used_cpu,
            self.memory_mb - self.used_memory,
        )  # fmt: skip

    def fits_when_empty(self, job: Candidate) -> bool:
        return fits(
            job.type, job.cpu_units, job.memory_mb, self.accepting, self.task_types,
            self.slots, self.cpu_units, self.memory_mb,
        )  # fmt: skip

    def take(self, job: Candidate) -> None:
        self.used_cpu += job.cpu_units
        self.used_memory += job.memory_mb
        self.used_slots += 1

    def leftover(self, job: Candidate) -> float:
        return (self.free_cpu - job.cpu_units) / max(self.cpu_units, 1e-9) + (
            self.free_memory - job.memory_mb
        ) / max(self.memory_mb, 1)


@dataclass
class Plan:
    placements: list[tuple[Candidate, str]] = field(default_factory=list)
    # job id -> reason to write; None: the default a ready row without one reads as
    # (``free_capacity_reason``), written as NULL only where another reason was written
    waiting: dict[UUID, str | None] = field(default_factory=dict)
    reservations: dict[str, UUID] = field(default_factory=dict)  # worker id -> job id
    unfittable: list[UUID] = field(default_factory=list)  # fit no live worker, even empty


def effective_priority(job: Candidate, now: datetime, aging_seconds: float) -> int:
    return effective_rank(job.priority, job.waiting_since, now, aging_seconds)


def plan_placements(
    candidates: list[Candidate],
    workers: list[WorkerView],
    *,
    now: datetime,
    aging_seconds: float,
) -> Plan:
    """Decide where each candidate runs this cycle (mutates the workers' usage)."""
    plan = Plan()
    order = sorted(
        candidates, key=lambda j: (effective_priority(j, now, aging_seconds), j.run_at, j.id)
    )
    reserved: set[str] = set()
    for job in order:
        # w.fits_now(job) and w.fits_when_empty(job), each one call of the rule: this
        # loop runs per job and worker every cycle.
        kind, cpu, memory = job.type, job.cpu_units, job.memory_mb
        fitting = [
            w for w in workers
            if w.id not in reserved and fits(
                kind, cpu, memory, w.accepting, w.task_types,
                w.slots - w.used_slots, w.cpu_units - w.used_cpu, w.memory_mb - w.used_memory,
            )
        ]  # fmt: skip
        if fitting:
            best = min(fitting, key=lambda w: (w.leftover(job), w.id))
            best.take(job)
            plan.placements.append((job, best.id))
            continue
        could_fit = [
            w for w in workers
            if fits(kind, cpu, memory, w.accepting, w.task_types, w.slots, w.cpu_units,
                    w.memory_mb)
        ]  # fmt: skip
        if not could_fit:
            plan.waiting[job.id] = why_it_fits_nowhere(job, workers)
            plan.unfittable.append(job.id)
            continue
        waited = (now - job.waiting_since).total_seconds()
        unreserved = [w for w in could_fit if w.id not in reserved]
        if waited >= aging_seconds and unreserved:
            # Anti-starvation: hold the worker where it will fit soonest.
            target = max(unreserved, key=lambda w: (w.free_cpu / w.cpu_units, w.free_memory, w.id))
            reserved.add(target.id)
            plan.reservations[target.id] = job.id
            plan.waiting[job.id] = (
                f"waiting for worker {target.id} to free {job.cpu_units:g} cpu units and "
                f"{job.memory_mb} MB (reserved for this job: it has waited {waited:.0f} s)"
            )
        else:
            plan.waiting[job.id] = None  # free_capacity_reason: the row's default
    return plan


def capacities(workers: list[WorkerView]) -> set[tuple[str, float, int]]:
    """(type, cpu, memory) of each accepting worker with a slot, per type it runs: a job
    fits one of these rows exactly when some worker ``fits_when_empty``."""
    return {
        (t, w.cpu_units, w.memory_mb)
        for w in workers
        if w.accepting and w.slots >= 1
        for t in w.task_types
    }


def room(workers: list[WorkerView]) -> set[tuple[str, float, int]]:
    """(type, free cpu, free memory) of each accepting worker with a free slot, per type
    it runs: a job fits one of these rows exactly when some worker ``fits_now``."""
    return {
        (t, w.free_cpu, w.free_memory)
        for w in workers
        if w.accepting and w.free_slots >= 1
        for t in w.task_types
    }


def why_it_fits_nowhere(job: Candidate, workers: list[WorkerView]) -> str:
    return _fits_nowhere(job.type, f"{job.cpu_units:g}", str(job.memory_mb), workers)


# Stand-ins for a job's needs and type in the templates below (then SQL's placeholders).
_MARKS = {"@@cpu@@": "%1$s", "@@mb@@": "%2$s", "@@type@@": "%3$s"}


def fits_nowhere_templates(workers: list[WorkerView]) -> tuple[dict[str, str], str]:
    """``why_it_fits_nowhere`` as templates of SQL's ``format()`` (``%1$s`` the job's
    cpu units, ``%2$s`` its MB, ``%3$s`` its type), for parking to write the reason of
    each job it parks in the same statement: one per type a live worker runs, and one
    for every other type."""

    def template(type_: str) -> str:
        text = _fits_nowhere(type_, "@@cpu@@", "@@mb@@", workers).replace("%", "%%")
        for mark, placeholder in _MARKS.items():
            text = text.replace(mark, placeholder)
        return text

    types = {t for w in workers if w.accepting for t in w.task_types}
    return {t: template(t) for t in sorted(types)}, template("@@type@@")


def _fits_nowhere(type_: str, cpu: str, memory: str, workers: list[WorkerView]) -> str:
    live = [w for w in workers if w.accepting]
    if not live:
        return "no live worker: start one (python -m services.worker)"
    typed = [w for w in live if type_ in w.task_types]
    if not typed:
        return f"no live worker runs task type {type_!r} (start one with --tasks)"
    biggest_cpu = max(w.cpu_units for w in typed)
    biggest_mem = max(w.memory_mb for w in typed)
    return (
        f"fits no live worker: needs {cpu} cpu units and {memory} MB; "
        f"the largest worker running {type_!r} has {biggest_cpu:g} cpu units and "
        f"{biggest_mem} MB"
    )
