"""A consumer is closed only once its handlers are done with what they were given: an
ack sent after the channel's close reaches a channel the broker has already closed, and
the broker answers by closing the whole connection (real RabbitMQ)."""

from __future__ import annotations

import asyncio
import uuid

from shared.broker import Broker, Delivery
from shared.messages import JobCancel
from shared.settings import Settings
from tests.conftest import wait_for


async def test_close_waits_for_a_running_handler_and_its_ack_lands(settings: Settings) -> None:
    queue = f"{settings.namespace}.close-drain"
    async with Broker(settings.amqp_url, settings.namespace, name="close-drain") as broker:
        started = asyncio.Event()
        release = asyncio.Event()
        acked: list[object] = []

        async def on(delivery: Delivery) -> None:
            started.set()
            await release.wait()
            await delivery.ack()
            acked.extend(delivery.messages)

        consumer = await broker.consume(queue, ["job.cancel.#"], on)
        # The AMQP connection under the robust one: RabbitMQ closing it would make the
        # robust connection open another.
        amqp = broker._connection.transport.connection  # type: ignore[union-attr]
        message = JobCancel(job_id=uuid.uuid4(), attempt=1)
        await broker.publish(message)
        await asyncio.wait_for(started.wait(), 15)

        closing = asyncio.create_task(consumer.close())
        # The handler holds its delivery: close stops deliveries, then waits for it.
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        assert not done, "the consumer's channel was closed under a running handler"
        release.set()
        await asyncio.wait_for(closing, 15)
        assert acked == [message]

        # The ack landed (nothing is redelivered) and the connection is still whole.
        assert not amqp.is_closed
        assert broker._connection.transport.connection is amqp  # type: ignore[union-attr]
        redelivered: list[object] = []

        async def again(delivery: Delivery) -> None:
            redelivered.extend(delivery.messages)
            await delivery.ack()

        second = await broker.consume(queue, ["job.cancel.#"], again)
        probe = JobCancel(job_id=uuid.uuid4(), attempt=2)
        await broker.publish(probe)

        async def probe_seen() -> bool:
            return probe in redelivered

        await wait_for(probe_seen, timeout=15, what="the probe behind the acked message")
        assert redelivered == [probe]
        await second.close()
        await broker.delete_namespace([queue])
