"""Process-isolated attempts on real worker processes: hard timeouts and cancels, the
memory limit, crashes that cost one attempt, real CPU parallelism, a drain that takes
the children with it (docs/isolation.md)."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import ServiceProcess, Stack

# Wall-clock bounds (CPU-bound pairs, start and takeover times, a rate limit's pace)
# that another test's services on the same two cores would stretch.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

SAMPLES = ("--tasks", "tests.e2e.sample_tasks")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def children_of(proc: ServiceProcess) -> list[psutil.Process]:
    """The worker's process tree below it (the forkserver and the attempt children)."""
    return psutil.Process(proc.proc.pid).children(recursive=True)


def attempt_children(proc: ServiceProcess) -> set[int]:
    """Pids of the worker's warm children (grandchildren: they fork from the forkserver)."""
    return {
        p.pid
        for p in children_of(proc)
        if p.ppid() != proc.proc.pid  # the forkserver is the worker's own child
    }


def test_a_runaway_loop_is_killed_at_its_timeout_and_its_slot_reused(stack: Stack) -> None:
    worker = stack.worker("w1", *SAMPLES, "--threads", "1", "--cpu-units", "1")
    before = attempt_children(worker)
    assert len(before) == 1  # one slot: one warm child
    job = stack.submit({"type": "sample.runaway", "timeout_seconds": 2})
    failed = stack.wait_status(job["id"], "failed", timeout=15)
    assert failed["error"].endswith("timed out after 2 s"), failed["error"]
    ended = ts(failed["finished_at"])
    assert (ended - ts(failed["started_at"])).total_seconds() < 2 + 1.5  # SIGTERM took it
    # The next job takes the one slot (and the one core) at once.
    after = stack.submit({"type": "demo.cpu", "payload": {"seconds": 0.1}})
    done = stack.wait_status(after["id"], "completed", timeout=10)
    assert (ts(done["started_at"]) - ended).total_seconds() < 3
    assert not any(psutil.pid_exists(p) for p in before)  # the runaway's child is gone
    stack.wait_for(lambda: len(attempt_children(worker)) == 1, what="the child replaced")
    assert worker.proc.poll() is None


def test_a_memory_hog_fails_with_a_clear_error_and_the_worker_serves_on(stack: Stack) -> None:
    worker = stack.worker("w1", *SAMPLES, "--threads", "2")
    hog = stack.submit({"type": "sample.hog", "payload": {"mb": 400}})  # declares 64 MB
    failed = stack.wait_status(hog["id"], "failed", timeout=20)
    assert failed["attempts"] == 2  # retried per its policy (max_attempts=2)
    assert "failed: exceeded memory_mb=64: peak " in failed["error"], failed["error"]
    peak = int(failed["error"].split("peak ")[1].split(" MB")[0])
    assert 64 < peak < 400
    stack.wait_for(
        lambda: [e["status"] for e in stack.logs(hog["id"])["executions"]] == ["failed"] * 2,
        what="both attempts recorded",
    )
    # Within its declaration it runs; and so do other jobs, on the same worker.
    fits = stack.submit({"type": "sample.hog", "payload": {"mb": 32}})
    assert stack.wait_status(fits["id"], "completed")["result"] == {"held_mb": 32}
    greet = stack.submit({"type": "sample.greet", "payload": {"name": "Ada"}})
    assert stack.wait_status(greet["id"], "completed")["worker_id"] == "w1"
    assert worker.proc.poll() is None


def test_a_child_s_last_progress_and_lines_go_out_before_its_end(stack: Stack) -> None:
    """What a child reports just before it returns reaches the scheduler before the
    end: each job is completed with its final progress and keeps all its lines."""
    stack.worker("w1", *SAMPLES, "--threads", "2")
    steps = 30
    bodies = [{"type": "sample.steps_in_child", "payload": {"steps": steps}}] * 8
    r = stack.http.post("/jobs/batch", json={"jobs": bodies})
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    for job_id in ids:
        done = stack.wait_status(job_id, "completed")
        assert done["progress"] is not None, done
        assert done["progress"]["done"] == steps and done["progress"]["total"] == steps, done
    query = "SELECT job_id::text, seq, message FROM job_logs WHERE job_id = ANY($1::uuid[])"
    stack.wait_for(
        lambda: len(stack.sql(query, ids)) >= steps * len(ids), what="every job's lines stored"
    )
    stored: dict[str, list[str]] = {}
    for job_id, _, message in sorted(stack.sql(query, ids)):
        stored.setdefault(job_id, []).append(message)
    for job_id in ids:
        assert stored[job_id] == [f"step {k} of {steps}" for k in range(1, steps + 1)], job_id


def test_what_a_left_thread_logs_stays_with_its_own_job(stack: Stack) -> None:
    """A task that returns leaving a thread that still logs: its child runs the next job
    meanwhile, and neither the late lines nor the late progress reach that job (nor
    push its own lines out); the late lines are stored with the job that logged them."""
    stack.worker("w1", *SAMPLES, "--threads", "1")  # one child: the next job is in it
    late = 40
    leaver = stack.submit(
        {"type": "sample.leaves_a_thread", "payload": {"steps": late, "seconds": 0.05}}
    )
    stack.wait_status(leaver["id"], "completed")
    own = 10
    job = stack.submit(
        {"type": "sample.steps_in_child", "payload": {"steps": own, "seconds": 0.05}}
    )
    done = stack.wait_status(job["id"], "completed")
    assert done["progress"]["done"] == own and done["progress"]["total"] == own, done
    query = "SELECT seq, message FROM job_logs WHERE job_id = $1 ORDER BY seq"
    # The logger stores lines on its own time: once all the late ones are stored with
    # their job, any that had gone to the next job would be stored too.
    stack.wait_for(
        lambda: len(stack.sql(query, uuid.UUID(leaver["id"]))) == 1 + late,
        what="the late lines stored with the job that logged them",
    )
    stack.wait_for(
        lambda: len(stack.sql(query, uuid.UUID(job["id"]))) >= own, what="the job's lines stored"
    )
    assert [r["message"] for r in stack.sql(query, uuid.UUID(job["id"]))] == [
        f"step {k} of {own}" for k in range(1, own + 1)
    ]
    lines = stack.sql(query, uuid.UUID(leaver["id"]))
    assert [r["seq"] for r in lines] == list(range(1, late + 2))
    assert [r["message"] for r in lines[1:]] == [
        f"late line {k} of job {leaver['id']}" for k in range(1, late + 1)
    ]


def test_a_crashing_task_fails_its_attempt_only(stack: Stack) -> None:
    worker = stack.worker("w1", *SAMPLES, "--threads", "2")
    long = stack.submit({"type": "demo.sleep", "payload": {"seconds": 2}})
    stack.wait_status(long["id"], "running")
    segv = stack.submit({"type": "sample.crash", "payload": {"how": "segfault"}})
    failed = stack.wait_status(segv["id"], "failed")
    assert "killed by SIGSEGV" in failed["error"], failed["error"]
    exit3 = stack.submit({"type": "sample.crash", "payload": {"how": "exit"}})
    assert "exited with code 3" in stack.wait_status(exit3["id"], "failed")["error"]
    # The thread attempt next to them was not touched; new attempts run.
    assert stack.wait_status(long["id"], "completed")["attempts"] == 1
    again = stack.submit({"type": "sample.hog", "payload": {"mb": 16}})
    stack.wait_status(again["id"], "completed")
    lines = [ln["message"] for ln in stack.logs(segv["id"])["lines"]]
    assert lines == ["about to segfault"]  # logs crossed the boundary before the crash
    assert worker.proc.poll() is None


def test_two_cpu_bound_process_jobs_run_in_parallel(stack: Stack) -> None:
    stack.worker("w1", *SAMPLES, "--isolation", "process", "--cpu-units", "2", "--threads", "2")
    work = {"type": "sample.count", "payload": {"loops": 40_000_000}}

    def span(jobs: list[dict]) -> float:
        done = [stack.wait_status(j["id"], "completed", timeout=30) for j in jobs]
        start = min(ts(d["started_at"]) for d in done)
        return (max(ts(d["finished_at"]) for d in done) - start).total_seconds()

    # On threads the pair takes about 2x (one GIL); with a core each about 1x. Other
    # processes on this 2-core machine can only make the pair slower, never faster: the
    # best of up to three trials is the measurement.
    ratios = []
    for _ in range(3):
        alone = span([stack.submit(work)])
        pair = span([stack.submit(work), stack.submit(work)])
        ratios.append(round(pair / alone, 2))
        print(f"one job: {alone:.2f} s; two in parallel: {pair:.2f} s ({pair / alone:.2f}x)")
        if pair < 1.5 * alone:
            break
    assert min(ratios) < 1.5, ratios


def test_a_cancelled_process_attempt_frees_its_slot_at_once(stack: Stack) -> None:
    worker = stack.worker("w1", *SAMPLES, "--threads", "1")
    job = stack.submit({"type": "sample.runaway"})  # ignores its cancel flag
    stack.wait_status(job["id"], "running")
    asked = time.monotonic()
    r = stack.http.patch(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    stack.wait_status(job["id"], "cancelled", timeout=10)
    after = stack.submit({"type": "demo.echo"})
    stack.wait_status(after["id"], "completed", timeout=10)
    took = time.monotonic() - asked
    assert took < 3, took  # a stuck thread would hold the only slot forever
    assert worker.proc.poll() is None


def test_sigterm_drains_the_children_too(stack: Stack) -> None:
    worker = stack.start(
        "worker", "--worker-id", "w1", *SAMPLES, "--isolation", "process", "--threads", "3",
        env={"SWITCHYARD_WORKER_GRACE_SECONDS": "1.5"},
    )  # fmt: skip
    stack.wait_for(lambda: stack.worker_alive("w1"), what="worker registered", proc=worker)
    tree = children_of(worker)
    assert len(attempt_children(worker)) == 3
    short = stack.submit({"type": "demo.sleep", "payload": {"seconds": 0.8}})
    runaway = stack.submit({"type": "sample.runaway", "retry": {"max_attempts": 1}})
    for j in (short, runaway):
        stack.wait_status(j["id"], "running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert stack.job(short["id"])["status"] == "completed"  # finished within the grace
    # The runaway outlived the grace: handed back (no attempt used up), its child killed.
    assert stack.job(runaway["id"])["status"] in ("ready", "pending")
    stack.wait_for(
        lambda: not any(p.is_running() and p.status() != "zombie" for p in tree),
        timeout=5,
        what="no child outlives the worker",
    )


def test_heartbeats_carry_each_process_attempts_usage(stack: Stack, settings: object) -> None:
    import asyncio

    from shared.broker import Broker, Delivery
    from shared.messages import AttemptUsage, WorkerHeartbeat

    stack.worker("w1", *SAMPLES, "--isolation", "process", "--threads", "2")
    job = stack.submit({"type": "demo.cpu", "payload": {"seconds": 5}})
    stack.wait_status(job["id"], "running")

    async def listen() -> AttemptUsage:
        found: list[AttemptUsage] = []
        done = asyncio.Event()

        async def on(delivery: Delivery) -> None:
            for hb in delivery.messages:
                if isinstance(hb, WorkerHeartbeat):
                    for usage in hb.attempts:
                        # The first sample after the start may be 0 % (psutil's window).
                        if str(usage.job_id) == job["id"] and usage.cpu_percent > 50:
                            found.append(usage)
                            done.set()
            await delivery.ack()

        broker = Broker(settings.amqp_url, settings.namespace, name="test-heartbeats")  # type: ignore[attr-defined]
        await broker.connect()
        try:
            await broker.consume(
                f"{settings.namespace}.test-heartbeats", ["worker.heartbeat.#"], on,  # type: ignore[attr-defined]
                durable=False, exclusive=True, auto_delete=True,
            )  # fmt: skip
            await asyncio.wait_for(done.wait(), timeout=10)
        finally:
            await broker.close()
        return found[0]

    usage = asyncio.run(listen())
    assert usage.attempt == 1 and usage.isolation == "process" and usage.pid > 0
    assert 0 <= usage.rss_mb < 32  # demo.cpu allocates next to nothing
    stack.http.patch(f"/jobs/{job['id']}/cancel")
    stack.wait_status(job["id"], "cancelled", timeout=5)


# A task module that imports in the worker, then no more: its task kills the pool's
# forkserver (the next one imports the modules afresh) after it made the import fail.
BREAKING_TASKS = """
import os
import signal
from typing import Any

from switchyard import TaskContext, TaskRegistry

FLAG = os.environ["BREAKING_TASKS_FLAG"]
if os.path.exists(FLAG):
    raise ImportError("breaking_tasks: the test made this module fail to import")

registry = TaskRegistry()


@registry.task("breaking.break_pool", isolation="process", max_attempts=1)
def break_pool(ctx: TaskContext, payload: dict[str, Any]) -> None:
    open(FLAG, "w").close()
    os.kill(os.getppid(), signal.SIGKILL)  # the forkserver this child was forked from
    os._exit(3)
"""


def test_a_pool_that_cannot_start_children_stops_the_worker(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "breaking_tasks.py").write_text(BREAKING_TASKS)
    env = {
        "PYTHONPATH": str(tmp_path),
        "BREAKING_TASKS_FLAG": str(tmp_path / "broken"),
        "SWITCHYARD_WORKER_TASKS": "breaking_tasks",
    }
    worker = stack.start("worker", "--worker-id", "w1", "--threads", "1", env=env)
    stack.wait_for(lambda: stack.worker_alive("w1"), what="worker registered", proc=worker)
    job = stack.submit({"type": "breaking.break_pool"})
    # Its replacements cannot import the module: the pool is broken and the worker
    # stops (exit code 1, for its supervisor to restart it) rather than take process
    # attempts only to hand them back every scheduling cycle.
    assert worker.wait(timeout=30) == 1
    output = worker.output()
    assert "process-isolated tasks cannot run on this worker: 3 child processes in a row" in output
    assert stack.job(job["id"])["status"] == "failed"
    stack.wait_for(lambda: not stack.worker_alive("w1"), what="the worker gone")
