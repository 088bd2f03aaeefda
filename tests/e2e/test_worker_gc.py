"""The worker tunes its garbage collector as the other services do once its task
modules are imported (their objects frozen with ours), and keeps thresholds a task
module set for itself (docs/tasks.md#thread-or-process)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def collector_seen_by(stack: Stack, worker_id: str, module: str, task: str) -> dict:
    stack.worker(worker_id, "--tasks", module, "--no-demo-tasks", "--isolation", "thread")
    job = stack.submit({"type": task, "payload": {}})
    done = stack.wait_status(job["id"], "completed", "failed", timeout=20)
    assert done["status"] == "completed", done
    return done["result"]  # type: ignore[no-any-return]


def test_the_worker_tunes_its_collector_unless_a_task_module_did(stack: Stack) -> None:
    ours = collector_seen_by(stack, "w-gc", "tests.e2e.gc_tasks", "gcprobe.state")
    assert ours["threshold"] == [20_000, 10, 10] and ours["enabled"], ours
    assert ours["frozen"] > 10_000, ours  # the startup heap, task modules included
    theirs = collector_seen_by(
        stack, "w-gc-own", "tests.e2e.gc_tasks_own_thresholds", "gcprobe.own_state"
    )
    assert theirs["threshold"] == [1234, 7, 7] and theirs["enabled"], theirs
    assert theirs["frozen"] > 10_000, theirs
