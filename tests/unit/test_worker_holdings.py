"""What a worker's attempts hold (``services.worker.holdings``): the totals a dispatch is
checked against follow the attempts exactly as they start, end, get stuck and are
released, however many come and go."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta

from services.worker.attempt import Running
from services.worker.holdings import Holdings
from shared.messages import JobDispatch, ResourceSpec, WorkerCapacity
from shared.tasks import TaskContext


def attempt(cpu_units: float, memory_mb: int) -> Running:
    dispatch = JobDispatch(
        job_id=uuid.uuid4(),
        attempt=1,
        type="demo.echo",
        payload={},
        resources=ResourceSpec(cpu_units=cpu_units, memory_mb=memory_mb),
        timeout_seconds=None,
        lease_expires_at=datetime.now(UTC) + timedelta(seconds=30),
        lease_seconds=30,
    )
    return Running(dispatch=dispatch, ctx=TaskContext(job_id=dispatch.job_id, attempt=1), started=0)


def need(cpu_units: float, memory_mb: int = 1) -> ResourceSpec:
    return ResourceSpec(cpu_units=cpu_units, memory_mb=memory_mb)


def test_each_limit_refuses_on_its_own() -> None:
    held = Holdings(WorkerCapacity(cpu_units=1.0, memory_mb=100, slots=2))
    held.start(attempt(0.5, 60))
    assert held.fits("demo.echo", need(0.5, 40))
    assert not held.fits("demo.echo", need(0.51, 40))  # cpu
    assert not held.fits("demo.echo", need(0.5, 41))  # memory
    held.start(attempt(0.1, 1))
    assert not held.fits("demo.echo", need(0.1, 1))  # slots
    assert held.allocated() == WorkerCapacity(cpu_units=0.6, memory_mb=61, slots=2)


def test_tenths_fill_a_whole_unit_exactly() -> None:
    """Ten jobs of 0.1 on a worker of 1.0: the tenth fits (the float sum is 0.999...)."""
    held = Holdings(WorkerCapacity(cpu_units=1.0, memory_mb=1000, slots=20))
    for _ in range(9):
        held.start(attempt(0.1, 1))
    assert held.fits("demo.echo", need(0.1))
    held.start(attempt(0.1, 1))
    assert not held.fits("demo.echo", need(0.1))


def test_a_stuck_attempt_holds_until_released() -> None:
    held = Holdings(WorkerCapacity(cpu_units=1.0, memory_mb=100, slots=1))
    run = attempt(1.0, 100)
    held.start(run)
    held.end(run)
    held.stick(run)  # reported ended, its thread still runs
    assert not held.running and run.key in held.stuck
    assert not held.fits("demo.echo", need(0.1))
    assert held.stuck_total() == WorkerCapacity(cpu_units=1.0, memory_mb=100, slots=1)
    held.release(run.key)
    assert held.fits("demo.echo", need(1.0, 100))
    assert held.allocated() == WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)


def test_the_stuck_total_is_not_rounded() -> None:
    """The scheduler takes the stuck total from the worker's capacity: rounded down, it
    would see room the worker does not have, and place a job the worker hands back."""
    held = Holdings(WorkerCapacity(cpu_units=1.0, memory_mb=100, slots=2))
    run = attempt(1 / 3, 1)
    held.start(run)
    held.end(run)
    held.stick(run)
    assert held.stuck_total().cpu_units == 1 / 3


def test_repeated_or_unknown_changes_count_once() -> None:
    held = Holdings(WorkerCapacity(cpu_units=1.0, memory_mb=100, slots=4))
    run = attempt(0.25, 10)
    held.start(run)
    held.start(run)  # a second start of the same attempt is not a second holding
    held.end(attempt(0.25, 10))  # an attempt never started frees nothing
    held.release(run.key)  # not stuck: frees nothing
    assert held.allocated() == WorkerCapacity(cpu_units=0.25, memory_mb=10, slots=1)
    held.end(run)
    held.end(run)
    assert held.allocated() == WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)


def test_totals_match_the_attempts_after_many_come_and_go() -> None:
    """A long busy spell that never empties the worker: the kept totals stay what adding
    up the attempts held gives, and the worker ends empty at exactly zero."""
    rng = random.Random(7)
    cap = WorkerCapacity(cpu_units=4.0, memory_mb=4096, slots=64)
    held = Holdings(cap)
    live: list[Running] = []
    stuck: list[Running] = []
    for _ in range(20_000):
        choice = rng.random()
        if live and (choice < 0.45 or len(live) + len(stuck) >= cap.slots):
            run = live.pop(rng.randrange(len(live)))
            held.end(run)
            if rng.random() < 0.05:
                held.stick(run)
                stuck.append(run)
        elif stuck and choice < 0.5:
            held.release(stuck.pop(rng.randrange(len(stuck))).key)
        else:
            resources = need(rng.choice([0.1, 0.2, 0.3, 0.05, 1 / 3]), rng.randint(1, 64))
            if held.fits("demo.echo", resources):
                run = attempt(resources.cpu_units, resources.memory_mb)
                held.start(run)
                live.append(run)
        every = live + stuck
        assert held.allocated().slots == len(every)
        assert held.allocated().memory_mb == sum(r.dispatch.resources.memory_mb for r in every)
        # The kept cpu total is the exact sum to well within the fit rule's slack
        # (CPU_EPSILON, 1e-9): a job needing exactly what is left fits, one needing a
        # millionth more does not.
        left = cap.cpu_units - math.fsum(r.dispatch.resources.cpu_units for r in every)
        if len(every) < cap.slots and left > 1e-6:
            assert held.fits("demo.echo", need(left))
            assert not held.fits("demo.echo", need(left + 1e-6))
    for run in live:
        held.end(run)
    for run in stuck:
        held.release(run.key)
    assert held.allocated() == WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)
    assert held.fits("demo.echo", need(4.0, 4096))
