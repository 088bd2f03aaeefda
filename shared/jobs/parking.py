"""Parking: ready jobs that no live worker could run, even empty, leave the ready queue.

A job whose type no live worker runs, or that needs more CPU or memory than every live
worker running its type has, cannot be placed until the fleet changes. Left in the
ready queue (``ready_jobs``) it would fill the heads the scheduler reads and hide the
jobs behind it; so the scheduler *parks* it (``jobs.parked``, migration 0005) and
*un-parks* what fits when the fleet's capacities grow. A status change clears ``parked``
(a trigger), so a job that leaves ``ready`` and comes back is claimable again whatever
took it there.

Capacities travel as rows ``(type, cpu_units, memory_mb)``: one per live worker and
task type it runs, with that worker's whole capacity.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from shared.db import Db, fetch
from shared.jobs import sql

Capacity = tuple[str, float, int]  # a task type, and the CPU and memory of one worker


def as_arrays(rows: Iterable[Capacity]) -> tuple[list[str], list[float], list[int]]:
    """The rows as the three arrays the statements take."""
    types: list[str] = []
    cpus: list[float] = []
    memories: list[int] = []
    for type_, cpu, memory in rows:
        types.append(type_)
        cpus.append(cpu)
        memories.append(memory)
    return types, cpus, memories


async def park_unfittable(
    db: Db,
    capacities: Iterable[Capacity],
    *,
    window: int,
    reasons: dict[str, str],
    other_reason: str,
) -> int:
    """Park the jobs among the first ``window`` unparked ready jobs of each priority that
    fit none of ``capacities``, each with its waiting reason: the ``format()`` template
    of its type in ``reasons``, else ``other_reason`` (``%1$s`` its cpu units, ``%2$s``
    its MB, ``%3$s`` its type). How many were parked."""
    rows = await fetch(
        db, sql.PARK_UNFITTABLE, *as_arrays(capacities), window,
        list(reasons), list(reasons.values()), other_reason,
    )  # fmt: skip
    return len(rows)


async def unpark_fitting(db: Db, capacities: Iterable[Capacity], *, chunk: int) -> int:
    """Make claimable again the parked jobs that fit one of ``capacities``, ``chunk`` at a
    time in id order (each statement's own transaction); how many."""
    arrays = as_arrays(capacities)
    after = UUID(int=0)
    unparked = 0
    while True:
        (row,) = await fetch(db, sql.UNPARK_FITTING, *arrays, chunk, after)
        unparked += row["n"]
        if row["seen"] < chunk:
            return unparked
        after = row["last"]
