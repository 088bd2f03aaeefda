"""An ended attempt is freed by reference counting alone: the worker leaves nothing of
it (its record, context, dispatch and outcome) to the cyclic garbage collector, which
otherwise walks dozens of objects per job (docs/performance-history.md)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.settings import Settings
from switchyard.tasks import TaskRegistry
from tests.integration.worker_in_process import worker_in_process

ATTEMPTS = 20


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No cyclic collection meanwhile: what is freed, reference counting freed."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def test_ended_attempts_leave_no_reference_cycles(
    settings: Settings, collector_off: None
) -> None:
    registry = TaskRegistry()

    @registry.task("t.echo", cpu_units=0.1, memory_mb=16)
    def echo(ctx: object, payload: dict[str, object]) -> dict[str, object]:
        return {"echo": payload}

    runs: list[weakref.ref[object]] = []
    async with worker_in_process(settings, registry, slots=ATTEMPTS) as w:
        for i in range(ATTEMPTS):
            # A timeout arms a timer per attempt: its arguments name the attempt.
            d = w.take("t.echo", {"i": i}, timeout=300)
            runs.append(weakref.ref(w.worker.held.running[(d.job_id, 1)]))
        await w.all_ended(ATTEMPTS)
    assert sorted(r.status for r in w.ended) == ["completed"] * ATTEMPTS, w.ended
    alive = [r for r in runs if r() is not None]
    assert not alive, f"{len(alive)} of {ATTEMPTS} ended attempts still alive without the collector"
