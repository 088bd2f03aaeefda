"""A worker whose last running attempt ends with several reports waiting sends them at
once, not after the rest of its outbox's linger; a lone attempt's start and end still
linger (docs/performance.md, "The workers and the logger")."""

from __future__ import annotations

import asyncio

import pytest

from services.worker import worker as worker_module
from shared.settings import Settings
from switchyard.tasks import TaskRegistry
from tests.conftest import wait_for
from tests.integration.worker_in_process import worker_in_process


def _echo_registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("t.echo", cpu_units=0.1, memory_mb=16)
    def echo(ctx: object, payload: dict[str, object]) -> dict[str, object]:
        return {"echo": payload}

    return registry


async def test_a_wave_that_ended_goes_without_the_linger(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A linger far past the test's deadlines: only the hurry can send the reports.
    monkeypatch.setattr(worker_module, "OUTBOX_LINGER", 60.0)
    async with worker_in_process(settings, _echo_registry(), slots=4) as w:
        for i in range(3):
            w.take("t.echo", {"i": i})
        await w.all_ended(3, timeout=10)
        assert sorted(r.result["echo"]["i"] for r in w.ended) == [0, 1, 2]  # type: ignore[index]


async def test_a_lone_attempt_still_lingers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "OUTBOX_LINGER", 60.0)
    async with worker_in_process(settings, _echo_registry(), slots=4) as w:
        w.take("t.echo", {"i": 0})

        async def ended_here() -> bool:
            return not w.worker.held.running

        await wait_for(ended_here, timeout=10, what="the attempt to end")
        await asyncio.sleep(0.5)  # what the hurry would have sent by now
        assert w.ended == [] and w.worker.outbox.waiting() == 2  # its start and its end
