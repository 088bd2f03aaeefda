"""An ended attempt is freed by reference counting alone: the worker leaves nothing of
it (its record, context, dispatch and outcome) to the cyclic garbage collector, which
otherwise walks dozens of objects per job (docs/performance-history.md)."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.broker import Broker, Delivery
from shared.messages import JobDispatch, JobStatusReport, ResourceSpec
from shared.settings import Settings
from tests.conftest import wait_for

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
    from services.worker.runner import ToLoop
    from services.worker.worker import Worker
    from switchyard.tasks import TaskRegistry

    registry = TaskRegistry()

    @registry.task("t.echo", cpu_units=0.1, memory_mb=16)
    def echo(ctx: object, payload: dict[str, object]) -> dict[str, object]:
        return {"echo": payload}

    worker = Worker(settings=settings, registry=registry, worker_id="w-freed", threads=ATTEMPTS,
                    cpu_units=ATTEMPTS, memory_mb=ATTEMPTS * 16)  # fmt: skip
    worker._loop = asyncio.get_running_loop()
    worker._to_loop = ToLoop(worker._loop)  # as ``Worker.run`` sets it up
    ns = settings.namespace
    runs: list[weakref.ref[object]] = []
    async with worker.broker, Broker(settings.amqp_url, ns, name="receiver") as receiver:
        ended: list[JobStatusReport] = []

        async def on(delivery: Delivery) -> None:
            ended.extend(
                m
                for m in delivery.messages
                if isinstance(m, JobStatusReport) and m.status != "started"
            )

        consumer = await receiver.consume(
            f"{ns}.freed-test", ["job.status.#"], on, no_ack=True, auto_delete=True
        )
        worker.outbox.start()
        try:
            for i in range(ATTEMPTS):
                dispatch = JobDispatch(
                    job_id=uuid.uuid4(), attempt=1, type="t.echo", payload={"i": i},
                    resources=ResourceSpec(cpu_units=0.1, memory_mb=16),
                    # A timeout arms a timer per attempt: its arguments name the attempt.
                    timeout_seconds=300,
                    lease_expires_at=datetime.now(UTC) + timedelta(seconds=30), lease_seconds=30,
                )  # fmt: skip
                worker._accept(dispatch, time.monotonic())
                runs.append(weakref.ref(worker.held.running[(dispatch.job_id, 1)]))

            async def all_ended() -> bool:
                return len(ended) >= ATTEMPTS and not worker.held.running

            await wait_for(all_ended, timeout=20, what="every attempt's end report")
        finally:
            await worker.outbox.close()
            await consumer.close()
            await worker.broker.delete_namespace()
    assert sorted(r.status for r in ended) == ["completed"] * ATTEMPTS, ended
    alive = [r for r in runs if r() is not None]
    assert not alive, f"{len(alive)} of {ATTEMPTS} ended attempts still alive without the collector"
