"""Backfill with the real scheduler and workers: however many jobs fit no live worker,
a job that fits is placed at once; a worker that can run them, joining, takes them."""

from __future__ import annotations

from tests.e2e.conftest import Stack

QUICK = 10.0  # seconds: a handful of scheduler ticks on a loaded machine, not a backlog


def submit_batch(stack: Stack, jobs: list[dict]) -> list[str]:
    r = stack.http.post("/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201, r.text
    return [j["id"] for j in r.json()["jobs"]]


def count(stack: Stack, ids: list[str], where: str) -> int:
    return int(
        stack.sql(f"SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND {where}", ids)[0][0]
    )


def test_a_small_job_runs_behind_600_too_large_ones_and_they_run_when_a_big_worker_joins(
    stack: Stack,
) -> None:
    stack.worker("w4", "--cpu-units", "4", "--memory-mb", "2048", "--threads", "4")
    huge = submit_batch(
        stack,
        [{"type": "demo.echo", "priority": "critical", "resources": {"cpu_units": 64}}] * 600,
    )
    (small,) = submit_batch(
        stack, [{"type": "demo.echo", "priority": "critical", "resources": {"cpu_units": 1}}]
    )
    assert stack.wait_status(small, "completed", timeout=QUICK)["worker_id"] == "w4"
    assert count(stack, huge, "status = 'ready' AND attempts = 0") == 600
    assert "fits no live worker" in stack.job(huge[-1])["waiting_reason"]

    stack.worker("w64", "--cpu-units", "64", "--memory-mb", "2048", "--threads", "4")
    stack.wait_for(
        lambda: count(stack, huge, "attempts > 0") > 0,
        timeout=QUICK,
        what="a 64-cpu job placed on the worker that joined",
    )
    assert count(stack, huge, "worker_id IS NOT NULL AND worker_id <> 'w64'") == 0


def test_a_job_runs_behind_600_of_a_type_no_worker_runs_and_they_run_when_one_joins(
    stack: Stack,
) -> None:
    stack.worker("greeter", "--no-demo-tasks", "--tasks", "tests.e2e.sample_tasks")
    orphans = submit_batch(
        stack,
        [{"type": "demo.sleep", "priority": "critical", "payload": {"seconds": 0}}] * 600,
    )
    (greet,) = submit_batch(
        stack, [{"type": "sample.greet", "priority": "critical", "payload": {"name": "x"}}]
    )
    assert stack.wait_status(greet, "completed", timeout=QUICK)["worker_id"] == "greeter"
    assert count(stack, orphans, "status = 'ready'") == 600
    assert "no live worker runs task type 'demo.sleep'" in stack.job(orphans[0])["waiting_reason"]

    stack.worker("sleeper", "--threads", "8")
    stack.wait_for(
        lambda: count(stack, orphans, "status = 'completed'") == 600,
        timeout=60,
        what="the 600 demo.sleep jobs run by the worker that joined",
    )
