"""The placement rules themselves, as pure functions over numbers: whether a worker can
take a job, and how a job's priority ages. One definition for the two readers: the
scheduler, which places jobs by them (``services/scheduler/placement.py``, in its hot
loop: so no objects are built here), and ``GET /jobs/{id}/why`` (``shared.jobs.why``),
which explains a job's wait by the same rules.

A worker *fits* a job when it takes jobs (alive, not draining), runs the job's type,
and has a slot and the job's CPU and memory to spare. Given the worker's free room that
is "fits now"; given its whole capacity, "fits when empty" (it could take the job once
it is idle).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Container
from datetime import datetime

# CPU units are sums of floats (0.1 + 0.2 > 0.3): a job that needs exactly what is free
# still fits.
CPU_EPSILON = 1e-9


def effective_rank(
    priority: int, waiting_since: datetime, now: datetime, aging_seconds: float
) -> int:
    """``priority`` (0 critical .. 3 low) after aging: one level higher per
    ``aging_seconds`` waited since ``waiting_since``, never above critical; no aging when
    ``aging_seconds`` is not positive."""
    if aging_seconds <= 0:
        return priority
    waited = max(0.0, (now - waiting_since).total_seconds())
    return max(0, priority - math.floor(waited / aging_seconds))


@functools.lru_cache(maxsize=4096)  # written for every ready job of a list or batch answer
def free_capacity_reason(job_type: str, cpu_units: float, memory_mb: int) -> str:
    """Why a ready job waits when it fits some live worker, only not now: the common
    case of a backlog. The scheduler does not write it on the row (one more row version
    per queued job); a ready job with no reason written reads as this."""
    return (
        f"waiting for free capacity: needs {cpu_units:g} cpu units, {memory_mb} MB and a "
        f"slot on a worker that runs {job_type!r}"
    )


def fits(
    job_type: str,
    cpu_units: float,
    memory_mb: int,
    accepting: bool,
    task_types: Container[str],
    slots: int,
    cpu_room: float,
    memory_room: int,
) -> bool:
    """Whether a worker with ``slots``, ``cpu_room`` and ``memory_room`` (free now, or its
    whole capacity for "when empty") takes a job of ``job_type`` needing ``cpu_units``
    and ``memory_mb``. Positional, no allocation: the scheduler calls it per job and
    worker. It is exactly ``accepting and not shortfalls(...)``."""
    return (
        accepting
        and job_type in task_types
        and slots >= 1
        and cpu_units <= cpu_room + CPU_EPSILON
        and memory_mb <= memory_room
    )


def shortfalls(
    job_type: str,
    cpu_units: float,
    memory_mb: int,
    task_types: Container[str],
    slots: int,
    cpu_room: float,
    memory_room: int,
) -> tuple[bool, bool, bool, bool]:
    """Which part of ``fits`` fails (``accepting`` aside), for explaining a wait:
    ``(type not run, no slot, too little cpu, too little memory)``."""
    return (
        job_type not in task_types,
        slots < 1,
        cpu_units > cpu_room + CPU_EPSILON,
        memory_mb > memory_room,
    )
