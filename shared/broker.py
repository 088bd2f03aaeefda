"""AMQP topology and transport: the only module that imports aio_pika (conventions §2).

Names derive from ``SWITCHYARD_NAMESPACE`` so two stacks can share one broker:

* ``<ns>.events``       durable topic exchange every message goes through
* ``<ns>.dead``         fanout exchange for messages no consumer can decode or apply
* ``<ns>.dead-letter``  durable queue bound to it (inspect it in the RabbitMQ UI; the
                        reason is in the ``x-switchyard-reason`` header)
* ``<ns>.scheduler`` / ``<ns>.logger`` / ``<ns>.worker.<id>``  durable service queues

A worker's reports, log lines and progress are persistent, the rest transient (see
``delivery_mode``); channels use publisher confirms, and a publish waits at most
``publish_timeout`` for the confirm; broker failures surface as BrokerUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from shared.errors import BrokerUnavailable, SwitchyardError
from shared.messages import (
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    Batch,
    JobDispatch,
    Message,
    Rejected,
    _Message,
    batched,
    decode_each,
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

# A handler that raises on a delivery is given it this many times (with a short pause
# between), then the delivery is dead-lettered with the last error: a message that
# cannot be handled must not come back forever, nor hold up the ones behind it.
HANDLER_TRIES = 3
# A delivery whose dead letter the broker did not confirm is put back in its queue after
# this pause (not rejected to the broker's dead-letter exchange: a batch's good items
# would go with it unapplied, and without the reason).
DEAD_LETTER_RETRY_PAUSE = 1.0
REASON_HEADER = "x-switchyard-reason"
QUEUE_HEADER = "x-switchyard-queue"
SERVICE_HEADER = "x-switchyard-service"
MAX_REASON_CHARS = 2000


class UnpublishableMessage(SwitchyardError):
    """A message no retry can publish: it cannot be encoded, or it is larger than
    MAX_MESSAGE_BYTES (or than the broker's own max_message_size)."""


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

    __slots__ = ("_raw", "message", "received_at", "redelivered", "routing_key")

    def __init__(
        self,
        raw: aio_pika.abc.AbstractIncomingMessage,
        message: Message,
        received_at: float | None = None,
    ) -> None:
        self._raw = raw
        self.message = message
        self.routing_key = raw.routing_key or ""
        self.redelivered = bool(raw.redelivered)
        # time.monotonic() when it arrived: this process's own clock (a lease is
        # measured from here, never against a sender's clock).
        self.received_at = time.monotonic() if received_at is None else received_at

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


def body_of(message: _Message) -> bytes:
    """``message`` encoded; UnpublishableMessage if it cannot be, or if it is over
    MAX_MESSAGE_BYTES (a broker may refuse it, and no receiver accepts it)."""
    try:
        body = encode(message)
    except (TypeError, ValueError) as exc:
        kind = getattr(message, "kind", type(message).__name__)
        raise UnpublishableMessage(f"{kind} cannot be encoded: {exc}") from exc
    if len(body) > MAX_MESSAGE_BYTES:
        kind = getattr(message, "kind", type(message).__name__)
        raise UnpublishableMessage(
            f"{kind} is {len(body):,} bytes; the limit is {MAX_MESSAGE_BYTES:,}"
        )
    return body


def queue_ttl(message: _Message) -> float | None:
    """How long a dispatch may wait in its worker's queue (the AMQP ``expiration``): its
    lease. The broker measures it on its own clock and drops a dispatch nobody took in
    time (the scheduler puts that job back after the lease), so a worker that comes back
    with the same id never starts an attempt the scheduler has moved on from."""
    leases = [m.lease_seconds for m in unpack(message) if isinstance(m, JobDispatch)]  # type: ignore[arg-type]
    return max(0.001, min(leases)) if leases else None


@dataclass(frozen=True)
class DeadLetter:
    """A message in ``<ns>.dead-letter``: its body and why it is there."""

    body: bytes
    routing_key: str
    reason: str | None  # None: dead-lettered by the broker (see x-death in the UI)
    queue: str | None  # the queue it was taken from
    headers: dict[str, Any]


async def _settle(raw: aio_pika.abc.AbstractIncomingMessage, *, requeue: bool | None) -> None:
    """Ack (``requeue`` None) or reject a delivery; a closed channel is not an error here
    (the broker redelivers what was not settled)."""
    if raw.processed:
        return
    try:
        if requeue is None:
            await raw.ack()
        else:
            await raw.reject(requeue=requeue)
    except _BROKER_ERRORS as exc:
        log.info("settling %s on a closed channel skipped (%s)", raw.routing_key, exc)


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


def _dead_letter(raw: aio_pika.abc.AbstractIncomingMessage) -> DeadLetter:
    headers = dict(raw.headers or {})

    def text(name: str) -> str | None:
        value = headers.get(name)
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    return DeadLetter(
        body=raw.body,
        routing_key=raw.routing_key or "",
        reason=text(REASON_HEADER),
        queue=text(QUEUE_HEADER),
        headers=headers,
    )


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
        self._dead_exchange: aio_pika.abc.AbstractExchange | None = None
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
        self._dead_exchange = dead
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
            body_of(message),
            content_type="application/json",
            delivery_mode=delivery_mode(message),
            type=message.kind,  # type: ignore[attr-defined]
            app_id=self.instance_id,
            expiration=queue_ttl(message),
        )
        try:
            await self._exchange.publish(
                amqp_message,
                key,
                mandatory=False,
                timeout=timeout if timeout is not None else self.publish_timeout,
            )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            # RabbitMQ closes the channel on a body over its max_message_size (the
            # robust channel reopens): sending it again would fail again.
            if "max size" in str(exc):
                raise UnpublishableMessage(f"the broker refused {key}: {exc}") from exc
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc

    async def dead_letter(
        self, body: bytes, *, reason: str, routing_key: str, queue: str | None
    ) -> None:
        """Put ``body`` in ``<ns>.dead-letter`` with why (header ``x-switchyard-reason``),
        where it was taken from (``x-switchyard-queue``) and by whom; raises
        BrokerUnavailable if the broker does not confirm it."""
        if self._dead_exchange is None:
            raise BrokerUnavailable("broker is not connected")
        headers: dict[str, Any] = {
            REASON_HEADER: reason[:MAX_REASON_CHARS],
            QUEUE_HEADER: queue or "",
            SERVICE_HEADER: self.name,
        }
        try:
            await self._dead_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers=headers,
                    app_id=self.instance_id,
                ),
                routing_key,
                timeout=self.publish_timeout,
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"dead-lettering {routing_key} failed: {exc!r}") from exc

    async def dead_letter_message(
        self, message: _Message, *, reason: str, queue: str | None, key: str | None = None
    ) -> None:
        """``dead_letter`` for a decoded message (one item of a batch, say), or for one
        a bug built wrong: what cannot be encoded is kept as its repr."""
        try:
            body = encode(message)
        except Exception as exc:  # kept readable, if not as it was
            body = repr(message)[:MAX_TEXT_CHARS].encode("utf-8", "replace")
            reason = f"{reason} (body not encodable: {type(exc).__name__}: {exc}; its repr is kept)"
        try:
            key = key or routing_key(message)
        except Exception:
            key = getattr(message, "kind", "unknown")
        await self.dead_letter(body, reason=reason, routing_key=key, queue=queue)

    async def publish_body(self, body: bytes, key: str) -> None:
        """Publish raw bytes (a dead letter put back by an operator, a test's hostile body)."""
        if self._exchange is None:
            raise BrokerUnavailable("broker is not connected")
        try:
            await self._exchange.publish(
                aio_pika.Message(body, content_type="application/json", app_id=self.instance_id),
                key,
                timeout=self.publish_timeout,
            )
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"publish of {key} failed: {exc!r}") from exc

    async def read_dead_letters(
        self, *, limit: int = 100, remove: bool = False
    ) -> list[DeadLetter]:
        """Up to ``limit`` messages of ``<ns>.dead-letter``, oldest first; with ``remove``
        they are taken off the queue, else left there (in the same order)."""
        if self._connection is None:
            raise BrokerUnavailable("broker is not connected")
        channel = await self._connection.channel()
        try:
            queue = await channel.get_queue(self.topology.dead_queue, ensure=False)
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []
            while len(taken) < limit:
                raw = await queue.get(no_ack=False, fail=False)
                if raw is None:
                    break
                taken.append(raw)
            out = [_dead_letter(raw) for raw in taken]
            for raw in taken:
                if remove:
                    await raw.ack()
            # Closing the channel puts what was not acked back, in its order.
            return out
        finally:
            await channel.close()

    async def publish_many(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> None:
        """Publish several messages with their confirms pipelined (not one by one).

        Runs of same-kind messages with no explicit key travel as batches (see
        ``shared.messages.batched``)."""
        items = list(items)
        if all(key is None for _, key in items):
            items = [(m, None) for m in batched([m for m, _ in items])]
        results = await self.publish_each(items, timeout=timeout)
        errors: list[BrokerUnavailable] = []
        for (message, key), result in zip(items, results, strict=True):
            if isinstance(result, UnpublishableMessage):
                try:
                    await self._dead_letter_unpublishable(message, key, result)
                except BrokerUnavailable as exc:
                    errors.append(exc)  # a caller that retries tries it again
            elif result is not None:
                errors.append(result)
        if errors:
            raise BrokerUnavailable(
                f"{len(errors)} publish(es) failed; first: {errors[0]}"
            ) from errors[0]

    async def _dead_letter_unpublishable(
        self, message: _Message, key: str | None, exc: UnpublishableMessage
    ) -> None:
        """A message no retry can publish: logged, and its description dead-lettered
        (the body itself could not go), so the messages behind it go on; raises
        BrokerUnavailable if that dead letter is not confirmed."""
        kind = getattr(message, "kind", type(message).__name__)
        what = [
            f"{getattr(m, 'kind', '?')} job {getattr(m, 'job_id', '-')} "
            f"attempt {getattr(m, 'attempt', '-')}"
            for m in unpack(message)  # type: ignore[arg-type]
        ]
        log.error("not publishing %s (%s): %s", kind, ", ".join(what[:20]), exc)
        summary = {"unpublished": kind, "messages": what[:500], "error": str(exc)[:2000]}
        await self.dead_letter(
            json.dumps(summary).encode(), reason=f"unpublishable: {exc}",
            routing_key=key or kind, queue=None,
        )  # fmt: skip

    async def publish_each(
        self, items: Iterable[tuple[_Message, str | None]], *, timeout: float | None = None
    ) -> list[BrokerUnavailable | UnpublishableMessage | None]:
        """Like publish_many, but report each message's fate (None = confirmed); a
        message no retry can publish is an UnpublishableMessage in its place."""
        results = await asyncio.gather(
            *(self.publish(msg, key, timeout=timeout) for msg, key in items),
            return_exceptions=True,
        )
        out: list[BrokerUnavailable | UnpublishableMessage | None] = []
        for r in results:
            if isinstance(r, BrokerUnavailable | UnpublishableMessage) or r is None:
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
        it sends it: only for fan-out copies that may be lost). An undecodable body (or
        batch item) goes to the dead-letter queue with its reason instead of looping
        forever. With ``skip_own`` messages this broker object published are
        dropped unread. A handler that raises is tried again (handlers are idempotent)
        and after HANDLER_TRIES dead-lettered with its error; see ``_receiver``.
        """
        queue = await self._declare(
            queue_name, bindings, prefetch=prefetch, durable=durable, exclusive=exclusive,
            auto_delete=auto_delete, arguments=arguments,
        )  # fmt: skip
        on_message = self._receiver(queue_name, handler, no_ack=no_ack, skip_own=skip_own)
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
        self, queue: str, handler: Handler, *, no_ack: bool, skip_own: bool
    ) -> Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]:
        """What each raw delivery goes through (the one place that decides what happens
        to a message that cannot be decoded or handled): decoded, the undecodable (a
        whole body, or items of a batch) dead-lettered with the reason, the rest handed
        to ``handler``; a handler that raises is tried HANDLER_TRIES times, then its
        delivery is dead-lettered. Either way it is acked and the consumer goes on; a
        delivery whose dead letter the broker does not confirm is put back in its queue
        (``_put_back``), never rejected to the broker's own dead-lettering."""

        async def on_message(raw: aio_pika.abc.AbstractIncomingMessage) -> None:
            received_at = time.monotonic()
            try:
                message, rejected = decode_each(raw.body)
            except Exception as exc:  # decode_each means never to raise: a bug, not the body's
                log.exception("decoding a message of %s from %s failed", raw.routing_key, queue)
                reason = f"could not be decoded: {type(exc).__name__}: {exc}"
                message, rejected = None, [Rejected(raw.body, reason)]
            if rejected and not await self._settle_rejected(raw, queue, rejected, no_ack=no_ack):
                return
            if message is None:
                return
            await self._handle(queue, handler, Delivery(raw, message, received_at), no_ack=no_ack)

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

    async def _settle_rejected(
        self,
        raw: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        rejected: list[Any],
        *,
        no_ack: bool,
    ) -> bool:
        """Dead-letter what could not be decoded (the whole body, or the bad items of a
        batch whose good items go on). False when nothing is left to handle."""
        key = raw.routing_key or ""
        for r in rejected:
            log.error("dead-lettering a message of %s from %s: %s", key, queue, r.reason)
        if no_ack:  # a fan-out copy (the API's stream): the durable queues have the message
            return True
        whole = len(rejected) == 1 and rejected[0].body is raw.body
        try:
            for r in rejected:
                await self.dead_letter(r.body, reason=r.reason, routing_key=key, queue=queue)
        except BrokerUnavailable as exc:
            await self._put_back(raw, queue, exc)
            return False
        if whole:
            await _settle(raw, requeue=None)
            return False
        return True

    async def _handle(
        self, queue: str, handler: Handler, delivery: Delivery, *, no_ack: bool
    ) -> None:
        raw = delivery._raw
        for attempt in range(1, HANDLER_TRIES + 1):
            try:
                await handler(delivery)
                return
            except Exception as exc:
                if no_ack:
                    log.exception("handler failed for %s (no-ack queue: skipped)", raw.routing_key)
                    return
                if raw.processed:  # it settled the delivery itself before it raised
                    log.exception("handler failed for %s after settling it", raw.routing_key)
                    return
                log.exception(
                    "handler failed for %s (try %d of %d)", raw.routing_key, attempt, HANDLER_TRIES
                )
                last = exc
                if attempt < HANDLER_TRIES:
                    await asyncio.sleep(0.2 * attempt)  # a passing failure may pass
        reason = f"handler failed {HANDLER_TRIES} times: {type(last).__name__}: {last}"
        try:
            await self.dead_letter(
                raw.body, reason=reason, routing_key=raw.routing_key or "", queue=queue
            )
        except BrokerUnavailable as exc:
            await self._put_back(raw, queue, exc)
            return
        await _settle(raw, requeue=None)

    async def _put_back(
        self, raw: aio_pika.abc.AbstractIncomingMessage, queue: str, exc: BrokerUnavailable
    ) -> None:
        """A dead letter of ``raw`` (or of a bad item of it) was not confirmed: requeue
        the whole delivery after a pause, to be decoded and handled again (handlers are
        idempotent; a dead letter that did go may go twice). Nothing of it is lost."""
        log.error(
            "dead letter not confirmed (%s); putting %s back in %s in %.1f s",
            exc, raw.routing_key, queue, DEAD_LETTER_RETRY_PAUSE,
        )  # fmt: skip
        await asyncio.sleep(DEAD_LETTER_RETRY_PAUSE)
        await _settle(raw, requeue=True)

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
