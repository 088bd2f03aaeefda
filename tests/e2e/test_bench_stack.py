"""``make bench``'s stack leaves nothing of its own in RabbitMQ once it stops: its
scheduler's, logger's and dead letters' queues never expire, and every run made a
namespace of its own (real services, real RabbitMQ)."""

from __future__ import annotations

import aio_pika
import aio_pika.exceptions
import pytest

from bench.__main__ import Stack, WorkerShape
from bench.databases import AMQP
from shared.broker import Topology

pytestmark = pytest.mark.e2e


async def _exists(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_a_stopped_bench_stack_leaves_no_queue_behind() -> None:
    async with Stack(workers=1) as stack:
        topology = Topology(stack.env["SWITCHYARD_NAMESPACE"])
        await stack.reshape_workers(WorkerShape.wide())  # a second worker queue
        queues = [
            topology.scheduler_queue,
            topology.logger_queue,
            topology.dead_queue,
            topology.worker_queue("bench-narrow-w0"),
            topology.worker_queue("bench-wide-w0"),
        ]
        connection = await aio_pika.connect(AMQP)
        try:
            assert [q for q in queues if not await _exists(connection, q)] == []
        finally:
            await connection.close()

    connection = await aio_pika.connect(AMQP)
    try:
        assert [q for q in queues if await _exists(connection, q)] == []
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_exchange(topology.exchange, passive=True)
    finally:
        await connection.close()
