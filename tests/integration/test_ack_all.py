"""``ack_all``: one multiple-ack settles a whole batch; a batch whose channel is gone
is skipped (the broker redelivers it), never an exception in the caller's cycle."""

from __future__ import annotations

import asyncio
import uuid

from shared.broker import Broker, Delivery, ack_all
from shared.broker.deliveries import Unsettled
from shared.messages import JobCancel
from shared.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import queue_counts


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


async def held_first(broker: Broker, queue: str) -> tuple[list[Delivery], asyncio.Event, object]:
    """A consumer whose first delivery stays on its way to the buffer until released (as
    one does while its bad item's dead letter waits for the broker's confirm, or while
    its handler is tried again) and whose second one arrives in the buffer at once."""
    buffer: list[Delivery] = []
    release = asyncio.Event()
    first = True

    async def on(delivery: Delivery) -> None:
        nonlocal first
        if first:
            first = False
            await release.wait()
        buffer.append(delivery)

    consumer = await broker.consume(queue, ["job.cancel.#"], on, prefetch=100)
    for attempt in (1, 2):
        await broker.publish(JobCancel(job_id=uuid.uuid4(), attempt=attempt))

    async def second_buffered() -> bool:
        return len(buffer) == 1

    await wait_for(second_buffered, timeout=10, what="the second delivery buffered")
    return buffer, release, consumer


async def ready_in(broker: Broker, queue: str) -> int:
    counts = await queue_counts(broker, queue)
    assert counts is not None, f"{queue} is gone"
    return counts[0]


async def test_a_batch_ack_never_settles_a_delivery_still_on_its_way(settings: Settings) -> None:
    """Seen failing with one multiple-ack at the batch's highest tag: the held delivery
    was acked with it, and closing the consumer gave nothing back (its content lost)."""
    queue = f"{settings.namespace}.ack-held"
    async with Broker(settings.amqp_url, settings.namespace, name="ack-held") as broker:
        buffer, release, consumer = await held_first(broker, queue)
        await ack_all(list(buffer))  # the second; the first is not in the batch
        closing = asyncio.create_task(consumer.close())  # type: ignore[attr-defined]
        release.set()  # the first reaches the buffer; the consumer stops before its batch
        await asyncio.wait_for(closing, 15)
        assert len(buffer) == 2
        assert await ready_in(broker, queue) == 1, "the held delivery was acked unhandled"
        await broker.delete_namespace([queue])


async def test_a_delivery_acked_after_a_later_one_keeps_its_channel(settings: Settings) -> None:
    """Seen failing with one multiple-ack at the batch's highest tag: the held delivery's
    own ack was its second, and RabbitMQ closed the channel (406 unknown delivery tag)."""
    queue = f"{settings.namespace}.ack-late"
    async with Broker(settings.amqp_url, settings.namespace, name="ack-late") as broker:
        buffer, release, consumer = await held_first(broker, queue)
        channel = buffer[0]._raw.channel
        await ack_all(list(buffer))
        release.set()

        async def both_buffered() -> bool:
            return len(buffer) == 2

        await wait_for(both_buffered, timeout=10, what="the held delivery buffered")
        await ack_all(buffer[1:])
        # A round trip on the same channel: a refused ack would have closed it first.
        await channel.basic_qos(prefetch_count=100)
        assert not channel.is_closed
        await consumer.close()  # type: ignore[attr-defined]
        assert await ready_in(broker, queue) == 0, "a delivery was left unacked"
        await broker.delete_namespace([queue])


async def test_deliveries_acked_one_by_one_are_not_kept(settings: Settings) -> None:
    """A consumer that acks each delivery itself (a worker's dispatches) must not keep
    them all (seen failing without the pruning: 2,000 kept, with their bodies)."""
    queue = f"{settings.namespace}.ack-each"
    async with Broker(settings.amqp_url, settings.namespace, name="ack-each") as broker:
        seen: list[Delivery] = []

        async def on(delivery: Delivery) -> None:
            await delivery.ack()
            seen.append(delivery)

        consumer = await broker.consume(queue, ["job.cancel.#"], on, prefetch=100)
        # 2,000 confirms pipelined while the consumer acks: on two busy cores they took
        # longer than the broker's 5 s default, and what is tested is the consumer.
        await broker.publish_many(
            [(JobCancel(job_id=uuid.uuid4(), attempt=1), None) for _ in range(2_000)],
            timeout=60,
        )

        async def all_seen() -> bool:
            return len(seen) == 2_000

        await wait_for(all_seen, timeout=30, what="2,000 deliveries")
        unsettled = seen[0]._unsettled
        assert unsettled is not None
        kept = sum(len(tags) for tags in unsettled._by_channel.values())
        assert kept < Unsettled.PRUNE_AT_LEAST, kept
        await consumer.close()
        await broker.delete_namespace([queue])
