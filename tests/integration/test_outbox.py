"""The Outbox publishes notifications in order in the background; with a linger, what
is put during it travels in one batch body (one delivery instead of one per put)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.messages import JobStateChanged
from shared.messaging import Broker, Delivery, Outbox
from shared.settings import Settings
from tests.conftest import wait_for


def event(job: uuid.UUID) -> JobStateChanged:
    return JobStateChanged(
        job_id=job, type="t", old_status="ready", new_status="running", attempt=1
    )


@pytest.mark.parametrize("linger", [0.0, 0.3])
async def test_linger_gathers_puts_into_one_delivery(settings: Settings, linger: float) -> None:
    ns = settings.namespace
    async with (
        Broker(settings.amqp_url, ns, name="sender") as sender,
        Broker(settings.amqp_url, ns, name="receiver") as receiver,
    ):
        deliveries: list[list[uuid.UUID]] = []

        async def on(delivery: Delivery) -> None:
            deliveries.append([m.job_id for m in delivery.messages])

        consumer = await receiver.consume(
            f"{ns}.outbox-test", ["job.state.#"], on, no_ack=True, auto_delete=True
        )
        outbox = Outbox(sender, linger=linger)
        outbox.start()
        jobs = [uuid.uuid4() for _ in range(3)]
        for job in jobs:
            outbox.put([event(job)])
            # A moment between puts (well inside the linger): without one, each goes out
            # before the next is put.
            await asyncio.sleep(0.05)

        async def all_arrived() -> bool:
            return sum(len(d) for d in deliveries) >= len(jobs)

        await wait_for(all_arrived, timeout=10, what="the three events arrive")
        assert [j for d in deliveries for j in d] == jobs  # in order, none lost
        assert len(deliveries) == (1 if linger else 3)
        await outbox.close()
        await consumer.close()
        await sender.delete_namespace()
