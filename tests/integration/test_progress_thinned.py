"""A task that reports progress on every item of a loop costs the worker a few updates,
not one per call: thinned in the task's thread before a message is built or the loop
woken (services/worker/progress.py); the first and the final figures still go out."""

from __future__ import annotations

import time
from typing import Any

from services.worker.progress import PROGRESS_INTERVAL
from shared.settings import Settings
from switchyard.tasks import TaskContext, TaskRegistry
from tests.integration.worker_in_process import worker_in_process

CALLS = 100_000


async def test_progress_in_a_loop_reaches_the_loop_a_few_times(settings: Settings) -> None:
    registry = TaskRegistry()

    @registry.task("t.progress_loop", cpu_units=0.1, memory_mb=16)
    def progress_loop(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, float]:
        started = time.monotonic()
        for i in range(CALLS):
            ctx.progress(i + 1, CALLS)
        return {"seconds": time.monotonic() - started}

    async with worker_in_process(settings, registry, slots=2) as w:
        posts = 0
        post = w.worker._to_loop.post  # type: ignore[union-attr]

        def counting(callback: Any, *args: Any, weight: int = 0) -> None:
            nonlocal posts
            if callback == w.worker._progress:
                posts += 1
            post(callback, *args, weight=weight)

        w.worker._to_loop.post = counting  # type: ignore[method-assign,union-attr]
        w.take("t.progress_loop", {})
        await w.all_ended(1, timeout=60)
    [end] = w.ended
    assert end.status == "completed", end
    seconds = end.result["seconds"]  # type: ignore[index]
    bound = 2 + seconds / PROGRESS_INTERVAL  # the first, the final, one per interval
    assert posts <= bound, f"{posts} progress updates reached the loop in {seconds:.2f} s"
    assert len(w.progress) <= bound
    assert (w.progress[0].done, w.progress[-1].done) == (1, CALLS), w.progress
