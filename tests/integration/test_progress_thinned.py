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


async def test_figures_no_message_can_carry_never_cost_an_attempt_its_end(
    settings: Settings,
) -> None:
    """A figure held back is made a message only when it goes, at the attempt's end at
    the latest: one the schema refuses is logged and left out there, and a message that
    is no text raises into the task at its call, as it always did."""
    registry = TaskRegistry()

    class NoText:
        def __str__(self) -> str:
            raise RuntimeError("this message has no text")

    @registry.task("t.odd_progress", cpu_units=0.1, memory_mb=16)
    def odd_progress(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, bool]:
        ctx.progress(1, 10, "one")
        ctx.progress(float("nan"), 10)  # held: refused when it would go
        if payload.get("no_text"):
            ctx.progress(3, 10, NoText())  # type: ignore[arg-type]
        return {"ok": True}

    async with worker_in_process(settings, registry, slots=2) as w:
        plain = w.take("t.odd_progress", {})
        no_text = w.take("t.odd_progress", {"no_text": True})
        await w.all_ended(2)
    ends = {r.job_id: r for r in w.ended}
    assert ends[plain.job_id].status == "completed", ends[plain.job_id]
    assert ends[no_text.job_id].status == "failed", ends[no_text.job_id]
    assert "this message has no text" in (ends[no_text.job_id].error or "")
    assert {(p.done, p.message) for p in w.progress} == {(1, "one")}, w.progress
