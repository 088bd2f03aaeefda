"""One place decides what happens to a message that cannot be decoded or handled
(``Broker.consume``): it goes to ``<ns>.dead-letter`` with its reason in a header, it is
acked, and the messages behind it go on (real RabbitMQ)."""

from __future__ import annotations

import json
import uuid

from shared.broker import (
    HANDLER_TRIES,
    Broker,
    Consumer,
    DeadLetter,
    Delivery,
    UnpublishableMessage,
)
from shared.messages import Batch, JobCancel, JobStatusReport, encode
from shared.settings import Settings
from tests.conftest import wait_for


async def dead(broker: Broker, n: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def enough() -> bool:
        found[:] = await broker.read_dead_letters(limit=100)
        return len(found) >= n

    await wait_for(enough, timeout=15, what=f"{n} dead letter(s)")
    return found


async def cancels_into_a_list(broker: Broker, queue: str) -> tuple[Consumer, list[object]]:
    """A consumer of ``job.cancel.#`` on ``queue``, and the list it acks each message into."""
    got: list[object] = []

    async def on(delivery: Delivery) -> None:
        got.extend(delivery.messages)
        await delivery.ack()

    return await broker.consume(queue, ["job.cancel.#"], on), got


async def test_an_undecodable_body_is_dead_lettered_with_its_reason_and_the_rest_go_on(
    settings: Settings,
) -> None:
    queue = f"{settings.namespace}.dl-test"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-test") as broker:
        consumer, got = await cancels_into_a_list(broker, queue)
        after = JobCancel(job_id=uuid.uuid4(), attempt=1)
        await broker.publish_body(b"not json at all", "job.cancel.x")
        big = json.loads(encode(after))
        big["attempt"] = 2**31
        await broker.publish_body(json.dumps(big).encode(), "job.cancel.y")
        await broker.publish(after)

        async def handled() -> bool:
            return got == [after]

        await wait_for(handled, what="the good message behind the poison")
        letters = await dead(broker, 2)
        assert letters[0].body == b"not json at all"
        assert [d.routing_key for d in letters] == ["job.cancel.x", "job.cancel.y"]
        assert all(d.queue == queue for d in letters)
        assert "JSON" in (letters[0].reason or ""), letters[0].reason
        assert "attempt" in (letters[1].reason or ""), letters[1].reason
        await consumer.close()
        await broker.delete_namespace([queue])


async def test_a_batch_keeps_its_good_items_and_dead_letters_the_bad_one(
    settings: Settings,
) -> None:
    queue = f"{settings.namespace}.dl-batch"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-batch") as broker:
        got: list[object] = []

        async def on(delivery: Delivery) -> None:
            got.extend(delivery.messages)
            await delivery.ack()

        consumer = await broker.consume(queue, ["job.status.#"], on)
        items = [
            JobStatusReport(job_id=uuid.uuid4(), attempt=1, worker_id="w", status="started")
            for _ in range(3)
        ]
        body = json.loads(encode(Batch(of="job.status", items=items)))
        body["items"][1]["result"] = 2**64
        await broker.publish_body(json.dumps(body).encode(), "job.status.batch")

        async def handled() -> bool:
            return len(got) == 2

        await wait_for(handled, what="the two good items")
        assert got == [items[0], items[2]]
        (letter,) = await dead(broker, 1)
        assert json.loads(letter.body)["job_id"] == str(items[1].job_id)
        assert "result" in (letter.reason or "")
        await consumer.close()
        await broker.delete_namespace([queue])


async def test_a_handler_that_keeps_failing_is_tried_a_few_times_then_dead_lettered(
    settings: Settings,
) -> None:
    queue = f"{settings.namespace}.dl-handler"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-handler") as broker:
        poison = JobCancel(job_id=uuid.uuid4(), attempt=1)
        after = JobCancel(job_id=uuid.uuid4(), attempt=1)
        tries: list[uuid.UUID] = []
        handled: list[uuid.UUID] = []

        async def on(delivery: Delivery) -> None:
            (message,) = delivery.messages
            tries.append(message.job_id)
            if message.job_id == poison.job_id:
                raise ValueError("cannot apply this one")
            handled.append(message.job_id)
            await delivery.ack()

        consumer = await broker.consume(queue, ["job.cancel.#"], on, prefetch=1)
        await broker.publish(poison)
        await broker.publish(after)

        async def went_on() -> bool:
            return handled == [after.job_id]

        await wait_for(went_on, timeout=15, what="the message behind the poison")
        (letter,) = await dead(broker, 1)
        assert tries.count(poison.job_id) == HANDLER_TRIES
        assert "ValueError: cannot apply this one" in (letter.reason or "")
        await consumer.close()
        await broker.delete_namespace([queue])


async def test_an_oversize_body_is_dead_lettered_unread(settings: Settings) -> None:
    from shared.messages import MAX_MESSAGE_BYTES

    queue = f"{settings.namespace}.dl-size"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-size") as broker:

        async def on(delivery: Delivery) -> None:
            raise AssertionError("an oversize body reached the handler")

        consumer = await broker.consume(queue, ["job.cancel.#"], on)
        await broker.publish_body(b" " * (MAX_MESSAGE_BYTES + 1), "job.cancel.big")
        (letter,) = await dead(broker, 1)
        assert "bytes" in (letter.reason or "")
        await consumer.close()
        await broker.delete_namespace([queue])


async def _break_dead_letters(broker: Broker) -> None:
    """Delete ``<ns>.dead``: a dead letter published now fails (the broker closes the
    publishing channel: NOT_FOUND) until the robust channel reopens and declares it again,
    and a delivery rejected meanwhile has no dead-letter exchange to go to."""
    channel = await broker._connection.channel()  # type: ignore[union-attr]
    await channel.exchange_delete(broker.topology.dead_exchange)
    await channel.close()


async def test_good_items_wait_out_a_dead_letter_the_broker_does_not_take(
    settings: Settings,
) -> None:
    """When the bad item's dead letter is not confirmed, the delivery is requeued (not
    rejected to the broker's dead-letter exchange, where its good items would be lost
    unapplied): once dead letters go again, the good items are handled and the bad one is
    dead-lettered with its reason."""
    queue = f"{settings.namespace}.dl-blip"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-blip") as broker:
        got: list[object] = []

        async def on(delivery: Delivery) -> None:
            got.extend(delivery.messages)
            await delivery.ack()

        consumer = await broker.consume(queue, ["job.status.#"], on)
        await _break_dead_letters(broker)
        items = [
            JobStatusReport(job_id=uuid.uuid4(), attempt=1, worker_id="w", status="started")
            for _ in range(3)
        ]
        body = json.loads(encode(Batch(of="job.status", items=items)))
        body["items"][1]["result"] = 2**64
        await broker.publish_body(json.dumps(body).encode(), "job.status.batch")

        async def handled() -> bool:
            return len(got) >= 2

        await wait_for(handled, timeout=20, what="the two good items")
        assert got == [items[0], items[2]]
        letters = await dead(broker, 1)
        assert [json.loads(d.body)["job_id"] for d in letters] == [str(items[1].job_id)]
        assert "result" in (letters[0].reason or ""), letters
        await consumer.close()
        await broker.delete_namespace([queue])


async def test_a_failing_handlers_message_waits_out_a_dead_letter_the_broker_does_not_take(
    settings: Settings,
) -> None:
    queue = f"{settings.namespace}.dl-blip-handler"
    async with Broker(settings.amqp_url, settings.namespace, name="dl-blip-h") as broker:
        poison = JobCancel(job_id=uuid.uuid4(), attempt=1)

        async def on(delivery: Delivery) -> None:
            raise ValueError("cannot apply this one")

        consumer = await broker.consume(queue, ["job.cancel.#"], on)
        await _break_dead_letters(broker)
        await broker.publish(poison)
        letters = await dead(broker, 1)
        assert [json.loads(d.body)["job_id"] for d in letters] == [str(poison.job_id)]
        # Dead-lettered by us with its reason, not by the broker (reason None).
        assert "ValueError: cannot apply this one" in (letters[0].reason or ""), letters
        await consumer.close()
        await broker.delete_namespace([queue])


async def test_one_unpublishable_message_is_its_own_fate_not_its_neighbours(
    settings: Settings,
) -> None:
    """Seen failing: a routing key over AMQP's 255 bytes (a worker id of 300 characters
    from a forged heartbeat) made publish_each raise, and the scheduler counted every
    dispatch of the cycle unconfirmed: real workers' jobs were cancelled and placed
    again, over and over."""
    queue = f"{settings.namespace}.each-test"
    async with Broker(settings.amqp_url, settings.namespace, name="each-test") as broker:
        consumer, got = await cancels_into_a_list(broker, queue)
        first, second = (JobCancel(job_id=uuid.uuid4(), attempt=n) for n in (1, 2))
        results = await broker.publish_each(
            [(first, None), (first, "job.cancel." + "x" * 300), (second, None)]
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], UnpublishableMessage), results
        assert "255 bytes" in str(results[1])

        async def both() -> bool:
            return got == [first, second]

        await wait_for(both, what="the two publishable messages")
        await consumer.close()
        await broker.delete_namespace([queue])
