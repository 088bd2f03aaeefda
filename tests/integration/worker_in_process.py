"""A real ``Worker`` run on the test's loop and broker without its consumer: the test
hands it dispatches (``take``) and reads what it sends (reports and progress)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.worker.runner import ToLoop
from services.worker.worker import Worker
from shared.broker import Broker, Delivery
from shared.messages import JobDispatch, JobProgress, JobStatusReport, ResourceSpec
from shared.settings import Settings
from switchyard.tasks import TaskRegistry
from tests.conftest import wait_for


@dataclass
class WorkerInProcess:
    worker: Worker
    ended: list[JobStatusReport] = field(default_factory=list)
    progress: list[JobProgress] = field(default_factory=list)

    def take(self, task_type: str, payload: dict[str, Any], *, timeout: float | None = None
             ) -> JobDispatch:  # fmt: skip
        """A dispatch of a new job's first attempt (0.1 cpu unit, 16 MB), taken now."""
        dispatch = JobDispatch(
            job_id=uuid.uuid4(), attempt=1, type=task_type, payload=payload,
            resources=ResourceSpec(cpu_units=0.1, memory_mb=16), timeout_seconds=timeout,
            lease_expires_at=datetime.now(UTC) + timedelta(seconds=30), lease_seconds=30,
        )  # fmt: skip
        self.worker._accept(dispatch, time.monotonic())
        return dispatch

    async def all_ended(self, n: int, timeout: float = 20) -> None:
        async def done() -> bool:
            return len(self.ended) >= n and not self.worker.held.running

        await wait_for(done, timeout=timeout, what=f"{n} attempts' end reports")


@contextlib.asynccontextmanager
async def worker_in_process(
    settings: Settings, registry: TaskRegistry, *, slots: int
) -> AsyncIterator[WorkerInProcess]:
    worker = Worker(settings=settings, registry=registry, worker_id="w-in-process",
                    threads=slots, cpu_units=slots, memory_mb=slots * 16)  # fmt: skip
    worker._loop = asyncio.get_running_loop()
    worker._to_loop = ToLoop(worker._loop)  # as ``Worker.run`` sets it up
    ns = settings.namespace
    seen = WorkerInProcess(worker)

    async def on(delivery: Delivery) -> None:
        for m in delivery.messages:
            if isinstance(m, JobStatusReport) and m.status != "started":
                seen.ended.append(m)
            elif isinstance(m, JobProgress):
                seen.progress.append(m)

    async with worker.broker, Broker(settings.amqp_url, ns, name="receiver") as receiver:
        consumer = await receiver.consume(f"{ns}.in-process-test",
                                          ["job.status.#", "job.progress.#"], on,
                                          no_ack=True, auto_delete=True)  # fmt: skip
        worker.outbox.start()
        try:
            yield seen
        finally:
            await worker.outbox.close()
            await consumer.close()
            await worker.broker.delete_namespace()
            worker.executor.shutdown(wait=False)
