"""A worker's outbox sends each kind of a chunk together (``kinds_together``): jobs that
each logged a line and ended travel as one batch of log lines and one of reports, not
as a body per message, and no message is lost or moves past one of its own job or past
a message of no job (a heartbeat)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from shared.bodies import batched, compact_worker_chunk, kinds_together
from shared.messages import (
    Batch,
    JobLog,
    JobProgress,
    JobStatusReport,
    WorkerCapacity,
    WorkerHeartbeat,
    _Message,
    decode,
    encode,
    routing_key,
    unpack,
)

NO_ROOM = WorkerCapacity(cpu_units=0, memory_mb=0, slots=0)


def log(job: uuid.UUID, seq: int = 1) -> JobLog:
    return JobLog(job_id=job, attempt=1, seq=seq, level="info", message=f"line {seq}")


def report(job: uuid.UUID, status: str = "completed") -> JobStatusReport:
    return JobStatusReport(job_id=job, attempt=1, worker_id="w1", status=status)  # type: ignore[arg-type]


def progress(job: uuid.UUID) -> JobProgress:
    return JobProgress(job_id=job, attempt=1, done=1.0)


def heartbeat(running: list[uuid.UUID]) -> WorkerHeartbeat:
    return WorkerHeartbeat(worker_id="w1", capacity=NO_ROOM, allocated=NO_ROOM, running=running)


def test_jobs_that_logged_and_ended_travel_as_two_bodies() -> None:
    jobs = [uuid.uuid4() for _ in range(20)]
    chunk: list[_Message] = [m for job in jobs for m in (log(job), report(job))]
    assert len(batched(chunk)) == 40  # alternating kinds: no run to batch
    bodies = batched(compact_worker_chunk(chunk))
    assert len(bodies) == 2
    assert all(isinstance(b, Batch) for b in bodies)
    assert list(unpack(bodies[0])) == [m for m in chunk if isinstance(m, JobLog)]
    assert list(unpack(bodies[1])) == [m for m in chunk if isinstance(m, JobStatusReport)]


def test_a_short_attempts_start_is_still_folded_into_its_end() -> None:
    job = uuid.uuid4()
    start = JobStatusReport(
        job_id=job, attempt=1, worker_id="w1", status="started", ts=datetime.now(UTC)
    )
    out = compact_worker_chunk([start, log(job), report(job)])
    assert [type(m) for m in out] == [JobLog, JobStatusReport]
    assert out[1].started_at == start.ts  # type: ignore[attr-defined]


def test_nothing_moves_past_a_message_of_its_own_job() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    # a logs again after its own report: that line may not join a's first one ahead of
    # the report; b's line may (another job's report is no reason to wait)
    chunk: list[_Message] = [log(a, 1), report(a, "started"), log(b), log(a, 2), report(b)]
    out = kinds_together(chunk)
    for job in (a, b):
        assert [m for m in out if m.job_id == job] == [m for m in chunk if m.job_id == job]  # type: ignore[attr-defined]
    assert out == [chunk[0], chunk[2], chunk[1], chunk[4], chunk[3]]


def test_nothing_moves_past_a_heartbeat() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    beat = heartbeat([b])
    chunk: list[_Message] = [log(a), report(a), beat, log(b), report(b)]
    out = kinds_together(chunk)
    assert out.index(beat) == 2
    assert set(map(id, out[:2])) == set(map(id, chunk[:2]))


def _check_order_kept(chunk: list[_Message], out: list[_Message]) -> None:
    assert sorted(map(id, out)) == sorted(map(id, chunk))  # the same messages, none lost
    position = {id(m): i for i, m in enumerate(out)}
    for i, m in enumerate(chunk):
        job = getattr(m, "job_id", None)
        for later in chunk[i + 1 :]:
            # Every pair of one job, and every pair with a message of no job in it,
            # keeps its order.
            if job is None or getattr(later, "job_id", None) in (None, job):
                assert position[id(m)] < position[id(later)], (m, later)


def test_random_chunks_lose_nothing_keep_each_jobs_order_and_never_add_bodies() -> None:
    rng = random.Random(22)
    for _ in range(300):
        jobs = [uuid.uuid4() for _ in range(rng.randint(1, 6))]
        chunk: list[_Message] = []
        for _ in range(rng.randint(0, 40)):
            job = rng.choice(jobs)
            make = rng.choice((log, report, progress, lambda j: heartbeat([j])))
            chunk.append(make(job))
        out = kinds_together(chunk)
        _check_order_kept(chunk, out)
        assert len(batched(out)) <= len(batched(chunk))


def test_progress_of_many_jobs_travels_as_one_batch() -> None:
    """Progress is batchable too: jobs that each reported progress, logged and ended are
    three bodies (progress, lines, reports), not one per progress message."""
    jobs = [uuid.uuid4() for _ in range(10)]
    chunk: list[_Message] = [m for job in jobs for m in (progress(job), log(job), report(job))]
    bodies = batched(compact_worker_chunk(chunk))
    assert [b.of for b in bodies] == ["job.progress", "job.logs", "job.status"]  # type: ignore[attr-defined]
    decoded = decode(encode(bodies[0]))
    assert routing_key(decoded) == "job.progress.batch"
    assert unpack(decoded) == [m for m in chunk if isinstance(m, JobProgress)]  # type: ignore[arg-type]
