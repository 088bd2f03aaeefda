"""``ack_all``: one multiple-ack settles a whole batch; a batch whose channel is gone
is skipped (the broker redelivers it), never an exception in the caller's cycle."""

from __future__ import annotations

import asyncio
import uuid

from shared.broker import Broker, Delivery, ack_all
from shared.messages import JobCancel
from shared.settings import Settings
from tests.conftest import wait_for


async def collect(broker: Broker, queue: str, n: int) -> tuple[list[Delivery], object]:
    got: list[Delivery] = []

    async def on(delivery: Delivery) -> None:
        got.append(delivery)

    consumer = await broker.consume(queue, ["job.cancel.#"], on, prefetch=100)
    await broker.publish_many([(JobCancel(job_id=uuid.uuid4(), attempt=1), None) for _ in range(n)])

    async def all_there() -> bool:
        return len(got) == n

    await wait_for(all_there, timeout=10, what=f"{n} deliveries")
    return got, consumer


async def test_one_multiple_ack_settles_the_batch(settings: Settings) -> None:
    queue = f"{settings.namespace}.ack-test"
    async with Broker(settings.amqp_url, settings.namespace, name="ack-test") as broker:
        got, consumer = await collect(broker, queue, 20)
        await ack_all(got)
        await consumer.close()  # closing the channel requeues whatever is unacked
        again: list[Delivery] = []

        async def on(delivery: Delivery) -> None:
            again.append(delivery)

        second = await broker.consume(queue, ["job.cancel.#"], on)
        await asyncio.sleep(0.5)  # a redelivery would arrive at once
        assert again == []
        await second.close()
        await broker.delete_namespace([queue])


async def test_a_batch_on_a_closed_channel_is_skipped(settings: Settings) -> None:
    queue = f"{settings.namespace}.ack-closed"
    async with Broker(settings.amqp_url, settings.namespace, name="ack-closed") as broker:
        got, consumer = await collect(broker, queue, 5)
        await consumer.close()
        await ack_all(got)  # must not raise

        redelivered: list[Delivery] = []

        async def on(delivery: Delivery) -> None:
            redelivered.append(delivery)
            await delivery.ack()

        second = await broker.consume(queue, ["job.cancel.#"], on)

        async def back() -> bool:
            return len(redelivered) == 5

        await wait_for(back, timeout=10, what="the 5 unacked messages redelivered")
        assert all(d.redelivered for d in redelivered)
        await second.close()
        await broker.delete_namespace([queue])
