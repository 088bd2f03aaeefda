"""A failed attempt's traceback starts at the task's own code, not at the worker's."""

from __future__ import annotations

import uuid

from services.worker.runner import run_task
from switchyard import TaskContext, TaskRegistry

registry = TaskRegistry()


@registry.task("tb.deep")
def deep(ctx: TaskContext, payload: dict) -> None:
    def inner() -> None:
        raise ValueError("deep down")

    inner()


def test_the_traceback_shows_the_task_frames_only() -> None:
    outcome = run_task(registry["tb.deep"], TaskContext(job_id=uuid.uuid4(), attempt=1), {})
    assert outcome.error == "ValueError: deep down"
    lines = outcome.traceback.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert ", in deep" in lines[1] and "test_task_traceback.py" in lines[1]
    assert "runner.py" not in outcome.traceback and "switchyard/tasks.py" not in outcome.traceback
    assert lines[-1] == "ValueError: deep down"
