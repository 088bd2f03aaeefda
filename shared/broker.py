"""AMQP topology and transport: the only module that imports aio_pika (conventions §2).

Names derive from ``SWITCHYARD_NAMESPACE`` so two stacks can share one broker:

* ``<ns>.events``       durable topic exchange every message goes through
* ``<ns>.dead``         fanout exchange for messages no consumer can decode
* ``<ns>.dead-letter``  durable queue bound to it (inspect it in the RabbitMQ UI)
* ``<ns>.scheduler`` / ``<ns>.logger`` / ``<ns>.worker.<id>``  durable service queues

A worker's reports, log lines and progress are persistent, the rest transient (see
``delivery_mode``); channels use publisher confirms, and a publish waits at most
``publish_timeout`` for the confirm; broker failures surface as BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from shared.errors import BrokerUnavailable, DecodeError
from shared.messages import (
    Batch,
    Message,
    _Message,
    batched,
    decode,
    encode,
    routing_key,
    unpack,
)

log = logging.getLogger(__name__)

# What a broker call may raise while the connection is down or being restored
# (aio-pika's CONNECTION_EXCEPTIONS include RuntimeError: ChannelInvalidStateError
# while a robust channel reconnects). All of it becomes BrokerUnavailable here.
_BROKER_ERRORS = (
    *aio_pika.exceptions.CONNECTION_EXCEPTIONS,
    aio_pika.exceptions.AMQPException,
    asyncio.TimeoutError,
)


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names for one namespace, and the bindings of the scheduler,
    the logger and a worker (an API replica's are ``services.api.stream.STREAM_BINDINGS``)."""

    namespace: str

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def scheduler_queue(self) -> str:
        return f"{self.namespace}.scheduler"

    @property
    def logger_queue(self) -> str:
        return f"{self.namespace}.logger"

    def worker_queue(self, worker_id: str) -> str:
        return f"{self.namespace}.worker.{worker_id}"

    SCHEDULER_BINDINGS: tuple[str, ...] = (
        "job.submitted.#",
        "job.status.#",
        "worker.heartbeat.#",
        "job.progress.#",
    )
    LOGGER_BINDINGS: tuple[str, ...] = ("job.logs.#", "job.status.#")

    @staticmethod
    def worker_bindings(worker_id: str) -> tuple[str, ...]:
        # `*` (one word: the job id), not `#`: worker ids have no dots, so no worker's
        # binding can match another's dispatches.
        return (f"job.dispatch.{worker_id}.*", "job.cancel.#")


class Delivery:
    """One received message, decoded, with explicit ack / reject."""

    __slots__ = ("_raw", "message", "redelivered", "routing_key")

    def __init__(self, raw: aio_pika.abc.AbstractIncomingMessage, message: Message) -> None:
        self._raw = raw
        self.message = message
        self.routing_key = raw.routing_key or ""
        self.redelivered = bool(raw.redelivered)

    @property
    def messages(self) -> list[Any]:
        """What the body carries: a batch's items in order, or the one message."""
        return unpack(self.message)

    async def ack(self) -> None:
        try:
            await self._raw.ack()
        except _BROKER_ERRORS as exc:
            # Its channel is gone (reconnect): the broker redelivers the message on
            # the new channel, and every handler is idempotent. Nothing to do here.
            log.info("ack of %s on a closed channel skipped (%s)", self.routing_key, exc)

    async def reject(self, *, requeue: bool) -> None:
        try:
            await self._raw.reject(requeue=requeue)
        except _BROKER_ERRORS as exc:
            log.info("reject of %s on a closed channel skipped (%s)", self.routing_key, exc)


async def ack_all(deliveries: Sequence[Delivery]) -> None:
    """Ack a batch with one ``multiple`` ack per channel (the highest delivery tag).

    Only for batches that hold every earlier unsettled delivery of their channels (a
    consumer that buffers its deliveries in arrival order and settles them in order)."""
    last: dict[int, Delivery] = {}
    for d in deliveries:
        try:
            key = id(d._raw.channel)
        except _BROKER_ERRORS:
            continue  # its channel is gone: the broker redelivers it (handlers are idempotent)
        prev = last.get(key)
        if prev is None or (d._raw.delivery_tag or 0) > (prev._raw.delivery_tag or 0):
            last[key] = d
    for d in last.values():
        try:
            await d._raw.ack(multiple=True)
        except _BROKER_ERRORS as exc:
            log.info("ack of %d message(s) on a closed channel skipped (%s)", len(deliveries), exc)


Handler = Callable[[Delivery], Awaitable[None]]


# Messages whose content exists nowhere else until their consumer has stored it: a
# worker's reports, log lines and progress. They are persistent (written to disk by a
# durable queue, kept across a broker restart). The others are transient: the database
# already holds what they say (state events, wake-up hints, monitoring), or a lost one is
# recovered from it (a dispatch that never arrives is put back after the lease; cancels
# are re-sent; heartbeats come every few seconds). A persistent message to a durable
# queue costs the broker a disk write and its confirm waits for it.
PERSISTENT_KINDS = frozenset({"job.status", "job.logs", "job.progress"})


def delivery_mode(message: _Message) -> aio_pika.DeliveryMode:
    kind = message.of if isinstance(message, Batch) else message.kind  # type: ignore[attr-defined]
    if kind in PERSISTENT_KINDS:
        return aio_pika.DeliveryMode.PERSISTENT
    return aio_pika.DeliveryMode.NOT_PERSISTENT


class Consumer:
    """A running consumer; ``cancel()`` stops deliveries (unacked ones are requeued on close)."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue, tag: str) -> None:
        self._queue = queue
        self._tag = tag

    async def cancel(self) -> None:
        try:
            await self._queue.cancel(self._tag)
        except _BROKER_ERRORS as exc:
            log.warning("cancelling consumer %s failed: %s", self._tag, exc)

    async def close(self) -> None:
        """Stop and close the consumer's channel: what it had not acked is redelivered."""
        await self.cancel()
        try:
            await self._queue.channel.close()
        except _BROKER_ERRORS as exc:
            log.warning("closing consumer channel %s failed: %s", self._tag, exc)


class Broker:
    """A robust connection, one confirming publish channel, and consumers."""

    def __init__(
        self, url: str, namespace: str, *, name: str, publish_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.topology = Topology(namespace)
        self.name = name
        # Sent as each message's AMQP app-id: a consumer can tell its own process's
        # messages apart without decoding them (see ``consume(skip_own=...)``).
        self.instance_id = f"{name}-{uuid.uuid4().hex[:12]}"
        self.publish_timeout = publish_timeout
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._consumer_channels: list[aio_pika.abc.AbstractChannel] = []

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, timeout: float = 30.0) -> None:
        """Connect (retrying until ``timeout``) and declare the shared exchanges."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                self._connection = await aio_pika.connect_robust(
                    self.url, client_properties={"connection_name": self.name}, timeout=5
                )
                break
            except _BROKER_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc
                log.warning("RabbitMQ not reachable (%s); retrying in 1 s", exc)
                await asyncio.sleep(1)
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._declare_exchanges(self._publish_channel)

    async def _declare_exchanges(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractExchange:
        topo = self.topology
        dead = await channel.declare_exchange(
            topo.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(topo.dead_queue, durable=True)
        await dead_queue.bind(dead)
        return await channel.declare_exchange(
            topo.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def ping(self) -> bool:
        """True when the connection is up (the robust connection reconnects by itself)."""
        return (
            self.is_connected
            and self._publish_channel is not None
            and not (self._publish_channel.is_closed)
        )

    async def publish(
        self,
        message: _Message,
        key: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Publish one message (delivery mode by its kind) and wait for the broker's confirm."""
        if self._exchange is None:
            raise BrokerUnavailable("broker is not connected")
        if key is None:
            key = routing_key(message)
        amqp_message = aio_pika.Message(
            encode(message),
            content_type="application/json",
            delivery_mode=delivery_mode(message),
            type=message.kind,  # type: ignore[attr-defined]
            app_id=self.instance_id,
        )
        try:
            await self._exchange.publish(
                amqp_message,
                key,
                mandatory=False,
                timeout=timeout if timeout is not None else self.publish_timeout,
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc

    async def publish_many(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> None:
        """Publish several messages with their confirms pipelined (not one by one).

        Runs of same-kind messages with no explicit key travel as batches (see
        ``shared.messages.batched``)."""
        items = list(items)
        if all(key is None for _, key in items):
            items = [(m, None) for m in batched([m for m, _ in items])]
        errors = [e for e in await self.publish_each(items, timeout=timeout) if e is not None]
        if errors:
            raise BrokerUnavailable(
                f"{len(errors)} publish(es) failed; first: {errors[0]}"
            ) from errors[0]

    async def publish_each(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> list[BrokerUnavailable | None]:
        """Like publish_many, but report each message's fate (None = confirmed)."""
        results = await asyncio.gather(
            *(self.publish(msg, key, timeout=timeout) for msg, key in items),
            return_exceptions=True,
        )
        out: list[BrokerUnavailable | None] = []
        for r in results:
            if isinstance(r, BrokerUnavailable) or r is None:
                out.append(r)
            elif isinstance(r, BaseException):
                raise r
        return out

    async def consume(
        self,
        queue_name: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        prefetch: int = 100,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        no_ack: bool = False,
        skip_own: bool = False,
    ) -> Consumer:
        """Declare ``queue_name`` bound to ``bindings`` and hand each delivery to ``handler``.

        The handler acks or rejects (with ``no_ack`` the broker forgets each message as
        it sends it: only for fan-out copies that may be lost). An undecodable body is
        rejected without requeue, so it goes to the dead-letter queue instead of
        looping forever. With ``skip_own`` messages this broker object published are
        dropped unread. A handler exception is logged and the message requeued (the
        database is the truth, and every handler is idempotent).
        """
        queue = await self._declare(
            queue_name, bindings, prefetch=prefetch, durable=durable, exclusive=exclusive,
            auto_delete=auto_delete, arguments=arguments,
        )  # fmt: skip
        on_message = self._receiver(handler, no_ack=no_ack, skip_own=skip_own)
        tag = await queue.consume(on_message, no_ack=no_ack)
        return Consumer(queue, tag)

    async def _declare(
        self,
        queue_name: str,
        bindings: Sequence[str],
        *,
        prefetch: int,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any] | None,
    ) -> aio_pika.abc.AbstractQueue:
        """A channel of its own with ``prefetch``, and ``queue_name`` declared (dead-lettered
        to ``<ns>.dead``) and bound."""
        if self._connection is None:
            raise BrokerUnavailable("broker is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer_channels.append(channel)
        exchange = await channel.get_exchange(self.topology.exchange)
        args: dict[str, Any] = {
            "x-dead-letter-exchange": self.topology.dead_exchange,
            "x-queue-type": "classic",
        }
        args.update(arguments or {})
        args = {k: v for k, v in args.items() if v is not None}  # None: leave that one out
        queue = await channel.declare_queue(
            queue_name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=args,
        )
        for binding in bindings:
            await queue.bind(exchange, binding)
        return queue

    def _receiver(
        self, handler: Handler, *, no_ack: bool, skip_own: bool
    ) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        """What each raw delivery goes through: decoded (or dead-lettered), handed to
        ``handler``, requeued if it raises."""

        async def on_message(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            try:
                message = decode(raw.body)
            except DecodeError as exc:
                log.error("dead-lettering undecodable message %s: %s", raw.routing_key, exc)
                if not no_ack:
                    await raw.reject(requeue=False)
                return
            delivery = Delivery(raw, message)
            try:
                await handler(delivery)
            except Exception:
                if no_ack:
                    log.exception("handler failed for %s (no-ack queue: skipped)", raw.routing_key)
                    return
                log.exception("handler failed for %s; message requeued", raw.routing_key)
                await asyncio.sleep(0.5)  # keep a persistent failure from spinning hot
                await raw.reject(requeue=True)

        if not skip_own:
            return on_message

        async def skipping_own(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            # What this process published reaches its handler another way (the API's
            # hub is handed its own events at once): drop the broker's copy undecoded.
            if raw.app_id == self.instance_id:
                if not no_ack:
                    await raw.ack()
                return
            await on_message(raw)

        return skipping_own

    async def delete_namespace(self, extra_queues: Sequence[str] = ()) -> None:
        """Remove this namespace's exchanges and queues (tests clean up what they made)."""
        if self._connection is None:
            return
        channel = await self._connection.channel()
        topo = self.topology
        for name in (topo.scheduler_queue, topo.logger_queue, topo.dead_queue, *extra_queues):
            await channel.queue_delete(name)
        await channel.exchange_delete(topo.exchange)
        await channel.exchange_delete(topo.dead_exchange)
        await channel.close()
