"""The scheduler's fleet without broker or database: heartbeats, the views placement
sees, and which attempts a look at the fleet finds lost."""

from __future__ import annotations

import random
import uuid

from services.scheduler.database import Database
from services.scheduler.fleet import Assignment, Fleet
from shared.messages import WorkerCapacity, WorkerHeartbeat
from shared.settings import Settings

LEASE = 10.0


class Sent:
    def __init__(self) -> None:
        self.messages: list[object] = []

    def put(self, messages: list[object]) -> None:
        self.messages.extend(messages)


def fleet() -> Fleet:
    settings = Settings(_env_file=None, worker_lease_seconds=LEASE)  # type: ignore[call-arg]
    return Fleet(settings, Database(settings), Sent(), rng=random.Random(0))  # type: ignore[arg-type]


def beat(worker: str, *, running: tuple[uuid.UUID, ...] = (), slots: int = 4) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker,
        capacity=WorkerCapacity(cpu_units=4, memory_mb=1000, slots=slots),
        allocated=WorkerCapacity(cpu_units=0, memory_mb=0, slots=len(running)),
        running=list(running),
        task_types=["t"],
    )


def test_views_count_assignments_or_what_the_worker_says_whichever_is_more() -> None:
    f = fleet()
    f.register_heartbeat(beat("w1"))
    job = uuid.uuid4()
    f.assignments[job] = Assignment(job, "w1", 1, 1.5, 200)
    (view,) = f.views()
    assert (view.used_cpu, view.used_memory, view.used_slots) == (1.5, 200, 1)
    f.register_heartbeat(beat("w1", running=(job, uuid.uuid4(), uuid.uuid4())))
    (view,) = f.views()
    assert view.used_slots == 3 and view.accepting


def test_a_stopped_worker_is_dead_and_not_accepting() -> None:
    f = fleet()
    f.register_heartbeat(beat("w1").model_copy(update={"state": "stopped"}))
    assert f.workers["w1"].state == "dead"
    assert [v.accepting for v in f.views()] == [False]


def test_a_silent_worker_is_lost_with_what_it_held() -> None:
    f = fleet()
    f.register_heartbeat(beat("w1"))
    job = uuid.uuid4()
    f.assignments[job] = Assignment(job, "w1", 2, 1, 100)
    assert f.find_losses(f.workers["w1"].last_seen + LEASE / 2).reports == []
    lost = f.find_losses(f.workers["w1"].last_seen + LEASE + 1)
    assert lost.newly_dead == ["w1"]
    assert [(r.job_id, r.attempt, r.status) for r in lost.reports] == [(job, 2, "failed")]
    # Dead already: not declared again, but what it still holds is still lost.
    again = f.find_losses(f.workers["w1"].last_seen + LEASE + 2)
    assert again.newly_dead == [] and len(again.reports) == 1


def test_a_worker_stored_with_an_id_no_worker_takes_now_is_lost_all_the_same() -> None:
    """Seen failing: a worker id stored before ids had to fit a routing key (a forged
    heartbeat's 'a.b') made its loss raise ValidationError, and the cycle with it, on
    every cycle."""
    f = fleet()
    f.register_heartbeat(beat("w1"))
    f.workers["a.b"] = f.workers.pop("w1")
    job = uuid.uuid4()
    f.assignments[job] = Assignment(job, "a.b", 2, 1, 100)
    lost = f.find_losses(f.workers["a.b"].last_seen + LEASE + 1)
    assert [(r.job_id, r.worker_id, r.status) for r in lost.reports] == [(job, "a.b", "failed")]


def test_an_attempt_never_started_is_handed_back_and_cancelled() -> None:
    f = fleet()
    job = uuid.uuid4()
    f.assignments[job] = Assignment(job, "w1", 3, 1, 100, dispatched=0.0)
    f.register_heartbeat(beat("w1"))  # alive, but does not run it
    f.workers["w1"].last_seen = LEASE + 1
    lost = f.find_losses(LEASE + 1)
    assert [(r.attempt, r.status) for r in lost.reports] == [(3, "handed_back")]
    assert [(c.job_id, c.attempt) for c in f._cancels] == [(job, 3)]


def test_free_and_release_are_fenced() -> None:
    f = fleet()
    job = uuid.uuid4()
    f.assignments[job] = Assignment(job, "w1", 2, 1, 100)
    f.free([(job, "w2")])  # another worker's report: not this assignment
    assert job in f.assignments
    f.free([(job, "w1")])
    assert job not in f.assignments
