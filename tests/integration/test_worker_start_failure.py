"""A dispatch the worker took but could not start (its thread pool refused the attempt)
gives the attempt back and frees what it held, rather than leave the job running on
that worker for as long as the worker lives; and the worker stops taking work (its
supervisor restarts it), rather than take every dispatch only to hand it back."""

from __future__ import annotations

import asyncio

from shared.settings import Settings
from switchyard.tasks import TaskRegistry
from tests.integration.worker_in_process import worker_in_process


async def test_an_attempt_the_pool_refuses_is_handed_back_and_its_room_freed(
    settings: Settings,
) -> None:
    registry = TaskRegistry()

    @registry.task("t.noop", cpu_units=0.1, memory_mb=16)
    def noop(ctx: object, payload: dict[str, object]) -> None:
        return None

    async with worker_in_process(settings, registry, slots=1) as w:
        # A pool that refuses new work, as one does once it is shut down.
        w.worker.executor.shutdown()
        serving = w.worker._stop_serving = asyncio.Event()  # set: the worker stops serving
        dispatch = w.take("t.noop", {})
        await w.all_ended(1, timeout=10)
    assert [(r.job_id, r.status) for r in w.ended] == [(dispatch.job_id, "handed_back")], w.ended
    assert "could not start it" in (w.ended[0].error or "")
    # Nothing is held: the whole worker fits the same attempt again.
    assert not w.worker.held.running and not w.worker.held.stuck
    assert w.worker.held.fits("t.noop", dispatch.resources)
    assert serving.is_set() and w.worker.crashed
