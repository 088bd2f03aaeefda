"""The bench removes the RabbitMQ namespace of each stack it ran: its scheduler's,
logger's and dead letters' queues never expire on their own (real RabbitMQ)."""

from __future__ import annotations

import aio_pika
import aio_pika.exceptions
import pytest

from bench.databases import delete_namespace
from shared.broker import Broker, Delivery, Topology
from shared.settings import Settings


async def test_delete_namespace_leaves_none_of_its_queues(settings: Settings) -> None:
    topology = Topology(settings.namespace)
    worker_queue = topology.worker_queue("bench-narrow-w0")
    queues = {
        topology.scheduler_queue: Topology.SCHEDULER_BINDINGS,
        topology.logger_queue: Topology.LOGGER_BINDINGS,
        worker_queue: Topology.worker_bindings("bench-narrow-w0"),
    }

    async def ignore(delivery: Delivery) -> None:
        await delivery.ack()

    async with Broker(settings.amqp_url, settings.namespace, name="bench-ns") as broker:
        for name, bindings in queues.items():
            await (await broker.consume(name, bindings, ignore)).close()

    await delete_namespace(settings.namespace, [worker_queue])

    connection = await aio_pika.connect(settings.amqp_url)
    try:
        for name in [*queues, topology.dead_queue]:
            channel = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(name, passive=True)
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_exchange(topology.exchange, passive=True)
    finally:
        await connection.close()
