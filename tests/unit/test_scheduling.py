"""The placement policy and the backoff, without broker or database."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.scheduler.dispatch import _resources
from services.scheduler.placement import (
    Candidate,
    WorkerView,
    capacities,
    effective_priority,
    fits_nowhere_templates,
    plan_placements,
    room,
    why_it_fits_nowhere,
)
from shared.jobs.outcomes import retry_delay

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(
    priority: int = 2, cpu: float = 1, mem: int = 100, waited: float = 0, type: str = "t"
) -> Candidate:
    return Candidate(uuid.uuid4(), type, priority, cpu, mem, NOW - timedelta(seconds=waited))


def worker(
    id: str, cpu: float = 4, mem: int = 1000, slots: int = 4, types: tuple = ("t",)
) -> WorkerView:
    return WorkerView(id, cpu, mem, slots, frozenset(types))


def test_priority_then_age_when_capacity_is_short() -> None:
    low_old = job(priority=3, waited=10)
    crit_new = job(priority=0, waited=0)
    normal = job(priority=2, waited=5)
    plan = plan_placements(
        [low_old, normal, crit_new], [worker("w", slots=2)], now=NOW, aging_seconds=300
    )
    assert [j.id for j, _ in plan.placements] == [crit_new.id, normal.id]
    assert low_old.id in plan.waiting


def test_best_fit_and_capacity_never_exceeded() -> None:
    big, small = worker("big", cpu=8, mem=8000), worker("small", cpu=2, mem=1000)
    jobs = [job(cpu=1.5, mem=900) for _ in range(10)]
    plan = plan_placements(jobs, [big, small], now=NOW, aging_seconds=300)
    first = plan.placements[0]
    assert first[1] == "small"  # the tighter fit
    for w in (big, small):
        assert (
            w.used_cpu <= w.cpu_units and w.used_memory <= w.memory_mb and w.used_slots <= w.slots
        )
    assert len(plan.placements) == 1 + 4  # small holds one; big is slot-bound at 4


def test_too_large_waits_with_reason_and_does_not_block_backfill() -> None:
    huge = job(priority=0, cpu=64)
    small = job(priority=3)
    plan = plan_placements([huge, small], [worker("w")], now=NOW, aging_seconds=300)
    assert [j.id for j, _ in plan.placements] == [small.id]
    assert "fits no live worker" in plan.waiting[huge.id] and "4 cpu" in plan.waiting[huge.id]


def test_only_jobs_no_worker_could_run_even_empty_are_unfittable() -> None:
    """What the dispatcher parks: too large for every worker running the type, or a type
    no accepting worker runs; not a job that only lacks the room now."""
    busy = worker("w", cpu=4)
    busy.used_cpu = 4
    draining = worker("d", cpu=64, types=("t", "gone"))
    draining.accepting = False
    huge, orphan, gone, later = job(cpu=64), job(type="other"), job(type="gone"), job(cpu=4)
    plan = plan_placements(
        [huge, orphan, gone, later], [busy, draining], now=NOW, aging_seconds=300
    )
    assert set(plan.unfittable) == {huge.id, orphan.id, gone.id}
    # It only waits for room: no reason to write (the row reads as the default).
    assert later.id in plan.waiting and plan.waiting[later.id] is None


def test_capacities_and_room_are_what_fits_when_empty_and_now() -> None:
    """A job fits one of the rows exactly when a worker ``fits_when_empty`` / ``fits_now``
    (the rows the parking and the widened claim test against in SQL)."""
    a = worker("a", cpu=4, mem=1000, slots=2, types=("t", "u"))
    a.used_cpu, a.used_memory, a.used_slots = 3, 900, 1
    full = worker("full", cpu=8, mem=8000, slots=1)
    full.used_slots = 1
    off = worker("off", cpu=16, mem=16000)
    off.accepting = False
    views = [a, full, off]
    assert capacities(views) == {("t", 4, 1000), ("u", 4, 1000), ("t", 8, 8000)}
    assert room(views) == {("t", 1, 100), ("u", 1, 100)}

    def fits(j: Candidate, rows: set[tuple[str, float, int]]) -> bool:
        return any(t == j.type and j.cpu_units <= c + 1e-9 and j.memory_mb <= m for t, c, m in rows)

    for j in (job(cpu=1, mem=100), job(cpu=5, mem=100), job(cpu=1, mem=5000, type="u"),
              job(cpu=9), job(cpu=0.5, mem=50, type="v")):  # fmt: skip
        assert fits(j, capacities(views)) == any(w.fits_when_empty(j) for w in views)
        assert fits(j, room(views)) == any(w.fits_now(j) for w in views)


@pytest.mark.parametrize("workers", [[], [worker("w", types=("t", "100%"))]])
def test_parking_templates_say_what_placement_says(workers: list[WorkerView]) -> None:
    """The reasons parking writes in SQL (``format()`` of these templates) are the words
    of ``why_it_fits_nowhere``."""
    by_type, other = fits_nowhere_templates(workers)

    def sql_format(template: str, j: Candidate) -> str:  # format()'s %n$s and %%
        for n, value in (("1", f"{j.cpu_units:g}"), ("2", str(j.memory_mb)), ("3", j.type)):
            template = template.replace(f"%{n}$s", value)
        return template.replace("%%", "%")

    for j in (job(cpu=64), job(cpu=0.5, mem=99_999, type="100%"), job(type="other")):
        template = by_type.get(j.type, other)
        assert sql_format(template, j) == why_it_fits_nowhere(j, workers)


def test_unknown_type_reason() -> None:
    j = job(type="other")
    plan = plan_placements([j], [worker("w")], now=NOW, aging_seconds=300)
    assert "no live worker runs task type 'other'" in plan.waiting[j.id]
    plan = plan_placements([j], [], now=NOW, aging_seconds=300)
    assert "no live worker" in plan.waiting[j.id]


def test_starving_big_job_reserves_a_worker() -> None:
    w = worker("w", cpu=4)
    w.used_cpu = 2  # busy with something
    big = job(priority=2, cpu=4, waited=400)  # waited longer than aging: reserves
    small = job(priority=3, cpu=1)
    plan = plan_placements([big, small], [w], now=NOW, aging_seconds=300)
    assert plan.placements == []
    assert plan.reservations == {"w": big.id}
    fresh_big = job(priority=2, cpu=4, waited=10)
    w.used_cpu = 2
    plan = plan_placements([fresh_big, small], [w], now=NOW, aging_seconds=300)
    assert [j.id for j, _ in plan.placements] == [small.id]  # backfill while young


def test_aging_one_level_per_period() -> None:
    assert effective_priority(job(priority=3, waited=299), NOW, 300) == 3
    assert effective_priority(job(priority=3, waited=300), NOW, 300) == 2
    assert effective_priority(job(priority=3, waited=10_000), NOW, 300) == 0


def test_draining_worker_gets_nothing() -> None:
    w = worker("w")
    w.accepting = False
    plan = plan_placements([job()], [w], now=NOW, aging_seconds=300)
    assert plan.placements == []


@pytest.mark.parametrize(("n", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (20, 300.0)])
def test_retry_delay(n: int, expected: float) -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, initial=1, multiplier=2, max_delay=300, rng=rng) for _ in range(200)]
    assert all(expected * 0.9 - 1e-9 <= d <= min(300, expected * 1.1) + 1e-9 for d in delays)
    assert max(delays) - min(delays) > 0  # jitter is there


def test_aging_counts_from_ready_not_from_submission() -> None:
    # Submitted long ago but blocked on dependencies until a moment ago: no boost yet.
    j = job(priority=3, waited=10_000)
    j.ready_since = NOW - timedelta(seconds=5)
    assert effective_priority(j, NOW, 300) == 3


def test_dispatches_share_resources_by_shape_and_a_refused_shape_is_not_kept() -> None:
    assert _resources(0.5, 256) is _resources(0.5, 256)
    assert _resources(0.5, 256).model_dump() == {"cpu_units": 0.5, "memory_mb": 256}
    for _ in range(2):  # a refused shape stays refused (lru_cache keeps no exception)
        with pytest.raises(ValidationError):
            _resources(-1.0, 256)
