"""A dispatch the worker took but could not start (its thread pool refused the attempt)
gives the attempt back and frees what it held, rather than leave the job running on
that worker for as long as the worker lives; and the worker stops taking work (its
supervisor restarts it), rather than take every dispatch only to hand it back."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from shared.broker import Broker, Delivery
from shared.messages import JobDispatch, JobStatusReport, ResourceSpec
from shared.settings import Settings
from tests.conftest import wait_for


async def test_an_attempt_the_pool_refuses_is_handed_back_and_its_room_freed(
    settings: Settings,
) -> None:
    from services.worker.worker import Worker
    from switchyard.tasks import TaskRegistry

    registry = TaskRegistry()

    @registry.task("t.noop", cpu_units=1, memory_mb=32)
    def noop(ctx: object, payload: dict[str, object]) -> None:
        return None

    worker = Worker(settings=settings, registry=registry, worker_id="w1", threads=2,
                    cpu_units=1, memory_mb=64)  # fmt: skip
    # A pool that refuses new work, as one does once it is shut down.
    worker.executor.shutdown()
    worker._loop = asyncio.get_running_loop()
    serving = worker._stop_serving = asyncio.Event()  # set: the worker stops serving
    ns = settings.namespace
    async with worker.broker, Broker(settings.amqp_url, ns, name="receiver") as receiver:
        reports: list[JobStatusReport] = []

        async def on(delivery: Delivery) -> None:
            reports.extend(m for m in delivery.messages if isinstance(m, JobStatusReport))

        consumer = await receiver.consume(
            f"{ns}.start-failure-test", ["job.status.#"], on, no_ack=True, auto_delete=True
        )
        worker.outbox.start()
        try:
            job = uuid.uuid4()
            dispatch = JobDispatch(
                job_id=job, attempt=1, type="t.noop", payload={},
                resources=ResourceSpec(cpu_units=1, memory_mb=32), timeout_seconds=None,
                lease_expires_at=datetime.now(UTC) + timedelta(seconds=30), lease_seconds=30,
            )  # fmt: skip
            worker._accept(dispatch, time.monotonic())

            async def reported() -> bool:
                return bool(reports)

            await wait_for(reported, timeout=10, what="the attempt's report")
        finally:
            await worker.outbox.close()
            await consumer.close()
            await worker.broker.delete_namespace()
    assert [(r.job_id, r.status) for r in reports] == [(job, "handed_back")], reports
    assert "could not start it" in (reports[0].error or "")
    # Nothing is held: the whole worker fits the same attempt again.
    assert not worker.held.running and not worker.held.stuck
    assert worker.held.fits("t.noop", dispatch.resources)
    assert serving.is_set() and worker.crashed
