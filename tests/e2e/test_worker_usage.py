"""GET /workers shows what each process-isolated attempt uses, from the worker's
heartbeats as the scheduler stores them (docs/isolation.md#seeing-it)."""

from __future__ import annotations

import contextlib
import signal

import psutil
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

SAMPLES = ("--tasks", "tests.e2e.sample_tasks")


def attempts_on(stack: Stack, worker_id: str) -> list[dict] | None:
    """The worker's ``attempts`` as GET /workers has them (None: worker not listed)."""
    r = stack.http.get("/workers")
    assert r.status_code == 200, r.text
    for w in r.json():
        if w["id"] == worker_id:
            return w["attempts"]  # type: ignore[no-any-return]
    return None


def test_workers_shows_a_process_attempts_usage_while_it_runs(stack: Stack) -> None:
    stack.worker("w1", *SAMPLES, "--isolation", "process", "--threads", "1")
    assert attempts_on(stack, "w1") == []  # idle: a warm child runs nothing
    # Pure-Python work on one core, long enough for several heartbeats (0.5 s here).
    job = stack.submit({"type": "sample.count", "payload": {"loops": 400_000_000}})
    seen: list[dict] = []

    def busy() -> bool:
        for usage in attempts_on(stack, "w1") or []:
            seen[:] = [usage]
            # The first sample after the start may read 0 % (psutil's window) and the
            # child may not have grown yet: wait for both to show.
            if usage["job_id"] == job["id"] and usage["cpu_percent"] > 0 and usage["rss_mb"] > 0:
                return True
        return False

    stack.wait_for(busy, timeout=20, what=f"w1's attempts show job {job['id']} busy")
    usage = seen[0]
    print("attempt usage as GET /workers shows it:", usage)
    assert usage["attempt"] == 1 and usage["isolation"] == "process"
    assert usage["pid"] > 0 and usage["peak_rss_mb"] >= 0
    assert stack.job(job["id"])["status"] == "running"
    r = stack.http.patch(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    stack.wait_status(job["id"], "cancelled", timeout=10)
    stack.wait_for(
        lambda: attempts_on(stack, "w1") == [],
        timeout=10,
        what="the ended attempt gone from GET /workers",
    )


def test_a_dead_workers_attempts_are_empty(stack: Stack) -> None:
    worker = stack.worker("w1", *SAMPLES, "--isolation", "process", "--threads", "1")
    job = stack.submit({"type": "sample.runaway"})
    stack.wait_for(
        lambda: any(u["job_id"] == job["id"] for u in attempts_on(stack, "w1") or []),
        what="the runaway's attempt on GET /workers",
    )
    tree = psutil.Process(worker.proc.pid).children(recursive=True)
    worker.signal(signal.SIGKILL)  # no last heartbeat: only the lease tells
    worker.wait(timeout=5)
    for child in tree:  # the runaway must not spin on after its worker
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()

    def dead() -> bool:
        r = stack.http.get("/workers")
        return any(w["id"] == "w1" and w["state"] == "dead" for w in r.json())

    # The API calls a silent worker dead at the lease, whatever the row still holds...
    stack.wait_for(dead, timeout=15, what="w1 dead on GET /workers")
    assert attempts_on(stack, "w1") == []
    # ...and the scheduler, when it declares the worker lost, clears the row too.
    stack.wait_for(
        lambda: stack.sql("SELECT 1 FROM workers WHERE id = 'w1' AND state = 'dead'"),
        what="the scheduler marked w1 dead",
    )
    assert stack.sql("SELECT attempts FROM workers WHERE id = 'w1'")[0]["attempts"] == "[]"
